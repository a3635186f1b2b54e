"""Tests of npnet/layers/pool.py (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d): gradcheck, torch
parity, hand cases (routing, ties, padding, adaptive bins), properties and errors."""
import itertools

import numpy as np
import pytest
import torch

import npnet
from npnet import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from npnet.kernels.geometry import adaptive_bins

POOLS = [MaxPool2d, AvgPool2d]
POOL_IDS = ["max", "avg"]

# kernel 1/3/5 x stride 1/2 x padding 0/1/2 where valid (padding <= kernel/2, as torch),
# on non-square inputs, batch 1 or 2; then kernel 2 (MaxPool2d(2) has its own fast kernel)
_SIZES = [(7, 9), (6, 5), (5, 8), (9, 6)]
GEOMS = [(k, s, p, 1 + (i % 2), *_SIZES[i % len(_SIZES)])
         for i, (k, s, p) in enumerate(
             (k, s, p) for k, s, p in itertools.product([1, 3, 5], [1, 2], [0, 1, 2])
             if 2 * p <= k)]
GEOMS += [(2, 2, 0, 2, 7, 9), (2, 2, 1, 1, 6, 5), (2, 1, 0, 2, 5, 8)]   # LeNet's 2x2 and kin
GEOM_IDS = [f"k{k}_s{s}_p{p}_n{n}_{h}x{w}" for k, s, p, n, h, w in GEOMS]

PAIRS = [((3, 2), (1, 2), (1, 0)), ((2, 5), (2, 1), (1, 2)), ((4, 3), (3, 2), (2, 1))]
PAIR_IDS = ["k3x2_s1x2_p1x0", "k2x5_s2x1_p1x2", "k4x3_s3x2_p2x1"]


def _torch_run(layer, x, g, to_torch):
    xt = torch.tensor(x, requires_grad=True)
    yt = to_torch(layer)(xt)
    yt.backward(torch.from_numpy(g))
    return yt.detach().numpy(), xt.grad.numpy()


def _assert_matches_torch(layer, x, g, to_torch, tol32):
    y = layer(x)
    grad_in = layer.backward(g)
    y_t, grad_t = _torch_run(layer, x, g, to_torch)
    assert y.dtype == grad_in.dtype == np.float32
    assert y.shape == y_t.shape and grad_in.shape == grad_t.shape
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    # a pixel lies in at most ceil(kh/sh) * ceil(kw/sw) windows: the length of its sum
    overlaps = -(-kh // sh) * -(-kw // sw)
    gmax = float(np.abs(g).max())
    if isinstance(layer, MaxPool2d):
        np.testing.assert_array_equal(y, y_t)            # a max is one of the inputs: exact
        np.testing.assert_allclose(grad_in, grad_t, rtol=1e-6, atol=tol32(overlaps, gmax))
    else:
        # a window sum of kh*kw values / kh*kw (npnet adds in float64, torch in float32)
        np.testing.assert_allclose(y, y_t, rtol=1e-6,
                                   atol=tol32(kh * kw, float(np.abs(x).max()) / (kh * kw)))
        np.testing.assert_allclose(grad_in, grad_t, rtol=1e-6,
                                   atol=tol32(overlaps, gmax / (kh * kw)))


# -- numerical gradient check (float64) ------------------------------------------------------
@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("k,s,p,n,h,w", GEOMS, ids=GEOM_IDS)
def test_gradcheck(pool, k, s, p, n, h, w, rng, draw):
    # distinct inputs: no max-pool tie, so every window has one differentiable winner
    report = npnet.gradcheck(pool(k, stride=s, padding=p), draw((n, 2, h, w)), mode="full",
                             rng=rng)
    assert [r.name for r in report] == ["input"]
    assert report[0].passed, str(report[0])


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("k,s,p", PAIRS, ids=PAIR_IDS)
def test_gradcheck_pairs(pool, k, s, p, rng, draw):
    report = npnet.gradcheck(pool(k, stride=s, padding=p), draw((2, 2, 7, 8)), rng=rng)
    assert report[0].passed, str(report[0])


# -- torch parity (float32) ------------------------------------------------------------------
@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("k,s,p,n,h,w", GEOMS, ids=GEOM_IDS)
def test_matches_torch(pool, k, s, p, n, h, w, rng, draw, to_torch, tol32):
    layer = pool(k, stride=s, padding=p)
    x = draw((n, 3, h, w), np.float32)
    g = draw(layer.output_shape(x.shape), np.float32)
    _assert_matches_torch(layer, x, g, to_torch, tol32)


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("k,s,p", PAIRS, ids=PAIR_IDS)
def test_matches_torch_pairs(pool, k, s, p, rng, draw, to_torch, tol32):
    layer = pool(k, stride=s, padding=p)
    x = draw((2, 3, 9, 11), np.float32)
    g = draw(layer.output_shape(x.shape), np.float32)
    _assert_matches_torch(layer, x, g, to_torch, tol32)


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_default_stride_is_the_kernel_and_floor_mode(pool, rng, draw, to_torch, tol32):
    layer = pool(2)
    assert layer.stride == (2, 2)
    x = draw((2, 3, 7, 5), np.float32)             # odd sizes: the last row/column is dropped
    assert layer.output_shape(x.shape) == (2, 3, 3, 2)
    g = draw((2, 3, 3, 2), np.float32)
    _assert_matches_torch(layer, x, g, to_torch, tol32)


def test_maxpool_ties_match_torch(to_torch):
    """Ties (after a ReLU most windows are all zeros) route like torch: the first maximum."""
    x = np.array([[[[0, 0, 3, 3, 1],
                    [0, 0, 3, 1, 1],
                    [2, 5, 5, 0, 4],
                    [5, 2, 0, 0, 4]]]], np.float32)
    for k, s in [(2, 2), (2, 1), (3, 1)]:
        layer = MaxPool2d(k, stride=s)
        y = layer(x)
        g = np.arange(1.0, y.size + 1, dtype=np.float32).reshape(y.shape)
        grad_in = layer.backward(g)
        y_t, grad_t = _torch_run(layer, x, g, to_torch)
        np.testing.assert_array_equal(y, y_t)
        np.testing.assert_array_equal(grad_in, grad_t)   # small integers: exact


# -- hand-made cases -------------------------------------------------------------------------
def test_maxpool_hand_routing():
    x = np.array([[[[1, 5, 2, 0],
                    [3, 4, 8, 7],
                    [9, 6, 10, 15],
                    [11, 13, 12, 14]]]], np.float64)
    layer = MaxPool2d(2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[5, 8], [13, 15]])
    g = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)            # [[1, 2], [3, 4]]
    np.testing.assert_array_equal(layer.backward(g)[0, 0], [[0, 1, 0, 0],
                                                            [0, 0, 2, 0],
                                                            [0, 0, 0, 4],
                                                            [0, 3, 0, 0]])


def test_maxpool_hand_overlapping_windows_add():
    x = np.array([[[[1, 2, 3],
                    [4, 9, 5],
                    [6, 7, 8]]]], np.float64)
    layer = MaxPool2d(2, stride=1)                         # 4 windows, all won by the 9
    np.testing.assert_array_equal(layer(x)[0, 0], [[9, 9], [9, 9]])
    g = np.arange(4.0).reshape(1, 1, 2, 2)
    expected = np.zeros((3, 3))
    expected[1, 1] = 0 + 1 + 2 + 3
    np.testing.assert_array_equal(layer.backward(g)[0, 0], expected)


def test_maxpool_hand_ties_first_maximum_wins():
    x = np.array([[[[7, 7, 1, 2],
                    [7, 7, 2, 2],
                    [0, 3, 4, 4],
                    [3, 1, 4, 4]]]], np.float64)
    layer = MaxPool2d(2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[7, 2], [3, 4]])
    g = np.array([[[[10.0, 20.0], [30.0, 40.0]]]])
    # all-equal window -> its top-left; [1, 2 / 2, 2] -> (0, 3), the first 2 in row order;
    # [0, 3 / 3, 1] -> (2, 1); all-equal 4s -> (2, 2)
    np.testing.assert_array_equal(layer.backward(g)[0, 0], [[10, 0, 0, 20],
                                                            [0, 0, 0, 0],
                                                            [0, 30, 40, 0],
                                                            [0, 0, 0, 0]])


def test_maxpool_padding_never_wins():
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)           # all negative: 0-padding would win
    layer = MaxPool2d(3, stride=1, padding=1)
    y = layer(x)
    np.testing.assert_array_equal(y[0, 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])
    grad_in = layer.backward(np.ones_like(y))
    assert grad_in.sum() == y.size                          # all of g lands inside the input
    assert grad_in[0, 0, 0, 0] == 4                         # -1 wins 4 windows


def test_avgpool_hand_blocks():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    layer = AvgPool2d(2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    g = np.arange(4.0).reshape(1, 1, 2, 2) * 4              # [[0, 4], [8, 12]]
    np.testing.assert_array_equal(layer.backward(g)[0, 0],
                                  np.kron(np.arange(4.0).reshape(2, 2), np.ones((2, 2))))


def test_avgpool_counts_padding_in_the_divisor():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    layer = AvgPool2d(3, stride=1, padding=1)
    y = layer(x)
    np.testing.assert_allclose(y[0, 0], np.full((2, 2), 10 / 9), rtol=1e-15)  # /9, not /4
    grad_in = layer.backward(np.array([[[[9.0, 18.0], [27.0, 36.0]]]]))
    # every window covers every pixel: each gets (9 + 18 + 27 + 36) / 9
    np.testing.assert_allclose(grad_in[0, 0], np.full((2, 2), 10.0), rtol=1e-15)


# -- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_dtype_is_kept(pool, dtype, draw):
    layer = pool(3, stride=2, padding=1)
    y = layer(draw((2, 2, 6, 7), dtype))
    grad_in = layer.backward(draw(y.shape, dtype))
    assert y.dtype == dtype and grad_in.dtype == dtype


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_backward_twice_gives_the_same_grad_in(pool, draw):
    """No parameters: nothing accumulates, and grad_in is overwritten, never summed."""
    layer = pool(3, stride=1, padding=1)
    x, g = draw((2, 2, 5, 4)), draw((2, 2, 5, 4))
    layer(x)
    first = layer.backward(g)
    layer(x)
    np.testing.assert_array_equal(layer.backward(g), first)
    assert layer.params == {} and layer.grads == {}


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_backward_without_forward_raises(pool):
    with pytest.raises(RuntimeError, match=pool.__name__):
        pool(2).backward(np.zeros((1, 1, 1, 1)))


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_eval_mode_keeps_no_cache(pool, draw):
    layer = pool(2).eval()
    y = layer(draw((1, 1, 4, 4)))
    assert layer._cache is None
    with pytest.raises(RuntimeError, match=pool.__name__):
        layer.backward(np.ones_like(y))


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_wrong_ndim(pool):
    with pytest.raises(ValueError, match=rf"{pool.__name__}.*expected a 4-D input.*\(4, 4\)"):
        pool(2)(np.zeros((4, 4)))


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_input_smaller_than_window(pool):
    with pytest.raises(ValueError,
                       match=rf"{pool.__name__}.*\(1, 2, 2, 6\) is smaller than the window"):
        pool(3)(np.zeros((1, 2, 2, 6)))


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_integer_input(pool):
    with pytest.raises(ValueError, match=rf"{pool.__name__}.*float32 or float64, got int64"):
        pool(2)(np.zeros((1, 1, 4, 4), np.int64))


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_grad_out_wrong_shape(pool):
    layer = pool(2)
    layer(np.zeros((1, 2, 4, 6)))
    with pytest.raises(ValueError, match=rf"{pool.__name__}.*grad_out has shape \(1, 2, 3, 2\)"
                                         r", expected \(1, 2, 2, 3\)"):
        layer.backward(np.zeros((1, 2, 3, 2)))


@pytest.mark.parametrize("grad_dtype", [np.float64, np.int64], ids=["f64", "i64"])
@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_grad_out_dtype_must_match_the_input(pool, grad_dtype):
    """As every other layer: a float32 layer must not return float64 (or integer) grads."""
    layer = pool(2)
    y = layer(np.ones((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=rf"{pool.__name__}.*grad_out is"):
        layer.backward(np.ones(y.shape, grad_dtype))


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=0), r"kernel_size and stride must be >= 1"),
    (dict(kernel_size=(2, 0)), r"kernel_size and stride must be >= 1"),
    (dict(kernel_size=[2, 2, 2]), r"kernel_size must be an int or a pair of ints"),
    (dict(kernel_size="2"), r"kernel_size must be an int or a pair of ints"),
    (dict(kernel_size=2, stride=0), r"stride must be >= 1"),
    (dict(kernel_size=2, stride=(1.5, 1)), r"stride must be an int or a pair of ints"),
    (dict(kernel_size=2, padding=-1), r"padding >= 0"),
    (dict(kernel_size=3, padding=2), r"padding \(2, 2\) must be at most half the kernel"),
    (dict(kernel_size=(4, 2), padding=(2, 2)), r"padding \(2, 2\) must be at most half"),
    (dict(kernel_size=1, padding=1), r"padding \(1, 1\) must be at most half"),
], ids=["k0", "k2x0", "k_triple", "k_str", "s0", "s_float", "p_neg", "k3_p2", "k4x2_p2",
        "k1_p1"])
def test_constructor_errors(pool, kwargs, match):
    with pytest.raises(ValueError, match=rf"{pool.__name__}.*{match}"):
        pool(**kwargs)


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_largest_valid_padding_is_accepted(pool):
    """padding = kernel/2 is the largest torch accepts: still valid here."""
    assert pool((4, 5), padding=(2, 2)).padding == (2, 2)


# == AdaptiveAvgPool2d =======================================================================
# (H, W) -> output_size: dividing (6 -> 3, 8 -> 4), not dividing (7 -> 3, 5 -> 2: windows
# overlap by one), global (28 -> 1), None keeping a dimension, larger than the input (3 -> 5)
ADAPTIVE = [((6, 6), 3), ((8, 4), (4, 2)), ((7, 7), 3), ((5, 5), 2), ((28, 28), 1),
            ((5, 7), 1), ((6, 5), (None, 2)), ((7, 4), (3, None)), ((5, 6), (None, None)),
            ((9, 7), (2, 3)), ((3, 4), (5, 6)), ((1, 1), 2)]
ADAPTIVE_IDS = [f"{h}x{w}_to_" + ("x".join(map(str, o)) if isinstance(o, tuple) else str(o))
                for (h, w), o in ADAPTIVE]


def _torch_bins(size, out):
    """torch's adaptive pooling rule (aten/src/ATen/native/AdaptiveAveragePooling.cpp):
    output i averages positions start_index = floor(i * size / out) up to end_index =
    ceil((i + 1) * size / out), exclusive."""
    return [(int(np.floor(i * size / out)), int(np.ceil((i + 1) * size / out)))
            for i in range(out)]


def _out_hw(hw, output_size):
    o = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    return tuple(s if k is None else k for s, k in zip(hw, o))


@pytest.mark.parametrize("hw,output_size", ADAPTIVE, ids=ADAPTIVE_IDS)
def test_adaptive_gradcheck(hw, output_size, rng, draw):
    report = npnet.gradcheck(AdaptiveAvgPool2d(output_size), draw((2, 2, *hw)), mode="full",
                             rng=rng)
    assert [r.name for r in report] == ["input"]
    assert report[0].passed, str(report[0])


@pytest.mark.parametrize("hw,output_size", ADAPTIVE, ids=ADAPTIVE_IDS)
def test_adaptive_matches_torch(hw, output_size, rng, draw, to_torch, tol32):
    layer = AdaptiveAvgPool2d(output_size)
    module = to_torch(layer)
    assert isinstance(module, torch.nn.AdaptiveAvgPool2d)
    x = draw((2, 3, *hw), np.float32)
    oh, ow = _out_hw(hw, output_size)
    g = draw((2, 3, oh, ow), np.float32)
    y = layer(x)
    grad_in = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.from_numpy(g))
    assert y.shape == tuple(yt.shape) == (2, 3, oh, ow)
    assert y.dtype == grad_in.dtype == np.float32
    rows, cols = _torch_bins(hw[0], oh), _torch_bins(hw[1], ow)
    area = max(b - a for a, b in rows) * max(b - a for a, b in cols)   # the largest window
    # a pixel lies in as many windows as bins cover it, per dimension
    cover = max(sum(a <= i < b for a, b in rows) for i in range(hw[0])) * \
        max(sum(a <= j < b for a, b in cols) for j in range(hw[1]))
    # a mean of `area` values (sums of area terms <= max|x| / area); dL/dx: sums of `cover`
    # terms <= max|g| / (smallest window area), f32_atol explains both bounds
    small = min(b - a for a, b in rows) * min(b - a for a, b in cols)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6,
                               atol=tol32(area, float(np.abs(x).max()) / area))
    np.testing.assert_allclose(grad_in, xt.grad.numpy(), rtol=1e-6,
                               atol=tol32(cover, float(np.abs(g).max()) / small))


@pytest.mark.parametrize("size,out", [(7, 3), (5, 2), (28, 1), (6, 3), (3, 5), (1, 4),
                                      (10, 7), (13, 13)])
def test_adaptive_bins_are_torchs(size, out):
    """npnet/kernels/geometry.py adaptive_bins, written with integer arithmetic, is torch's
    floating-point rule, covers every position, and windows overlap by at most one (when
    out <= size)."""
    bins = adaptive_bins(size, out)
    assert bins == _torch_bins(size, out)
    assert bins[0][0] == 0 and bins[-1][1] == size
    assert set().union(*(range(a, b) for a, b in bins)) == set(range(size))
    if out <= size:
        assert all(b - a >= 1 for a, b in bins)
        assert all(bins[i][1] - bins[i + 1][0] <= 1 for i in range(out - 1))


def test_adaptive_hand_case_dividing():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    layer = AdaptiveAvgPool2d(2)                   # the 2x2 blocks, as AvgPool2d(2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    g = np.arange(4.0).reshape(1, 1, 2, 2) * 4     # [[0, 4], [8, 12]]
    np.testing.assert_array_equal(layer.backward(g)[0, 0],
                                  np.kron(np.arange(4.0).reshape(2, 2), np.ones((2, 2))))


def test_adaptive_hand_case_overlapping_windows():
    """3 -> 2: rows (and columns) 0..1 and 1..2, so the middle row and column are shared.
    x = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]: window means 2, 3, 5, 6."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    layer = AdaptiveAvgPool2d(2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[2.0, 3.0], [5.0, 6.0]])
    g = np.array([[[[4.0, 8.0], [12.0, 16.0]]]])   # each window of 4 gives g / 4 = 1, 2, 3, 4
    np.testing.assert_array_equal(layer.backward(g)[0, 0], [[1, 1 + 2, 2],
                                                            [1 + 3, 1 + 2 + 3 + 4, 2 + 4],
                                                            [3, 3 + 4, 4]])


def test_adaptive_global_average_pooling(draw):
    x = draw((3, 4, 5, 6))
    layer = AdaptiveAvgPool2d(1)
    y = layer(x)
    assert y.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3), keepdims=True), rtol=1e-15)
    g = draw((3, 4, 1, 1))
    np.testing.assert_array_equal(layer.backward(g), np.broadcast_to(g / 30, x.shape))


def test_adaptive_none_keeps_the_input_size(draw):
    x = draw((2, 3, 5, 7))
    y = AdaptiveAvgPool2d((None, 1))(x)
    assert y.shape == (2, 3, 5, 1)
    np.testing.assert_allclose(y[..., 0], x.mean(axis=3), rtol=1e-15)
    same = AdaptiveAvgPool2d((None, None))
    np.testing.assert_array_equal(same(x), x)     # windows of one pixel: the identity
    np.testing.assert_array_equal(same.backward(x), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("output_size", [1, 3, (2, None)], ids=["global", "3", "2xNone"])
def test_adaptive_dtype_is_kept(output_size, dtype, draw):
    layer = AdaptiveAvgPool2d(output_size)
    y = layer(draw((2, 2, 7, 5), dtype))
    grad_in = layer.backward(draw(y.shape, dtype))
    assert y.dtype == grad_in.dtype == dtype and grad_in.shape == (2, 2, 7, 5)


def test_adaptive_backward_twice_gives_the_same_grad_in(draw):
    layer = AdaptiveAvgPool2d(3)
    x, g = draw((2, 2, 7, 5)), draw((2, 2, 3, 3))
    layer(x)
    first = layer.backward(g)
    layer(x)
    np.testing.assert_array_equal(layer.backward(g), first)
    assert layer.params == {} and layer.grads == {}


def test_adaptive_eval_mode_keeps_no_cache(draw):
    layer = AdaptiveAvgPool2d(2).eval()
    y = layer(draw((1, 1, 4, 4)))
    assert layer._cache is None
    with pytest.raises(RuntimeError, match=r"AdaptiveAvgPool2d.*forward\(\) in training"):
        layer.backward(np.ones_like(y))


def test_adaptive_repr():
    assert repr(AdaptiveAvgPool2d(3)) == "AdaptiveAvgPool2d(output_size=3)"
    assert repr(AdaptiveAvgPool2d((None, 2))) == "AdaptiveAvgPool2d(output_size=(None, 2))"


@pytest.mark.parametrize("output_size", [0, -1, (2, 0), (2, 2, 2), "2", 2.5, True, (2, 1.0),
                                         [3]],
                         ids=["zero", "neg", "pair_zero", "triple", "str", "float", "bool",
                              "pair_float", "list_of_one"])
def test_adaptive_constructor_errors(output_size):
    with pytest.raises(ValueError, match=r"^AdaptiveAvgPool2d: output_size must be a positive "
                                         r"int or a pair of positive ints \(or None\), got "):
        AdaptiveAvgPool2d(output_size)


def test_adaptive_bad_input():
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*expected a 4-D input.*"
                                         r"\(3, 4, 4\)"):
        AdaptiveAvgPool2d(2)(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*float32 or float64, got int64"):
        AdaptiveAvgPool2d(2)(np.zeros((1, 1, 4, 4), np.int64))


def test_adaptive_grad_out_wrong_shape_or_dtype():
    layer = AdaptiveAvgPool2d((2, 3))
    layer(np.zeros((1, 2, 5, 6)))
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*grad_out has shape "
                                         r"\(1, 2, 3, 2\), expected \(1, 2, 2, 3\)"):
        layer.backward(np.zeros((1, 2, 3, 2)))
    layer(np.zeros((1, 2, 5, 6), np.float32))
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*grad_out is float64, expected "
                                         r"float32"):
        layer.backward(np.zeros((1, 2, 2, 3)))
