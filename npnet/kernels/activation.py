"""ReLU's forward and backward as Numba loops over the flat arrays, on npnet's threads.

NumPy's ``grad_out * (y > 0)`` is two passes on one thread: the mask, then a multiply
that converts it to floats.  On the ResNet's first ReLU (128 x 32 x 28 x 28, 12.8 MB an
array) that took 2.0 ms, this loop 0.74 ms on two cores, and on LeNet-5's small arrays
(64 x 120) it is no slower (3.2 and 2.8 us).  ``np.maximum(x, 0)``, the forward, is one
pass on one thread; ``relu_forward`` took 0.23-0.44 of its time on the ResNet's arrays
and 0.35 on LeNet-5's 256 x 120, but on one image's 120 values 6.6 us against 2.0, the
cost of starting the threads (docs/performance.md).  So ReLU's forward runs it on arrays
of at least ``PARALLEL_SIZE`` elements and ``np.maximum`` below; both give the same bits.
Each element is computed alone, so no result depends on the thread count.
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, parallel=True, nogil=True)
def relu_backward(y, grad_out, grad_in):
    """grad_in = grad_out where y > 0, else 0 (also where grad_out is inf or NaN, as
    torch's threshold_backward).  Flat arrays, one length and dtype (one compiled
    version for every shape)."""
    zero = grad_in.dtype.type(0)
    for i in prange(y.shape[0]):
        grad_in[i] = grad_out[i] if y[i] > 0 else zero
    return grad_in


#: The smallest array (in elements) ReLU's forward gives ``relu_forward``: 8,192 took
#: 10.4 us on two threads against np.maximum's 9.5, 32,768 12.7 against 29.5.
PARALLEL_SIZE = 1 << 14


@njit(cache=True, parallel=True, nogil=True)
def relu_forward(x, y):
    """y = x where x > 0 or x is NaN, else +0: ``np.maximum(x, 0)`` bit for bit (NaN kept,
    -0 made +0, as torch's relu).  Flat arrays, as relu_backward."""
    zero = y.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if (v > zero) | (v != v) else zero
    return y
