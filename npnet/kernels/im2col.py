"""im2col and col2im as Numba kernels: the data movement around a convolution's matmul.

Layout (see ``reference.py`` for the index convention): columns are per sample,
(N, C*kh*kw, OH*OW), so that ``np.matmul(W (F, C*kh*kw), cols)`` gives (N, F, OH*OW), which
is already NCHW: no transpose after the matmul.

Both kernels run on one thread, over the samples they are given: Conv2d hands each a chunk
of a few samples, and runs the chunks on npnet's threads at once (``chunks.py``).  Samples
are independent, so chunks never write to the same element (col2im's scatter-add stays
race-free without atomics), and the sum each element receives is added in the same order
whatever the thread count.

The output size (OH, OW) comes from the caller (``geometry.out_size``): a cached kernel
calls no Numba function of another file, whose changes its cache would not see
(``warm.py``).
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols):
    """Fill ``cols`` (N, C*kh*kw, OH*OW) from ``x`` (N, C, H, W); padding reads as 0."""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oh in range(OH):
                        h = oh * sh - ph + i
                        base = oh * OW
                        if h < 0 or h >= H:
                            for ow in range(OW):
                                cols[n, row, base + ow] = 0
                            continue
                        for ow in range(OW):
                            w = ow * sw - pw + j
                            if 0 <= w < W:
                                cols[n, row, base + ow] = x[n, c, h, w]
                            else:
                                cols[n, row, base + ow] = 0
    return cols


@njit(cache=True, nogil=True)
def col2im(cols, kh, kw, sh, sw, ph, pw, OH, OW, x):
    """Overwrite ``x`` (N, C, H, W) with the sum of the column entries of each pixel.

    The adjoint of im2col: a pixel read by several receptive fields gets the sum of their
    gradients; entries that fell in the padding are dropped.
    """
    N, C, H, W = x.shape
    for n in range(N):
        x[n] = 0
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oh in range(OH):
                        h = oh * sh - ph + i
                        if h < 0 or h >= H:
                            continue
                        base = oh * OW
                        for ow in range(OW):
                            w = ow * sw - pw + j
                            if 0 <= w < W:
                                x[n, c, h, w] += cols[n, row, base + ow]
    return x
