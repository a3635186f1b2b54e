"""Conv2d: a 2-D cross-correlation as im2col + one matrix multiply per sample.

Forward, for sample n, filter f and output position p = (oh, ow)::

    y[n, f, p] = b[f] + sum_{c,i,j} W[f, c, i, j] * x[n, c, oh*s - pad + i, ow*s - pad + j]

im2col gathers every receptive field of x into a column, so the sum becomes a matmul:
``cols`` (N, K, P) with K = C*kh*kw, ``y = W2 @ cols`` with W2 = W.reshape(F, K).  When the
kernel covers the whole unpadded input (P = 1, LeNet-5's conv3) a sample's one column is
the sample itself, and the N products (F, K) @ (K, 1) are one product (N, K) @ (K, F):
the same sums, no im2col, one call to the matrix multiply.

Backward, with g = dL/dy reshaped to (N, F, P)::

    dL/dW2 = sum_n g[n] @ cols[n].T          (F, K)
    dL/db  = sum_{n,p} g[n, :, p]            (F,)
    dL/dcols = W2.T @ g[n]                   (N, K, P)  then  dL/dx = col2im(dL/dcols)

col2im ADDS: a pixel that sits in several receptive fields was used several times, so its
gradient is the sum over those uses.  docs/layers/conv.md derives each line.

Inside a model's forward a Conv2d followed by a ReLU and a 2x2 max-pool runs as one fused
kernel instead (``fuse=True``, the default; npnet/fusion.py, docs/layers/fused.md).
"""
from __future__ import annotations

import numpy as np

from ..kernels.im2col import col2im, im2col
from .base import (Module, add_grad, check_array, check_dtype, check_grad, float_dtype,
                   from_weight, no_cache_error, out_size, positive_int, uniform_init,
                   window_arg)


class Conv2d(Module):
    """2-D convolution (cross-correlation, kernels not flipped), as torch.nn.Conv2d.

    Args:
        in_channels (int): C, channels of the input.
        out_channels (int): F, number of filters.
        kernel_size (int or pair): (kh, kw).
        stride (int or pair): default 1.
        padding (int or pair): zeros added on each side, default 0.
        bias (bool): learn a per-filter bias, default True.
        dtype: np.float32 (default) or np.float64, for the parameters and the input.
        rng (np.random.Generator): source of the initial weights; if None, the enclosing
            ``npnet.nn.init_generator`` block's, else a fresh unseeded one.
        fuse (bool): may run fused with a following ReLU and 2x2 max-pool inside a model's
            forward (default True; npnet/fusion.py).

    Shape:
        input (N, C, H, W) -> output (N, F, OH, OW), with
        OH = floor((H + 2*padding[0] - kh) / stride[0]) + 1, likewise OW.

    Attributes:
        weight: (F, C, kh, kw), U(-1/sqrt(C*kh*kw), 1/sqrt(C*kh*kw)) as torch.
        bias: (F,), same distribution (None if ``bias=False``).
        in_channels, out_channels, kernel_size: read from the weight's shape.
    """

    can_skip_grad_in = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, *, dtype=np.float32, rng=None, fuse=True):
        super().__init__()
        C = positive_int("Conv2d", "in_channels", in_channels)
        F = positive_int("Conv2d", "out_channels", out_channels)
        kh, kw = window_arg("Conv2d", "kernel_size", kernel_size, 1)
        self.stride, self.padding = stride, padding
        dtype = float_dtype("Conv2d", dtype)
        fan_in = C * kh * kw
        self.register_parameter("weight", uniform_init(rng, (F, C, kh, kw), fan_in, dtype))
        self.register_parameter("bias", uniform_init(rng, (F,), fan_in, dtype)
                                if bias else None)
        self.fuse = bool(fuse)

    # the layer's shape is its weight's: one source of truth
    in_channels = from_weight("in_channels", 1)
    out_channels = from_weight("out_channels", 0)
    kernel_size = from_weight("kernel_size", slice(2, None))
    dtype = property(lambda self: self.params["weight"].dtype, lambda self, dt: self.to(dt),
                     doc="the parameters' dtype; assigning one converts them (as .to())")

    @property
    def stride(self):
        return self._stride

    @stride.setter
    def stride(self, v):
        self._stride = window_arg("Conv2d", "stride", v, 1)

    @property
    def padding(self):
        return self._padding

    @padding.setter
    def padding(self, v):
        self._padding = window_arg("Conv2d", "padding", v, 0)

    def output_shape(self, in_shape):
        """(N, C, H, W) -> (N, F, OH, OW), checking that the kernel fits."""
        N, C, H, W = in_shape
        F, C_w, kh, kw = self.params["weight"].shape
        (sh, sw), (ph, pw) = self._stride, self._padding
        if C != C_w:
            raise ValueError(f"{self!r}: expected {C_w} input channels, got "
                             f"input of shape {tuple(in_shape)} with {C}")
        if H + 2 * ph < kh or W + 2 * pw < kw:
            raise ValueError(f"{self!r}: input of shape {tuple(in_shape)} is smaller than the "
                             f"kernel {self.kernel_size} (padding {self.padding}); the "
                             f"padded input must be at least {kh - 2 * ph}x{kw - 2 * pw}")
        return N, F, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)

    def forward(self, x):
        check_array(self, x, 4)
        w, b = self.params["weight"], self.params.get("bias")
        check_dtype(self, x, w)
        N, F, OH, OW = self.output_shape(x.shape)
        (kh, kw), (sh, sw), (ph, pw) = w.shape[2:], self.stride, self.padding
        K = w[0].size                                     # C*kh*kw, one column's length
        x = np.ascontiguousarray(x)
        w2 = w.reshape(F, K)
        if OH * OW == 1 and (ph, pw) == (0, 0):
            # the kernel covers the whole input: each sample's one column is the sample
            # itself, and the N products (F, K) @ (K, 1) are one (N, K) @ (K, F)
            cols = x.reshape(N, K, 1)                                 # (N, K, 1), no copy
            y = (cols[:, :, 0] @ w2.T)[:, :, None]                    # (N, F, 1)
        else:
            cols = im2col(x, kh, kw, sh, sw, ph, pw, np.empty((N, K, OH * OW), x.dtype))
            y = np.matmul(w2, cols)               # (F, K) @ (N, K, P) -> (N, F, P)
        if b is not None:
            y += b[:, None]                       # broadcast over N and P
        self._cache = (x.shape, cols, w, b is not None, self.stride, self.padding) \
            if self.training else None
        return y.reshape(N, F, OH, OW)

    def backward(self, grad_out, need_grad_in=True):
        """dL/dy (N, F, OH, OW) -> dL/dx (N, C, H, W); adds dL/dW, dL/db into grads.

        ``need_grad_in=False`` skips col2im and returns None: the first layer of a network
        never needs the gradient of its input images.
        """
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, cols, w, has_bias, (sh, sw), (ph, pw) = self._cache  # as forward saw them
        (N, K, P), (F, _, kh, kw) = cols.shape, w.shape
        check_grad(self, grad_out, (N, F, out_size(x_shape[2], kh, sh, ph),
                                    out_size(x_shape[3], kw, sw, pw)), w.dtype)
        self._cache = None                 # each forward serves one backward
        g = np.ascontiguousarray(grad_out).reshape(N, F, P)              # (N, F, P)
        w2 = w.reshape(F, K)
        if P == 1:
            dw2 = g[:, :, 0].T @ cols[:, :, 0]                            # (F, N) @ (N, K)
        else:   # dL/dW2 = sum_n g[n] @ cols[n].T: one matmul over the (n, p) pairs
            dw2 = np.tensordot(g, cols, axes=([0, 2], [0, 2]))            # (F, K)
        add_grad(self, "weight", dw2.reshape(w.shape))
        if has_bias:
            add_grad(self, "bias", g.sum(axis=(0, 2)))                    # (F,)
        if not need_grad_in:
            return None
        if P == 1:
            grad_cols = (g[:, :, 0] @ w2)[:, :, None]                     # (N, K, 1)
            if (ph, pw) == (0, 0):            # the columns were the input itself
                return grad_cols.reshape(x_shape)
        else:
            grad_cols = np.matmul(w2.T, g)                                # (N, K, P)
        grad_in = np.empty(x_shape, dtype=w.dtype)
        return col2im(grad_cols, kh, kw, sh, sw, ph, pw, grad_in)         # (N, C, H, W)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        if not self.fuse:
            s += ", fuse=False"
        return s
