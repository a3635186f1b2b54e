"""Conv2d: a 2-D cross-correlation as im2col + one matrix multiply per sample.

Forward, for sample n, filter f and output position p = (oh, ow)::

    y[n, f, p] = b[f] + sum_{c,i,j} W[f, c, i, j] * x[n, c, oh*s - pad + i, ow*s - pad + j]

im2col gathers every receptive field of x into a column, so the sum becomes a matmul:
``cols`` (N, K, P) with K = C*kh*kw, ``y = W2 @ cols`` with W2 = W.reshape(F, K).

Backward, with g = dL/dy reshaped to (N, F, P)::

    dL/dW2 = sum_n g[n] @ cols[n].T          (F, K)
    dL/db  = sum_{n,p} g[n, :, p]            (F,)
    dL/dcols = W2.T @ g[n]                   (N, K, P)  then  dL/dx = col2im(dL/dcols)

col2im ADDS: a pixel that sits in several receptive fields was used several times, so its
gradient is the sum over those uses.  docs/layers/conv.md derives each line.
"""
from __future__ import annotations

import numpy as np

from ..kernels.im2col import col2im, im2col
from .base import Layer, check_array, check_grad, no_cache_error, pair, uniform_init


class Conv2d(Layer):
    """2-D convolution (cross-correlation, kernels not flipped), as torch.nn.Conv2d.

    Args:
        in_channels (int): C, channels of the input.
        out_channels (int): F, number of filters.
        kernel_size (int or pair): (kh, kw).
        stride (int or pair): default 1.
        padding (int or pair): zeros added on each side, default 0.
        bias (bool): learn a per-filter bias, default True.
        dtype: np.float32 (default) or np.float64, for the parameters and the input.
        rng (np.random.Generator): source of the initial weights; a fresh unseeded one if None.

    Shape:
        input (N, C, H, W) -> output (N, F, OH, OW), with
        OH = floor((H + 2*padding[0] - kh) / stride[0]) + 1, likewise OW.

    Attributes:
        params['weight']: (F, C, kh, kw), U(-1/sqrt(C*kh*kw), 1/sqrt(C*kh*kw)) as torch.
        params['bias']: (F,), same distribution.
    """

    can_skip_grad_in = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "Conv2d kernel_size")
        self.stride = pair(stride, "Conv2d stride")
        self.padding = pair(padding, "Conv2d padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1 and padding >= 0, "
                             f"got {self.kernel_size}, {self.stride}, {self.padding}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Conv2d: dtype must be float32 or float64, got {self.dtype}")
        rng = np.random.default_rng() if rng is None else rng
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.params["weight"] = uniform_init(
            rng, (self.out_channels, self.in_channels, kh, kw), fan_in, self.dtype)
        if bias:
            self.params["bias"] = uniform_init(rng, (self.out_channels,), fan_in, self.dtype)
        self._init_grads()
        self._cache = None  # (x shape, cols) kept by a training forward for backward
        self._cols = None   # column buffer, reused from step to step while shapes repeat

    def output_shape(self, in_shape):
        """(N, C, H, W) -> (N, F, OH, OW), checking that the kernel fits."""
        N, C, H, W = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if C != self.in_channels:
            raise ValueError(f"{self!r}: expected {self.in_channels} input channels, got "
                             f"input of shape {tuple(in_shape)} with {C}")
        if H + 2 * ph < kh or W + 2 * pw < kw:
            raise ValueError(f"{self!r}: input of shape {tuple(in_shape)} is smaller than the "
                             f"kernel {self.kernel_size} (padding {self.padding}); the "
                             f"padded input must be at least {kh - 2 * ph}x{kw - 2 * pw}")
        return N, self.out_channels, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1

    def forward(self, x):
        check_array(self, x, 4)
        if x.dtype != self.dtype:
            raise ValueError(f"{self!r}: input is {x.dtype} but the layer is {self.dtype}; "
                             f"cast the input or build the layer with dtype={x.dtype}")
        N, F, OH, OW = self.output_shape(x.shape)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        K = self.in_channels * kh * kw
        if self._cols is None or self._cols.shape != (N, K, OH * OW) \
                or self._cols.dtype != x.dtype:
            self._cols = np.empty((N, K, OH * OW), dtype=x.dtype)
        cols = im2col(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, self._cols)
        w2 = self.params["weight"].reshape(F, K)
        y = np.matmul(w2, cols)                   # (F, K) @ (N, K, P) -> (N, F, P)
        if "bias" in self.params:
            y += self.params["bias"][:, None]     # broadcast over N and P
        self._cache = (x.shape, cols) if self.training else None
        return y.reshape(N, F, OH, OW)

    def backward(self, grad_out, need_grad_in=True):
        """dL/dy (N, F, OH, OW) -> dL/dx (N, C, H, W); adds dL/dW, dL/db into grads.

        ``need_grad_in=False`` skips col2im and returns None: the first layer of a network
        never needs the gradient of its input images.
        """
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, cols = self._cache
        N, F, OH, OW = self.output_shape(x_shape)
        check_grad(self, grad_out, (N, F, OH, OW), self.dtype)
        self._cache = None                 # each forward serves one backward
        K = cols.shape[1]
        g = np.ascontiguousarray(grad_out).reshape(N, F, OH * OW)        # (N, F, P)
        # dL/dW2 = sum_n g[n] @ cols[n].T: one matmul over the (n, p) pairs
        self.grads["weight"] += np.tensordot(g, cols, axes=([0, 2], [0, 2])).reshape(
            self.params["weight"].shape)                                  # (F, K)
        if "bias" in self.params:
            self.grads["bias"] += g.sum(axis=(0, 2))                      # (F,)
        if not need_grad_in:
            return None
        w2 = self.params["weight"].reshape(F, K)
        grad_cols = np.matmul(w2.T, g)                                    # (N, K, P)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        grad_in = np.empty(x_shape, dtype=self.dtype)
        return col2im(grad_cols, kh, kw, sh, sw, ph, pw, grad_in)         # (N, C, H, W)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s
