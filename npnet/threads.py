"""npnet's threading policy: Numba owns the cores, OpenBLAS runs on one thread.

Two thread pools can run npnet's arithmetic: Numba's (the ``prange`` loops of the kernels
in ``npnet/kernels``) and OpenBLAS's (NumPy's ``matmul``).  Each pool's idle workers spin
for a while before sleeping, so when the two take turns within a training step each finds
the other's threads spinning on the cores it needs: on 2 cores that ran LeNet-5 six times
slower (docs/performance.md).  npnet therefore picks one pool for parallelism:

* **Numba** runs the kernels over ``npnet.threads.get_num_threads()`` threads.  The kernels
  split the *batch* between threads (a task is one sample, or a few fixed by the layer's
  shape, never by the thread count), so every value is computed by the same operations
  whatever the thread count, and the per-task parameter gradients are summed in task
  order afterwards: results are bit-identical for any number of threads.
* **OpenBLAS** is limited to **one** thread (through threadpoolctl, when npnet is
  imported).  It serves the dense products (Linear, and the convolutions that take the
  im2col road), called between the parallel kernels.  A convolution's products are split
  the same way, over the batch: ``get_num_threads()`` Python threads each multiply chunks
  of samples fixed by the layer's shape with single-threaded OpenBLAS
  (``npnet/kernels/chunks.py``), the same products whatever the split, so this too is
  bit-identical for any count.

A call with a single task wakes no thread: a shifted convolution whose batch is one chunk
(one image, say) runs its kernel's serial twin on the calling thread
(``npnet/kernels/fused.py``, ``_serial``), and ``run_chunks`` runs a single chunk in the
caller.  A parallel kernel returns only when every thread of the pool has finished, even
one with no work, and a worker that has gone to sleep waits for the operating system: on
a busy machine that cost a one-image forward 3-4 ms instead of 0.4.

Numba keeps the count per Python thread: ``set_num_threads`` and ``NPNET_NUM_THREADS``
apply to the thread that imported npnet or made the call; a worker thread of your own
that runs npnet starts with Numba's default (every core) until it calls
``set_num_threads`` itself.

The number of threads is, in order: ``set_num_threads(n)``, else the environment variable
``NPNET_NUM_THREADS``, else every core Numba sees (``NUMBA_NUM_THREADS``, by default the
CPU count).  Importing npnet changes OpenBLAS's thread count for the whole process; call
``set_blas_threads(None)`` to give it back its default, e.g. before heavy NumPy work of
your own.
"""
from __future__ import annotations

import os

import numba

__all__ = ["set_num_threads", "get_num_threads", "set_blas_threads", "policy"]

_ENV = "NPNET_NUM_THREADS"
_blas_limiter = None        # the threadpoolctl limiter holding OpenBLAS at one thread
_blas_threads = None        # the OpenBLAS thread count npnet set (None: untouched)


def _parse(value, source: str) -> int:
    if isinstance(value, float) or isinstance(value, bool):
        raise ValueError(f"{source} must be a positive int, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a positive int, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{source} must be a positive int, got {value!r}")
    return n


def set_num_threads(n: int) -> int:
    """Run npnet's kernels on ``n`` threads (1 <= n <= numba.config.NUMBA_NUM_THREADS).

    Returns the previous count.  Results do not depend on it (see the module docstring).
    """
    n = _parse(n, "npnet.threads.set_num_threads: n")
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(f"npnet.threads.set_num_threads: n={n} exceeds the {limit} threads "
                         f"Numba started with (set NUMBA_NUM_THREADS before importing npnet)")
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    return previous


def get_num_threads() -> int:
    """The number of threads npnet's kernels run on."""
    return numba.get_num_threads()


def set_blas_threads(n: int | None = 1) -> None:
    """Limit OpenBLAS to ``n`` threads (npnet's policy is 1); ``None`` restores its default.

    With more than one, OpenBLAS's threads and npnet's kernels compete for the cores.
    """
    global _blas_limiter, _blas_threads
    from threadpoolctl import threadpool_limits
    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
        _blas_limiter = None
        _blas_threads = None
    if n is not None:
        n = _parse(n, "npnet.threads.set_blas_threads: n")
        _blas_limiter = threadpool_limits(limits=n, user_api="blas")
        _blas_threads = n


def policy() -> dict:
    """The policy in force: {'kernel_threads', 'blas_threads', 'threading_layer'}."""
    try:
        layer = numba.threading_layer()
    except ValueError:                       # no parallel kernel has run yet
        layer = None
    return {"kernel_threads": get_num_threads(), "blas_threads": _blas_threads,
            "threading_layer": layer}


def _parse_env(text: str) -> int:
    """``NPNET_NUM_THREADS`` as written: decimal digits only (``int()`` would also take
    ``"1_0"``, ``" 2"`` or other scripts' digits, none of which a count is written as)."""
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise ValueError(f"the environment variable {_ENV} must be a positive int such as "
                         f"2, got {text!r}")
    return int(text)


def _apply_defaults() -> None:
    """Run once when npnet is imported.  A bad ``NPNET_NUM_THREADS`` is a ValueError with
    a one-line message (the example scripts print it as ``error: ...``, exit code 2); a
    count above the cores Numba started with is reduced to them."""
    env = os.environ.get(_ENV)
    if env:
        n = _parse_env(env)
        set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    set_blas_threads(1)


_apply_defaults()
