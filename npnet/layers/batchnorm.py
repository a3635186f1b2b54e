"""BatchNorm1d and BatchNorm2d: each channel normalised by its batch statistics, as torch.

Forward in training, per channel c, over the M = N (x H x W) values of the batch::

    mu = mean(x)          var = mean((x - mu)**2)        (biased: divided by M)
    x_hat = (x - mu) / sqrt(var + eps)
    y = gamma * x_hat + beta                              gamma = weight, beta = bias

and the running statistics move towards the batch's: running = (1 - momentum) * running +
momentum * batch, with the *unbiased* variance var * M / (M - 1).  In eval mode the running
statistics replace the batch's, so the layer is a fixed per-channel affine map.

Backward, with g = dL/dy, every sum over the channel's M values::

    dL/dbeta  = sum(g)
    dL/dgamma = sum(g * x_hat)
    dL/dx     = gamma / sqrt(var + eps) * (g - dL/dbeta / M - x_hat * dL/dgamma / M)

The last line has three terms because x reaches the loss three ways: directly, through mu
and through var.  docs/layers/batchnorm.md derives it from the computation graph.  The
sums and the per-element arithmetic are three Numba loops (npnet/kernels/batchnorm.py,
one pass each over the data); kernels/reference.py writes the same lines in NumPy.
"""
from __future__ import annotations

import numpy as np

from ..kernels.batchnorm import batchnorm_backward, batchnorm_forward, channel_mean_var
from .base import Module, add_grad, check_array, check_dtype, check_grad, float_dtype, \
    no_cache_error, positive_int


class _BatchNorm(Module):
    #: the input's number of dimensions it accepts, and how torch names them
    ndims: tuple = ()
    layout: str = ""
    #: in training each output is normalised by the whole batch's statistics
    mixes_samples = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        C = positive_int(name, "num_features", num_features)
        number = (int, float, np.integer, np.floating)
        if not (isinstance(eps, number) and not isinstance(eps, bool) and eps > 0):
            raise ValueError(f"{name}: eps must be a positive number, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, number)
                                         and not isinstance(momentum, bool)
                                         and 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be a number in [0, 1] or None "
                             f"(a cumulative average), got {momentum!r}")
        dtype = float_dtype(name, dtype)
        self.num_features, self.eps = C, float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        # torch's initial values: the identity map, and statistics of a standard normal
        self.register_parameter("weight", np.ones(C, dtype) if affine else None)
        self.register_parameter("bias", np.zeros(C, dtype) if affine else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype))
            self.register_buffer("running_var", np.ones(C, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(b, None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self._buffers["running_mean"].fill(0)
            self._buffers["running_var"].fill(1)
            self._buffers["num_batches_tracked"].fill(0)

    def _check(self, x):
        if not isinstance(x, np.ndarray) or x.ndim not in self.ndims:
            got = f"{x.ndim}-D input of shape {x.shape}" if isinstance(x, np.ndarray) \
                else type(x).__name__
            raise ValueError(f"{self!r}: expected {self.layout}, got {got}")
        check_array(self, x, x.ndim)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected {self.num_features} channels (dimension 1), "
                             f"got input of shape {x.shape}")
        state = self.params.get("weight") if self.affine else self._buffers["running_mean"]
        if state is not None:                  # affine=False and no statistics: any dtype
            check_dtype(self, x, state)

    def forward(self, x):
        self._check(x)
        N, C = x.shape[:2]
        x3 = np.ascontiguousarray(x).reshape(N, C, -1)     # (N, C, S): S values per sample
        M = N * x3.shape[2]                                # values per channel
        if self.training or not self.track_running_stats:  # the batch's own statistics
            if M == 1:                                     # no variance to divide by
                raise ValueError(f"{self!r}: expected more than 1 value per channel to use "
                                 f"batch statistics, got input of shape {x.shape} (as torch)")
            mean, var = channel_mean_var(x3, np.empty(C, x.dtype), np.empty(C, x.dtype))
            if self.training and self.track_running_stats:
                self._update_running(mean, var, M)
        else:                                              # eval: the running statistics
            mean, var = self._buffers["running_mean"], self._buffers["running_var"]
        inv_std = (1 / np.sqrt(var + self.eps)).astype(x.dtype)           # (C,)
        w, b = self.params.get("weight"), self.params.get("bias")
        if not self.affine:                                # gamma = 1, beta = 0
            w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        x_hat, y = np.empty_like(x3), np.empty_like(x3)
        batchnorm_forward(x3, mean, inv_std, w, b, x_hat, y)  # x_hat = (x - mean) / std,
        #                                                  # y = gamma * x_hat + beta
        # backward needs x_hat, 1/std and gamma (batch statistics: training mode only)
        self._cache = (x.shape, x_hat, inv_std, w if self.affine else None) \
            if self.training else None
        return y.reshape(x.shape)

    def _update_running(self, mean, var, M):
        nbt = self._buffers["num_batches_tracked"]
        nbt += 1
        # momentum None: the cumulative average of every batch so far (torch's meaning)
        m = 1.0 / float(nbt) if self.momentum is None else self.momentum
        rm, rv = self._buffers["running_mean"], self._buffers["running_var"]
        rm *= 1 - m
        rm += m * mean
        rv *= 1 - m
        rv += m * var * (M / (M - 1))                  # the unbiased variance

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, x_hat, inv_std, w = self._cache
        check_grad(self, grad_out, x_shape, x_hat.dtype)
        self._cache = None                 # each forward serves one backward
        C = x_hat.shape[1]
        g3 = np.ascontiguousarray(grad_out).reshape(x_hat.shape)          # (N, C, S)
        scale = inv_std if w is None else w * inv_std                     # (C,): gamma / std
        d_beta, d_gamma = np.empty(C, x_hat.dtype), np.empty(C, x_hat.dtype)
        grad_in = np.empty_like(x_hat)
        # d_beta = sum g, d_gamma = sum g * x_hat; then the three paths from x to the loss:
        # grad_in = scale * (g - d_beta / M - x_hat * d_gamma / M)
        batchnorm_backward(g3, x_hat, scale, d_beta, d_gamma, grad_in)
        if w is not None:
            add_grad(self, "weight", d_gamma)
            add_grad(self, "bias", d_beta)
        return grad_in.reshape(x_shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of features, as torch.nn.BatchNorm1d.

    Args:
        num_features (int): C.
        eps (float): added to the variance, default 1e-5.
        momentum (float or None): the running statistics' update rate, default 0.1;
            None averages every batch equally.
        affine (bool): learn weight (gamma) and bias (beta), default True.
        track_running_stats (bool): keep running statistics for eval mode, default True;
            without them eval mode uses the batch's statistics too.
        dtype: np.float32 (default) or np.float64.

    Shape:
        (N, C) or (N, C, L) -> the same shape; statistics over N (and L) per channel.

    Attributes:
        weight: (C,), ones.  bias: (C,), zeros.
        running_mean: (C,) zeros, running_var: (C,) ones, num_batches_tracked: () int64,
        buffers: in state_dict() under torch's keys, not in parameters().
    """
    ndims = (2, 3)
    layout = "a 2-D (N, C) or 3-D (N, C, L) input"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of feature maps, as torch.nn.BatchNorm2d.

    Args: as :class:`BatchNorm1d`.

    Shape:
        (N, C, H, W) -> (N, C, H, W); statistics over N, H and W per channel.

    Attributes: as :class:`BatchNorm1d`.
    """
    ndims = (4,)
    layout = "a 4-D (N, C, H, W) input"
