"""Element-wise activations.  Each backward multiplies grad_out by the local derivative.

    ReLU:    y = max(x, 0)           dy/dx = 1 if x > 0 else 0   (0 at the kink, as torch)
    Tanh:    y = tanh(x)             dy/dx = 1 - y**2
    Sigmoid: y = 1 / (1 + exp(-x))   dy/dx = y * (1 - y)
    LeakyReLU: y = x if x > 0 else a*x  dy/dx = 1 if x > 0 else a  (a at the kink, as torch)

Tanh and Sigmoid keep y, not x: their derivative is cheapest written in y; ReLU keeps y
too, LeakyReLU the sign mask x > 0.  docs/layers/activations.md derives them.
"""
from __future__ import annotations

import numpy as np

from ..kernels.activation import PARALLEL_SIZE, relu_backward, relu_forward
from .base import Layer, check_float_array, check_grad, no_cache_error


class ReLU(Layer):
    """y = max(x, 0), any shape."""

    def forward(self, x):
        check_float_array(self, x)
        if x.size >= PARALLEL_SIZE:        # one pass on npnet's threads, the same bits
            y = relu_forward(np.ascontiguousarray(x).reshape(-1),
                             np.empty(x.size, x.dtype)).reshape(x.shape)
        else:                              # a few values: not worth starting the threads
            y = np.maximum(x, 0)
        self._cache = y if self.training else None
        return y

    def backward(self, grad_out):
        y = self._cache
        if y is None:
            raise no_cache_error(self)
        check_grad(self, grad_out, y.shape, y.dtype)
        self._cache = None                 # each forward serves one backward
        # grad_out * (y > 0), in one pass on npnet's threads (npnet/kernels/activation.py);
        # y > 0 exactly where x > 0
        grad_in = np.empty(y.shape, y.dtype)
        relu_backward(np.ascontiguousarray(y).reshape(-1),
                      np.ascontiguousarray(grad_out).reshape(-1), grad_in.reshape(-1))
        return grad_in


class Tanh(Layer):
    """y = tanh(x), any shape."""

    def forward(self, x):
        check_float_array(self, x)
        y = np.tanh(x)
        self._cache = y if self.training else None
        return y

    def backward(self, grad_out):
        y = self._cache
        if y is None:
            raise no_cache_error(self)
        check_grad(self, grad_out, y.shape, y.dtype)
        self._cache = None                 # each forward serves one backward
        return grad_out * (1 - y * y)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)), any shape; computed without overflow for large |x|."""

    def forward(self, x):
        check_float_array(self, x)
        e = np.exp(-np.abs(x))             # in (0, 1]: never overflows
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        self._cache = y if self.training else None
        return y

    def backward(self, grad_out):
        y = self._cache
        if y is None:
            raise no_cache_error(self)
        check_grad(self, grad_out, y.shape, y.dtype)
        self._cache = None                 # each forward serves one backward
        return grad_out * y * (1 - y)


class LeakyReLU(Layer):
    """y = x if x > 0 else negative_slope * x, any shape, as torch.nn.LeakyReLU.

    dy/dx = 1 where x > 0, else negative_slope (at 0 too, as torch).  Keeps the mask x > 0.
    """

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(
                negative_slope, (int, float, np.floating)) or not np.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number, "
                             f"got {negative_slope!r}")
        if inplace:
            raise ValueError("LeakyReLU(inplace=True): npnet does not edit arrays in place; "
                             "use inplace=False")
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        check_float_array(self, x)
        positive = x > 0
        y = np.where(positive, x, x * x.dtype.type(self.negative_slope))
        self._cache = (positive, x.dtype) if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        positive, dtype = self._cache
        check_grad(self, grad_out, positive.shape, dtype)
        self._cache = None                 # each forward serves one backward
        return np.where(positive, grad_out, grad_out * grad_out.dtype.type(self.negative_slope))

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"
