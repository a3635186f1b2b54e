"""Linear: y = x @ W.T + b, as torch.nn.Linear.

Backward, with g = dL/dy (N, out)::

    dL/dW = g.T @ x     (out, in)
    dL/db = sum_n g[n]  (out,)
    dL/dx = g @ W       (N, in)

docs/layers/linear.md derives each line.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, check_array, check_grad, no_cache_error, uniform_init


class Linear(Layer):
    """Fully connected layer.

    Args:
        in_features (int), out_features (int), bias (bool, default True),
        dtype (np.float32 default, or np.float64), rng (np.random.Generator or None).

    Shape:
        (N, in_features) -> (N, out_features).

    Attributes:
        params['weight']: (out_features, in_features), U(-1/sqrt(in), 1/sqrt(in)) as torch.
        params['bias']: (out_features,), same distribution.
    """

    can_skip_grad_in = True

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Linear: {name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Linear: dtype must be float32 or float64, got {self.dtype}")
        rng = np.random.default_rng() if rng is None else rng
        self.params["weight"] = uniform_init(
            rng, (self.out_features, self.in_features), self.in_features, self.dtype)
        if bias:
            self.params["bias"] = uniform_init(rng, (self.out_features,), self.in_features,
                                               self.dtype)
        self._init_grads()
        self._cache = None

    def forward(self, x):
        check_array(self, x, 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.in_features}), "
                             f"got {x.shape}")
        if x.dtype != self.dtype:
            raise ValueError(f"{self!r}: input is {x.dtype} but the layer is {self.dtype}; "
                             f"cast the input or build the layer with dtype={x.dtype}")
        y = x @ self.params["weight"].T                        # (N, in) @ (in, out)
        if "bias" in self.params:
            y += self.params["bias"]
        self._cache = x if self.training else None
        return y

    def backward(self, grad_out, need_grad_in=True):
        x = self._cache
        if x is None:
            raise no_cache_error(self)
        check_grad(self, grad_out, (x.shape[0], self.out_features), self.dtype)
        self._cache = None                 # each forward serves one backward
        self.grads["weight"] += grad_out.T @ x                 # (out, N) @ (N, in)
        if "bias" in self.params:
            self.grads["bias"] += grad_out.sum(axis=0)
        if not need_grad_in:
            return None
        return grad_out @ self.params["weight"]                # (N, out) @ (out, in)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + ("" if "bias" in self.params else ", bias=False"))
