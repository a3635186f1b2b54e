"""Batch normalisation's three loops as Numba kernels, over x viewed as (N, C, S).

S is the number of positions per sample and channel (H*W for BatchNorm2d, L or 1 for
BatchNorm1d).  Each kernel loops over the channels with ``prange``: a channel's sums are
taken by one thread, always by the same compiled loop, so the results are bit-identical
whatever the thread count.  Sums are accumulated in float64, then stored in the arrays'
dtype.  Each writes into arrays it is given: one pass over the data where NumPy's
expressions would make a temporary per operation.  ``reference.py`` holds the same
arithmetic as NumPy expressions, which the tests compare them with.
"""
from __future__ import annotations

from numba import njit, prange

# Let LLVM reorder the sums (and fuse a multiply-add) so that it can vectorise them: 2-4x
# faster here.  Not the "no NaN / no inf" assumptions: NaN and inf propagate as IEEE says.
# The order is still fixed by the compiled code, so results repeat bit for bit.
_SUMS = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, parallel=True, nogil=True, fastmath=_SUMS)
def channel_mean_var(x, mean, var):
    """mean[c] = the mean of x[:, c, :], var[c] = the mean of (x[:, c, :] - mean[c])**2
    (biased), in two passes: the second sums squared deviations, not x**2 - mean**2,
    which would cancel catastrophically when the mean is large."""
    N, C, S = x.shape
    M = N * S
    for c in prange(C):
        total = 0.0
        for n in range(N):
            for s in range(S):
                total += x[n, c, s]
        mu = total / M
        sq = 0.0
        for n in range(N):
            for s in range(S):
                d = x[n, c, s] - mu
                sq += d * d
        mean[c] = mu
        var[c] = sq / M
    return mean, var


@njit(cache=True, parallel=True, nogil=True, fastmath=_SUMS)
def batchnorm_forward(x, mean, inv_std, weight, bias, x_hat, y):
    """x_hat = (x - mean[c]) * inv_std[c], y = weight[c] * x_hat + bias[c]."""
    N, C, S = x.shape
    for c in prange(C):
        mu, r, w, b = mean[c], inv_std[c], weight[c], bias[c]
        for n in range(N):
            for s in range(S):
                h = (x[n, c, s] - mu) * r
                x_hat[n, c, s] = h
                y[n, c, s] = w * h + b
    return y


@njit(cache=True, parallel=True, nogil=True, fastmath=_SUMS)
def batchnorm_backward(grad_out, x_hat, scale, d_beta, d_gamma, grad_in):
    """d_beta[c] = sum g, d_gamma[c] = sum g * x_hat over the channel's M = N*S values,
    then grad_in = scale[c] * (g - d_beta[c] / M - x_hat * d_gamma[c] / M)."""
    N, C, S = grad_out.shape
    M = N * S
    for c in prange(C):
        sb, sg = 0.0, 0.0
        for n in range(N):
            for s in range(S):
                g = grad_out[n, c, s]
                sb += g
                sg += g * x_hat[n, c, s]
        d_beta[c] = sb
        d_gamma[c] = sg
        k, mb, mg = scale[c], sb / M, sg / M
        for n in range(N):
            for s in range(S):
                grad_in[n, c, s] = k * (grad_out[n, c, s] - mb - x_hat[n, c, s] * mg)
    return grad_in
