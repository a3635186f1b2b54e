"""The size of a sliding window's output: the one place this formula lives.

Convolutions and poolings, their Numba kernels and their NumPy references all call it.
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def out_size(size, k, s, p):
    """floor((size + 2p - k) / s) + 1: the windows of length k, stride s, that fit in
    ``size`` padded by p on each side."""
    return (size + 2 * p - k) // s + 1
