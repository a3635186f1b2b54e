"""im2col and col2im as Numba kernels: the data movement around a convolution's matmul.

Layout (see ``reference.py`` for the index convention): the columns of a run of samples
are stored weight position first, ``cols[k, n, p]``, (C*kh*kw, N, OH*OW).  Sample n's
column matrix is the slice ``cols[:, n, :]`` (K, P), and the whole run's
``cols.reshape(K, N*P)`` is one matrix, for the one product (F, K) @ (K, N*P) that
Conv2d makes per chunk (``layers/conv.py``).

Each kernel first copies one sample into a zero-padded buffer, so that the loops that
follow read every window in full, with no test for the border: the padding reads as 0
(im2col), and its share of the gradient is dropped with the buffer's border (col2im).
Read as one flat array, the buffer holds row k = (c, i, j) of the sample's columns at
fixed offsets from k's own: one loop of P per row, through a table of P indices (the
shifted product's ``off[k] + p'`` of ``fused.py``, for any stride).  On the ResNet's
maps that is 1.5-2.3 times as fast as a loop per output row (OW long: 4 on a 4x4 map).

Both kernels run on one thread, over the samples they are given: Conv2d hands each a chunk
of a few samples, and runs the chunks on npnet's threads at once (``chunks.py``).  Samples
are independent, so chunks never write to the same element (col2im's scatter-add stays
race-free without atomics), and the sum each element receives is added in the same order
(weight position by weight position) whatever the thread count.

The output size (OH, OW) comes from the caller (``geometry.out_size``): a cached kernel
calls no Numba function of another file, whose changes its cache would not see
(``warm.py``).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _window_starts(OH, OW, sh, sw, Wp):
    """at[p] for output position p = oh*OW + ow: where its window starts in a padded
    plane Wp wide, read as one flat array (the window's top left pixel)."""
    at = np.empty(OH * OW, dtype=np.int64)
    for oh in range(OH):
        for ow in range(OW):
            at[oh * OW + ow] = oh * sh * Wp + ow * sw
    return at


@njit(cache=True, nogil=True)
def im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols):
    """Fill ``cols`` (C*kh*kw, N, OH*OW) from ``x`` (N, C, H, W); padding reads as 0.

    Row k = (c, i, j) of a sample's columns is its zero-padded copy xp read at
    ``off + at[p]``: off = (c*Hp + i)*Wp + j, the offset of tap (c, i, j), plus where
    window p starts.  One loop of P per row, the same index table for every row.
    """
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xp = np.zeros((C, Hp, Wp), x.dtype)                # one sample, zero-padded
    xf = xp.reshape(C * Hp * Wp)
    at = _window_starts(OH, OW, sh, sw, Wp)
    for n in range(N):
        xp[:, ph:ph + H, pw:pw + W] = x[n]
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    off = (c * Hp + i) * Wp + j
                    row = cols[(c * kh + i) * kw + j, n]
                    for p in range(at.shape[0]):
                        row[p] = xf[off + at[p]]
    return cols


@njit(cache=True, nogil=True)
def col2im(cols, kh, kw, sh, sw, ph, pw, OH, OW, x):
    """Overwrite ``x`` (N, C, H, W) with the sum of the column entries of each pixel.

    The adjoint of im2col: a pixel read by several receptive fields gets the sum of their
    gradients (added into a padded copy at the same indices im2col read); entries that
    fell in the padding are dropped with the copy's border.
    """
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xp = np.empty((C, Hp, Wp), x.dtype)
    xf = xp.reshape(C * Hp * Wp)
    at = _window_starts(OH, OW, sh, sw, Wp)
    for n in range(N):
        xp[:] = 0
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    off = (c * Hp + i) * Wp + j
                    row = cols[(c * kh + i) * kw + j, n]
                    for p in range(at.shape[0]):
                        xf[off + at[p]] += row[p]
        x[n] = xp[:, ph:ph + H, pw:pw + W]
    return x
