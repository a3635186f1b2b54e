"""benchmarks/roofline.py, which make bench's fractions of the limit rest on: the FLOP
count from the layers' shapes, and the sgemm peak leaving npnet's threading policy as it
found it.  (The benchmarks themselves are timings, never run here.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import npnet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def roofline():
    spec = importlib.util.spec_from_file_location("roofline", ROOT / "benchmarks/roofline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lenet5_by_hand():
    """LeNet-5's multiply-adds per image, layer by layer from its architecture: (outputs
    F*OH*OW) x (terms C*kh*kw) for the convolutions, out x in for the Linear layers."""
    conv1 = 6 * 28 * 28 * (1 * 5 * 5)          # padding 2 keeps 28x28
    conv2 = 16 * 10 * 10 * (6 * 5 * 5)         # on the pooled 14x14
    conv3 = 120 * 1 * 1 * (16 * 5 * 5)         # on the pooled 5x5
    fc1, fc2 = 84 * 120, 10 * 84
    return conv1, conv2 + conv3 + fc1 + fc2


@pytest.mark.parametrize("build", [npnet.lenet5, npnet.models.LeNet5],
                         ids=["sequential", "seed_class"])
def test_lenet5_flops_per_image(roofline, build):
    first, rest = _lenet5_by_hand()
    x = np.zeros((3, 1, 28, 28), np.float32)
    flops = roofline.per_image(build(), x)
    assert flops["infer"] == 2 * (first + rest)
    # training: forward, dL/dW and dL/dx of each product, but no dL/dx of the images
    assert flops["train"] == 2 * (2 * first + 3 * rest)
    assert round(flops["train"] / 1e6, 2) == 2.26          # the "about 2.3 MFLOP"


def test_flops_do_not_depend_on_the_batch_or_on_fusion(roofline):
    model = npnet.lenet5()
    one = roofline.per_image(model, np.zeros((1, 1, 28, 28), np.float32))
    npnet.fusion.set_fusion(model, False)                   # conv, relu, pool called apart
    assert roofline.per_image(model, np.zeros((5, 1, 28, 28), np.float32)) == one


def _blas_threads():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_sgemm_peak_gives_openblas_its_one_thread_back(roofline):
    before = _blas_threads()                                 # npnet's policy: 1
    assert before
    gflops = roofline.sgemm_gflops(2, n=128, repeats=2)
    assert np.isfinite(gflops) and gflops > 0
    assert _blas_threads() == before


def test_cpu_names_the_model_and_its_widest_vectors(roofline):
    amd = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
    xeon = ("processor\t: 0\nmodel name\t: Intel Xeon Processor\nflags\t\t: sse2 avx avx2 "
            "avx512f avx512vl\n\nprocessor\t: 1\nmodel name\t: Intel Xeon Processor\n")
    assert roofline.cpu(amd) == "AMD EPYC, AVX2"
    assert roofline.cpu(xeon) == "Intel Xeon Processor, AVX-512"
    assert roofline.cpu("") == "unknown CPU, vector instructions unknown"
    here = roofline.cpu()
    assert here.count(", ") >= 1 and not here.startswith("unknown CPU")   # Linux here
