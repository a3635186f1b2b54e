"""Conv2d: a 2-D cross-correlation as matrix products, in one of three ways by shape.

Forward, for sample n, filter f and output position p = (oh, ow)::

    y[n, f, p] = b[f] + sum_{c,i,j} W[f, c, i, j] * x[n, c, oh*s - pad + i, ow*s - pad + j]

im2col gathers every receptive field of x into a column, so the sum becomes a matmul:
the columns U_n (K, P) of sample n, K = C*kh*kw, and ``y[n] = W2 @ U_n`` with
W2 = W.reshape(F, K).  The batch goes through in chunks of a few samples, whose columns
fit in a core's cache, run at once on npnet's threads (``kernels/chunks.py``); a chunk's
columns are stored (K, S, P), so that its S products are ONE product (F, K) @ (K, S*P),
wide enough for OpenBLAS to run near its speed even where a sample has few positions;
the backward rebuilds each chunk's columns from x instead of keeping them (9x the
input's size for a 3x3 kernel).

Two shapes take a shorter road to the same sums:

* the kernel covers the whole unpadded input (LeNet-5's conv3): a sample's one column is
  the sample itself, and the N products (F, K) @ (K, 1) are one product (N, K) @ (K, F);
* stride 1 or 2 on maps of at least 32 positions (``shifted_product``): no im2col at
  all.  Row (c, i, j) of U_n is then a contiguous run of the zero-padded sample (with
  stride 2, of one of its four phases: its even or odd rows times its even or odd
  columns), read in place by the shifted product of the fused kernels
  (``kernels/fused.py``, docs/layers/fused.md), which runs here without the ReLU and the
  pool.

Backward, with g = dL/dy reshaped to (N, F, P)::

    dL/dW2 = sum_n g[n] @ U_n.T              (F, K)
    dL/db  = sum_{n,p} g[n, :, p]            (F,)
    dL/dU_n = W2.T @ g[n]                    (K, P)  then  dL/dx = col2im(dL/dU)

col2im ADDS: a pixel that sits in several receptive fields was used several times, so its
gradient is the sum over those uses.  docs/layers/conv.md derives each line.

Inside a model's forward a Conv2d followed by a ReLU and a 2x2 max-pool runs as one fused
kernel instead (``fuse=True``, the default; npnet/fusion.py, docs/layers/fused.md).
"""
from __future__ import annotations

import numpy as np

from ..kernels import fused as shifted
from ..kernels.chunks import chunk_size, run_chunks
from ..kernels.im2col import col2im, im2col
from .base import (Module, add_grad, check_array, check_dtype, check_grad, float_dtype,
                   from_weight, no_cache_error, out_size, positive_int, uniform_init,
                   window_arg)


def shifted_product(stride, P):
    """Whether a convolution runs as the shifted product (no im2col) rather than im2col
    and one product per chunk: for strides of 1 or 2, where each row of the columns is a
    run of the padded sample or of one of its phases, on maps of at least 32 output
    positions.  On smaller maps the shifted product's rows are short (a 4x4 map: 22
    positions a sample, 6 of them padding) and im2col's one product is faster.  Measured
    inside the ResNet's training step at batch 128 (docs/performance.md, "The ResNet"):
    its 7x7 convolution (P = 49) took 14 ms shifted and 21 ms by im2col, its 4x4 one
    (P = 16) 25 and 22 ms.  Its stride-2 convolutions onto 7x7 took 0.65-0.68 of
    im2col's time through the phases, the 3x3 one onto 4x4 1.01-1.04 ("Stride 2 through
    the phases").  A larger stride would leave most of each phase plane unread."""
    return max(stride) <= 2 and P >= 32


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
        K, P = w[0].size, OH * OW                # a column's length C*kh*kw, its count
        x = np.ascontiguousarray(x)
        w2 = w.reshape(F, K)
        xps = None
        if x.shape[2:] == (kh, kw) and (ph, pw) == (0, 0):
            # the kernel covers the whole input: each sample's one column is the sample
            # itself, and the N products (F, K) @ (K, 1) are one (N, K) @ (K, F).  (P = 1
            # alone is not enough: a stride may leave rows or columns that no window reads)
            y = (x.reshape(N, K) @ w2.T)[:, :, None]                  # (N, F, 1)
        elif shifted_product((sh, sw), P):
            # the shifted product on the padded samples: the fused layer's kernel without
            # its ReLU and pool (docs/layers/fused.md)
            S = shifted.chunk_size(*x.shape[2:], kh, kw, ph, pw, stride=(sh, sw))
            xps = np.empty(shifted.padded_shape(x.shape, kw, ph, pw, S, (sh, sw)), x.dtype)
            kernel = shifted.conv_forward if shifted.tasks(N, S) > 1 \
                else shifted.conv_forward_serial              # one chunk: no thread pool
            y = kernel(x, w2, np.zeros(F, x.dtype), kh, kw, sh, sw, ph, pw, OH, OW, S,
                       np.empty((N, F, OH, OW), x.dtype), xps)
            y = y.reshape(N, F, P)
        else:
            y = np.empty((N, F, P), x.dtype)

            def chunk(i, s):     # a few samples: their columns, then one product
                S = s.stop - s.start
                cols = im2col(x[s], kh, kw, sh, sw, ph, pw, OH, OW,
                              np.empty((K, S, P), x.dtype))                 # (K, S, P)
                z = w2 @ cols.reshape(K, S * P)                              # (F, S*P)
                y[s] = z.reshape(F, S, P).transpose(1, 0, 2)                 # (S, F, P)
            run_chunks(chunk, N, chunk_size(K * P * x.itemsize, N))
        if b is not None:
            y += b[:, None]                       # broadcast over N and P
        # backward rebuilds the columns from x (Chainer's choice): 9x less to keep; the
        # shifted product reads the padded copy xps instead
        self._cache = (x, xps, w, b is not None, self.stride, self.padding) \
            if self.training else None
        return y.reshape(N, F, OH, OW)

    def backward(self, grad_out, need_grad_in=True):
        """dL/dy (N, F, OH, OW) -> dL/dx (N, C, H, W); adds dL/dW, dL/db into grads.

        ``need_grad_in=False`` skips col2im and returns None: the first layer of a network
        never needs the gradient of its input images.
        """
        if self._cache is None:
            raise no_cache_error(self)
        x, xps, w, has_bias, (sh, sw), (ph, pw) = self._cache   # as the forward saw them
        (N, C, H, W), (F, _, kh, kw) = x.shape, w.shape
        OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
        K, P = C * kh * kw, OH * OW
        check_grad(self, grad_out, (N, F, OH, OW), w.dtype)
        self._cache = None                 # each forward serves one backward
        g = np.ascontiguousarray(grad_out).reshape(N, F, P)              # (N, F, P)
        w2 = w.reshape(F, K)
        if has_bias:
            add_grad(self, "bias", g.sum(axis=(0, 2)))                    # (F,)
        if (H, W) == (kh, kw) and (ph, pw) == (0, 0):    # the columns are the samples
            add_grad(self, "weight", (g[:, :, 0].T @ x.reshape(N, K)).reshape(w.shape))
            return (g[:, :, 0] @ w2).reshape(x.shape) if need_grad_in else None
        # both roads: dL/dW2 of each chunk, summed in chunk order; dL/dx if asked for
        S = shifted.chunk_size(H, W, kh, kw, ph, pw, stride=(sh, sw)) if xps is not None \
            else chunk_size(K * P * x.itemsize, N)
        T = shifted.tasks(N, S)                          # chunks of S samples, either road
        dw_chunks = np.empty((T, F, K), w.dtype)
        grad_in = np.empty(x.shape if need_grad_in else (0, C, H, W), w.dtype)
        if xps is not None:                              # the shifted product
            kernel = shifted.conv_backward if T > 1 \
                else shifted.conv_backward_serial             # one chunk: no thread pool
            kernel(xps, shifted.grad_input_weights(w), kh, kw, sh, sw, ph, pw, OH, OW, S,
                   g.reshape(N, F, OH, OW), dw_chunks, grad_in, need_grad_in)
        else:
            def chunk(i, s):
                n = s.stop - s.start
                cols = im2col(x[s], kh, kw, sh, sw, ph, pw, OH, OW,
                              np.empty((K, n, P), x.dtype)).reshape(K, n * P)  # (K, n*P)
                gs = np.ascontiguousarray(g[s].transpose(1, 0, 2)).reshape(F, n * P)
                # dL/dW2 = sum_n g[n] @ U_n.T: one product over the chunk's n*P positions
                np.matmul(gs, cols.T, out=dw_chunks[i])                      # (F, K)
                if need_grad_in:
                    grad_cols = np.matmul(w2.T, gs, out=cols)                # (K, n*P)
                    col2im(grad_cols.reshape(K, n, P), kh, kw, sh, sw, ph, pw, OH, OW,
                           grad_in[s])                                       # (n, C, H, W)
            run_chunks(chunk, N, S)
        add_grad(self, "weight", dw_chunks.sum(axis=0).reshape(w.shape))   # in chunk order
        return grad_in if need_grad_in else None

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
