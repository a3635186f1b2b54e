"""Dropout: in training, each value is zeroed with probability p, the others scaled.

Inverted dropout, as torch.nn.Dropout::

    m = keep / (1 - p),  keep ~ Bernoulli(1 - p) per element    (drawn from self.rng)
    y = x * m                     dL/dx = dL/dy * m    (the same mask: the forward's)

The scale 1/(1 - p) keeps E[y] = x, so eval mode is the identity (y = x, nothing kept)
and a trained network needs no rescaling at test time.  docs/layers/dropout.md derives it.
"""
from __future__ import annotations

import numpy as np

from .base import Module, check_float_array, check_grad, no_cache_error, resolve_rng


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode, as torch.nn.Dropout.

    Args:
        p (float): the probability of an element being zeroed, in [0, 1], default 0.5.
        inplace (bool): refused if True (npnet never edits a recorded array in place).
        rng (np.random.Generator): draws the masks; if None, the enclosing
            ``npnet.nn.init_generator`` block's, else a fresh unseeded one.

    Shape:
        any -> the same shape.
    """

    def __init__(self, p=0.5, inplace=False, *, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) \
                or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        if inplace:
            raise ValueError("Dropout(inplace=True): npnet does not edit arrays in place "
                             "(a recorded input would change under its backward); use "
                             "inplace=False")
        self.p = float(p)
        self.rng = resolve_rng(rng)

    def forward(self, x):
        check_float_array(self, x)
        if not self.training:
            self._cache = None
            return x                                   # eval: the identity
        keep = self.rng.random(x.shape) >= self.p      # True with probability 1 - p
        scale = 0.0 if self.p == 1 else 1.0 / (1.0 - self.p)
        mask = keep.astype(x.dtype) * x.dtype.type(scale)     # 0 or 1/(1-p), x's shape
        self._cache = mask
        return x * mask

    def backward(self, grad_out):
        mask = self._cache
        if mask is None:
            raise no_cache_error(self)
        check_grad(self, grad_out, mask.shape, mask.dtype)
        self._cache = None                 # each forward serves one backward
        return grad_out * mask             # the forward's own mask

    def extra_repr(self):
        return f"p={self.p}"
