"""Tests of npnet/layers/flatten.py."""
import numpy as np
import pytest
import torch

import npnet
from npnet import Flatten

SHAPES = [(1, 1), (2, 3), (1, 6, 14, 14), (3, 2, 5, 4), (2, 120, 1, 1), (2, 3, 4)]
SHAPE_IDS = ["1x1", "2x3", "1x6x14x14", "3x2x5x4", "2x120x1x1", "2x3x4"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gradcheck(shape, rng, draw):
    if int(np.prod(shape)) > 200:           # a full check of 1176 elements is slow for nothing
        report = npnet.gradcheck(Flatten(), draw(shape), mode="random", rng=rng)
    else:
        report = npnet.gradcheck(Flatten(), draw(shape), mode="full", rng=rng)
    assert [r.name for r in report] == ["input"] and report[0].passed


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_torch(shape, draw, to_torch):
    x = draw(shape, np.float32)
    layer = Flatten()
    y = layer(x)
    g = draw(y.shape, np.float32)
    grad_in = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.Flatten()(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y, yt.detach().numpy())        # no arithmetic: exact
    np.testing.assert_array_equal(grad_in, xt.grad.numpy())
    assert y.dtype == grad_in.dtype == np.float32


def test_hand_case_order_is_c_order():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    layer = Flatten()
    y = layer(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y[1], np.arange(12.0, 24.0))   # (c, h, w) row-major
    g = np.arange(24.0).reshape(2, 12) * 10
    np.testing.assert_array_equal(layer.backward(g), x * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dtype_is_kept(dtype, draw):
    layer = Flatten()
    y = layer(draw((2, 3, 2), dtype))
    assert y.dtype == dtype and layer.backward(np.ones_like(y)).dtype == dtype


def test_backward_without_forward_and_eval_mode():
    with pytest.raises(RuntimeError, match=r"Flatten.*forward\(\) in training mode"):
        Flatten().backward(np.ones((2, 3)))
    layer = Flatten().eval()
    y = layer(np.ones((2, 3, 4)))
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="Flatten"):
        layer.backward(np.ones_like(y))


def test_bad_input():
    with pytest.raises(ValueError, match=r"Flatten.*at least 2 dimensions.*\(5,\)"):
        Flatten()(np.ones(5))
    with pytest.raises(ValueError, match=r"Flatten.*at least 2 dimensions.*list"):
        Flatten()([[1.0]])


def test_grad_out_wrong_shape():
    layer = Flatten()
    layer(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"Flatten.*grad_out has shape \(2, 3, 4\), "
                                         r"expected \(2, 12\)"):
        layer.backward(np.ones((2, 3, 4)))


@pytest.mark.parametrize("grad_dtype", [np.float64, np.int64], ids=["f64", "i64"])
def test_grad_out_dtype_must_match_the_input(grad_dtype):
    """As every other layer: a float32 input must not get float64 (or integer) grads."""
    layer = Flatten()
    y = layer(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"Flatten.*grad_out is"):
        layer.backward(np.ones(y.shape, grad_dtype))


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="Flatten.*float32 or float64, got int64"):
        Flatten()(np.zeros((2, 3, 4), dtype=np.int64))
