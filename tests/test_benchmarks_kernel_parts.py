"""benchmarks/kernel_parts.py compares npnet's fused-kernel products with OpenBLAS's on
the same operands; its claim rests on the two computing the same sums, which is tested
here.  (The timings themselves are never run here.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import npnet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernel_parts():
    spec = importlib.util.spec_from_file_location("kernel_parts",
                                                  ROOT / "benchmarks/kernel_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def caught(kernel_parts):
    rng = np.random.default_rng(0)
    with npnet.nn.init_generator(rng):
        model = npnet.lenet5(rng=rng)
    x = rng.standard_normal((9, 1, 28, 28)).astype(np.float32)   # conv2: 2 chunks of 4, 1
    return kernel_parts._catch(model, npnet.CrossEntropyLoss(), x, rng.integers(0, 10, 9))


def test_one_training_step_passes_both_fused_layers_through_both_kernels(caught):
    assert sorted(caught) == [(0, "backward"), (0, "forward"), (1, "backward"),
                              (1, "forward")]
    # backward runs last layer first: the arguments are filed under the right layer
    assert caught[(0, "forward")][0].shape == (9, 1, 28, 28)
    assert caught[(1, "forward")][0].shape == (9, 6, 14, 14)
    assert caught[(0, "backward")][-1] is False     # dL/d(images) is never computed
    assert caught[(1, "backward")][-1] is True
    assert caught[(1, "backward")][-2].shape == (9, 6, 14, 14)   # its grad_in


@pytest.mark.parametrize("layer", [0, 1])
def test_the_timed_products_compute_what_openblas_computes(kernel_parts, caught, layer):
    ops = kernel_parts._operands(caught, layer)
    assert ops["cols"].shape == (ops["off"].size, ops["L"])
    kernel_parts.same_arithmetic(ops)


def test_columns_read_one_place_off_are_caught(kernel_parts, caught):
    ops = kernel_parts._operands(caught, 1)
    ops["cols"] = np.ascontiguousarray(np.roll(ops["cols"], 1, axis=1))
    with pytest.raises(AssertionError, match="the forward products differ"):
        kernel_parts.same_arithmetic(ops)
