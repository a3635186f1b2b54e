"""The layer contract every npnet layer follows.

A layer is an object with a hand-written forward and backward pass::

    y = layer(x)                    # same as layer.forward(x); keeps what backward needs
    grad_in = layer.backward(grad_out)   # d loss / d x, and ADDS d loss / d param
                                         # into layer.grads[name]

``layer.params`` maps a name ('weight', 'bias') to the live parameter array; ``layer.grads``
has the same keys and shapes.  Gradients accumulate (``+=``), as in micrograd and torch, so
call ``zero_grad()`` between steps.  ``train()`` / ``eval()`` switch ``layer.training``: in
eval mode a layer keeps no cache for backward.
"""
from __future__ import annotations

import numpy as np

class Parameter:
    """A live parameter array and the gradient array that accumulates into it.

    ``p.data`` is the layer's own array: ``p.data -= lr * p.grad`` updates the layer, and
    so does ``p.data = new_values`` (the values are copied in; the array is never
    replaced, so the layer and the optimizer keep sharing it).  It unpacks like a pair:
    ``for w, g in model.parameters(): ...``.
    """

    __slots__ = ("_data", "grad")

    def __init__(self, data: np.ndarray, grad: np.ndarray):
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


class Layer:
    """Base class: subclasses implement ``forward`` and ``backward``.

    A layer of your own only needs ``self.params`` (name -> array), ``forward`` and
    ``backward``; ``__init__`` here makes the matching ``grads``.  Call
    ``self._init_grads()`` after filling ``self.params``.
    """

    #: Conv2d and Linear can skip computing dL/dx (``backward(g, need_grad_in=False)``),
    #: which the first layer of a network never needs.
    can_skip_grad_in = False

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self._cache = None          # what forward keeps for backward (training mode only)
        self._forward_hooks = []
        self._backward_hooks = []

    # -- the contract ---------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.forward(x)
        for hook in self._forward_hooks:
            hook(self, x, y)
        return y

    # -- parameters -----------------------------------------------------------------------
    def _init_grads(self) -> None:
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def parameters(self) -> list[Parameter]:
        return [Parameter(self.params[k], self.grads[k]) for k in self.params]

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [(k, Parameter(self.params[k], self.grads[k])) for k in self.params]

    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    # -- hooks (fired by __call__ and by Sequential; see npnet/hooks.py) ------------------
    def register_forward_hook(self, fn):
        """``fn(layer, x, y)`` after every forward through ``layer(x)`` or a Sequential."""
        self._forward_hooks.append(fn)
        return _HookHandle(self._forward_hooks, fn)

    def register_backward_hook(self, fn):
        """``fn(layer, grad_in, grad_out)`` after every backward run by a Sequential."""
        self._backward_hooks.append(fn)
        return _HookHandle(self._backward_hooks, fn)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class _HookHandle:
    """Returned by the register_* methods; ``handle.remove()`` unregisters the hook."""

    def __init__(self, hooks: list, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self) -> None:
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


# -- shared helpers for the layers' input checks and arguments ------------------------------
def pair(v, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (a, b); anything else is a ValueError naming ``name``."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def check_array(layer: Layer, x, ndim: int, what: str = "input") -> np.ndarray:
    """Refuse anything but a floating ndarray of ``ndim`` dimensions, naming the layer."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{layer!r}: {what} must be a numpy array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{layer!r}: expected a {ndim}-D {what}, got shape {x.shape} "
                         f"({x.ndim}-D)")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{layer!r}: {what} must be float32 or float64, got {x.dtype}")
    return x


def check_grad(layer: Layer, grad_out, expected_shape: tuple, dtype) -> np.ndarray:
    """grad_out must match the forward output's shape and dtype."""
    if not isinstance(grad_out, np.ndarray):
        raise ValueError(f"{layer!r}: grad_out must be a numpy array, "
                         f"got {type(grad_out).__name__}")
    if grad_out.shape != tuple(expected_shape):
        raise ValueError(f"{layer!r}: grad_out has shape {grad_out.shape}, expected "
                         f"{tuple(expected_shape)} (the shape of the forward output)")
    if grad_out.dtype != dtype:
        raise ValueError(f"{layer!r}: grad_out is {grad_out.dtype}, expected {dtype}")
    return grad_out


def no_cache_error(layer: Layer) -> RuntimeError:
    return RuntimeError(f"{layer!r}: backward() needs a forward() in training mode first "
                        "(each forward allows one backward)")


def uniform_init(rng, shape, fan_in: int, dtype) -> np.ndarray:
    """torch's default for conv and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a np.random.Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
