"""Tests of npnet/layers/activation.py (ReLU, Tanh, Sigmoid, LeakyReLU)."""
import numpy as np
import pytest
import torch

import npnet
from npnet import LeakyReLU, ReLU, Sigmoid, Tanh

ACTS = [ReLU, Tanh, Sigmoid, LeakyReLU]
ACT_IDS = ["relu", "tanh", "sigmoid", "leaky_relu"]
# any shape: the activations are element-wise
SHAPES = [(1, 1), (3, 7), (2, 3, 4, 5), (1, 2, 5, 3)]
SHAPE_IDS = ["1x1", "3x7", "2x3x4x5", "1x2x5x3"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_gradcheck(act, shape, rng, draw):
    # draw() keeps |x| >= 0.1: the ReLU kink is never within a step of eps = 1e-6
    report = npnet.gradcheck(act(), draw(shape), mode="full", rng=rng)
    assert [r.name for r in report] == ["input"]
    assert report[0].passed, str(report[0])


def test_gradcheck_saturated_tails(rng):
    """Tanh and Sigmoid far from 0 (tiny derivatives, the overflow-safe sigmoid branch)."""
    x = np.concatenate([np.linspace(-12, -3, 10), np.linspace(3, 12, 10)]).reshape(4, 5)
    for act in (Tanh, Sigmoid):
        report = npnet.gradcheck(act(), x, rng=rng)
        assert report[0].passed, str(report[0])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_matches_torch(act, shape, draw, to_torch):
    x = 2 * draw(shape, np.float32)                 # |x| up to 4.2: into the saturation
    g = draw(shape, np.float32)
    layer = act()
    y = layer(x)
    grad_in = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = to_torch(layer)(xt)
    yt.backward(torch.from_numpy(g))
    assert y.dtype == grad_in.dtype == np.float32
    if act in (ReLU, LeakyReLU):     # no arithmetic, or one multiply by the same float32
        #                              slope on both sides: bit-exact
        np.testing.assert_array_equal(y, yt.detach().numpy())
        np.testing.assert_array_equal(grad_in, xt.grad.numpy())
        return
    # float32, no reduction: numpy's and torch's tanh / exp are each within ~1 ulp, so y
    # agrees to a few ulp (rtol 1e-6 ~ 8 ulp).  The derivative 1 - y**2 (or y (1 - y))
    # subtracts numbers near 1: an error of 1 ulp of 1 in y (1.2e-7) becomes an absolute
    # error ~2.4e-7 in the factor, times |g| <= 2.1, hence atol 4 * eps * max|g|.
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad_in, xt.grad.numpy(), rtol=1e-6,
                               atol=4 * np.finfo(np.float32).eps * float(np.abs(g).max()))


# -- hand-made cases -------------------------------------------------------------------------
def test_relu_hand_case_and_the_kink(to_torch):
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0]], np.float32)
    layer = ReLU()
    np.testing.assert_array_equal(layer(x), [[0, 0, 0, x[0, 3], 3]])   # tiny > 0 passes
    g = np.arange(5, dtype=np.float32)[None]
    grad_in = layer.backward(g)
    np.testing.assert_array_equal(grad_in, [[0, 0, 0, 3, 4]])   # derivative 0 at 0, as torch
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.from_numpy(g))
    np.testing.assert_array_equal(grad_in, xt.grad.numpy())


def test_relu_gradient_is_zero_where_the_unit_is_off_even_for_inf_and_nan(to_torch):
    """Where y = 0 the gradient is 0, not grad_out * 0 (which is NaN for inf and NaN):
    torch's rule; where y > 0 grad_out passes whatever it is.  Non-contiguous arrays too."""
    x = np.array([[-1.0, -1.0, 2.0, 2.0, 0.0, 5.0]], np.float32)
    g = np.array([[np.inf, np.nan, np.inf, np.nan, -np.inf, 1.5]], np.float32)
    layer = ReLU()
    layer(x)
    grad_in = layer.backward(g)
    np.testing.assert_array_equal(grad_in, [[0, 0, np.inf, np.nan, 0, 1.5]])
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.from_numpy(g))
    np.testing.assert_array_equal(grad_in, xt.grad.numpy())
    x2 = np.asfortranarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    g2 = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2]          # a strided view
    layer(x2)
    np.testing.assert_array_equal(layer.backward(g2), g2 * (x2 > 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_forward_gives_np_maximums_bits_on_either_path(dtype, rng, monkeypatch):
    """From PARALLEL_SIZE elements on, ReLU's forward runs relu_forward on npnet's threads,
    below it np.maximum: the same bits either way (NaN kept with its sign, -0 made +0,
    infinities and the smallest subnormals), for C-ordered and transposed inputs, and the
    same values as torch's relu."""
    from npnet.kernels import activation as kernels
    from npnet.layers import activation as layers
    calls = []

    def spy(x, y):
        calls.append(x.size)
        return kernels.relu_forward(x, y)
    monkeypatch.setattr(layers, "relu_forward", spy)
    tiny = np.finfo(dtype).smallest_subnormal
    special = np.array([np.nan, -np.nan, -0.0, 0.0, -1.0, 1.0, np.inf, -np.inf, tiny, -tiny],
                       dtype)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    n = kernels.PARALLEL_SIZE
    for rows, threaded in ((4, False), (8, True)):                  # n/2 and n elements
        x = rng.standard_normal((rows, n // 8)).astype(dtype)
        x.reshape(-1)[:special.size] = special
        for a in (x, x.T):
            calls.clear()
            y = ReLU()(a)
            assert calls == ([a.size] if threaded else [])
            expected = np.maximum(a, 0)
            assert y.shape == a.shape and y.dtype == dtype
            np.testing.assert_array_equal(y.view(bits), expected.view(bits))
            np.testing.assert_array_equal(y, torch.relu(torch.from_numpy(a)).numpy())


def test_tanh_hand_case():
    x = np.array([0.0, np.log(3.0) / 2, -np.log(3.0) / 2])      # tanh = 0, 1/2, -1/2
    layer = Tanh()
    np.testing.assert_allclose(layer(x), [0.0, 0.5, -0.5], rtol=0, atol=1e-15)
    # dy/dx = 1 - y**2 = 1, 3/4, 3/4
    np.testing.assert_allclose(layer.backward(np.array([1.0, 2.0, 3.0])), [1.0, 1.5, 2.25],
                               rtol=1e-14)


def test_sigmoid_hand_case():
    x = np.array([0.0, np.log(3.0), -np.log(3.0)])              # sigmoid = 1/2, 3/4, 1/4
    layer = Sigmoid()
    np.testing.assert_allclose(layer(x), [0.5, 0.75, 0.25], rtol=1e-15)
    # dy/dx = y (1 - y) = 1/4, 3/16, 3/16
    np.testing.assert_allclose(layer.backward(np.array([4.0, 16.0, 32.0])), [1.0, 3.0, 6.0],
                               rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sigmoid_and_tanh_do_not_overflow(dtype):
    x = np.array([-1000.0, -100.0, 100.0, 1000.0], dtype)
    for act, expected in ((Sigmoid, [0, 0, 1, 1]), (Tanh, [-1, -1, 1, 1])):
        layer = act()
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            y = layer(x)
            grad_in = layer.backward(np.ones_like(x))
        np.testing.assert_allclose(y, expected, atol=1e-30)
        assert y.dtype == dtype and np.all(np.isfinite(grad_in))
        np.testing.assert_allclose(grad_in, 0, atol=1e-30)


# -- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_dtype_is_kept(act, dtype, draw):
    layer = act()
    y = layer(draw((2, 3, 4), dtype))
    grad_in = layer.backward(draw((2, 3, 4), dtype))
    assert y.dtype == dtype and grad_in.dtype == dtype and y.shape == (2, 3, 4)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_input_is_not_modified(act, draw):
    x = draw((3, 4))
    kept = x.copy()
    layer = act()
    layer(x)
    layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_backward_without_forward_raises(act):
    with pytest.raises(RuntimeError, match=rf"{act.__name__}.*forward\(\) in training mode"):
        act().backward(np.ones((2, 2)))


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_one_backward_per_forward(act, draw):
    layer = act()
    x = draw((2, 2))
    layer(x)
    layer.backward(np.ones_like(x))
    with pytest.raises(RuntimeError, match=act.__name__):
        layer.backward(np.ones_like(x))


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_eval_mode_keeps_no_cache(act, draw):
    layer = act().eval()
    x = draw((2, 2))
    layer(x)
    assert layer._cache is None
    with pytest.raises(RuntimeError, match=act.__name__):
        layer.backward(np.ones_like(x))


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_bad_input(act):
    with pytest.raises(ValueError, match=rf"{act.__name__}.*float32 or float64.*int64"):
        act()(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match=rf"{act.__name__}.*float32 or float64.*list"):
        act()([1.0, 2.0])


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_grad_out_wrong_shape_or_dtype(act, draw):
    layer = act()
    layer(draw((2, 3)))
    with pytest.raises(ValueError,
                       match=rf"{act.__name__}.*grad_out has shape \(3, 2\), expected \(2, 3\)"):
        layer.backward(np.ones((3, 2)))
    layer(draw((2, 3)))
    with pytest.raises(ValueError, match=rf"{act.__name__}.*grad_out is float32, expected "
                                         r"float64"):
        layer.backward(np.ones((2, 3), np.float32))


# -- LeakyReLU ---------------------------------------------------------------------------------
SLOPES = [0.01, 0.2, 0.0, -0.5, 1.0, 3.0]
SLOPE_IDS = ["default", "0.2", "zero", "negative", "one", "three"]


@pytest.mark.parametrize("slope", SLOPES, ids=SLOPE_IDS)
def test_leaky_relu_gradcheck(slope, rng, draw):
    # draw() keeps |x| >= 0.1: the kink is never within a step of eps = 1e-6
    report = npnet.gradcheck(LeakyReLU(slope), draw((2, 3, 4, 5)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input"]
    assert report[0].passed, str(report[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("slope", SLOPES, ids=SLOPE_IDS)
def test_leaky_relu_matches_torch(slope, dtype, draw, to_torch):
    """One multiply by the slope rounded to the dtype, as torch's kernel: bit-exact."""
    layer = LeakyReLU(slope)
    module = to_torch(layer)
    assert isinstance(module, torch.nn.LeakyReLU) and module.negative_slope == slope
    x, g = 2 * draw((3, 4, 5), dtype), draw((3, 4, 5), dtype)
    y = layer(x)
    grad_in = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = module.to(torch.float64 if dtype == np.float64 else torch.float32)(xt)
    yt.backward(torch.from_numpy(g))
    assert y.dtype == grad_in.dtype == dtype
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(grad_in, xt.grad.numpy())


def test_leaky_relu_hand_case_and_the_kink():
    """Derivative 1 where x > 0, else the slope: at 0 (and -0) too, as torch."""
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0]], np.float64)
    layer = LeakyReLU(0.25)
    np.testing.assert_array_equal(layer(x), [[-0.5, 0, 0, 1e-30, -0.25e-30, 3.0]])
    g = np.arange(1.0, 7.0)[None]
    grad_in = layer.backward(g)
    np.testing.assert_array_equal(grad_in, [[0.25, 0.5, 0.75, 4, 1.25, 6]])
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.leaky_relu(xt, 0.25).backward(torch.from_numpy(g))
    np.testing.assert_array_equal(grad_in, xt.grad.numpy())   # torch: slope at 0, too


def test_leaky_relu_default_slope_is_torchs():
    assert LeakyReLU().negative_slope == torch.nn.LeakyReLU().negative_slope == 0.01
    assert repr(LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    x = np.array([-100.0, 100.0], np.float32)
    np.testing.assert_array_equal(LeakyReLU()(x), [np.float32(-100) * np.float32(0.01), 100])


def test_leaky_relu_returns_a_new_array(draw):
    """Nothing the layer keeps is handed out: editing y changes no gradient."""
    layer = LeakyReLU(0.1)
    x = draw((3, 4))
    y = layer(x)
    assert not np.shares_memory(y, x)
    expected = np.where(x > 0, 1.0, 0.1) * 2.0
    np.asarray(y)[...] = 7.0
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 2.0)), expected)


@pytest.mark.parametrize("slope", ["0.1", True, None, float("nan"), float("inf"), [0.1]],
                         ids=["str", "bool", "none", "nan", "inf", "list"])
def test_leaky_relu_bad_slope(slope):
    with pytest.raises(ValueError, match=r"^LeakyReLU: negative_slope must be a finite number, "
                                         r"got "):
        LeakyReLU(slope)


def test_leaky_relu_inplace_is_refused():
    with pytest.raises(ValueError, match=r"^LeakyReLU\(inplace=True\): npnet does not edit "
                                         r"arrays in place"):
        LeakyReLU(0.1, inplace=True)
    assert LeakyReLU(0.1, inplace=False).negative_slope == 0.1
