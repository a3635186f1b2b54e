"""Identity: y = x, dL/dx = dL/dy, as torch.nn.Identity (a placeholder layer)."""
from __future__ import annotations

from .base import Module, check_grad, no_cache_error


class Identity(Module):
    """Returns its input; any arguments are accepted and ignored, as torch's."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self._cache = (x.shape, x.dtype) if self.training else None
        return x

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        shape, dtype = self._cache
        check_grad(self, grad_out, shape, dtype)
        self._cache = None
        return grad_out
