"""The size of a sliding window's output: the one place this formula lives.

Convolutions and poolings and their NumPy references call it; their Numba kernels are
handed its results as arguments (a cached kernel must not call a Numba function of
another file: ``warm.py`` says why).  Adaptive pooling's windows, chosen from the output
size instead, are ``adaptive_bins``.
"""
from __future__ import annotations


def out_size(size, k, s, p):
    """floor((size + 2p - k) / s) + 1: the windows of length k, stride s, that fit in
    ``size`` padded by p on each side."""
    return (size + 2 * p - k) // s + 1


def adaptive_bins(size: int, out: int) -> list:
    """The windows of adaptive pooling, torch's rule: output i averages positions
    floor(i * size / out) up to ceil((i + 1) * size / out) (exclusive).  They cover every
    position; they overlap by one when ``out`` does not divide ``size``."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]
