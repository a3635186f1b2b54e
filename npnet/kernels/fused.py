"""Fused kernels: convolution + bias + ReLU + 2x2 max-pool, a few samples per task; and
the same convolution alone (``conv_forward``, ``conv_backward``: Conv2d of stride 1 or 2,
whose input then goes in as its phases, ``_at``).

The layers in ``npnet/layers`` run one operation per call (im2col, matmul, ReLU, pool),
each a pass over a batch-sized array in memory.  These kernels do the whole block for
a chunk of S samples while its arrays sit in the core's cache, with ``prange`` over the
chunks: a thread writes only its own chunks' outputs (no races), and the chunks are
fixed by S, not by the threads, so every value is computed by the same operations
whatever the thread count.  The S samples are laid side by side, sharing their zero
padding (each takes Wq columns, about W + pw: ``row_layout``), and go through each matmul
together: longer rows, faster loops (S from ``chunk_size``).

**No im2col.**  Pad the samples into ``xp`` (C, Hp, Wc), Wc = S*Wq + Wt, and read it as one
flat array.  Compute the output on the padded width ("wide" positions p' = oh*Wc + ow,
with ow < Wc instead of OW): the receptive-field entry (c, i, j) of position p' is then
``xp[c*Hp*Wc + i*Wc + j + p']``, so row k = (c, i, j) of the column matrix is the
contiguous slice ``xp[off[k] : off[k] + L]`` and the matmul reads it in place::

    z[f, p'] = b[f] + sum_k W2[f, k] * xp[off[k] + p']        (F, L)
    L = (OH - 1)*Wc + (S - 1)*Wq + OW   (the extra entries per row are never used)

Forward (one chunk)::   y = maxpool2x2(relu(z))  (F, OH//2, OW//2) + the winner index
ReLU then max-pool equals max-pool then ReLU: the maximum of relu(z) over a window is
relu(max z), and its gradient reaches the first maximum of z only when that maximum is
> 0 (elsewhere relu's derivative is 0).  So only ``y``, an int8 index and ``xp`` (the
chunks as padded, written to ``xps`` for the backward) are kept.

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

import types

import numpy as np
from numba import njit, prange

from .geometry import out_size

_FM = {"contract", "reassoc"}


# -- per-sample helpers (serial; called inside the prange loops) -----------------------------
@njit(cache=True, nogil=True, inline="always")
def _copy(src, s0, dst, d0, n):
    """dst[d0 : d0 + n] = src[s0 : s0 + n], for flat arrays.

    The indices are unsigned on purpose.  Numba lets a signed index count from the end
    when it is negative, so ``dst[d0 + i]`` carries a test that LLVM cannot remove and
    the loop stays scalar; a slice assignment instead makes two array views, about 40 ns.
    With unsigned indices the loop is vectorised: a row of 14 copies 2.3x faster.
    """
    a, b = np.uint64(s0), np.uint64(d0)
    for i in range(np.uint64(n)):
        dst[b + i] = src[a + i]


@njit(cache=True, nogil=True, inline="always")
def _copy_step(src, s0, ss, dst, d0, ds, n):
    """dst[d0 + i*ds] = src[s0 + i*ss] for i < n, flat arrays: ``_copy`` with steps, for
    the columns of one phase (unsigned indices, as there)."""
    a, b, u, v = np.uint64(s0), np.uint64(d0), np.uint64(ss), np.uint64(ds)
    for i in range(np.uint64(n)):
        dst[b + i * v] = src[a + i * u]


@njit(cache=True, nogil=True, inline="always")
def _at(c, r, g, sh, sw, Hs, Ws):
    """Where pixel (row r, column g) of channel c of a chunk's padded rows lies in xp: in
    phase plane (c, r % sh, g % sw), Hs rows of Ws, at row r // sh, column g // sw.  With
    stride 1 there is one plane a channel, and this is (c*Hs + r)*Ws + g."""
    return (((c * sh + r % sh) * sw + g % sw) * Hs + r // sh) * Ws + g // sw


@njit(cache=True, nogil=True)
def _pad_chunk(x, n0, S, ph, pw, sh, sw, Hs, Wq, Wc, xp):
    """Flat xp <- samples n0..n0+S-1 side by side, each zero-padded: sample s's columns
    start at s*Wq + pw of the chunk's rows (``row_layout``), and pixel (r, g) of those
    rows goes where ``_at`` says (the phases of stride (sh, sw)).

    x must be C-contiguous.  The border (and the gaps between samples) must already be
    zero.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    _move_rows(x.reshape(x.size), xp, C, H, W, n0, S, ph, pw, sh, sw, Hs, Wq, Wc, False)


@njit(cache=True, nogil=True)
def _move_rows(src, dst, C, H, W, n0, S, ph, pw, sh, sw, Hs, Wq, Wc, unpad):
    """Every row of W pixels of samples n0..n0+S-1 between flat (N, C, H, W) and its place
    in the padded chunk (``_at``): into the chunk (src is x, dst xp), or out of it when
    ``unpad`` (src the chunk, dst x), the one walk ``_pad_chunk`` and ``_grad_input`` share."""
    Ws = Wc // sw
    for s in range(S):
        g0 = s * Wq + pw                                   # the sample's first column
        for c in range(C):
            for h in range(H):
                e = (((n0 + s) * C + c) * H + h) * W       # the row in x
                if sw == 1:                                # one run of W
                    d = _at(c, h + ph, g0, sh, 1, Hs, Ws)
                    _copy(src, d if unpad else e, dst, e if unpad else d, W)
                    continue
                for w0 in range(min(sw, W)):               # every sw-th column per phase
                    d, n = _at(c, h + ph, g0 + w0, sh, sw, Hs, Ws), (W - w0 + sw - 1) // sw
                    if unpad:
                        _copy_step(src, d, 1, dst, e + w0, sw, n)
                    else:
                        _copy_step(src, e + w0, sw, dst, d, 1, n)


@njit(cache=True, nogil=True, fastmath=_FM)
def _gemm_shift(a, xp, off, L, z, zoff):
    """z[zoff[m] : zoff[m] + L] += (a @ B)[m] for every row m of a (M, K), row k of B being
    xp[off[k] : off[k] + L]; z is flat.

    The forward's z rows lie one after the other (zoff[m] = m * row length); dL/dx's
    product adds its rows straight into dL/dxp at their offsets (``_gemm_tn_shift_acc``).
    Rows of z computed in one pass (4, then 2, consecutive ones) must not overlap: the
    loop is vectorised only where LLVM's run-time check finds them apart.
    """
    M, K = a.shape
    M4, K4 = M - M % 4, K - K % 4
    for m in range(0, M4, 4):                      # 4 rows x 4 terms per pass over L
        z0 = z[zoff[m]:zoff[m] + L]; z1 = z[zoff[m + 1]:zoff[m + 1] + L]
        z2 = z[zoff[m + 2]:zoff[m + 2] + L]; z3 = z[zoff[m + 3]:zoff[m + 3] + L]
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
        z0 = z[zoff[m]:zoff[m] + L]; z1 = z[zoff[m + 1]:zoff[m + 1] + L]
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
        z0 = z[zoff[m]:zoff[m] + L]
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
def _gemm_tn_shift_acc(at, g, off, L, C, dxp):
    """dxp[off[k] : off[k] + L] += (at @ g)[k] for every k: the matmul and col2im in one.

    at (K, M) is W2.T with its rows in the order (i, j, c) (``grad_input_weights``), and
    off their offsets in that order (``_grad_offsets``); g (M, >= L) (its first L columns
    are used).  Each row of the product is added straight into dxp, never written on its
    own.  Each row's slice of dxp lies inside its channel's padded plane (or phase plane,
    ``_at``: it starts at its tap's offset in the plane and ends by the plane's end, as
    the last row's ends at dxp's), and in that order the rows computed in one pass of
    ``_gemm_shift`` (4 or 2 consecutive ones) belong to as many channels when C >= 4:
    their slices never overlap.  With fewer channels the rows of one (i, j), C at a time,
    are multiplied alone.
    """
    K, M = at.shape
    rows = np.arange(M) * g.shape[1]                         # where each row of g starts
    gf = g.reshape(g.size)
    step = K if C >= 4 else C
    for k0 in range(0, K, step):
        _gemm_shift(at[k0:k0 + step], gf, rows, L, dxp, off[k0:k0 + step])


@njit(cache=True, nogil=True, fastmath=_FM)
def _grad_input(w2t, gz, off, L, ph, pw, sh, sw, Hs, Wq, Wc, n0, Sc, grad_in):
    """grad_in[n0 : n0 + Sc] = dL/dx of one chunk, from gz (F, L) = dL/dz on its wide
    positions: dL/dxp = the rows of W2.T @ gz added at their offsets, then each sample's
    unpadded part of dL/dxp, read back by ``_move_rows`` (the padding's share is dropped,
    as in col2im).  w2t and off in the order (i, j, c) (``_gemm_tn_shift_acc``)."""
    C, H, W = grad_in.shape[1], grad_in.shape[2], grad_in.shape[3]
    dxp = np.zeros(C * sh * Hs * Wc, dtype=gz.dtype)       # dL/dxp
    _gemm_tn_shift_acc(w2t, gz, off, L, C, dxp)            # (K, F) @ (F, L), added at off
    _move_rows(dxp, grad_in.reshape(grad_in.size), C, H, W, n0, Sc, ph, pw, sh, sw, Hs, Wq, Wc,
               True)


@njit(cache=True, nogil=True)
def _grad_offsets(off, C, kh, kw):
    """``_offsets``' entries in the order (i, j, c), the rows of ``grad_input_weights``."""
    out = np.empty_like(off)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                out[(i * kw + j) * C + c] = off[(c * kh + i) * kw + j]
    return out


@njit(cache=True, nogil=True)
def _offsets(C, kh, kw, sh, sw, Hs, Ws):
    """off[k] for k = (c*kh + i)*kw + j: where row k of the column matrix starts in xp,
    the place of tap (i, j) of the chunk's first window (``_at``)."""
    off = np.empty(C * kh * kw, dtype=np.int64)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                off[(c * kh + i) * kw + j] = _at(c, i, j, sh, sw, Hs, Ws)
    return off


@njit(cache=True, nogil=True, inline="always")
def _chunk(ci, S, N, C, kh, kw, sh, sw, Hs, Wq, Wt, OH, OW, off_full, xps):
    """Chunk ci of a batch of N in chunks of S: its first sample n0, its size Sc (the last
    chunk may be shorter), its rows' width Wc = Sc*Wq + Wt, the L wide positions its product
    computes (rows of Wc // sw in the phase planes of stride (sh, sw), Hs rows each), the
    row offsets (off_full's unless the chunk is shorter) and its padded samples, row ci
    of xps."""
    n0 = ci * S
    Sc = min(S, N - n0)
    Wc = Sc * Wq + Wt
    L = (OH - 1) * (Wc // sw) + (Sc - 1) * (Wq // sw) + OW
    off = off_full if Sc == S else _offsets(C, kh, kw, sh, sw, Hs, Wc // sw)
    return n0, Sc, Wc, L, off, xps[ci, :C * sh * Hs * Wc]


# -- the 2x2 max-pool of z: a whole plane in one loop (training), two passes (eval) ---------
# Window (qh, j) of output row qh covers rows 2*qh, 2*qh + 1 and columns 2j, 2j + 1 of the
# wide rows of z: its top left value is zf[2*(qh*Wc + j)].  With q = qh*Wc + j its four
# values are zf[2q], zf[2q + 1], zf[2q + Wc], zf[2q + Wc + 1], for every q below
# PH*Wc - Wc//2: one flat loop, which LLVM vectorizes (8 windows an instruction).  The q
# with j >= Wc//2 pair rows 2*qh + 1 and 2*qh + 2; they are computed for nothing and never
# read, so twice the windows are computed, which pays: a loop over one row (31 windows for
# conv1) is shorter than LLVM's vector body of 32 and ran scalar.  Pooled row qh is thus
# yw[qh*Wc : qh*Wc + Wc//2].  A window's values in torch's order are 0 = top left,
# 1 = top right, 2 = bottom left, 3 = bottom right; the first maximum wins, and a NaN
# beats any number (torch's rule).  The indices are unsigned, as in ``_copy``.  Eval mode
# keeps no winners and pools in two passes of half the windows (``_pool_columns_max``):
# without the int8 winners the short rows' scalar ends cost less than twice the windows.
@njit(cache=True, nogil=True, inline="always")
def _beats(later, earlier):
    """Does ``later`` take the window from ``earlier``, met before it? (larger, or NaN)"""
    return (later > earlier) | ((later != later) & (earlier == earlier))


@njit(cache=True, nogil=True)
def _pool(zf, Wc, PH, yw, aw):
    """yw[q] = relu of the first maximum of window q (above) and aw[q] its index 0..3,
    for the PH rows of windows of one filter's zf (OH >= 2*PH rows of Wc)."""
    zero = yw.dtype.type(0)
    W, one, two = np.uint64(Wc), np.uint64(1), np.uint64(2)
    for q in range(np.uint64(PH * Wc - Wc // 2)):
        t = two * q
        best, a = zf[t], np.int32(0)
        for c, i in ((zf[t + one], 1), (zf[t + W], 2), (zf[t + W + one], 3)):
            wins = _beats(c, best)
            best, a = (c, np.int32(i)) if wins else (best, a)
        yw[q] = best if ((best > 0) | (best != best)) else zero
        aw[q] = np.int8(a)


@njit(cache=True, nogil=True)
def _pool_columns_max(zf, Wc, PH, v):
    """Eval mode's pool (no backward reads the winners), in two passes: v[qh*Wc + p] = the
    first maximum of zf[2*qh*Wc + p] and zf[(2*qh + 1)*Wc + p], down the columns; then
    ``_pool_pairs_max`` across the pairs.  The same rule as ``_pool``, so the same values;
    without the winners these two passes are faster than ``_pool``'s one loop (see there)."""
    for qh in range(PH):
        top = zf[2 * qh * Wc:(2 * qh + 1) * Wc]
        low = zf[(2 * qh + 1) * Wc:(2 * qh + 2) * Wc]
        vr = v[qh * Wc:(qh + 1) * Wc]
        for p in range(Wc):
            vr[p] = low[p] if _beats(low[p], top[p]) else top[p]


@njit(cache=True, nogil=True)
def _pool_pairs_max(v, yw):
    """yw[qh*(Wc//2) + j] = relu of the first maximum of the column winners v[2j], v[2j + 1]
    of row qh.  Where two values tie they are equal (or both NaN, or +0 and -0, which the
    ReLU makes +0 alike), so whichever is kept, yw is the same bit for bit as ``_pool``'s."""
    zero = yw.dtype.type(0)
    for j in range(yw.shape[0]):
        a, b = v[2 * j], v[2 * j + 1]
        best = b if _beats(b, a) else a
        yw[j] = best if ((best > 0) | (best != best)) else zero


# -- the batch kernels ---------------------------------------------------------------------
@njit(cache=True, parallel=True, nogil=True)
def conv_relu_pool_forward(x, w2, b, kh, kw, ph, pw, OH, OW, S, y, arg, xps):
    """x (N, C, H, W), w2 (F, K), b (F,) -> y (N, F, OH//2, OW//2) and arg int8 (same shape,
    or (0, F, OH//2, OW//2) when no backward will read it, in eval mode: then only y).

    Convolution with stride 1 and zero padding (ph, pw), bias, ReLU, then a 2x2 max-pool
    of stride 2 (floor mode).  (OH, OW) is the convolution's output size, from the
    caller (``geometry.out_size``): a cached kernel calls no Numba function of another
    file, whose changes its cache would not see (``warm.py``).  arg is the winner's index
    2*i + j in its window: the first maximum of z, as torch's max-pool picks it (NaN
    wins, as in torch).  S samples are laid side by side and computed as one (chunks of
    n = c*S ... c*S + S - 1).  Each chunk's padded samples are written to its row of xps
    (``padded_shape``), which the backward reads: the input itself is not needed again.
    """
    N, C, H, W = x.shape
    F = w2.shape[0]
    Hp, (Wq, Wt) = H + 2 * ph, _layout(W, pw, OW, 1)
    PH, PW = y.shape[2], y.shape[3]
    off_full = _offsets(C, kh, kw, 1, 1, Hp, S * Wq + Wt)  # for the chunks of S samples
    winners = arg.shape[0] > 0                             # training: backward reads them
    yf, af = y.reshape(y.size), arg.reshape(arg.size)      # flat views, for _copy
    for ci in prange((N + S - 1) // S):
        n0, Sc, Wc, L, off, xp = _chunk(ci, S, N, C, kh, kw, 1, 1, Hp, Wq, Wt, OH, OW, off_full,
                                        xps)
        xp[:] = 0
        z = np.empty((F, OH * Wc), dtype=x.dtype)          # OH whole rows of Wc
        yw = np.empty(PH * Wc, dtype=x.dtype)              # pooled: rows of Wc (``_pool``)
        aw = np.empty(PH * Wc, dtype=np.int8)              # or of Wc // 2 (eval mode)
        v = np.empty(PH * Wc, dtype=x.dtype)               # eval: the column winners
        pitch = Wc if winners else Wc // 2
        _pad_chunk(x, n0, Sc, ph, pw, 1, 1, Hp, Wq, Wc, xp)
        for f in range(F):
            z[f, :] = b[f]
        _gemm_shift(w2, xp, off, L, z.reshape(z.size), np.arange(F) * z.shape[1])
        for f in range(F):                                 # (F, K) @ (K, L) above
            if winners:                                    # (tested outside the pool's
                _pool(z[f], Wc, PH, yw, aw)                # loop, which must vectorise:
            else:                                          # each variant is its own loop)
                _pool_columns_max(z[f], Wc, PH, v)
                _pool_pairs_max(v, yw[:PH * Wc // 2])
            for s in range(Sc):                            # keep each sample's windows
                for qh in range(PH):
                    j = qh * pitch + s * (Wq // 2)
                    d = (((n0 + s) * F + f) * PH + qh) * PW    # y[n0 + s, f, qh, 0]
                    _copy(yw, j, yf, d, PW)
                    if winners:
                        _copy(aw, j, af, d, PW)
    return y, arg


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def conv_relu_pool_backward(xps, w2t, kh, kw, ph, pw, OH, OW, S, grad_out, y, arg, dw_c,
                            db_n, grad_in, need_grad_in):
    """Gradients of conv_relu_pool_forward, per chunk of S samples.

    xps: the padded chunks the forward wrote.  grad_out, y, arg (N, F, PH, PW) -> dw_c
    (ceil(N/S), F, K), one weight gradient per chunk, and db_n (N, F), which the caller
    sums in order; if need_grad_in, grad_in (N, C, H, W) is overwritten with dL/dx (else
    it is (0, C, H, W): its shape still gives the input's).  w2t is the forward's W as
    ``grad_input_weights`` lays it out, a contiguous (K, F) array; (OH, OW) the
    convolution's output size, as for the forward.
    """
    N = y.shape[0]
    C, H, W = grad_in.shape[1], grad_in.shape[2], grad_in.shape[3]
    F = w2t.shape[1]
    Hp, (Wq, Wt) = H + 2 * ph, _layout(W, pw, OW, 1)
    PH, PW = y.shape[2], y.shape[3]
    zero = grad_out.dtype.type(0)
    off_full = _offsets(C, kh, kw, 1, 1, Hp, S * Wq + Wt)
    for ci in prange((N + S - 1) // S):
        n0, Sc, Wc, L, off, xp = _chunk(ci, S, N, C, kh, kw, 1, 1, Hp, Wq, Wt, OH, OW, off_full,
                                        xps)
        gz = np.zeros((F, L), dtype=y.dtype)               # dL/dz
        # gz: each window's gradient goes to its winner, where the window's max was > 0
        for s in range(Sc):
            n = n0 + s
            for f in range(F):
                gzf = gz[f]
                t = zero
                for qh in range(PH):
                    gr, yr, ar = grad_out[n, f, qh], y[n, f, qh], arg[n, f, qh]
                    row = 2 * qh * Wc + s * Wq                 # the window's top left cell
                    for qw in range(PW):
                        # a select, not a branch: where the output is 0 the window's
                        # gradient is 0 (relu), written at its winner all the same
                        g = gr[qw] if yr[qw] > 0 else zero
                        a = ar[qw]                             # 2*i + j
                        gzf[row + (a >> 1) * Wc + 2 * qw + (a & 1)] = g
                        t += g
                db_n[n, f] = t
        _gemm_nt_shift(gz, xp, off, L, dw_c[ci])           # (F, L) @ (L, K) -> (F, K)
        if need_grad_in:
            _grad_input(w2t, gz, _grad_offsets(off, C, kh, kw), L, ph, pw, 1, 1, Hp, Wq, Wc,
                        n0, Sc, grad_in)
    return dw_c, db_n, grad_in


# -- the convolution alone (Conv2d): the same product, no ReLU, no pool; any stride ---------
@njit(cache=True, parallel=True, nogil=True)
def conv_forward(x, w2, b, kh, kw, sh, sw, ph, pw, OH, OW, S, y, xps):
    """x (N, C, H, W), w2 (F, K), b (F,) -> y (N, F, OH, OW): a convolution of stride
    (sh, sw) with zero padding (ph, pw), by the shifted product of
    ``conv_relu_pool_forward``, whose z is y on the wide positions: each sample's OW
    outputs of row oh start at ``oh*(Wc // sw) + s*(Wq // sw)``.

    A stride of 2 (or more) lays each channel's padded rows out as its sh*sw phases (rows
    r with the same r % sh, columns g with the same g % sw; ``_at``): tap (i, j) of window
    (oh, ow) is pixel (oh*sh + i, ow*sw + j), row oh + i // sh and column ow + j // sw of
    phase (i % sh, j % sw), so row k of the columns is again one contiguous slice, and the
    product is the stride-1 one on the phase planes, C*kh*kw rows as before.  The chunks'
    padded samples go to ``xps`` for the backward."""
    N, C, H, W = x.shape
    F = w2.shape[0]
    Hs, (Wq, Wt) = (H + 2 * ph + sh - 1) // sh, _layout(W, pw, OW, sw)
    off_full = _offsets(C, kh, kw, sh, sw, Hs, (S * Wq + Wt) // sw)
    yf = y.reshape(y.size)                                 # flat, for _copy
    for ci in prange((N + S - 1) // S):
        n0, Sc, Wc, L, off, xp = _chunk(ci, S, N, C, kh, kw, sh, sw, Hs, Wq, Wt, OH, OW,
                                        off_full, xps)
        xp[:] = 0
        _pad_chunk(x, n0, Sc, ph, pw, sh, sw, Hs, Wq, Wc, xp)
        z = np.empty((F, L), dtype=x.dtype)
        for f in range(F):
            z[f, :] = b[f]
        zf = z.reshape(z.size)
        _gemm_shift(w2, xp, off, L, zf, np.arange(F) * L)  # (F, K) @ (K, L)
        for s in range(Sc):                                # the wide rows' real outputs
            for f in range(F):
                for oh in range(OH):
                    _copy(zf, f * L + oh * (Wc // sw) + s * (Wq // sw), yf,
                          (((n0 + s) * F + f) * OH + oh) * OW, OW)
    return y


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def conv_backward(xps, w2t, kh, kw, sh, sw, ph, pw, OH, OW, S, grad_out, dw_c, grad_in,
                  need_grad_in):
    """Gradients of conv_forward per chunk of S samples: grad_out (N, F, OH, OW) -> dw_c
    (ceil(N/S), F, K), one weight gradient per chunk, which the caller sums in order, and,
    if need_grad_in, dL/dx into grad_in (N, C, H, W) (else (0, C, H, W), for its shape).
    w2t: W as ``grad_input_weights`` lays it out."""
    N, F = grad_out.shape[0], grad_out.shape[1]
    C, H, W = grad_in.shape[1], grad_in.shape[2], grad_in.shape[3]
    Hs, (Wq, Wt) = (H + 2 * ph + sh - 1) // sh, _layout(W, pw, OW, sw)
    off_full = _offsets(C, kh, kw, sh, sw, Hs, (S * Wq + Wt) // sw)
    gf = grad_out.reshape(grad_out.size)                   # flat, for _copy
    for ci in prange((N + S - 1) // S):
        n0, Sc, Wc, L, off, xp = _chunk(ci, S, N, C, kh, kw, sh, sw, Hs, Wq, Wt, OH, OW,
                                        off_full, xps)
        gz = np.zeros((F, L), dtype=grad_out.dtype)        # dL/dz on the wide positions,
        gzf = gz.reshape(gz.size)                          # 0 where no output is
        for s in range(Sc):
            for f in range(F):
                for oh in range(OH):
                    _copy(gf, (((n0 + s) * F + f) * OH + oh) * OW, gzf,
                          f * L + oh * (Wc // sw) + s * (Wq // sw), OW)
        _gemm_nt_shift(gz, xp, off, L, dw_c[ci])           # (F, L) @ (L, K) -> (F, K)
        if need_grad_in:
            _grad_input(w2t, gz, _grad_offsets(off, C, kh, kw), L, ph, pw, sh, sw, Hs, Wq,
                        Wc, n0, Sc, grad_in)
    return dw_c, grad_in


# -- one task, one thread: the same four kernels without the thread pool ---------------------
def _serial(kernel):
    """``kernel`` compiled again without ``parallel=True``: its ``prange`` is a plain loop,
    run on the calling thread, and nothing else changes.

    A parallel kernel starts every thread of Numba's pool and returns when all of them
    are done, even those that have no chunk.  A worker that has gone to sleep waits for
    the operating system to run it again: with another training job on the machine, a
    one-image forward (one chunk) one millisecond after the last took 3-4 ms (90th
    percentile 16 ms) instead of 0.4 (docs/performance.md).  Without the pool the
    kernel is also about 3 us faster.  The twin is a copy of the function under another
    name, so that Numba's cache (keyed by the function's name and line) keeps the two
    compilations apart.
    """
    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial",
                              f.__defaults__, f.__closure__)
    twin.__qualname__ = twin.__name__
    twin.__doc__ = f"{f.__name__} on the calling thread alone (``_serial``)."
    return njit(cache=True, nogil=True, fastmath=kernel.targetoptions.get("fastmath", False))(
        twin)


conv_relu_pool_forward_serial = _serial(conv_relu_pool_forward)
conv_relu_pool_backward_serial = _serial(conv_relu_pool_backward)
conv_forward_serial = _serial(conv_forward)
conv_backward_serial = _serial(conv_backward)


def tasks(N, S):
    """The number of chunks of S samples, the kernels' tasks, in a batch of N: the layers
    call a kernel's ``_serial`` twin when it is 1."""
    return -(-N // S)


def grad_input_weights(w):
    """W (F, C, kh, kw) as dL/dx's product reads it: (kh*kw*C, F), row (i*kw + j)*C + c
    being W[:, c, i, j] (``_gemm_tn_shift_acc`` says why that order); a contiguous copy,
    which the caller's later changes to W do not reach."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, w.shape[0])


def row_layout(W, pw, OW, sw=1):
    """(Wq, Wt): how a chunk lays its samples side by side, for a convolution of stride sw
    across.  Sample s's padded columns start at s*Wq, and Wt zero columns follow the
    last: a chunk of S samples has rows of S*Wq + Wt.

    Neighbours share their zero padding: the pw zeros after a sample are the pw zeros
    before the next, so Wq needs only W + pw columns, the sample and one side's padding.
    Wq is at least sw*OW too, so that a sample's outputs do not run into the next one's
    (when pw > kw - 1).  Wt is what the last sample's right padding needs beyond Wq.
    Both are rounded up to even, so that every sample's 2x2 windows start at an even
    column of the chunk's rows (the fused kernels' pool), and to a multiple of sw, so
    that every sample starts in the same phase (``conv_forward``).
    """
    m = sw if sw % 2 == 0 else 2 * sw                   # even, and a multiple of sw
    Wq = max(W + pw, sw * OW)
    Wq += (m - Wq % m) % m
    Wt = max(0, W + 2 * pw - Wq)
    return Wq, Wt + (m - Wt % m) % m


_layout = njit(cache=True, nogil=True)(row_layout)      # the same, for the kernels


def padded_shape(x_shape, kw, ph, pw, S, stride=(1, 1)):
    """The shape of ``xps`` for an input of ``x_shape``, a kernel kw wide and ``stride``:
    one row per chunk of S samples, holding the chunk's C padded planes of H + 2*ph rows
    of the S samples side by side (``row_layout``), as their sh*sw phases of
    ceil((H + 2*ph) / sh) rows (``_at``)."""
    (N, C, H, W), (sh, sw) = x_shape, stride
    Wq, Wt = row_layout(W, pw, out_size(W, kw, sw, pw), sw)
    return (tasks(N, S), C * sh * -(-(H + 2 * ph) // sh) * (S * Wq + Wt))


def chunk_size(H, W, kh, kw, ph, pw, target=1800, stride=(1, 1)):
    """Samples per task: as many side by side (1 to 8) as keep a matmul row within
    ``target`` positions (conv1's rows of 892 go 2 to a task, conv2's of 136 go 8).

    Long rows keep the vectorised loops efficient and spread each task's fixed costs
    over more samples.  The target was measured with the kernels timed in turns at
    several S (docs/performance.md): from 600 (conv1 1, conv2 4) to 1800, conv1's forward
    became 10% faster, conv2's forward and backward 7-9%, the ResNet's 14x14 convolutions
    (2 -> 8) 7-10%; 8 is the cap because 12 and 16 were no faster.  Results depend on S
    (it sets which partial sums are formed) but not on the thread count.
    """
    sh, sw = stride
    OW = out_size(W, kw, sw, pw)
    Wq, Wt = row_layout(W, pw, OW, sw)
    L = (out_size(H, kh, sh, ph) - 1) * ((Wq + Wt) // sw) + OW  # one sample's row length
    return max(1, min(8, target // L))
