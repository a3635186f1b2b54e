"""npnet.threads: one threading policy (Numba runs the kernels, OpenBLAS one thread)."""
import os
import subprocess
import sys

import numba
import pytest
from threadpoolctl import threadpool_info

import npnet
from npnet import threads


def test_blas_is_limited_to_one_thread_on_import():
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas, "NumPy's BLAS should be visible to threadpoolctl"
    assert all(p["num_threads"] == 1 for p in blas)
    assert threads.policy()["blas_threads"] == 1


def test_policy_reports_the_kernel_threads():
    p = threads.policy()
    assert p["kernel_threads"] == threads.get_num_threads() == numba.get_num_threads()
    assert set(p) == {"kernel_threads", "blas_threads", "threading_layer"}


def test_set_num_threads_returns_the_previous_count_and_applies():
    old = threads.get_num_threads()
    try:
        assert threads.set_num_threads(1) == old
        assert threads.get_num_threads() == 1 == numba.get_num_threads()
    finally:
        threads.set_num_threads(old)
    assert threads.get_num_threads() == old


@pytest.mark.parametrize("bad", [0, -1, "two", None, 10 ** 6])
def test_set_num_threads_refuses_bad_counts(bad):
    with pytest.raises(ValueError):
        threads.set_num_threads(bad)


def test_set_blas_threads_restores_and_reapplies():
    try:
        threads.set_blas_threads(None)
        assert threads.policy()["blas_threads"] is None
        threads.set_blas_threads(2)
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert all(p["num_threads"] == 2 for p in blas)
    finally:
        threads.set_blas_threads(1)
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


def _in_new_process(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_environment_variable_sets_the_count():
    r = _in_new_process("import npnet; print(npnet.threads.get_num_threads())",
                        NPNET_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


def test_bad_environment_variable_is_a_value_error():
    r = _in_new_process("import npnet", NPNET_NUM_THREADS="lots")
    assert r.returncode != 0
    assert "NPNET_NUM_THREADS" in r.stderr and "ValueError" in r.stderr


def test_imported_first_by_npnet():
    assert npnet.threads is threads


@pytest.mark.parametrize("bad", [2.7, 0, True, "two"], ids=["float", "zero", "bool", "str"])
def test_set_num_threads_refuses_what_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="must be a positive int"):
        npnet.threads.set_num_threads(bad)


@pytest.mark.parametrize("bad", ["lots", "0", "-1", "2.5", " 2", "1_0", "\u0663", "1e3"],
                         ids=["word", "zero", "negative", "float", "space", "underscore",
                              "arabic-digit", "exponent"])
def test_the_environment_variable_takes_decimal_digits_only(bad):
    """int() would take ' 2', '1_0' and other scripts' digits; a count is written 2."""
    with pytest.raises(ValueError) as info:
        threads._parse_env(bad)
    assert str(info.value) == ("the environment variable NPNET_NUM_THREADS must be a "
                               f"positive int such as 2, got {bad!r}")
    assert threads._parse_env("2") == 2
