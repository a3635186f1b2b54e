"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...).  Backward reshapes the gradient back.

No arithmetic, so the local derivative is the identity: only the shape changes.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Module, check_array, check_grad, no_cache_error


def flat_shape(shape: tuple, start_dim: int, end_dim: int, who) -> tuple:
    """``shape`` with dimensions start_dim..end_dim (negative counts from the end) merged;
    a 0-d input becomes (1,), as torch.flatten makes it."""
    nd = len(shape)
    if nd == 0 and start_dim in (0, -1) and end_dim in (0, -1):
        return (1,)
    need = max(start_dim + 1 if start_dim >= 0 else -start_dim,
               end_dim + 1 if end_dim >= 0 else -end_dim)
    if nd < need:
        raise ValueError(f"{who!r}: expected an input of at least {need} dimensions to flatten "
                         f"dimensions {start_dim}..{end_dim}, got shape {tuple(shape)}")
    s = start_dim + nd if start_dim < 0 else start_dim
    e = end_dim + nd if end_dim < 0 else end_dim
    if s > e:
        raise ValueError(f"{who!r}: start_dim {start_dim} comes after end_dim {end_dim} for an "
                         f"input of shape {tuple(shape)}")
    return tuple(shape[:s]) + (math.prod(shape[s:e + 1]),) + tuple(shape[e + 1:])


class Flatten(Module):
    """Flattens dimensions start_dim..end_dim, as torch.nn.Flatten (default: all but the
    batch, (N, C, H, W) -> (N, C*H*W))."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"Flatten: {name} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{self!r}: expected an array of at least 2 dimensions "
                             f"(N, ...), got {type(x).__name__}")
        check_array(self, x, x.ndim)       # float32 or float64, like every layer
        shape = flat_shape(x.shape, self.start_dim, self.end_dim, self)
        self._cache = (x.shape, x.dtype, shape) if self.training else None
        return x.reshape(shape)

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, dtype, shape = self._cache
        check_grad(self, grad_out, shape, dtype)
        self._cache = None                 # each forward serves one backward
        return grad_out.reshape(x_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
