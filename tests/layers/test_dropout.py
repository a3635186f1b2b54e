"""Tests of npnet/layers/dropout.py: the mask (its generator, its scale, its keep rate), the
same mask in backward, eval as the identity, torch's formula, gradcheck, errors."""
import re

import numpy as np
import pytest
import torch

import npnet
import npnet.nn as nn
from npnet import Dropout

EPS32 = float(np.finfo(np.float32).eps)
PS = [0.1, 0.123, 0.3, 0.5, 0.9]
P_IDS = [f"p{p}" for p in PS]


def _keep(y, x):
    """Where dropout kept a value: x is drawn away from 0 (draw), so y != 0 there only."""
    assert np.all(x != 0)
    return np.asarray(y) != 0


# -- eval, p = 0, p = 1 -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_eval_is_the_identity_and_keeps_nothing(dtype, rng, draw):
    layer = Dropout(0.5, rng=rng).eval()
    x = draw((3, 4, 5), dtype)
    state = rng.bit_generator.state
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    assert y.dtype == dtype and np.shares_memory(y, x)   # the input itself, no copy
    assert rng.bit_generator.state == state              # no mask drawn
    assert layer._cache is None
    with pytest.raises(RuntimeError, match=r"Dropout\(p=0\.5\).*forward\(\) in training"):
        layer.backward(np.ones_like(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_p0_is_the_identity_in_training(dtype, rng, draw):
    layer = Dropout(0.0, rng=rng)
    x, g = draw((4, 6), dtype), draw((4, 6), dtype)
    y = layer(x)
    np.testing.assert_array_equal(y, x)                  # scale 1 / (1 - 0) = 1: exact
    np.testing.assert_array_equal(layer.backward(g), g)
    assert y.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_p1_zeroes_everything(dtype, rng, draw):
    layer = Dropout(1.0, rng=rng)
    x, g = draw((4, 6), dtype), draw((4, 6), dtype)
    y = layer(x)
    np.testing.assert_array_equal(y, 0)                  # no 1 / (1 - 1) = inf, no NaN
    np.testing.assert_array_equal(layer.backward(g), 0)
    assert y.dtype == dtype


# -- the mask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_backward_uses_the_forwards_mask(p, dtype, rng, draw):
    layer = Dropout(p, rng=rng)
    x, g = draw((6, 7, 5), dtype), draw((6, 7, 5), dtype)
    y = layer(x)
    grad_in = layer.backward(g)
    keep = _keep(y, x)
    assert keep.any() and (~keep).any()
    np.testing.assert_array_equal(grad_in != 0, keep)    # the gradient flows where x did
    assert grad_in.dtype == dtype
    # y = x m and dL/dx = g m with the same m: with g = x, backward gives y to the bit
    y = layer(x)
    np.testing.assert_array_equal(layer.backward(x.copy()), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("p", [0.5, 0.75, 0.875], ids=["p0.5", "p0.75", "p0.875"])
def test_kept_values_are_scaled_by_exactly_one_over_1_minus_p(p, dtype, rng, draw):
    """1 - p and 1 / (1 - p) (2, 4, 8) are exact in binary: y = x / (1 - p) to the bit."""
    layer = Dropout(p, rng=rng)
    x = draw((8, 9), dtype)
    y = layer(x)
    keep = _keep(y, x)
    np.testing.assert_array_equal(y[keep], x[keep] / dtype(1 - p))
    np.testing.assert_array_equal(y[~keep], 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_every_kept_value_has_the_same_scale(p, dtype, rng, draw):
    """Any p: one scale for all kept values, 1 / (1 - p) to within two roundings of half
    an ulp (1 - p, then the quotient: rtol eps)."""
    layer = Dropout(p, rng=rng)
    x = np.ones((20, 30), dtype)
    y = layer(x)
    scales = np.unique(y[y != 0])
    assert scales.size == 1 and scales.dtype == dtype
    np.testing.assert_allclose(scales[0], 1 / (1 - p), rtol=float(np.finfo(dtype).eps))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9], ids=["p0.1", "p0.5", "p0.9"])
def test_keep_fraction_is_binomial(p, rng):
    """n = 100000 independent Bernoulli(1 - p) draws: the fraction kept has mean 1 - p and
    standard deviation sqrt(p (1 - p) / n) <= 0.0016.  Within 5 standard deviations, which a
    correct mask misses with probability 6e-7 (and the seed is fixed: no flaky run); a
    mask drawn with p and 1 - p swapped, or scaled wrong, is off by >= 0.4 at p = 0.1."""
    n = 100_000
    y = Dropout(p, rng=rng)(np.ones((200, 500), np.float32))
    kept = np.count_nonzero(y) / n
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) <= 5 * sd, (kept, 1 - p, sd)
    # and no structure: every row of 500 keeps a binomial share too (7 standard deviations
    # of a row, sqrt(p (1 - p) / 500): a row that is all kept or all dropped fails)
    rows = np.count_nonzero(y, axis=1) / 500
    assert np.all(np.abs(rows - (1 - p)) <= 7 * np.sqrt(p * (1 - p) / 500))


def test_same_seed_same_mask_different_seeds_different_masks(draw):
    x = draw((10, 20), np.float32)
    masks = {}
    for seed in (0, 0, 1):
        layer = Dropout(0.5, rng=np.random.default_rng(seed))
        masks.setdefault(seed, []).append(_keep(layer(x), x))
    np.testing.assert_array_equal(masks[0][0], masks[0][1])
    assert np.any(masks[0][0] != masks[1][0])            # 200 draws: equal w.p. 2**-200


def test_each_forward_draws_a_new_mask(rng, draw):
    layer = Dropout(0.5, rng=rng)
    x = draw((10, 20), np.float32)
    first, second = _keep(layer(x), x), _keep(layer(x), x)
    assert np.any(first != second)


def test_the_mask_comes_from_the_generator_given(draw):
    """The generator is the layer's only source of randomness: drawing from a generator in
    the same state gives the same mask; init_generator's is used when none is given."""
    x = draw((5, 8), np.float32)
    rng = np.random.default_rng(7)
    layer = Dropout(0.3, rng=rng)
    assert layer.rng is rng
    y1 = np.asarray(layer(x))
    layer.rng = np.random.default_rng(7)                 # the same state again
    np.testing.assert_array_equal(layer(x), y1)
    with nn.init_generator(np.random.default_rng(7)) as block_rng:
        inside = Dropout(0.3)
    assert inside.rng is block_rng
    np.testing.assert_array_equal(inside(x), y1)


# -- torch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_same_mask_gives_torchs_formula(p, rng, draw):
    """Given npnet's mask, torch's y = x * keep / (1 - p) and its gradient.  torch divides
    once (x / (1 - p) in float32); npnet multiplies by 1 / (1 - p) rounded to float32:
    two roundings of half an ulp each, so rtol = 2 eps (zeros are exactly zeros)."""
    layer = Dropout(p, rng=rng)
    x, g = draw((4, 3, 5, 6), np.float32), draw((4, 3, 5, 6), np.float32)
    y = layer(x)
    grad_in = layer.backward(g)
    keep = torch.from_numpy(_keep(y, x).astype(np.float32))
    xt = torch.tensor(x, requires_grad=True)
    yt = xt * keep / (1 - p)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2 * EPS32, atol=0)
    np.testing.assert_allclose(grad_in, xt.grad.numpy(), rtol=2 * EPS32, atol=0)


@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_scale_is_torchs_to_one_ulp(p, rng):
    """torch's own kernel keeps 1 / float32(1 - p) computed in float32 (two roundings);
    npnet rounds 1 / (1 - p) once from float64: at most one ulp apart (and equal for
    p = 0.1, 0.3, 0.5, 0.9; at p = 0.123 they differ by one)."""
    with torch.random.fork_rng():                        # torch's global generator, restored
        torch.manual_seed(0)
        t = torch.nn.functional.dropout(torch.ones(2000), p, training=True).numpy()
    torch_scale = np.unique(t[t != 0])
    ours = np.unique(np.asarray(Dropout(p, rng=rng)(np.ones(2000, np.float32))))
    ours = ours[ours != 0]
    assert torch_scale.size == ours.size == 1
    assert abs(float(ours[0]) - float(torch_scale[0])) <= np.spacing(torch_scale[0])


def test_eval_matches_torch_and_to_torch_refuses_training(rng, draw, to_torch):
    layer = Dropout(0.3, rng=rng)
    with pytest.raises(TypeError, match=r"Dropout\(p=0\.3\) in training mode"):
        to_torch(layer)
    layer.eval()
    module = to_torch(layer)
    assert isinstance(module, torch.nn.Dropout) and not module.training and module.p == 0.3
    x = draw((3, 4), np.float32)
    np.testing.assert_array_equal(layer(x), module(torch.from_numpy(x)).numpy())


# -- numerical gradient check (float64) -------------------------------------------------------
class FixedMask(nn.Module):
    """fc1 -> dropout -> fc2, the dropout's generator re-seeded at every forward: the same
    mask at every call, so the model is one fixed function of x and of the weights (which
    central differences need)."""

    def __init__(self, p, seed, rng):
        super().__init__()
        self.fc1 = nn.Linear(5, 6, dtype=np.float64, rng=rng)
        self.drop = nn.Dropout(p, rng=np.random.default_rng(seed))
        self.fc2 = nn.Linear(6, 3, dtype=np.float64, rng=rng)
        self.seed = seed

    def forward(self, x):
        self.drop.rng = np.random.default_rng(self.seed)
        return self.fc2(self.drop(self.fc1(x)))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8], ids=["p0.2", "p0.5", "p0.8"])
def test_gradcheck_with_a_fixed_mask(p, rng, draw):
    model = FixedMask(p, seed=3, rng=rng)
    x = draw((4, 5))
    h = np.asarray(model.fc1(x))
    y1 = np.asarray(model.drop(h))
    model.drop.rng = np.random.default_rng(3)
    np.testing.assert_array_equal(model.drop(h), y1)     # the wrapper's premise
    keep = y1 != 0
    assert keep.any() and (~keep).any()                  # a mask with both kinds
    report = npnet.gradcheck(model, x, mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "fc1.weight", "fc1.bias", "fc2.weight",
                                        "fc2.bias"]
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_gradcheck_of_the_layer_alone(rng, draw):
    class Reseeded(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.4)

        def forward(self, x):
            self.drop.rng = np.random.default_rng(11)
            return self.drop(x)
    report = npnet.gradcheck(Reseeded(), draw((3, 2, 4)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input"] and report[0].passed, str(report[0])


# -- properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dtype_and_shape_are_kept(dtype, rng, draw):
    layer = Dropout(0.5, rng=rng)
    for shape in [(7,), (3, 4), (2, 3, 4, 5)]:
        y = layer(draw(shape, dtype))
        grad_in = layer.backward(draw(shape, dtype))
        assert y.dtype == grad_in.dtype == dtype and y.shape == grad_in.shape == shape


def test_input_is_not_modified(rng, draw):
    x = draw((4, 5))
    kept = x.copy()
    layer = Dropout(0.5, rng=rng)
    layer(x)
    layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(x, kept)


def test_one_backward_per_forward(rng, draw):
    layer = Dropout(0.5, rng=rng)
    x = draw((2, 3))
    layer(x)
    layer.backward(np.ones_like(x))
    with pytest.raises(RuntimeError, match=r"Dropout.*forward\(\) in training mode"):
        layer.backward(np.ones_like(x))


def test_no_parameters():
    layer = Dropout(0.5, rng=np.random.default_rng(0))
    assert layer.params == {} and layer.grads == {} and list(layer.state_dict()) == []
    assert repr(layer) == "Dropout(p=0.5)"


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True, None, float("nan")],
                         ids=["neg", "above_1", "str", "bool", "none", "nan"])
def test_p_must_be_a_probability(p):
    with pytest.raises(ValueError, match=r"^Dropout: p must be a probability in \[0, 1\], "
                                         rf"got {re.escape(repr(p))}$"):
        Dropout(p, rng=np.random.default_rng(0))


def test_inplace_is_refused():
    with pytest.raises(ValueError, match=r"^Dropout\(inplace=True\): npnet does not edit "
                                         r"arrays in place"):
        Dropout(0.5, inplace=True, rng=np.random.default_rng(0))


def test_rng_must_be_a_generator():
    with pytest.raises(ValueError, match=r"rng must be a np\.random\.Generator .*got int"):
        Dropout(0.5, rng=42)
    with pytest.raises(ValueError, match=r"rng must be a np\.random\.Generator .*got "
                                         r"RandomState"):
        Dropout(0.5, rng=np.random.RandomState(0))


@pytest.mark.parametrize("bad,got", [(np.ones((2, 2), np.int64), "int64"),
                                     (np.ones((2, 2), np.float16), "float16"),
                                     ([1.0, 2.0], "list")], ids=["int64", "float16", "list"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_non_float_input(bad, got, training):
    layer = Dropout(0.5, rng=np.random.default_rng(0)).train(training)
    with pytest.raises(ValueError, match=rf"^Dropout\(p=0\.5\): input must be a float32 or "
                                         rf"float64 array, got {got}$"):
        layer(bad)


def test_grad_out_wrong_shape_and_dtype(rng):
    layer = Dropout(0.5, rng=rng)
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Dropout.*grad_out has shape \(3, 4\), expected "
                                         r"\(4, 3\)"):
        layer.backward(np.ones((3, 4), np.float32))
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Dropout.*grad_out is float64, expected float32"):
        layer.backward(np.ones((4, 3), np.float64))


def test_backward_without_forward_raises(rng):
    with pytest.raises(RuntimeError, match=r"Dropout.*forward\(\) in training mode"):
        Dropout(0.5, rng=rng).backward(np.ones((2, 2)))
