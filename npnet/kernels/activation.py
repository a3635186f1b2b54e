"""ReLU's backward as one Numba loop over the flat arrays, on npnet's threads.

NumPy's ``grad_out * (y > 0)`` is two passes on one thread: the mask, then a multiply
that converts it to floats.  On the ResNet's first ReLU (128 x 32 x 28 x 28, 12.8 MB an
array) that took 2.0 ms, this loop 0.74 ms on two cores, and on LeNet-5's small arrays
(64 x 120) it is no slower (3.2 and 2.8 us).  Each element is computed alone, so the
result does not depend on the thread count.  ReLU's forward stays ``np.maximum``: the
same loop on one thread was no faster, and on both it would add the cost of starting
the threads to every one-image forward.
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
