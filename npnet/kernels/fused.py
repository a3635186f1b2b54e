"""Fused kernels: convolution + bias + ReLU + 2x2 max-pool, a few samples per task.

The layers in ``npnet/layers`` run one operation per call (im2col, matmul, ReLU, pool),
each a pass over a batch-sized array in memory.  These kernels do the whole block for
a chunk of S samples while its arrays sit in the core's cache, with ``prange`` over the
chunks: a thread writes only its own chunks' outputs (no races), and the chunks are
fixed by S, not by the threads, so every value is computed by the same operations
whatever the thread count.  The S samples are laid side by side (width S*Wp) and go
through each matmul together: longer rows, faster loops (S from ``chunk_size``).

**No im2col.**  Pad the sample into ``xp`` (C, Hp, Wp) and read it as one flat array.
Compute the output on the padded width ("wide" positions p' = oh*Wp + ow, with
ow < Wp instead of OW): the receptive-field entry (c, i, j) of position p' is then
``xp[c*Hp*Wp + i*Wp + j + p']``, so row k = (c, i, j) of the column matrix is the
contiguous slice ``xp[off[k] : off[k] + L]`` and the matmul reads it in place::

    z[f, p'] = b[f] + sum_k W2[f, k] * xp[off[k] + p']        (F, L)
    L = (OH - 1)*Wp + OW   (the Wp - OW extra entries per row are never used)

Forward (one chunk)::   y = maxpool2x2(relu(z))  (F, OH//2, OW//2) + the winner index
ReLU then max-pool equals max-pool then ReLU: the maximum of relu(z) over a window is
relu(max z), and its gradient reaches the first maximum of z only when that maximum is
> 0 (elsewhere relu's derivative is 0).  So only ``y`` and an int8 index are kept.

Backward (one chunk), with gz (F, L) = dL/dz, nonzero only at winners where y > 0::

    dW_c[f, k] = sum_p' gz[f, p'] * xp[off[k] + p']      per chunk, summed over chunks
    db_n[f]    = sum_p' gz[f, p']                        (per sample) by the caller
    dxp[off[k] + p'] += sum_f W2[f, k] * gz[f, p']       col2im is the += at the offsets

The loops are blocked (4 rows x 4 terms) with the innermost loop over contiguous p',
which LLVM vectorizes.  ``fastmath`` is limited to 'contract' (fused multiply-add) and
'reassoc' (vectorized sums): results differ from the unfused layers only by rounding
(tests/layers/test_fused.py), and are identical run to run and for any thread count.
Reference implementations: ``reference.py`` (conv_relu_pool_forward_ref, ...).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .geometry import out_size

_FM = {"contract", "reassoc"}


# -- per-sample helpers (serial; called inside the prange loops) -----------------------------
@njit(cache=True, nogil=True)
def _pad_chunk(x, n0, S, ph, pw, xp):
    """Flat xp (C, Hp, S*Wp) <- samples n0..n0+S-1 side by side, each zero-padded.

    The border (and the gaps between samples) must already be zero.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Wc = S * Wp
    for s in range(S):
        for c in range(C):
            for h in range(H):
                src = x[n0 + s, c, h]
                base = (c * Hp + h + ph) * Wc + s * Wp + pw
                for w in range(W):
                    xp[base + w] = src[w]


@njit(cache=True, nogil=True, fastmath=_FM)
def _gemm_shift(a, xp, off, L, z):
    """z (M, L) += a (M, K) @ B, row k of B being xp[off[k] : off[k] + L]."""
    M, K = a.shape
    M4, K4 = M - M % 4, K - K % 4
    for m in range(0, M4, 4):                      # 4 rows x 4 terms per pass over L
        z0 = z[m]; z1 = z[m + 1]; z2 = z[m + 2]; z3 = z[m + 3]
        for k in range(0, K4, 4):
            b0 = xp[off[k]:off[k] + L]; b1 = xp[off[k + 1]:off[k + 1] + L]
            b2 = xp[off[k + 2]:off[k + 2] + L]; b3 = xp[off[k + 3]:off[k + 3] + L]
            a00 = a[m, k]; a01 = a[m, k + 1]; a02 = a[m, k + 2]; a03 = a[m, k + 3]
            a10 = a[m + 1, k]; a11 = a[m + 1, k + 1]; a12 = a[m + 1, k + 2]; a13 = a[m + 1, k + 3]
            a20 = a[m + 2, k]; a21 = a[m + 2, k + 1]; a22 = a[m + 2, k + 2]; a23 = a[m + 2, k + 3]
            a30 = a[m + 3, k]; a31 = a[m + 3, k + 1]; a32 = a[m + 3, k + 2]; a33 = a[m + 3, k + 3]
            for p in range(L):
                v0 = b0[p]; v1 = b1[p]; v2 = b2[p]; v3 = b3[p]
                z0[p] += a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3
                z1[p] += a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3
                z2[p] += a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3
                z3[p] += a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3
        for k in range(K4, K):
            b0 = xp[off[k]:off[k] + L]
            a00 = a[m, k]; a10 = a[m + 1, k]; a20 = a[m + 2, k]; a30 = a[m + 3, k]
            for p in range(L):
                v0 = b0[p]
                z0[p] += a00 * v0
                z1[p] += a10 * v0
                z2[p] += a20 * v0
                z3[p] += a30 * v0
    M2 = M4
    if M - M4 >= 2:                                # 2 leftover rows (conv1's 6 = 4 + 2):
        M2 += 2                                    # each slice of xp read once for both
        m = M4
        z0 = z[m]; z1 = z[m + 1]
        for k in range(0, K4, 4):
            b0 = xp[off[k]:off[k] + L]; b1 = xp[off[k + 1]:off[k + 1] + L]
            b2 = xp[off[k + 2]:off[k + 2] + L]; b3 = xp[off[k + 3]:off[k + 3] + L]
            a00 = a[m, k]; a01 = a[m, k + 1]; a02 = a[m, k + 2]; a03 = a[m, k + 3]
            a10 = a[m + 1, k]; a11 = a[m + 1, k + 1]; a12 = a[m + 1, k + 2]; a13 = a[m + 1, k + 3]
            for p in range(L):
                v0 = b0[p]; v1 = b1[p]; v2 = b2[p]; v3 = b3[p]
                z0[p] += a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3
                z1[p] += a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3
        for k in range(K4, K):
            b0 = xp[off[k]:off[k] + L]
            a00 = a[m, k]; a10 = a[m + 1, k]
            for p in range(L):
                v0 = b0[p]
                z0[p] += a00 * v0
                z1[p] += a10 * v0
    for m in range(M2, M):                         # a last row: 1 row x 4 terms
        z0 = z[m]
        for k in range(0, K4, 4):
            b0 = xp[off[k]:off[k] + L]; b1 = xp[off[k + 1]:off[k + 1] + L]
            b2 = xp[off[k + 2]:off[k + 2] + L]; b3 = xp[off[k + 3]:off[k + 3] + L]
            a00 = a[m, k]; a01 = a[m, k + 1]; a02 = a[m, k + 2]; a03 = a[m, k + 3]
            for p in range(L):
                z0[p] += a00 * b0[p] + a01 * b1[p] + a02 * b2[p] + a03 * b3[p]
        for k in range(K4, K):
            b0 = xp[off[k]:off[k] + L]
            a00 = a[m, k]
            for p in range(L):
                z0[p] += a00 * b0[p]


@njit(cache=True, nogil=True, fastmath=_FM)
def _gemm_nt_shift(g, xp, off, L, dw):
    """dw (M, K) = g (M, L) @ B.T, row k of B being xp[off[k] : off[k] + L].

    Dot products over L, 2 rows x 4 columns at a time: 8 independent sums keep the FMA
    units busy while each load serves 2 or 4 of them.
    """
    M = g.shape[0]
    K = off.shape[0]
    M2, K4 = M - M % 2, K - K % 4
    zero = g.dtype.type(0)                  # sums in the arrays' own dtype
    for m in range(0, M2, 2):
        g0 = g[m]; g1 = g[m + 1]
        for k in range(0, K4, 4):
            b0 = xp[off[k]:off[k] + L]; b1 = xp[off[k + 1]:off[k + 1] + L]
            b2 = xp[off[k + 2]:off[k + 2] + L]; b3 = xp[off[k + 3]:off[k + 3] + L]
            s00 = zero; s01 = zero; s02 = zero; s03 = zero
            s10 = zero; s11 = zero; s12 = zero; s13 = zero
            for p in range(L):
                u = g0[p]; v = g1[p]
                x0 = b0[p]; x1 = b1[p]; x2 = b2[p]; x3 = b3[p]
                s00 += u * x0; s01 += u * x1; s02 += u * x2; s03 += u * x3
                s10 += v * x0; s11 += v * x1; s12 += v * x2; s13 += v * x3
            dw[m, k] = s00; dw[m, k + 1] = s01; dw[m, k + 2] = s02; dw[m, k + 3] = s03
            dw[m + 1, k] = s10; dw[m + 1, k + 1] = s11
            dw[m + 1, k + 2] = s12; dw[m + 1, k + 3] = s13
        for k in range(K4, K):
            b0 = xp[off[k]:off[k] + L]
            s00 = zero; s10 = zero
            for p in range(L):
                s00 += g0[p] * b0[p]
                s10 += g1[p] * b0[p]
            dw[m, k] = s00; dw[m + 1, k] = s10
    for m in range(M2, M):
        g0 = g[m]
        for k in range(K):
            b0 = xp[off[k]:off[k] + L]
            s00 = zero
            for p in range(L):
                s00 += g0[p] * b0[p]
            dw[m, k] = s00


@njit(cache=True, nogil=True, fastmath=_FM)
def _gemm_tn_shift_acc(at, g, off, L, dcols, dxp):
    """dxp[off[k] : off[k] + L] += (at @ g)[k] for every k: the matmul, then col2im.

    at (K, M) is W2.T, g (M, L); dcols (K, L) is scratch.  The product runs in the
    blocked kernel (g's rows at offsets m*L of g flattened); the shifted adds follow.
    """
    K, M = at.shape
    rows = np.arange(M) * L
    dcols[:] = 0
    _gemm_shift(at, g.reshape(M * L), rows, L, dcols)        # (K, M) @ (M, L)
    for k in range(K):
        d = dxp[off[k]:off[k] + L]
        src = dcols[k]
        for p in range(L):
            d[p] += src[p]


@njit(cache=True, nogil=True)
def _offsets(C, kh, kw, Hp, Wp):
    """off[k] for k = (c*kh + i)*kw + j: where row k of the column matrix starts in xp."""
    off = np.empty(C * kh * kw, dtype=np.int64)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                off[(c * kh + i) * kw + j] = (c * Hp + i) * Wp + j
    return off


# -- the batch kernels ---------------------------------------------------------------------
@njit(cache=True, parallel=True, nogil=True)
def conv_relu_pool_forward(x, w2, b, kh, kw, ph, pw, S, y, arg):
    """x (N, C, H, W), w2 (F, K), b (F,) -> y (N, F, OH//2, OW//2) and arg int8 (same shape).

    Convolution with stride 1 and zero padding (ph, pw), bias, ReLU, then a 2x2 max-pool
    of stride 2 (floor mode).  arg is the winner's index 2*i + j in its window: the first
    maximum of z, as torch's max-pool picks it (NaN wins, as in torch).  S samples are
    laid side by side and computed as one (chunks of n = c*S ... c*S + S - 1).
    """
    N, C, H, W = x.shape
    F = w2.shape[0]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    OH, OW = out_size(H, kh, 1, ph), out_size(W, kw, 1, pw)
    PH, PW = y.shape[2], y.shape[3]
    off_full = _offsets(C, kh, kw, Hp, S * Wp)             # for the chunks of S samples
    for ci in prange((N + S - 1) // S):
        n0 = ci * S
        Sc = min(S, N - n0)                                # samples in this chunk
        Wc = Sc * Wp
        L = (OH - 1) * Wc + (Sc - 1) * Wp + OW
        off = off_full if Sc == S else _offsets(C, kh, kw, Hp, Wc)
        xp = np.zeros(C * Hp * Wc, dtype=x.dtype)          # scratch, per chunk
        z = np.empty((F, L), dtype=x.dtype)
        _pad_chunk(x, n0, Sc, ph, pw, xp)
        for f in range(F):
            z[f, :] = b[f]
        _gemm_shift(w2, xp, off, L, z)                     # (F, K) @ (K, L)
        for s in range(Sc):
            n = n0 + s
            for f in range(F):
                zf = z[f, s * Wp:]                         # sample s's columns onwards
                yf = y[n, f]
                af = arg[n, f]
                for qh in range(PH):
                    top = 2 * qh * Wc
                    bot = top + Wc
                    for qw in range(PW):
                        best, k = _first_max4(zf[top + 2 * qw], zf[top + 2 * qw + 1],
                                              zf[bot + 2 * qw], zf[bot + 2 * qw + 1])
                        yf[qh, qw] = best if (best > 0 or best != best) else 0
                        af[qh, qw] = k
    return y, arg


@njit(cache=True, nogil=True, inline="always")
def _first_max4(a, b, c, d):
    """The first maximum of a 2x2 window (a b / c d) and its index 0..3, as torch picks it.

    Written with selects, not branches: which value wins is data-dependent, and a
    mispredicted branch per window cost more than the comparisons.  The first NaN wins
    (torch's rule), on the rare path.
    """
    if a != a or b != b or c != c or d != d:
        if a != a:
            return a, 0
        if b != b:
            return b, 1
        if c != c:
            return c, 2
        return d, 3
    right = b > a                       # a tie keeps the earlier value
    top, k_top = (b, 1) if right else (a, 0)
    right = d > c
    low, k_low = (d, 3) if right else (c, 2)
    return (low, k_low) if low > top else (top, k_top)


@njit(cache=True, parallel=True, nogil=True)
def conv_relu_pool_backward(x, w2, w2t, kh, kw, ph, pw, S, grad_out, y, arg, dw_c, db_n,
                            grad_in, need_grad_in):
    """Gradients of conv_relu_pool_forward, per chunk of S samples.

    grad_out, y, arg (N, F, PH, PW) -> dw_c (ceil(N/S), F, K), one weight gradient per
    chunk, and db_n (N, F), which the caller sums in order; if need_grad_in, grad_in
    (N, C, H, W) is overwritten with dL/dx.  w2t is w2.T as a contiguous (K, F) array.
    """
    N, C, H, W = x.shape
    F = w2.shape[0]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    OH, OW = out_size(H, kh, 1, ph), out_size(W, kw, 1, pw)
    PH, PW = y.shape[2], y.shape[3]
    zero = grad_out.dtype.type(0)
    off_full = _offsets(C, kh, kw, Hp, S * Wp)
    for ci in prange((N + S - 1) // S):
        n0 = ci * S
        Sc = min(S, N - n0)
        Wc = Sc * Wp
        L = (OH - 1) * Wc + (Sc - 1) * Wp + OW
        off = off_full if Sc == S else _offsets(C, kh, kw, Hp, Wc)
        xp = np.zeros(C * Hp * Wc, dtype=x.dtype)
        gz = np.zeros((F, L), dtype=x.dtype)
        _pad_chunk(x, n0, Sc, ph, pw, xp)
        # gz: each window's gradient goes to its winner, where the window's max was > 0
        for s in range(Sc):
            n = n0 + s
            for f in range(F):
                gzf = gz[f, s * Wp:]                       # sample s's columns onwards
                yf = y[n, f]
                gf = grad_out[n, f]
                af = arg[n, f]
                t = 0.0
                for qh in range(PH):
                    for qw in range(PW):
                        # a select, not a branch (see _first_max4): where the output is
                        # 0 the window's gradient is 0, written at its winner all the same
                        g = gf[qh, qw] if yf[qh, qw] > 0 else zero
                        a = af[qh, qw]
                        gzf[(2 * qh + a // 2) * Wc + 2 * qw + a % 2] = g
                        t += g
                db_n[n, f] = t
        _gemm_nt_shift(gz, xp, off, L, dw_c[ci])           # (F, L) @ (L, K) -> (F, K)
        if need_grad_in:
            xp[:] = 0                                      # reused as dL/dxp
            dcols = np.empty((w2t.shape[0], L), dtype=x.dtype)
            _gemm_tn_shift_acc(w2t, gz, off, L, dcols, xp)  # (K, F) @ (F, L), added at off
            for s in range(Sc):
                for c in range(C):
                    for h in range(H):
                        base = (c * Hp + h + ph) * Wc + s * Wp + pw
                        dst = grad_in[n0 + s, c, h]
                        for w in range(W):
                            dst[w] = xp[base + w]
    return dw_c, db_n, grad_in


def chunk_size(H, W, kh, kw, ph, pw, target=600):
    """Samples per task: as many side by side (1 to 8) as keep a matmul row within
    ``target`` positions (conv2's rows of 139 go 4 to a task: 556).

    Long rows keep the vectorised loops efficient (LeNet-5: conv1 1, conv2 4).  Results
    depend on it (it sets which partial sums are formed) but not on the thread count.
    """
    Wp = W + 2 * pw
    L = (out_size(H, kh, 1, ph) - 1) * Wp + out_size(W, kw, 1, pw)   # a row's length
    return max(1, min(8, target // L))
