"""Max- and average-pooling kernels in Numba, one (sample, channel) plane per task.

Planes are independent, so parallel loops never share an output element: the backward
scatter-adds are race-free and summed in a fixed order (deterministic results).
Index conventions as in ``reference.py``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, nogil=True)
def maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """y[n,c,oh,ow] = max of the window; argmax = its flat index i*kw + j (first on ties).

    Padding never wins (it counts as -inf); torch requires padding <= kernel/2, so every
    window holds at least one real pixel.
    """
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                best = -np.inf
                best_k = -1
                for i in range(kh):
                    h = oh * sh - ph + i
                    if h < 0 or h >= H or best != best:   # stop at the first NaN
                        continue
                    for j in range(kw):
                        w = ow * sw - pw + j
                        if w < 0 or w >= W:
                            continue
                        v = x[n, c, h, w]
                        # strict '>' keeps the first maximum; 'v != v' lets NaN win, as torch
                        if v > best or best_k < 0 or v != v:
                            best = v
                            best_k = i * kw + j
                            if v != v:
                                break
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_k
    return y, argmax


@njit(cache=True, parallel=True, nogil=True)
def maxpool_backward(grad_out, argmax, kh, kw, sh, sw, ph, pw, grad_in):
    """Overwrite grad_in with each window's gradient routed to its winner (overlaps add)."""
    N, C, H, W = grad_in.shape
    OH, OW = grad_out.shape[2], grad_out.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        grad_in[n, c] = 0
        for oh in range(OH):
            for ow in range(OW):
                k = argmax[n, c, oh, ow]
                h = oh * sh - ph + k // kw
                w = ow * sw - pw + k % kw
                grad_in[n, c, h, w] += grad_out[n, c, oh, ow]
    return grad_in


@njit(cache=True, parallel=True, nogil=True)
def avgpool_forward(x, kh, kw, sh, sw, ph, pw, y):
    """y = window sum / (kh*kw): zero padding counts in the divisor (torch's default)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    inv = 1.0 / (kh * kw)
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                s = 0.0  # accumulate in float64, round once on store
                for i in range(kh):
                    h = oh * sh - ph + i
                    if h < 0 or h >= H:
                        continue
                    for j in range(kw):
                        w = ow * sw - pw + j
                        if 0 <= w < W:
                            s += x[n, c, h, w]
                y[n, c, oh, ow] = s * inv
    return y


@njit(cache=True, parallel=True, nogil=True)
def avgpool_backward(grad_out, kh, kw, sh, sw, ph, pw, grad_in):
    """Overwrite grad_in: every pixel of a window gets grad / (kh*kw); overlaps add."""
    N, C, H, W = grad_in.shape
    OH, OW = grad_out.shape[2], grad_out.shape[3]
    inv = 1.0 / (kh * kw)
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        grad_in[n, c] = 0
        for oh in range(OH):
            for ow in range(OW):
                g = grad_out[n, c, oh, ow] * inv
                for i in range(kh):
                    h = oh * sh - ph + i
                    if h < 0 or h >= H:
                        continue
                    for j in range(kw):
                        w = ow * sw - pw + j
                        if 0 <= w < W:
                            grad_in[n, c, h, w] += g
    return grad_in


# -- the common case, 2x2 windows of stride 2 without padding, written out -------------------
@njit(cache=True, parallel=True, nogil=True)
def maxpool2x2_forward(x, y, argmax):
    """maxpool_forward for kh = kw = sh = sw = 2, ph = pw = 0, with the window unrolled.

    Same results and argmax convention (index 2*i + j, first maximum, NaN wins).
    """
    N, C = x.shape[0], x.shape[1]
    OH, OW = y.shape[2], y.shape[3]
    for n in prange(N):
        for c in range(C):
            for oh in range(OH):
                top = x[n, c, 2 * oh]
                bot = x[n, c, 2 * oh + 1]
                for ow in range(OW):
                    best = top[2 * ow]
                    k = 0
                    v = top[2 * ow + 1]
                    if (v > best or v != v) and best == best:
                        best = v
                        k = 1
                    v = bot[2 * ow]
                    if (v > best or v != v) and best == best:
                        best = v
                        k = 2
                    v = bot[2 * ow + 1]
                    if (v > best or v != v) and best == best:
                        best = v
                        k = 3
                    y[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = k
    return y, argmax


@njit(cache=True, parallel=True, nogil=True)
def maxpool2x2_backward(grad_out, argmax, grad_in):
    """maxpool_backward for 2x2 windows of stride 2 without padding (no overlaps)."""
    N, C, H, W = grad_in.shape
    OH, OW = grad_out.shape[2], grad_out.shape[3]
    for n in prange(N):
        for c in range(C):
            grad_in[n, c] = 0
            for oh in range(OH):
                for ow in range(OW):
                    k = argmax[n, c, oh, ow]
                    grad_in[n, c, 2 * oh + k // 2, 2 * ow + k % 2] = grad_out[n, c, oh, ow]
    return grad_in
