"""What a module call returns: ``Tensor``, a NumPy array that knows which call made it.

``Tensor`` is an ``np.ndarray`` (every NumPy function takes it) with two additions:

* **provenance**: inside a model's training forward, the output of each recorded call
  carries that call (``npnet/autograd.py``), so backward knows where every input of every
  call came from.  Arrays made by NumPy from it carry nothing: they are not recorded;
* **torch's shape methods**, so forward code written for torch runs unchanged:
  ``x.view(x.size(0), -1)``, ``x.size()``, ``x.flatten(1)``, ``x.dim()``, ``x.numel()``.
  ``view``, ``reshape`` and ``flatten`` are recorded like layer calls (their backward
  reshapes the gradient back), so they may sit between layers.  (They are npnet.nn.functional's
  reshape and flatten, imported at first use: that module is built on this one.)

``Deferred`` is a value npnet has not computed yet (a convolution whose next call decides
whether it runs fused, ``npnet/fusion.py``; the gradient of a model's input, which training
never reads).  It has ``shape`` and ``dtype`` at once, and becomes its array the first time
anything reads it: ``np.asarray(d)``, arithmetic, indexing, printing, any layer.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = ["Tensor", "Deferred"]


class _Size(int):
    """ndarray's ``size`` (an int) that can also be called as torch's ``size(dim)``."""

    def __new__(cls, size: int, shape: tuple):
        obj = super().__new__(cls, size)
        obj._shape = shape
        return obj

    def __call__(self, dim=None):
        return tuple(self._shape) if dim is None else self._shape[dim]


def _shape_args(args) -> tuple:
    """view(2, -1), view((2, -1)) and view([2, -1]) all mean the shape (2, -1)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(args)


def _functional():
    """npnet.nn.functional (imported at first use: it is built on this module)."""
    global _F
    if _F is None:
        from .nn import functional
        _F = functional
    return _F


_F = None


def _ints(args) -> bool:
    return len(args) > 0 and all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                 for a in args)


class Tensor(np.ndarray):
    """An np.ndarray returned by a module call; see the module docstring."""

    # NumPy's own ``size`` is an int; this one is an int that torch code may also call
    @property
    def size(self):
        return _Size(np.ndarray.size.__get__(self), self.shape)

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(np.ndarray.size.__get__(self))

    def view(self, *args, **kwargs):
        """torch's ``view(*shape)`` (a reshape that never copies); NumPy's ``view(dtype)``
        for anything else."""
        shape = _shape_args(args)
        if kwargs or not _ints(shape):
            return np.ndarray.view(self, *args, **kwargs)
        return _functional().reshape(self, shape, view=True)

    def reshape(self, *args, **kwargs):
        shape = _shape_args(args)
        if kwargs or not _ints(shape):
            return np.ndarray.reshape(self, *args, **kwargs)
        return _functional().reshape(self, shape)

    def flatten(self, *args, **kwargs):
        """torch's ``flatten(start_dim=0, end_dim=-1)`` when given dimensions; NumPy's
        ``flatten(order)`` (a copy) otherwise."""
        if args and _ints(args) and len(args) <= 2 or kwargs.keys() & {"start_dim", "end_dim"}:
            return _functional().flatten(self, *args, **kwargs)
        return np.ndarray.flatten(self, *args, **kwargs)

    def detach(self):
        """The same values, cut from the record: no gradient flows back through it."""
        return _functional().detach(self)

    def numpy(self) -> np.ndarray:
        """The plain ndarray (a view: no copy)."""
        return self.view(np.ndarray)


class Deferred(NDArrayOperatorsMixin):
    """A value computed the first time it is read; see the module docstring.

    ``compute`` is a function of no arguments returning the array; ``about`` says in words
    what the value is (shown by ``repr`` before it is computed).
    """

    __slots__ = ("shape", "dtype", "_compute", "_value", "_about", "__weakref__", "pending")
    __array_priority__ = 100

    def __init__(self, shape, dtype, compute, about="", pending=None):
        self.shape, self.dtype = shape, dtype
        self._compute, self._value, self._about = compute, None, about
        self.pending = pending          # what npnet/fusion.py may still fuse it into

    @property
    def about(self) -> str:
        """What the value is, in words (``about`` may be given as a function, for speed)."""
        return self._about() if callable(self._about) else self._about

    @property
    def computed(self) -> bool:
        return self._value is not None

    def value(self):
        """The array (computing it now if it was not yet)."""
        if self._value is None:
            self._value = self._compute()
            self._compute = self.pending = None     # release what computing needed
        return self._value

    # -- what is known without computing -------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self):
        return _Size(math.prod(self.shape), self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    # -- everything else reads the value -------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.value())
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(realize(i) for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(realize(o) for o in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return func(*_realize_nested(args), **_realize_nested(kwargs))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.value(), name)

    def __getitem__(self, key):
        return self.value()[key]

    def __setitem__(self, key, value):
        self.value()[key] = value

    def __iter__(self):
        return iter(self.value())

    def __bool__(self):
        return bool(self.value())

    def __float__(self):
        return float(self.value())

    def __int__(self):
        return int(self.value())

    def __index__(self):
        return self.value().__index__()

    def __format__(self, spec):
        return format(self.value(), spec)

    def __str__(self):
        return str(self.value())

    def __repr__(self):
        if self._value is None:
            return f"Deferred(shape={self.shape}, dtype={self.dtype}: {self.about})"
        return repr(self._value)


def realize(a):
    """``a``'s value if it is Deferred, else ``a`` itself."""
    return a.value() if isinstance(a, Deferred) else a


def _realize_nested(obj):
    if isinstance(obj, Deferred):
        return obj.value()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_realize_nested(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _realize_nested(v) for k, v in obj.items()}
    return obj
