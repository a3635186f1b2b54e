"""MaxPool2d, AvgPool2d and AdaptiveAvgPool2d: windows over each (sample, channel) plane.

Max:  y = max over the window;  dL/dx = dL/dy at the pixel that won the window, 0 elsewhere
      (the winner is the first maximum, as in torch; only its index is kept for backward).
Avg:  y = sum over the window / (kh*kw);  dL/dx = dL/dy / (kh*kw) at every pixel of the
      window.  Zero padding counts in the divisor, torch's default (count_include_pad=True).
Overlapping windows (stride < kernel) add their contributions.  docs/layers/maxpool.md and
docs/layers/avgpool.md derive both.  AdaptiveAvgPool2d chooses its windows from the output
size (global average pooling at size 1), docs/layers/adaptive_avgpool.md.
"""
from __future__ import annotations

import numpy as np

from ..kernels.pool import avgpool_backward, avgpool_forward, maxpool2x2_backward, \
    maxpool2x2_forward, maxpool_backward, maxpool_forward
from ..kernels.geometry import adaptive_bins
from .base import Module, check_array, check_grad, no_cache_error, out_size, window_arg


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self._kernel_size = self._stride = self._padding = None
        self.kernel_size = kernel_size
        self.stride = self.kernel_size if stride is None else stride
        self.padding = padding

    # validated on every assignment: a pool changed after a forward takes effect or refuses
    @property
    def kernel_size(self):
        return self._kernel_size

    @kernel_size.setter
    def kernel_size(self, v):
        k = window_arg(type(self).__name__, "kernel_size", v, 1)
        self._check_padding(k, self._padding)
        self._kernel_size = k

    @property
    def stride(self):
        return self._stride

    @stride.setter
    def stride(self, v):
        self._stride = window_arg(type(self).__name__, "stride", v, 1)

    @property
    def padding(self):
        return self._padding

    @padding.setter
    def padding(self, v):
        p = window_arg(type(self).__name__, "padding", v, 0)
        self._check_padding(self._kernel_size, p)
        self._padding = p

    def _check_padding(self, k, p):
        if k is not None and p is not None and any(2 * a > b for a, b in zip(p, k)):
            raise ValueError(f"{type(self).__name__}: padding {p} must be at most half the "
                             f"kernel size {k} (as in torch)")

    def output_shape(self, in_shape):
        N, C, H, W = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self._kernel_size, self._stride, self._padding
        if H + 2 * ph < kh or W + 2 * pw < kw:
            raise ValueError(f"{self!r}: input of shape {tuple(in_shape)} is smaller than the "
                             f"window {self.kernel_size} (padding {self.padding})")
        return N, C, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)

    def _geometry(self):
        return (*self._kernel_size, *self._stride, *self._padding)

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}"
        return s + (f", padding={self.padding}" if self.padding != (0, 0) else "")


class MaxPool2d(_Pool2d):
    """Max pooling, as torch.nn.MaxPool2d (dilation 1, floor mode).

    Args:
        kernel_size (int or pair), stride (int or pair, default kernel_size),
        padding (int or pair, default 0; implicit -inf, at most kernel_size/2).

    Shape:
        (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2*padding - kh) / stride) + 1.
    """

    def forward(self, x):
        check_array(self, x, 4)
        out_shape = self.output_shape(x.shape)
        geometry = self._geometry()
        y = np.empty(out_shape, dtype=x.dtype)
        argmax = np.empty(out_shape, dtype=np.int32)   # winner's index i*kw + j per window
        if geometry == (2, 2, 2, 2, 0, 0):             # the usual case: an unrolled kernel
            maxpool2x2_forward(np.ascontiguousarray(x), y, argmax)
        else:
            maxpool_forward(np.ascontiguousarray(x), *geometry, y, argmax)
        self._cache = (x.shape, x.dtype, argmax, geometry) if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, dtype, argmax, geometry = self._cache
        check_grad(self, grad_out, argmax.shape, dtype)
        self._cache = None                 # each forward serves one backward
        grad_in = np.empty(x_shape, dtype=grad_out.dtype)
        if geometry == (2, 2, 2, 2, 0, 0):
            return maxpool2x2_backward(np.ascontiguousarray(grad_out), argmax, grad_in)
        return maxpool_backward(np.ascontiguousarray(grad_out), argmax, *geometry, grad_in)


class AvgPool2d(_Pool2d):
    """Average pooling, as torch.nn.AvgPool2d with its defaults (count_include_pad=True).

    Args:
        kernel_size (int or pair), stride (int or pair, default kernel_size),
        padding (int or pair, default 0; zeros, counted in the divisor kh*kw).

    Shape:
        (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2*padding - kh) / stride) + 1.
    """

    def forward(self, x):
        check_array(self, x, 4)
        y = np.empty(self.output_shape(x.shape), dtype=x.dtype)
        geometry = self._geometry()
        avgpool_forward(np.ascontiguousarray(x), *geometry, y)
        self._cache = (x.shape, x.dtype, y.shape, geometry) if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, dtype, y_shape, geometry = self._cache
        check_grad(self, grad_out, y_shape, dtype)
        self._cache = None                 # each forward serves one backward
        grad_in = np.empty(x_shape, dtype=grad_out.dtype)
        return avgpool_backward(np.ascontiguousarray(grad_out), *geometry, grad_in)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, as torch.nn.AdaptiveAvgPool2d.

    Output (i, j) averages the input rows floor(i*H/OH) .. ceil((i+1)*H/OH) - 1 and the
    columns likewise (``kernels.geometry.adaptive_bins``); ``AdaptiveAvgPool2d(1)`` is
    global average pooling, y[n, c] = mean over H and W of x[n, c].  Backward spreads each
    output's gradient evenly over its window: dL/dx = dL/dy / (window size), summed where
    windows overlap.

    Args:
        output_size (int or pair; an entry None keeps that input dimension).

    Shape:
        (N, C, H, W) -> (N, C, OH, OW).
    """

    def __init__(self, output_size):
        super().__init__()
        size = (output_size, output_size) if not isinstance(output_size, (tuple, list)) \
            else tuple(output_size)
        if len(size) != 2 or any(s is not None and (
                not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1)
                for s in size):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be a positive int or a "
                             f"pair of positive ints (or None), got {output_size!r}")
        self.output_size = tuple(None if s is None else int(s) for s in size)

    def _bins(self, H, W):
        OH, OW = (H if o is None else o for o, H in zip(self.output_size, (H, W)))
        return adaptive_bins(H, OH), adaptive_bins(W, OW)

    def forward(self, x):
        check_array(self, x, 4)
        N, C, H, W = x.shape
        rows, cols = self._bins(H, W)
        if len(rows) == len(cols) == 1:                # global average pooling
            y = x.mean(axis=(2, 3), keepdims=True)                     # (N, C, 1, 1)
        else:
            y = np.empty((N, C, len(rows), len(cols)), dtype=x.dtype)
            for i, (h0, h1) in enumerate(rows):
                for j, (w0, w1) in enumerate(cols):
                    y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        self._cache = (x.shape, x.dtype) if self.training else None
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise no_cache_error(self)
        x_shape, dtype = self._cache
        N, C, H, W = x_shape
        rows, cols = self._bins(H, W)
        check_grad(self, grad_out, (N, C, len(rows), len(cols)), dtype)
        self._cache = None                 # each forward serves one backward
        grad_in = np.zeros(x_shape, dtype=dtype)
        for i, (h0, h1) in enumerate(rows):
            for j, (w0, w1) in enumerate(cols):
                area = (h1 - h0) * (w1 - w0)           # each of its pixels got 1/area
                grad_in[:, :, h0:h1, w0:w1] += grad_out[:, :, i, j, None, None] / area
        return grad_in

    def extra_repr(self):
        size = self.output_size
        return f"output_size={size[0] if size[0] == size[1] else size}"
