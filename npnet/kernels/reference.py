"""Reference kernels: plain NumPy loops, written to be obviously right, never fast.

They are the oracle the Numba kernels in ``im2col.py``, ``pool.py``, ``fused.py`` and
``batchnorm.py`` are tested against
(``tests/kernels/``).  Each mirrors one fast kernel's signature and returns a fresh array.
Index conventions (shared with the fast kernels):

* input ``x``: (N, C, H, W); kernel (kh, kw); stride (sh, sw); padding (ph, pw);
  ``OH = out_size(H, kh, sh, ph)``, ``OW = out_size(W, kw, sw, pw)`` (``geometry.py``),
  ``P = OH * OW``.
* columns: (N, C*kh*kw, P); row ``(c*kh + i)*kw + j`` holds input pixel
  ``(c, oh*sh - ph + i, ow*sw - pw + j)`` in column ``oh*OW + ow`` (zero where that pixel
  falls in the padding).  The fast ``im2col`` stores the same entries as (C*kh*kw, N, P),
  weight position first (its docstring says why); the tests transpose one to the other.
"""
from __future__ import annotations

import numpy as np

from .geometry import out_size


def im2col_ref(x, kh, kw, sh, sw, ph, pw):
    """(N, C, H, W) -> columns (N, C*kh*kw, OH*OW): every receptive field as a column."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.zeros((N, C * kh * kw, OH * OW), dtype=x.dtype)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oh in range(OH):
                    for ow in range(OW):
                        cols[:, row, oh * OW + ow] = xp[:, c, oh * sh + i, ow * sw + j]
    return cols


def col2im_ref(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of im2col: columns (N, C*kh*kw, P) -> (N, C, H, W).

    A pixel that sits in several receptive fields receives the SUM of their entries:
    that is the chain rule for a value used more than once.
    """
    N, C, H, W = x_shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oh in range(OH):
                    for ow in range(OW):
                        xp[:, c, oh * sh + i, ow * sw + j] += cols[:, row, oh * OW + ow]
    return xp[:, :, ph:ph + H, pw:pw + W].copy()


def maxpool_forward_ref(x, kh, kw, sh, sw, ph, pw):
    """-> (y (N, C, OH, OW), argmax (N, C, OH, OW) int32: flat index i*kw + j in the window).

    Padding counts as -inf.  Ties go to the first maximum in row-major window order, as
    torch does, so the gradient has one home.
    """
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    arg = np.empty((N, C, OH, OW), dtype=np.int32)
    for oh in range(OH):
        for ow in range(OW):
            win = xp[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw].reshape(N, C, kh * kw)
            arg[:, :, oh, ow] = np.argmax(win, axis=2)  # first maximum on ties
            y[:, :, oh, ow] = np.max(win, axis=2)
    return y, arg


def maxpool_backward_ref(grad_out, argmax, x_shape, kh, kw, sh, sw, ph, pw):
    """Route each output gradient to the input pixel that won its window (summing overlaps)."""
    N, C, H, W = x_shape
    _, _, OH, OW = grad_out.shape
    gp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=grad_out.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    i, j = divmod(int(argmax[n, c, oh, ow]), kw)
                    gp[n, c, oh * sh + i, ow * sw + j] += grad_out[n, c, oh, ow]
    return gp[:, :, ph:ph + H, pw:pw + W].copy()


def avgpool_forward_ref(x, kh, kw, sh, sw, ph, pw):
    """Mean over each window, zero padding counted in the divisor kh*kw (torch's default)."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for oh in range(OH):
        for ow in range(OW):
            win = xp[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw]
            y[:, :, oh, ow] = win.sum(axis=(2, 3)) / (kh * kw)
    return y


def avgpool_backward_ref(grad_out, x_shape, kh, kw, sh, sw, ph, pw):
    """Each window's gradient spreads evenly, 1/(kh*kw) to every pixel it covered."""
    N, C, H, W = x_shape
    _, _, OH, OW = grad_out.shape
    gp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=grad_out.dtype)
    for oh in range(OH):
        for ow in range(OW):
            gp[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw] += (
                grad_out[:, :, oh, ow][:, :, None, None] / (kh * kw))
    return gp[:, :, ph:ph + H, pw:pw + W].copy()


# -- fused blocks (npnet/kernels/fused.py): composed from the references above ---------------
def conv_relu_pool_forward_ref(x, weight, bias, ph, pw):
    """Conv (stride 1, padding (ph, pw)) + bias -> ReLU -> 2x2 max-pool of stride 2.

    -> (y (N, F, OH//2, OW//2), arg (N, F, OH//2, OW//2) int8).  ``arg`` is the first
    maximum of the pre-activation z in each window (index 2*i + j): relu(max z) is the
    window's output, and where it is > 0 its gradient goes to that pixel.
    """
    N = x.shape[0]
    F, C, kh, kw = weight.shape
    OH, OW = out_size(x.shape[2], kh, 1, ph), out_size(x.shape[3], kw, 1, pw)
    cols = im2col_ref(x, kh, kw, 1, 1, ph, pw)                        # (N, K, P)
    z = (weight.reshape(F, -1) @ cols + bias[:, None]).reshape(N, F, OH, OW)
    zmax, arg = maxpool_forward_ref(z, 2, 2, 2, 2, 0, 0)
    y = np.where(zmax > 0, zmax, np.where(np.isnan(zmax), zmax, 0)).astype(x.dtype)
    return y, arg.astype(np.int8)


def conv_relu_pool_backward_ref(x, weight, ph, pw, grad_out, y, arg):
    """Gradients of the block, per sample: -> (dw_n (N, F, K), db_n (N, F), grad_in)."""
    N = x.shape[0]
    F, C, kh, kw = weight.shape
    OH, OW = out_size(x.shape[2], kh, 1, ph), out_size(x.shape[3], kw, 1, pw)
    g = np.where(y > 0, grad_out, 0).astype(grad_out.dtype)          # ReLU's derivative
    gz = maxpool_backward_ref(g, arg, (N, F, OH, OW), 2, 2, 2, 2, 0, 0).reshape(N, F, -1)
    cols = im2col_ref(x, kh, kw, 1, 1, ph, pw)                        # (N, K, P)
    dw_n = gz @ cols.transpose(0, 2, 1)                               # (N, F, K)
    db_n = gz.sum(axis=2)                                             # (N, F)
    grad_cols = weight.reshape(F, -1).T @ gz                          # (N, K, P)
    grad_in = col2im_ref(grad_cols, x.shape, kh, kw, 1, 1, ph, pw)
    return dw_n, db_n, grad_in


def batchnorm_forward_ref(x, weight, bias, eps):
    """Batch statistics over x (N, C, S) per channel -> (y, x_hat, mean, var, inv_std)."""
    mean = x.mean(axis=(0, 2))                                        # (C,)
    var = ((x - mean[:, None]) ** 2).mean(axis=(0, 2))                # (C,), biased
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = (x - mean[:, None]) * inv_std[:, None]                    # (N, C, S)
    return weight[:, None] * x_hat + bias[:, None], x_hat, mean, var, inv_std


def batchnorm_backward_ref(grad_out, x_hat, scale):
    """-> (grad_in, d_beta, d_gamma) for grad_out, x_hat (N, C, S), scale = gamma/std (C,)."""
    M = grad_out.shape[0] * grad_out.shape[2]
    d_beta = grad_out.sum(axis=(0, 2))                                # (C,)
    d_gamma = (grad_out * x_hat).sum(axis=(0, 2))                     # (C,)
    grad_in = scale[:, None] * (grad_out - d_beta[:, None] / M
                                - x_hat * d_gamma[:, None] / M)
    return grad_in, d_beta, d_gamma
