"""Linear: y = x @ W.T + b, as torch.nn.Linear.

Backward, with g = dL/dy (N, out)::

    dL/dW = g.T @ x     (out, in)
    dL/db = sum_n g[n]  (out,)
    dL/dx = g @ W       (N, in)

docs/layers/linear.md derives each line.
"""
from __future__ import annotations

import numpy as np

from .base import (Module, add_grad, check_array, check_dtype, check_grad, float_dtype,
                   from_weight, no_cache_error, positive_int, uniform_init)


class Linear(Module):
    """Fully connected layer.

    Args:
        in_features (int), out_features (int), bias (bool, default True),
        dtype (np.float32 default, or np.float64), rng (np.random.Generator or None: the
        enclosing ``npnet.nn.init_generator`` block's, else a fresh unseeded one).

    Shape:
        (N, in_features) -> (N, out_features).

    Attributes:
        weight: (out_features, in_features), U(-1/sqrt(in), 1/sqrt(in)) as torch.
        bias: (out_features,), same distribution (None if ``bias=False``).
    """

    can_skip_grad_in = True

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        n_in = positive_int("Linear", "in_features", in_features)
        n_out = positive_int("Linear", "out_features", out_features)
        dtype = float_dtype("Linear", dtype)
        self.register_parameter("weight", uniform_init(rng, (n_out, n_in), n_in, dtype))
        self.register_parameter("bias", uniform_init(rng, (n_out,), n_in, dtype)
                                if bias else None)

    # the layer's shape is its weight's: one source of truth
    in_features = from_weight("in_features", 1)
    out_features = from_weight("out_features", 0)
    dtype = property(lambda self: self.params["weight"].dtype, lambda self, dt: self.to(dt),
                     doc="the parameters' dtype; assigning one converts them (as .to())")

    def forward(self, x):
        check_array(self, x, 2)
        w, b = self.params["weight"], self.params.get("bias")
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"{self!r}: expected input of shape (N, {w.shape[1]}), "
                             f"got {x.shape}")
        check_dtype(self, x, w)
        y = x @ w.T                                            # (N, in) @ (in, out)
        if b is not None:
            y += b
        self._cache = (x, w, b is not None) if self.training else None
        return y

    def backward(self, grad_out, need_grad_in=True):
        if self._cache is None:
            raise no_cache_error(self)
        x, w, has_bias = self._cache                           # as the forward saw them
        check_grad(self, grad_out, (x.shape[0], w.shape[0]), w.dtype)
        self._cache = None                 # each forward serves one backward
        add_grad(self, "weight", grad_out.T @ x)               # (out, N) @ (N, in)
        if has_bias:
            add_grad(self, "bias", grad_out.sum(axis=0))
        if not need_grad_in:
            return None
        return grad_out @ w                                    # (N, out) @ (out, in)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
