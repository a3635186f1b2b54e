"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...).  Backward reshapes the gradient back.

No arithmetic, so the local derivative is the identity: only the shape changes.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, check_array, check_grad, no_cache_error


class Flatten(Layer):
    """Flattens every dimension but the batch, as torch.nn.Flatten() with its defaults."""

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"{self!r}: expected an input of at least 2 dimensions "
                             f"(N, ...), got {got}")
        check_array(self, x, x.ndim)       # float32 or float64, like every layer
        self._cache = (x.shape, x.dtype) if self.training else None
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, dtype = self._cache
        check_grad(self, grad_out, (x_shape[0], int(np.prod(x_shape[1:]))), dtype)
        self._cache = None                 # each forward serves one backward
        return grad_out.reshape(x_shape)
