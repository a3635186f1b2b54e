"""Tests of npnet/layers/linear.py: gradcheck, torch parity, hand cases, properties, errors."""
import numpy as np
import pytest

import npnet
from npnet import Linear

# (batch, in_features, out_features)
SHAPES = [(1, 1, 1), (1, 5, 3), (4, 7, 2), (3, 12, 9)]
SHAPE_IDS = [f"n{n}_in{i}_out{o}" for n, i, o in SHAPES]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("n,fin,fout", SHAPES, ids=SHAPE_IDS)
def test_gradcheck(n, fin, fout, bias, rng, draw):
    layer = Linear(fin, fout, bias=bias, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((n, fin)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "weight"] + (["bias"] if bias else [])
    assert all(r.passed for r in report), "\n".join(map(str, report))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("n,fin,fout", SHAPES + [(16, 120, 84), (8, 400, 10)],
                         ids=SHAPE_IDS + ["n16_in120_out84", "n8_in400_out10"])
def test_matches_torch(n, fin, fout, bias, rng, draw, vs_torch, tol32):
    layer = Linear(fin, fout, bias=bias, rng=rng)
    x, g = draw((n, fin), np.float32), draw((n, fout), np.float32)
    ours, theirs = vs_torch(layer, x, g)
    wmax, xmax, gmax = (float(np.abs(a).max()) for a in (layer.params["weight"], x, g))
    # float32 sums: over in_features (y), out_features (grad_in), the batch (grads);
    # f32_atol explains the bound.
    np.testing.assert_allclose(ours["y"], theirs["y"], rtol=1e-5, atol=tol32(fin, wmax * xmax))
    np.testing.assert_allclose(ours["grad_in"], theirs["grad_in"], rtol=1e-5,
                               atol=tol32(fout, gmax * wmax))
    np.testing.assert_allclose(ours["weight"], theirs["weight"], rtol=1e-5,
                               atol=tol32(n, gmax * xmax))
    if bias:
        np.testing.assert_allclose(ours["bias"], theirs["bias"], rtol=1e-5,
                                   atol=tol32(n, gmax))
    else:
        assert "bias" not in ours and "bias" not in theirs
    for a in ours.values():
        assert a.dtype == np.float32


def test_hand_case():
    layer = Linear(3, 2, dtype=np.float64)
    layer.params["weight"][...] = [[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]
    layer.params["bias"][...] = [10.0, 20.0]
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    y = layer(x)
    # y = x @ W.T + b
    np.testing.assert_array_equal(y, [[1 + 4 + 9 + 10, -1 + 1 + 12 + 20],
                                      [4 + 10 + 18 + 10, -4 + 2.5 + 24 + 20]])
    g = np.arange(4.0).reshape(2, 2)                     # [[0, 1], [2, 3]]
    grad_in = layer.backward(g)
    # dx = g @ W: row 0 = 0*W0 + 1*W1, row 1 = 2*W0 + 3*W1
    np.testing.assert_array_equal(grad_in, [[-1, 0.5, 4], [2 - 3, 4 + 1.5, 6 + 12]])
    # dW = g.T @ x: row 0 = 0*x0 + 2*x1, row 1 = 1*x0 + 3*x1
    np.testing.assert_array_equal(layer.grads["weight"], [[8, 10, 12], [13, 17, 21]])
    np.testing.assert_array_equal(layer.grads["bias"], [2, 4])   # column sums of g


def test_init_bounds(rng):
    layer = Linear(100, 30, rng=rng)
    bound = 1 / np.sqrt(100)
    assert layer.params["weight"].shape == (30, 100) and layer.params["bias"].shape == (30,)
    assert np.abs(layer.params["weight"]).max() <= bound
    assert np.abs(layer.params["weight"]).max() > 0.95 * bound
    assert np.abs(layer.params["bias"]).max() <= bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dtype_is_kept(dtype, rng, draw):
    layer = Linear(5, 3, dtype=dtype, rng=rng)
    y = layer(draw((4, 5), dtype))
    grad_in = layer.backward(draw(y.shape, dtype))
    assert y.dtype == dtype and grad_in.dtype == dtype
    assert all(a.dtype == dtype for a in (*layer.params.values(), *layer.grads.values()))


def test_gradients_accumulate_and_zero_grad_resets(rng, draw):
    layer = Linear(6, 4, rng=rng)
    x, g = draw((3, 6), np.float32), draw((3, 4), np.float32)
    layer(x)
    layer.backward(g)
    once = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    layer(x)
    layer.backward(g)
    for k in once:
        np.testing.assert_array_equal(layer.grads[k], 2 * once[k])
    layer.zero_grad()
    assert all(np.all(v == 0) for v in layer.grads.values())


def test_need_grad_in_false(rng, draw):
    layer = Linear(6, 4, rng=rng)
    x, g = draw((3, 6), np.float32), draw((3, 4), np.float32)
    layer(x)
    layer.backward(g)
    full = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    layer(x)
    assert layer.backward(g, need_grad_in=False) is None
    for k in full:
        np.testing.assert_array_equal(layer.grads[k], full[k])


def test_backward_without_forward_raises(rng):
    with pytest.raises(RuntimeError, match=r"Linear.*forward\(\) in training mode"):
        Linear(2, 2, rng=rng).backward(np.zeros((1, 2), np.float32))


def test_eval_mode_keeps_no_cache(rng, draw):
    layer = Linear(3, 2, rng=rng).eval()
    y = layer(draw((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="Linear"):
        layer.backward(np.ones_like(y))
    layer.train()
    y = layer(draw((2, 3), np.float32))
    assert layer.backward(np.ones_like(y)).shape == (2, 3)


# -- errors ----------------------------------------------------------------------------------
def test_wrong_ndim(rng):
    with pytest.raises(ValueError, match=r"Linear.*expected a 2-D input.*\(2, 3, 1\)"):
        Linear(3, 2, rng=rng)(np.zeros((2, 3, 1), np.float32))


def test_wrong_feature_count(rng):
    with pytest.raises(ValueError,
                       match=r"Linear.*expected input of shape \(N, 3\), got \(2, 4\)"):
        Linear(3, 2, rng=rng)(np.zeros((2, 4), np.float32))


def test_input_dtype_mismatch(rng):
    with pytest.raises(ValueError, match=r"Linear.*input is float64 but the layer is float32"):
        Linear(3, 2, rng=rng)(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match=r"Linear.*float32 or float64, got int64"):
        Linear(3, 2, rng=rng)(np.zeros((2, 3), np.int64))


def test_grad_out_wrong_shape_and_dtype(rng):
    layer = Linear(3, 2, rng=rng)
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError,
                       match=r"Linear.*grad_out has shape \(4, 3\), expected \(4, 2\)"):
        layer.backward(np.ones((4, 3), np.float32))
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Linear.*grad_out is float64, expected float32"):
        layer.backward(np.ones((4, 2), np.float64))


@pytest.mark.parametrize("args,kwargs,match", [
    ((0, 2), {}, r"Linear: in_features must be a positive int, got 0"),
    ((3, -1), {}, r"Linear: out_features must be a positive int, got -1"),
    ((3.0, 2), {}, r"Linear: in_features must be a positive int"),
    ((3, 2), {"dtype": np.float16}, r"Linear: dtype must be float32 or float64"),
], ids=["in0", "out_neg", "in_float", "dtype_f16"])
def test_constructor_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Linear(*args, **kwargs)
