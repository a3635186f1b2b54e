"""im2col and col2im as Numba kernels: the data movement around a convolution's matmul.

Layout (see ``reference.py`` for the index convention): the columns of a run of samples
are stored weight position first, ``cols[k, n, p]``, (C*kh*kw, N, OH*OW).  Sample n's
column matrix is the slice ``cols[:, n, :]`` (K, P), and the whole run's
``cols.reshape(K, N*P)`` is one matrix, for the one product (F, K) @ (K, N*P) that
Conv2d makes per chunk (``layers/conv.py``).

Each kernel first copies one sample into a zero-padded buffer, so that the loops that
follow read every window in full, with no test for the border: the padding reads as 0
(im2col), and its share of the gradient is dropped with the buffer's border (col2im).

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
def im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols):
    """Fill ``cols`` (C*kh*kw, N, OH*OW) from ``x`` (N, C, H, W); padding reads as 0."""
    N, C, H, W = x.shape
    xp = np.zeros((C, H + 2 * ph, W + 2 * pw), x.dtype)   # one sample, zero-padded
    for n in range(N):
        xp[:, ph:ph + H, pw:pw + W] = x[n]
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oh in range(OH):
                        h, base = oh * sh + i, oh * OW
                        for ow in range(OW):
                            cols[row, n, base + ow] = xp[c, h, ow * sw + j]
    return cols


@njit(cache=True, nogil=True)
def col2im(cols, kh, kw, sh, sw, ph, pw, OH, OW, x):
    """Overwrite ``x`` (N, C, H, W) with the sum of the column entries of each pixel.

    The adjoint of im2col: a pixel read by several receptive fields gets the sum of their
    gradients; entries that fell in the padding are dropped.
    """
    N, C, H, W = x.shape
    xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
    for n in range(N):
        xp[:] = 0
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oh in range(OH):
                        h, base = oh * sh + i, oh * OW
                        for ow in range(OW):
                            xp[c, h, ow * sw + j] += cols[row, n, base + ow]
        x[n] = xp[:, ph:ph + H, pw:pw + W]          # the padding's share is dropped
    return x
