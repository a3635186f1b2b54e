"""Module: what every npnet layer and model is, with torch.nn.Module's semantics.

A module holds **parameters** (``module.params``: name -> array, with ``module.grads`` of
the same keys and shapes), **buffers** (state that is not trained) and **children**
(modules assigned as attributes, registered in assignment order).  One tree walk,
:meth:`Module.named_modules`, serves everything that visits the tree: parameters,
state_dict, train/eval, zero_grad, to, apply.

Two kinds of module, told apart by whether the class writes a ``backward``:

* a **layer** (Conv2d, ReLU, a layer of your own) has a hand-written ``forward`` that
  keeps what it needs in ``self._cache`` and a ``backward(grad_out)`` that returns
  dL/d(input) and *adds* dL/d(param) into ``self.grads``;
* a **model** (Sequential, the seed's LeNet5 class) writes only ``forward``, calling
  layers.  Calling it records every layer call, each with its own saved state, and
  ``model.backward(grad_out)`` replays that record in reverse (``npnet/autograd.py``).
"""
from __future__ import annotations

import functools
from collections import OrderedDict, namedtuple

import numpy as np

from . import autograd
from .autograd import _local

__all__ = ["Module", "Parameter"]


class Parameter:
    """A live parameter array and the gradient array that accumulates into it.

    ``model.parameters()`` returns these; the optimizers update ``p.data`` in place and
    read ``p.grad``.  ``p.data = new_values`` copies the values in (the array is never
    replaced, so the module and the optimizer keep sharing it).  It unpacks like a pair:
    ``for w, g in model.parameters(): ...``.

    ``Parameter(array)`` (no gradient yet) assigned to a module attribute registers a new
    parameter, as ``self.weight = nn.Parameter(w)`` does in torch.
    """

    __slots__ = ("_data", "grad")

    def __init__(self, data: np.ndarray, grad: np.ndarray | None = None):
        self._data, self.grad = data, grad

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value) -> None:
        if value is self._data:        # `p.data -= x` already updated the array in place
            return
        if np.shape(value) != self._data.shape:
            raise ValueError(f"Parameter.data: the parameter has shape {self._data.shape}, "
                             f"got a value of shape {np.shape(value)}")
        np.copyto(self._data, value)

    def __iter__(self):
        return iter((self._data, self.grad))

    def __repr__(self):
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype})"


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _check_param(owner, name: str, value) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype not in (np.float32, np.float64):
        got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{type(owner).__name__}: parameter '{name}' must be a float32 or "
                         f"float64 numpy array, got {got}")
    return value.view(np.ndarray) if type(value) is not np.ndarray else value


def _with_backward_hooks(backward):
    """Wrap a layer's hand-written backward so that its backward hooks fire after it,
    wherever it is called from: by a model's replay, by a container of your own, by you."""
    @functools.wraps(backward)
    def run(self, grad_out, *args, **kwargs):
        d = self.__dict__
        if d.get("_in_backward"):                 # super().backward() inside an override
            return backward(self, grad_out, *args, **kwargs)
        d["_in_backward"] = True
        try:
            grad_in = backward(self, grad_out, *args, **kwargs)
        finally:
            d["_in_backward"] = False
        if d.get("_backward_hooks") and not autograd.hooks_muted():
            grad_in = autograd.fire_backward_hooks(self, grad_in, grad_out)
        return grad_in
    return run


class Module:
    """Base class of every layer and model (torch.nn.Module's semantics).

    Subclass it, assign layers (and ``Parameter(array)``) as attributes in ``__init__``
    after ``super().__init__()``, and write ``forward``.  Write ``backward`` too only for a
    layer whose derivative you want to write by hand.
    """

    #: A layer that can skip dL/dx (``backward(g, need_grad_in=False)``); a model's replay
    #: uses it for the first call of the input, whose gradient is computed only if read.
    can_skip_grad_in = False

    #: A layer whose output for one sample depends on the other samples of the batch in
    #: training mode (batch norm: every output uses the batch's mean and variance).
    #: ``npnet.testing.assert_layer_correct`` checks that samples are independent unless a
    #: module of the model declares this, and its report says which one did.
    mixes_samples = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__:
            cls.backward = _with_backward_hooks(cls.__dict__["backward"])
        cls._is_layer = cls.backward is not Module.backward

    def __init__(self):
        d = self.__dict__
        d["_modules"] = OrderedDict()
        d["params"] = {}
        d["grads"] = {}
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_no_params"] = set()           # parameter names registered as None (bias=False)
        d["training"] = True
        d["_cache"] = None                # a layer's saved state between forward and backward
        d["_tape"] = None                 # a model's record of its last training forward
        d["_forward_pre_hooks"] = OrderedDict()
        d["_forward_hooks"] = OrderedDict()
        d["_backward_hooks"] = OrderedDict()

    # -- attributes: children, parameters and buffers register themselves --------------------
    def __setattr__(self, name, value):
        d = self.__dict__
        if name == "_cache":                        # every forward and backward: be quick
            d[name] = value
            return
        if isinstance(value, Module):
            if "_modules" not in d:
                raise AttributeError(f"cannot assign module '{name}' before "
                                     f"{type(self).__name__}.__init__() called super().__init__()")
            self._forget(name)
            d["_modules"][name] = value
        elif isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif "params" in d and (name in d["params"] or name in d["_no_params"]):
            self.register_parameter(name, value)       # replacing a parameter's array
        elif "_buffers" in d and name in d["_buffers"]:
            self.register_buffer(name, value, persistent=name not in d["_non_persistent"])
        else:
            if "_modules" in d and name in d["_modules"]:
                del d["_modules"][name]
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        children = d.get("_modules")
        if children is not None and name in children:   # self.conv1 in a forward: be quick
            return children[name]
        for table in ("params", "_buffers"):
            t = d.get(table)
            if t is not None and name in t:
                return t[name]
        if name in d.get("_no_params", ()):
            return None
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if name in self._modules or name in self.params or name in self._buffers \
                or name in self._no_params:
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def _forget(self, name):
        d = self.__dict__
        for table in ("_modules", "params", "grads", "_buffers"):
            d[table].pop(name, None)
        d["_no_params"].discard(name)
        d["_non_persistent"].discard(name)
        d.pop(name, None)

    def register_parameter(self, name: str, value) -> None:
        """Register (or replace) a trained array: ``value`` is an array, a
        ``Parameter(array)``, or None (no such parameter, as ``bias=False``)."""
        if "params" not in self.__dict__:
            raise AttributeError(f"cannot assign parameter '{name}' before "
                                 f"{type(self).__name__}.__init__() called super().__init__()")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{type(self).__name__}: parameter names must be non-empty "
                             f"strings without '.', got {name!r}")
        if isinstance(value, Parameter):
            grad, value = value.grad, value.data
        else:
            grad = None
        if name in self._modules or name in self._buffers:
            self._forget(name)
        self.__dict__.pop(name, None)
        if value is None:
            self.params.pop(name, None)
            self.grads.pop(name, None)
            self._no_params.add(name)
            return
        value = _check_param(self, name, value)
        self._no_params.discard(name)
        self.params[name] = value
        if grad is None or np.shape(grad) != value.shape or grad.dtype != value.dtype:
            grad = np.zeros_like(value)
        self.grads[name] = grad

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """Register state that is not trained (running statistics, ...): in state_dict()
        unless ``persistent=False``, converted by to(), never in parameters()."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{type(self).__name__}: buffer names must be non-empty strings "
                             f"without '.', got {name!r}")
        if value is not None and not isinstance(value, np.ndarray):
            raise ValueError(f"{type(self).__name__}: buffer '{name}' must be a numpy array "
                             f"or None, got {type(value).__name__}")
        if name in self._modules or name in self.params or name in self._no_params:
            self._forget(name)
        self.__dict__.pop(name, None)
        self._buffers[name] = value
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: "Module | None") -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{type(self).__name__}: module names must be non-empty strings "
                             f"without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise ValueError(f"{type(self).__name__}: '{name}' is a {type(module).__name__}, "
                             "not an npnet Module")
        self._forget(name)
        self._modules[name] = module

    register_module = add_module

    def _init_grads(self) -> None:
        """For a layer that filled ``self.params`` itself: make the matching zero grads."""
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}

    # -- the tree: one walk ------------------------------------------------------------------
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """(name, module) for this module and everything below it, in registration order;
        a module reachable twice is listed once (unless ``remove_duplicate=False``)."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                               remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, table: str, remove_duplicate: bool = True):
        seen = set()
        for mod_name, m in self.named_modules(remove_duplicate=remove_duplicate):
            for k, v in getattr(m, table).items():
                if v is None or (remove_duplicate and id(v) in seen):
                    continue
                seen.add(id(v))
                yield m, (f"{mod_name}.{k}" if mod_name else k), k, v

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """[(name, Parameter)], names as state_dict's ('conv1.weight'); a parameter shared
        by two modules is listed once."""
        out = []
        members = self._named_members("params") if recurse else (
            (self, k, k, v) for k, v in self.params.items())
        for m, name, k, v in members:
            out.append((f"{prefix}.{name}" if prefix else name, Parameter(v, m.grads[k])))
        return out

    def parameters(self, recurse: bool = True) -> list:
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_buffers(self, prefix: str = ""):
        return [(f"{prefix}.{name}" if prefix else name, v)
                for _, name, _, v in self._named_members("_buffers")]

    def buffers(self) -> list:
        return [v for _, v in self.named_buffers()]

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def apply(self, fn):
        """``fn(module)`` for every module below this one, children first (as torch)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -- state -------------------------------------------------------------------------------
    def _state_arrays(self):
        """(key, live array) of every parameter and persistent buffer, in tree order."""
        for mod_name, m in self.named_modules(remove_duplicate=False):
            pre = f"{mod_name}." if mod_name else ""
            for k, v in m.params.items():
                yield pre + k, v
            for k, v in m._buffers.items():
                if v is not None and k not in m._non_persistent:
                    yield pre + k, v

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and persistent buffer, keyed 'conv1.weight' (torch's
        keys), in registration order."""
        return OrderedDict((k, v.copy()) for k, v in self._state_arrays())

    def load_state_dict(self, state, strict: bool = True):
        """Copy ``state`` into the live arrays, in place.

        Refuses, with a ValueError and before changing anything, a key that is missing or
        unexpected (unless ``strict=False``) and any array of the wrong shape.  Returns
        (missing_keys, unexpected_keys), as torch.
        """
        if not hasattr(state, "keys"):
            raise ValueError(f"load_state_dict: expected a dict of arrays, got "
                             f"{type(state).__name__}")
        own = OrderedDict(self._state_arrays())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for k, live in own.items():
            if k not in state:
                continue
            v = state[k]
            shape = np.shape(v)
            if shape != live.shape:
                problems.append(f"'{k}' has shape {shape}, the model expects {live.shape}")
            elif not np.issubdtype(np.asarray(v).dtype, np.number):
                problems.append(f"'{k}' is not numeric ({np.asarray(v).dtype})")
            elif np.iscomplexobj(v):
                problems.append(f"'{k}' is complex ({np.asarray(v).dtype}); parameters "
                                "are real")
        if problems:
            raise ValueError("load_state_dict refused, the model is unchanged: "
                             + "; ".join(problems))
        for k, live in own.items():
            if k in state:
                np.copyto(live, np.asarray(state[k]), casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # -- modes, gradients, dtype -------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode): mode must be True or False, got {mode!r}")
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for m in self.modules():
            for g in m.grads.values():
                g.fill(0)

    def to(self, *args, dtype=None) -> "Module":
        """Convert every parameter, gradient and floating buffer to ``dtype``
        (``model.to(np.float64)``); returns the module.  'cpu' is accepted and changes
        nothing (npnet runs on the CPU).  The arrays are new: build the optimizer after."""
        for a in args:
            if isinstance(a, str) and a == "cpu":
                continue
            if dtype is not None:
                raise ValueError(f"to(): two dtypes given, {dtype} and {a!r}")
            dtype = a
        if dtype is None:
            return self
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"to(): expected np.float32, np.float64 or 'cpu', "
                             f"got {dtype!r}") from None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"to(): parameters are float32 or float64, got {dtype}")
        for m in self.modules():
            for k in list(m.params):
                if m.params[k].dtype != dtype:
                    m.params[k] = m.params[k].astype(dtype)
                    m.grads[k] = m.grads[k].astype(dtype)
            for k, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f" and b.dtype != dtype:
                    m._buffers[k] = b.astype(dtype)
        return self

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    # -- running it --------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs):
        fwd = getattr(_local, "ctx", None)      # the model forward this call is part of
        if fwd is None:
            return autograd.call(self, args, kwargs)
        if self._is_layer:
            return fwd.layer(self, args, kwargs)
        return fwd.model(self, args, kwargs)

    def backward(self, grad_out, need_grad_in: bool = True):
        """Replay the record of the last training forward in reverse: every parameter
        gradient is accumulated, and dL/d(input) is returned.

        The input's gradient is computed when first read (it is a ``Deferred``; training
        never reads it).  ``need_grad_in=False`` returns None instead.  A layer overrides
        this with its own hand-written rule.
        """
        return autograd.backward(self, grad_out, need_grad_in)

    # -- hooks -------------------------------------------------------------------------------
    def register_forward_pre_hook(self, fn):
        """``fn(module, args)`` before each forward; it may return new args."""
        return _add_hook(self._forward_pre_hooks, fn)

    def register_forward_hook(self, fn):
        """``fn(module, args, output)`` after each forward, wherever the module runs; it
        may return a new output."""
        return _add_hook(self._forward_hooks, fn)

    def register_full_backward_hook(self, fn):
        """``fn(module, grad_input, grad_output)`` (tuples of arrays, None where no
        gradient) once the gradients of the module's inputs are computed, wherever it
        runs.  For a layer it may return a new grad_input."""
        return _add_hook(self._backward_hooks, fn)

    register_backward_hook = register_full_backward_hook

    # -- printing ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = [f"({name}): {_indent(repr(m))}" for name, m in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = ([extra] if extra else []) + lines
        return f"{type(self).__name__}(\n  " + "\n  ".join(body) + "\n)"


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


class _HookHandle:
    """Returned by the register_*_hook methods; ``handle.remove()`` unregisters the hook."""
    _next_id = 0

    def __init__(self, hooks: OrderedDict, fn):
        _HookHandle._next_id += 1
        self.id, self._hooks, self._fn = _HookHandle._next_id, hooks, fn

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


def _add_hook(hooks: OrderedDict, fn):
    if not callable(fn):
        raise ValueError(f"a hook must be callable, got {type(fn).__name__}")
    handle = _HookHandle(hooks, fn)
    hooks[handle.id] = fn
    return handle


class HookEdge(Module):
    """Identity that notes the gradient passing through it, at the entry and exit of a
    model with backward hooks (npnet/autograd.py)."""

    def __init__(self, slots: list, j: int):
        super().__init__()
        self.slots, self.j = slots, j

    def forward(self, x):
        self._cache = x.shape
        return x.view()

    def backward(self, grad_out):
        self._cache = None
        self.slots[self.j] = grad_out
        return grad_out


Module._is_layer = False
