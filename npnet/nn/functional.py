"""npnet.nn.functional: the operations a forward needs between layers, each with its backward.

Inside a model's forward each of these is a recorded call, exactly like a layer's (it is a
small layer made on the spot), so its gradient flows back through the replay::

    out = F.relu(F.add(self.conv2(h), x))      # a residual connection: relu(conv2(h) + x)

Plain NumPy between layers (``a + b``, ``np.concatenate``) is not recorded, and backward
refuses it with an error naming the layer that received the result; these are the
recorded versions.  docs/functional.md derives each backward.

* ``add(a, b)``: a + b, broadcasting as NumPy does.  dL/da = G, summed over the dimensions
  along which a was broadcast (likewise b): a value used for many outputs collects all
  their gradients.
* ``cat(tensors, dim=0)``: concatenation.  dL/d(each) = its slice of G.
* ``flatten(x, start_dim=0, end_dim=-1)``, ``reshape(x, shape)``: only the shape changes,
  so dL/dx = G reshaped back.
* ``relu``, ``leaky_relu``, ``tanh``, ``sigmoid``, ``max_pool2d``, ``avg_pool2d``,
  ``adaptive_avg_pool2d``: the layers' own forward and backward (npnet/layers), called once.
* ``detach(x)``: the same values, marked as carrying no gradient (a constant).
"""
from __future__ import annotations

import numpy as np

from ..autograd import CONST
from ..layers import AdaptiveAvgPool2d, AvgPool2d, Flatten, LeakyReLU, MaxPool2d, ReLU, \
    Sigmoid, Tanh
from ..layers.base import check_grad, no_cache_error
from ..module import Module
from ..tensor import Tensor, realize

__all__ = ["add", "cat", "flatten", "reshape", "relu", "leaky_relu", "tanh", "sigmoid",
           "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "detach", "Add", "Cat",
           "Reshape"]


def _float_array(who: str, a, what: str):
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
        got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{who}: {what} must be a float32 or float64 array, got {got}")


def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` back to ``shape``: over the leading dimensions broadcasting added, and
    over those where ``shape`` has 1 (each such value served a whole row of outputs)."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return np.asarray(g.sum(axis=axes, keepdims=True) if axes else g)   # 0-d stays an array


class Add(Module):
    """a + b (broadcasting).  Backward: (G unbroadcast to a's shape, G to b's)."""

    label = "add"                          # its name in a printed tape

    def forward(self, a, b):
        try:
            y = np.add(a, b)
        except ValueError:
            raise ValueError(f"add: cannot broadcast shapes {np.shape(a)} and "
                             f"{np.shape(b)} together") from None
        _float_array("add", y, "the sum")
        info = [(np.shape(v), v.dtype) if isinstance(v, np.ndarray) else None
                for v in (a, b)]
        self._cache = (info, y.shape, y.dtype) if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        info, shape, dtype = self._cache
        check_grad(self, grad_out, shape, dtype)
        self._cache = None
        return tuple(None if i is None else _unbroadcast(grad_out, i[0]).astype(i[1],
                                                                             copy=False)
                     for i in info)


class Cat(Module):
    """Concatenation along ``dim``.  Backward: each input gets its slice of G."""

    label = "cat"

    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def forward(self, *tensors):
        if not tensors:
            raise ValueError("cat: expected at least one array")
        for i, t in enumerate(tensors):
            _float_array("cat", t, f"input {i}")
        try:
            y = np.concatenate(tensors, axis=self.dim)
        except (ValueError, np.exceptions.AxisError):
            raise ValueError(f"cat: cannot join shapes {[t.shape for t in tensors]} along "
                             f"dim {self.dim}") from None
        axis = self.dim % y.ndim
        self._cache = ([t.shape[axis] for t in tensors], axis, y.shape, y.dtype) \
            if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        sizes, axis, shape, dtype = self._cache
        check_grad(self, grad_out, shape, dtype)
        self._cache = None
        return tuple(np.split(grad_out, np.cumsum(sizes)[:-1], axis=axis))

    def extra_repr(self):
        return f"dim={self.dim}"


class Reshape(Module):
    """x.reshape(shape).  Backward: G reshaped to x's shape.  ``view=True`` refuses a
    reshape that would copy (torch's ``view``)."""

    label = "reshape"

    def __init__(self, shape, view: bool = False):
        super().__init__()
        self.shape, self.view_only = tuple(int(s) for s in shape), view

    def forward(self, x):
        _float_array("reshape", x, "the input")
        y = x.reshape(self.shape)
        if self.view_only and y.size and not np.may_share_memory(x, y):
            raise ValueError(f"view: an array of shape {x.shape} and strides {x.strides} "
                             f"cannot be seen as shape {self.shape} without a copy; use "
                             "reshape")
        self._cache = (x.shape, y.shape, x.dtype) if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, shape, dtype = self._cache
        check_grad(self, grad_out, shape, dtype)
        self._cache = None
        return grad_out.reshape(x_shape)

    def extra_repr(self):
        return f"shape={self.shape}"


def add(a, b):
    """a + b, recorded: the residual sum ``F.add(self.conv(x), x)``."""
    return Add()(a, b)


def cat(tensors, dim: int = 0):
    """Concatenate along ``dim`` (torch.cat): ``F.cat([a, b], dim=1)`` joins channels."""
    if not isinstance(tensors, (list, tuple)):
        raise ValueError(f"cat: expected a list or tuple of arrays, got "
                         f"{type(tensors).__name__}")
    return Cat(dim)(*tensors)


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    """Merge dimensions start_dim..end_dim (torch.flatten; ``flatten(x, 1)`` keeps the
    batch).  The Flatten layer's own forward and backward."""
    return Flatten(start_dim, end_dim)(x)


def reshape(x, shape, view: bool = False):
    """x with a new shape (a view when the memory allows; ``view=True`` insists)."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    return Reshape(shape, view)(x)


def _no_inplace(name, inplace):
    if inplace:
        raise ValueError(f"{name}(inplace=True): npnet does not record in-place operations "
                         "(the gradient would be wrong); use inplace=False")


def relu(x, inplace: bool = False):
    _no_inplace("relu", inplace)
    return ReLU()(x)


def leaky_relu(x, negative_slope: float = 0.01, inplace: bool = False):
    _no_inplace("leaky_relu", inplace)
    return LeakyReLU(negative_slope)(x)


def tanh(x):
    return Tanh()(x)


def sigmoid(x):
    return Sigmoid()(x)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return MaxPool2d(kernel_size, stride, padding)(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return AvgPool2d(kernel_size, stride, padding)(x)


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to ``output_size`` (``adaptive_avg_pool2d(x, 1)``: global)."""
    return AdaptiveAvgPool2d(output_size)(x)


def detach(x):
    """The same values (no copy), carrying no gradient: backward treats it as a constant."""
    x = realize(x)
    if not isinstance(x, np.ndarray):
        raise ValueError(f"detach: expected a numpy array, got {type(x).__name__}")
    t = x.view(Tensor)
    t._src = CONST
    return t
