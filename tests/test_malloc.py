"""Tests of npnet/malloc.py, the memory policy: glibc's malloc keeps freed memory."""
import platform
import subprocess
import sys

import pytest

import npnet

GLIBC = platform.libc_ver()[0] == "glibc"

# Allocate, write and free a 16 MiB array ten times after a first one, and count the page
# faults (the kernel handing the process fresh pages) those ten rounds took.
ROUNDS = r"""
import resource, sys
import numpy as np
import npnet
if sys.argv[1] == "return":
    assert npnet.malloc.keep_freed_memory(False)
a = np.ones(4 << 20, np.float32); del a
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(4 << 20, np.float32); del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode):
    r = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                       check=True)
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="the policy is glibc's mallopt (CI runs on glibc)")
def test_importing_npnet_keeps_freed_memory_for_the_next_array():
    """With npnet's policy the 16 MiB block freed is the next array's: no fresh page.  With
    glibc's defaults back each round maps new memory: at least 8 faults a round (8 huge
    pages of 2 MiB, or 4,096 small ones).  A few stray faults (the interpreter's own
    allocations) are allowed on the kept side, far below one round's."""
    assert _faults("keep") < 8
    assert _faults("return") >= 80


@pytest.mark.skipif(not GLIBC, reason="the policy is glibc's mallopt (CI runs on glibc)")
def test_policy_reports_what_was_set():
    assert npnet.malloc.policy() == {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}
    try:
        assert npnet.malloc.keep_freed_memory(False) is True
        assert npnet.malloc.policy() == {"mmap_threshold": 128 << 10,
                                         "trim_threshold": 128 << 10}
    finally:
        assert npnet.malloc.keep_freed_memory(True) is True
    assert npnet.malloc.policy()["trim_threshold"] == 1 << 30


@pytest.mark.parametrize("keep", [1, "yes", None])
def test_keep_freed_memory_takes_a_bool(keep):
    with pytest.raises(ValueError, match="keep must be True or False"):
        npnet.malloc.keep_freed_memory(keep)
