"""npnet's memory policy: the C allocator keeps what a training step frees for the next.

A training step allocates its activations, the arrays its backward keeps and their
gradients, and frees them all by the end of the step; the next step asks for the same
sizes again.  glibc's malloc, as it comes, returns a freed block larger than its
threshold (128 KiB at first, raised to the largest block freed so far) to the operating
system, and shrinks its heap whenever more than twice that lies free at the top: the next
step's arrays are then fresh pages, and the first write to each page is a page fault in
which the kernel zeroes it.  The ResNet's training step at batch 128 took 3,200-4,500
such faults, 17-33 ms of system time over the two cores, in a step of 210-260 ms
(docs/performance.md).

So importing npnet sets two of glibc's parameters (``mallopt``), once, for the process:

* ``M_MMAP_THRESHOLD`` = 32 MiB, glibc's largest: blocks up to that size come from the
  heap, which a free does not give back to the system;
* ``M_TRIM_THRESHOLD`` = 1 GiB: the heap keeps up to that much free at its top for the
  next allocations instead of shrinking.

The process's peak memory is unchanged (a step still needs what it needs); what is freed
stays in the process for reuse instead of going back to the system.  Values do not change:
this is where arrays live, not what is computed in them.  Elsewhere than glibc (macOS,
musl) nothing is set and ``policy()`` says so.  ``keep_freed_memory(False)`` sets glibc's
initial values back (128 KiB both; its own raising of the threshold, which any setting
switches off, does not come back).
"""
from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory", "policy"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3        # glibc's <malloc.h>
KEEP = {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}
RETURN = {"mmap_threshold": 128 << 10, "trim_threshold": 128 << 10}   # glibc's defaults

_state = None                   # the thresholds npnet set (None: none, or not glibc)


def _glibc():
    """glibc's ``mallopt``, or None where the C library is another (the process's own
    symbols: no search for the library, which would start a subprocess at import)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version                    # glibc's alone
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory(keep: bool = True) -> bool:
    """Let glibc's malloc keep freed memory for reuse (True, npnet's policy, set when npnet
    is imported) or give it back to the system as it does by default (False).  Returns
    whether the C library is glibc and took the values."""
    global _state
    if not isinstance(keep, bool):
        raise ValueError(f"npnet.malloc.keep_freed_memory: keep must be True or False, got "
                         f"{keep!r}")
    mallopt = _glibc()
    if mallopt is None:
        return False
    values = KEEP if keep else RETURN
    ok = (mallopt(_M_MMAP_THRESHOLD, values["mmap_threshold"]) == 1
          and mallopt(_M_TRIM_THRESHOLD, values["trim_threshold"]) == 1)
    _state = dict(values) if ok else None
    return ok


def policy() -> dict | None:
    """The thresholds in force, {'mmap_threshold', 'trim_threshold'} in bytes, as npnet
    set them; None if it set none (not glibc)."""
    return None if _state is None else dict(_state)


keep_freed_memory(True)
