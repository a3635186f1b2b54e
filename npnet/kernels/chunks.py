"""Work split over the batch: chunks of samples, run at once by npnet's threads.

A convolution's forward (on its im2col road, ``layers/conv.py``) is im2col then a matmul;
its backward the same columns again, two matmuls and col2im.  Done for the whole batch at
once, each step is a pass over arrays of tens of MB (conv 3x3 on 16 channels of 28x28,
batch 128: 58 MB of columns), freshly allocated every step.  Done for a chunk of a few samples, the chunk's
columns fit in a core's cache and are used while they are there.

``run_chunks(fn, N, S)`` calls ``fn(i, samples)`` for the chunks ``samples = slice(i*S,
(i+1)*S)`` of a batch of N, on ``get_num_threads()`` threads of a pool (npnet/threads.py):
the kernels are Numba functions with ``nogil=True`` and NumPy releases the GIL in matmul,
so the threads run at the same time.  S is fixed by the layer's shapes (``chunk_size``),
never by the thread count, and a chunk writes only its own slices, so results are
bit-identical whatever the number of threads.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_pool = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS,
                                   thread_name_prefix="npnet-chunk")
    return _pool


def chunk_size(bytes_per_sample: int, N: int, budget: int = 1 << 20,
               min_chunks: int = 8) -> int:
    """Samples per chunk: as many as fit their scratch arrays in ``budget`` bytes, and no
    more than split the batch into ``min_chunks`` chunks; at least one, at most N.

    The budget keeps a chunk's columns in a core's cache and its calls few next to its
    arithmetic: 1 MiB trained the ResNet fastest at batch 128 once its stride-1
    convolutions ran without im2col (a step of 138 ms; 2 MiB: 138-140, 512 KiB: 137-146,
    4 MiB: 149-157).  The least number of chunks shares a batch whose columns are small
    among the threads (up to 8 of them, the same chunks whatever their number): the
    ResNet's 1x1 shortcuts at batch 128 fitted in one chunk and ran on one thread
    (docs/performance.md).
    """
    return max(1, min(N, budget // max(1, bytes_per_sample), -(-N // min_chunks)))


def run_chunks(fn, N: int, S: int) -> int:
    """``fn(i, slice(i*S, min((i+1)*S, N)))`` for every chunk i; returns the chunk count.
    With one thread (or one chunk) the chunks run in turn in the calling thread."""
    chunks = [(i, slice(n, min(n + S, N))) for i, n in enumerate(range(0, N, S))]
    if numba.get_num_threads() < 2 or len(chunks) < 2:
        for i, s in chunks:
            fn(i, s)
        return len(chunks)
    err = np.geterr()                     # the caller's np.errstate, per thread in NumPy

    def run(i, s):
        with np.errstate(**err):
            fn(i, s)
    for f in [_executor().submit(run, i, s) for i, s in chunks]:
        f.result()                        # re-raises an error of a chunk here
    return len(chunks)
