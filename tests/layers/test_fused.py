"""Tests of npnet/layers/fused.py (ConvReLUMaxPool2d): gradcheck, torch parity, the three
layers it stands for, hand cases, properties, errors, geometry changes, threads, models.

The layer computes ``pool(relu(conv(x)))`` for a stride-1 Conv2d and a 2x2 MaxPool2d of
stride 2 in one kernel (npnet/kernels/fused.py, derived in docs/layers/fused.md).  The
kernels themselves are checked against npnet/kernels/reference.py in
tests/kernels/test_fused_kernels.py; here the layer is checked as a user meets it.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import npnet
from npnet import Conv2d, ConvReLUMaxPool2d, MaxPool2d, ReLU
from npnet.kernels.fused import chunk_size

F64_EPS = float(np.finfo(np.float64).eps)       # 2.2e-16

# -- geometries ------------------------------------------------------------------------------
# Every kernel 1/3/5 x padding 0/1/2 (the stride is 1: the only one the kernel takes), on
# non-square inputs, batch 1/2/3, one or several input channels.  Most conv outputs have an
# odd side, so the pool drops a last row or column (floor mode).
_SIZES = [(7, 9), (8, 7), (9, 6), (6, 8)]
GEOMS = [(k, p, 1 + i % 3, 1 + 2 * (i % 2), *_SIZES[i % len(_SIZES)])
         for i, (k, p) in enumerate(itertools.product([1, 3, 5], [0, 1, 2]))]
GEOM_IDS = [f"k{k}_p{p}_n{n}_c{c}_{h}x{w}" for k, p, n, c, h, w in GEOMS]

# rectangular kernels and paddings as pairs, to catch a swapped height / width anywhere
PAIRS = [((3, 5), (2, 0)), ((1, 3), (0, 1)), ((5, 2), (1, 2)), ((2, 4), (1, 0))]
PAIR_IDS = ["k3x5_p2x0", "k1x3_p0x1", "k5x2_p1x2", "k2x4_p1x0"]

# several samples per task (chunk_size): chunks of S side by side, the last one shorter
# (N, C, F, H, W, k, p)
CHUNKED = {"lenet_conv1_n3": (3, 1, 6, 28, 28, 5, 2),      # S = 2: chunks of 2, 1
           "lenet_conv2_n9": (9, 6, 16, 14, 14, 5, 0),     # S = 8: chunks of 8, 1
           "small_maps_n11": (11, 2, 3, 7, 9, 3, 1)}       # S = 8: chunks of 8, 3

BIAS = [True, False]
BIAS_IDS = ["bias", "nobias"]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


def _fused(c_in, f, k, p=0, bias=True, dtype=np.float32, rng=None):
    conv = Conv2d(c_in, f, k, padding=p, bias=bias, dtype=dtype, rng=rng)
    return ConvReLUMaxPool2d(conv)


def _pooled_shape(layer, x_shape):
    return layer.pool.output_shape(layer.conv.output_shape(x_shape))


def _run(layer, x, g, **backward_kwargs):
    """Forward and backward through the fused layer, from zeroed gradients."""
    layer.zero_grad()
    y = layer(x)
    grad_in = layer.backward(g, **backward_kwargs)
    return {"y": y, "grad_in": grad_in,
            **{k: v.copy() for k, v in layer.conv.grads.items()}}


def _run_three(layer, x, g):
    """The same through the three layers it stands for, each called at top level with its
    own backward (they share the fused layer's conv, so its gradients too)."""
    conv, relu, pool = layer.stands_for
    conv.zero_grad()
    y = pool(relu(conv(x)))
    grad_in = conv.backward(relu.backward(pool.backward(g)))
    return {"y": y, "grad_in": grad_in, **{k: v.copy() for k, v in conv.grads.items()}}


def _torch_run(layer, x, g):
    """torch's max_pool2d(relu(conv2d(x))), the npnet weights copied in."""
    conv = layer.conv
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.params["weight"], requires_grad=True)
    bt = torch.tensor(conv.params["bias"], requires_grad=True) if "bias" in conv.params \
        else None
    yt = TF.max_pool2d(TF.relu(TF.conv2d(xt, wt, bt, stride=1, padding=conv.padding)), 2)
    yt.backward(torch.from_numpy(g))
    out = {"y": yt.detach().numpy(), "grad_in": xt.grad.numpy(), "weight": wt.grad.numpy()}
    if bt is not None:
        out["bias"] = bt.grad.numpy()
    return out


def _atol(w, x, g, dtype, tol32):
    """Absolute tolerances for two computations of the block in ``dtype`` that sum the
    same products in another order.  Reduction lengths: an output sums K = C*kh*kw
    products (and the bias); an input pixel is used by at most F*kh*kw pre-activations;
    the weight and bias gradients sum over the winners only, one per pooled output and
    sample, N*PH*PW of them (the other pre-activations get a zero gradient).  The terms
    are bounded by the largest |w|, |x|, |g|.  In float32 this is f32_atol (conftest.py:
    2 * eps * K * term, a random walk of rounding errors in each of two implementations);
    in float64 the same formula at eps = 2.2e-16, about 1e-14 for these sizes.  A wrong
    winner or a lost term errs by about a term, 1e4 (float32) to 1e13 (float64) times more.
    """
    N, C = x.shape[:2]
    F, _, kh, kw = w.shape
    PH, PW = g.shape[2:]
    wmax, xmax, gmax = (float(np.abs(a).max()) for a in (w, x, g))
    lengths = {"y": (C * kh * kw, wmax * xmax), "grad_in": (F * kh * kw, gmax * wmax),
               "weight": (N * PH * PW, gmax * xmax), "bias": (N * PH * PW, gmax)}
    if dtype == np.float32:
        return {k: tol32(K, t) for k, (K, t) in lengths.items()}
    return {k: max(2 * F64_EPS * K * t, 1e-16) for k, (K, t) in lengths.items()}


def _assert_close(ours, theirs, atol, dtype, rtol):
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == dtype, key
        assert ours[key].shape == theirs[key].shape, key
        np.testing.assert_allclose(ours[key], theirs[key], rtol=rtol, atol=atol[key],
                                   err_msg=key)


def _live(y, both=False):
    """Some window has a positive maximum, so some gradient flows (else the comparison
    checks nothing); with ``both``, some window's maximum is <= 0 too (relu's other branch:
    no gradient).  Small cases (one channel, a 1x1 kernel) may have no dead window."""
    return bool((y > 0).any() and (not both or (y == 0).any()))


# -- numerical gradient check (float64) ------------------------------------------------------
@pytest.mark.parametrize("bias", BIAS, ids=BIAS_IDS)
@pytest.mark.parametrize("k,p,n,c,h,w", GEOMS, ids=GEOM_IDS)
def test_gradcheck(k, p, n, c, h, w, bias, rng, draw):
    layer = _fused(c, 3, k, p, bias=bias, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((n, c, h, w)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "conv.weight"] + ["conv.bias"] * bias
    assert all(r.passed for r in report), "\n".join(map(str, report))


@pytest.mark.parametrize("bias", BIAS, ids=BIAS_IDS)
@pytest.mark.parametrize("k,p", PAIRS, ids=PAIR_IDS)
def test_gradcheck_pairs(k, p, bias, rng, draw):
    layer = _fused(2, 3, k, p, bias=bias, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((2, 2, 7, 8)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "conv.weight"] + ["conv.bias"] * bias
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_gradcheck_several_chunks(rng, draw):
    """N = 11 samples in chunks of 8 and 3 (rows of 81 = 6 * 12 + 9 positions, the padded
    width 11 taken as 12): the chunk boundaries change no derivative."""
    layer = _fused(2, 3, 3, 1, dtype=np.float64, rng=rng)
    x = draw((11, 2, 7, 9))
    assert chunk_size(7, 9, 3, 3, 1, 1) == 8
    report = npnet.gradcheck(layer, x, mode="full", rng=rng)
    assert all(r.passed for r in report), "\n".join(map(str, report))


# -- torch parity (float32) ------------------------------------------------------------------
def _assert_matches_torch(layer, x, tol32, draw, both=False):
    g = draw(_pooled_shape(layer, x.shape), np.float32)
    ours = _run(layer, x, g)
    theirs = _torch_run(layer, x, g)
    assert _live(theirs["y"], both)
    # rtol 1e-5 as in test_conv.py; the atol is the derived one (_atol)
    _assert_close(ours, theirs, _atol(layer.conv.weight, x, g, np.float32, tol32), np.float32,
                  1e-5)


@pytest.mark.parametrize("bias", BIAS, ids=BIAS_IDS)
@pytest.mark.parametrize("k,p,n,c,h,w", GEOMS, ids=GEOM_IDS)
def test_matches_torch(k, p, n, c, h, w, bias, rng, draw, tol32):
    layer = _fused(c, 4, k, p, bias=bias, rng=rng)
    _assert_matches_torch(layer, draw((n, c, h, w), np.float32), tol32, draw)


@pytest.mark.parametrize("k,p", PAIRS, ids=PAIR_IDS)
def test_matches_torch_pairs(k, p, rng, draw, tol32):
    layer = _fused(3, 4, k, p, rng=rng)
    _assert_matches_torch(layer, draw((2, 3, 9, 8), np.float32), tol32, draw)


@pytest.mark.parametrize("geom", CHUNKED.values(), ids=CHUNKED.keys())
def test_matches_torch_several_chunks(geom, rng, draw, tol32):
    N, C, F, H, W, k, p = geom
    layer = _fused(C, F, k, p, rng=rng)
    _assert_matches_torch(layer, draw((N, C, H, W), np.float32), tol32, draw, both=True)


# -- against the three layers it stands for --------------------------------------------------
def _assert_matches_three(layer, x, dtype, tol32, draw, both=False):
    g = draw(_pooled_shape(layer, x.shape), dtype)
    theirs = _run_three(layer, x, g)
    ours = _run(layer, x, g)
    assert _live(theirs["y"], both)
    # the same sums in another order: only the derived atol (rtol 0)
    _assert_close(ours, theirs, _atol(layer.conv.weight, x, g, dtype, tol32), dtype, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k,p,n,c,h,w", GEOMS, ids=GEOM_IDS)
def test_equals_the_three_layers(k, p, n, c, h, w, dtype, rng, draw, tol32):
    layer = _fused(c, 4, k, p, dtype=dtype, rng=rng)
    _assert_matches_three(layer, draw((n, c, h, w), dtype), dtype, tol32, draw)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k,p", PAIRS, ids=PAIR_IDS)
def test_equals_the_three_layers_pairs(k, p, dtype, rng, draw, tol32):
    layer = _fused(2, 3, k, p, bias=False, dtype=dtype, rng=rng)
    _assert_matches_three(layer, draw((2, 2, 9, 8), dtype), dtype, tol32, draw)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", CHUNKED.values(), ids=CHUNKED.keys())
def test_equals_the_three_layers_several_chunks(geom, dtype, rng, draw, tol32):
    N, C, F, H, W, k, p = geom
    layer = _fused(C, F, k, p, dtype=dtype, rng=rng)
    _assert_matches_three(layer, draw((N, C, H, W), dtype), dtype, tol32, draw, both=True)


def test_float64_agrees_with_the_three_layers_to_1e_14(rng, draw):
    """The claim in plain numbers: values of order 1, sums of a few dozen products."""
    layer = _fused(3, 4, 3, 1, dtype=np.float64, rng=rng)
    x = draw((2, 3, 9, 7))
    g = draw(_pooled_shape(layer, x.shape))
    theirs, ours = _run_three(layer, x, g), _run(layer, x, g)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-14, err_msg=key)


# -- hand-made cases -------------------------------------------------------------------------
def test_hand_identity_conv_routes_to_positive_winners():
    """A 1x1 conv of weight 1 and bias 0: z is x itself, so the block is relu(maxpool(x)).
    The 5x5 map pools to 2x2 (the last row and column are dropped, floor mode)."""
    conv = Conv2d(1, 1, 1, dtype=np.float64)
    conv.params["weight"][...] = 1
    conv.params["bias"][...] = 0
    layer = ConvReLUMaxPool2d(conv)
    x = np.array([[1, 3, -2, -5, 9],
                  [2, -1, -4, -3, 9],
                  [-6, -7, 8, 4, 9],
                  [-8, -9, 5, 7, 9],
                  [9, 9, 9, 9, 9]], dtype=np.float64).reshape(1, 1, 5, 5)
    y = layer(x)
    # windows {1, 3, 2, -1} -> 3; {-2, -5, -4, -3} -> max -2, relu 0; {-6, -7, -8, -9} -> 0;
    # {8, 4, 5, 7} -> 8.  The 9s are outside every window.
    np.testing.assert_array_equal(y[0, 0], [[3, 0], [0, 8]])
    g = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)                 # 1, 2 / 3, 4
    grad_in = layer.backward(g)
    expected = np.zeros((5, 5))
    expected[0, 1] = 1           # the 3 won the first window
    expected[2, 2] = 4           # the 8 won the last; windows with max <= 0 give nothing
    np.testing.assert_array_equal(grad_in[0, 0], expected)
    np.testing.assert_array_equal(conv.grads["weight"].ravel(), [1 * 3 + 4 * 8])
    np.testing.assert_array_equal(conv.grads["bias"], [1 + 4])


def test_hand_3x3_filter_with_padding():
    """A 4x4 image, one 3x3 filter (the centre minus the right neighbour), padding 1:
    z[i, j] = x[i, j] - x[i, j + 1] (x = 0 beyond the right edge)."""
    conv = Conv2d(1, 1, 3, padding=1, bias=False, dtype=np.float64)
    conv.params["weight"][...] = [[0, 0, 0], [0, 1, -1], [0, 0, 0]]
    layer = ConvReLUMaxPool2d(conv)
    x = np.array([[1, 4, 2, 3],
                  [5, 0, 7, 6],
                  [3, 3, 9, 1],
                  [2, 8, 4, 5]], dtype=np.float64).reshape(1, 1, 4, 4)
    # z = [[-3, 2, -1, 3], [5, -7, 1, 6], [0, -6, 8, 1], [-6, 4, -1, 5]]
    y = layer(x)
    np.testing.assert_array_equal(y[0, 0], [[5, 6], [4, 8]])
    grad_in = layer.backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    # winners z[1, 0] = x[1,0] - x[1,1], z[1, 3] = x[1,3], z[3, 1] = x[3,1] - x[3,2],
    # z[2, 2] = x[2,2] - x[2,3]: each sends +g to its own pixel and -g to its right one
    expected = np.zeros((4, 4))
    expected[1, 0], expected[1, 1] = 1, -1
    expected[1, 3] = 10
    expected[3, 1], expected[3, 2] = 100, -100
    expected[2, 2], expected[2, 3] = 1000, -1000
    np.testing.assert_array_equal(grad_in[0, 0], expected)


# -- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dtype_is_kept(dtype, rng, draw):
    layer = _fused(2, 3, 3, 1, dtype=dtype, rng=rng)
    y = layer(draw((2, 2, 7, 6), dtype))
    grad_in = layer.backward(draw(y.shape, dtype))
    assert y.dtype == dtype and grad_in.dtype == dtype
    assert set(layer.conv.grads) == {"weight", "bias"}
    assert all(g.dtype == dtype for g in layer.conv.grads.values())


def test_need_grad_in_false_returns_none_and_the_same_param_grads(rng, draw):
    layer = _fused(2, 3, 3, 1, rng=rng)
    x = draw((5, 2, 7, 7), np.float32)
    g = draw(_pooled_shape(layer, x.shape), np.float32)
    full = _run(layer, x, g)
    assert full["grad_in"].shape == x.shape
    skipped = _run(layer, x, g, need_grad_in=False)
    assert skipped["grad_in"] is None
    for k in ("weight", "bias"):          # the same kernel sums: bit-identical
        np.testing.assert_array_equal(skipped[k], full[k], err_msg=k)


def test_gradients_accumulate_and_zero_grad_resets(rng, draw):
    layer = _fused(2, 3, 3, 1, rng=rng)
    x = draw((3, 2, 7, 5), np.float32)
    g = draw(_pooled_shape(layer, x.shape), np.float32)
    layer(x)
    first_in = layer.backward(g)
    once = {k: v.copy() for k, v in layer.conv.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    layer(x)
    second_in = layer.backward(g)
    for k in once:        # the same sums, added once more: exactly twice (a + a is exact)
        np.testing.assert_array_equal(layer.conv.grads[k], 2 * once[k], err_msg=k)
    np.testing.assert_array_equal(first_in, second_in)    # grad_in does not accumulate
    layer.zero_grad()
    assert all(np.all(v == 0) for v in layer.conv.grads.values())


def test_eval_mode_keeps_no_cache_and_backward_names_the_layer(rng, draw):
    layer = _fused(1, 2, 3, rng=rng)
    x = draw((2, 1, 6, 6), np.float32)
    y_train = layer(x)
    layer.eval()
    assert not layer.training and not layer.conv.training      # the mode is the conv's
    y_eval = layer(x)
    np.testing.assert_array_equal(y_eval, y_train)
    assert layer._cache is None
    with pytest.raises(RuntimeError, match=r"(?s)ConvReLUMaxPool2d.*forward\(\) in training"):
        layer.backward(np.ones_like(y_eval))
    layer.train()
    assert layer.conv.training
    layer(x)
    assert layer.backward(np.ones_like(y_eval)).shape == x.shape


def test_backward_without_forward_raises(rng):
    layer = _fused(1, 1, 3, rng=rng)
    with pytest.raises(RuntimeError, match=r"(?s)ConvReLUMaxPool2d.*forward\(\) in training"):
        layer.backward(np.zeros((1, 1, 1, 1), np.float32))


def test_one_backward_per_forward(rng, draw):
    layer = _fused(1, 2, 3, rng=rng)
    y = layer(draw((1, 1, 6, 6), np.float32))
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="ConvReLUMaxPool2d"):
        layer.backward(np.ones_like(y))


def test_non_contiguous_input(rng, draw):
    layer = _fused(2, 3, 3, 1, rng=rng)
    x = draw((2, 6, 7, 12), np.float32)[:, ::3, :, ::2]          # strided view (2, 2, 7, 6)
    np.testing.assert_array_equal(layer(x), layer(np.ascontiguousarray(x)))


def test_the_input_kept_for_backward_is_not_the_callers(rng, draw):
    """Changing x after the forward must not change the gradients of that forward."""
    layer = _fused(2, 3, 3, 1, rng=rng)
    x = draw((2, 2, 6, 6), np.float32)
    g = draw(_pooled_shape(layer, x.shape), np.float32)
    expected = _run(layer, x, g)
    layer.zero_grad()
    y = layer(x)
    x[...] = 0
    y[...] = -1                      # nor the output handed back (backward reads y > 0)
    grad_in = layer.backward(g)
    np.testing.assert_array_equal(grad_in, expected["grad_in"])
    np.testing.assert_array_equal(layer.conv.grads["weight"], expected["weight"])


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (lambda y: np.ones((y.shape[0], y.shape[1], y.shape[2] + 1, y.shape[3]), np.float32),
     r"(?s)ConvReLUMaxPool2d.*grad_out has shape \(2, 3, 4, 3\), expected \(2, 3, 3, 3\)"),
    (lambda y: np.ones(y.shape, np.float64), r"(?s)ConvReLUMaxPool2d.*grad_out is float64, "
                                             r"expected float32"),
    (lambda y: np.ones(y.shape, np.int32), r"(?s)ConvReLUMaxPool2d.*grad_out is int32"),
    (lambda y: np.ones(y.shape, np.float32).tolist(),
     r"(?s)ConvReLUMaxPool2d.*grad_out must be a numpy array, got list"),
], ids=["shape", "float64", "int32", "list"])
def test_a_refused_grad_out_keeps_the_cache_for_a_corrected_retry(bad, match, rng, draw):
    layer = _fused(2, 3, 3, 1, rng=rng)
    x = draw((2, 2, 7, 6), np.float32)
    g = draw(_pooled_shape(layer, x.shape), np.float32)
    expected = _run(layer, x, g)
    layer.zero_grad()
    y = layer(x)
    with pytest.raises(ValueError, match=match):
        layer.backward(bad(y))
    assert all(np.all(v == 0) for v in layer.conv.grads.values())    # nothing added
    np.testing.assert_array_equal(layer.backward(g), expected["grad_in"])
    np.testing.assert_array_equal(layer.conv.grads["weight"], expected["weight"])


def test_wrong_input_is_refused_naming_the_layer(rng):
    layer = _fused(2, 3, 3, rng=rng)
    with pytest.raises(ValueError, match=r"(?s)ConvReLUMaxPool2d.*expected a 4-D input"):
        layer(np.zeros((2, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"(?s)ConvReLUMaxPool2d.*input is float64 but the "
                                         r"layer is float32"):
        layer(np.zeros((1, 2, 6, 6), np.float64))
    with pytest.raises(ValueError, match=r"Conv2d\(2, 3.*expected 2 input channels"):
        layer(np.zeros((1, 1, 6, 6), np.float32))
    # a conv output smaller than the 2x2 window has nothing to pool
    with pytest.raises(ValueError, match=r"MaxPool2d.*smaller than the window"):
        layer(np.zeros((1, 2, 3, 6), np.float32))


@pytest.mark.parametrize("make,match", [
    (lambda: ConvReLUMaxPool2d(ReLU()), r"conv must be a Conv2d, got ReLU"),
    (lambda: ConvReLUMaxPool2d(npnet.Linear(2, 3)), r"conv must be a Conv2d, got Linear"),
    (lambda: ConvReLUMaxPool2d(Conv2d(1, 1, 3), relu=npnet.Tanh()),
     r"relu must be a ReLU, got Tanh"),
    (lambda: ConvReLUMaxPool2d(Conv2d(1, 1, 3), relu=MaxPool2d(2)),
     r"relu must be a ReLU, got MaxPool2d"),
    (lambda: ConvReLUMaxPool2d(Conv2d(1, 1, 3), pool=npnet.AvgPool2d(2)),
     r"pool must be a MaxPool2d, got AvgPool2d"),
    (lambda: ConvReLUMaxPool2d(Conv2d(1, 1, 3), pool=ReLU()),
     r"pool must be a MaxPool2d, got ReLU"),
], ids=["conv_relu", "conv_linear", "relu_tanh", "relu_pool", "pool_avg", "pool_relu"])
def test_constructor_errors_name_the_problem(make, match):
    with pytest.raises(ValueError, match=r"ConvReLUMaxPool2d: " + match):
        make()


def test_defaults_are_relu_and_a_2x2_pool(rng):
    layer = ConvReLUMaxPool2d(Conv2d(1, 2, 3, rng=rng))
    conv, relu, pool = layer.stands_for
    assert conv is layer.conv and type(relu) is ReLU and type(pool) is MaxPool2d
    assert (pool.kernel_size, pool.stride, pool.padding) == ((2, 2), (2, 2), (0, 0))
    assert ConvReLUMaxPool2d.fits(conv, relu, pool)


# -- the layers it stands for are read at every call -----------------------------------------
@pytest.mark.parametrize("which,attr,value", [
    ("conv", "stride", 2), ("conv", "stride", (1, 2)), ("pool", "kernel_size", 3),
    ("pool", "stride", 1), ("pool", "padding", 1),
], ids=["conv_stride_2", "conv_stride_1x2", "pool_3x3", "pool_stride_1", "pool_padding_1"])
def test_a_geometry_the_kernel_cannot_compute_is_refused(which, attr, value, rng, draw):
    layer = _fused(2, 3, 3, 1, rng=rng)
    x = draw((2, 2, 8, 8), np.float32)
    before = layer(x)
    part = getattr(layer, which)
    old = getattr(part, attr)
    setattr(part, attr, value)
    assert not ConvReLUMaxPool2d.fits(layer.conv, layer.relu, layer.pool)
    with pytest.raises(ValueError, match=r"ConvReLUMaxPool2d: the kernel computes a Conv2d of "
                                         r"stride \(1, 1\), a ReLU and a 2x2 MaxPool2d"):
        layer(x)
    setattr(part, attr, old)            # back to what the kernel computes: as before
    np.testing.assert_array_equal(layer(x), before)


def test_a_changed_conv_padding_takes_effect(rng, draw, tol32):
    layer = _fused(2, 3, 3, 0, rng=rng)
    x = draw((2, 2, 9, 7), np.float32)
    assert layer(x).shape == (2, 3, 3, 2)
    layer.conv.padding = 2
    assert layer(x).shape == (2, 3, 5, 4)
    # the three layers read the same conv: with its new padding, both must agree
    _assert_matches_three(layer, x, np.float32, tol32, draw)
    layer.conv.padding = (0, 1)
    _assert_matches_three(layer, x, np.float32, tol32, draw)


def test_shares_the_convs_parameters(rng, draw):
    conv = Conv2d(2, 3, 3, padding=1, rng=rng)
    layer = ConvReLUMaxPool2d(conv)
    assert layer.params == {} and layer.grads == {}              # it owns none itself
    named = dict(layer.named_parameters())
    assert list(named) == ["conv.weight", "conv.bias"]
    assert named["conv.weight"].data is conv.params["weight"]
    assert named["conv.weight"].grad is conv.grads["weight"]
    # a backward fills the conv's grads
    x = draw((2, 2, 6, 6), np.float32)
    y = layer(x)
    layer.backward(draw(y.shape, np.float32))
    assert np.any(conv.grads["weight"] != 0) and np.any(conv.grads["bias"] != 0)
    # a step on the fused layer's parameters trains the conv
    w0 = conv.params["weight"].copy()
    opt = npnet.optim.SGD(layer.parameters(), lr=0.1)
    opt.step()
    np.testing.assert_allclose(conv.params["weight"], w0 - 0.1 * conv.grads["weight"],
                               rtol=1e-6)
    assert np.any(conv.params["weight"] != w0)
    # a weight assigned to the conv is the one the next fused forward uses
    conv.weight = np.zeros_like(w0)
    conv.bias = np.full(3, 0.5, np.float32)
    np.testing.assert_array_equal(layer(x), np.full(y.shape, 0.5, np.float32))


# -- threads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("geom", CHUNKED.values(), ids=CHUNKED.keys())
def test_results_are_bit_identical_for_1_and_2_threads(geom, rng, draw):
    """The chunks of samples are fixed by chunk_size, not by the threads, and the per-chunk
    weight gradients are summed in chunk order (npnet/threads.py): not one bit differs."""
    N, C, F, H, W, k, p = geom
    layer = _fused(C, F, k, p, rng=rng)
    x = draw((N, C, H, W), np.float32)
    g = draw(_pooled_shape(layer, x.shape), np.float32)
    runs = []
    old = npnet.threads.get_num_threads()
    try:
        for n in (1, 2):   # needs NUMBA_NUM_THREADS >= 2: the CPU count, or set it so
            npnet.threads.set_num_threads(n)
            assert npnet.threads.get_num_threads() == n
            runs.append(_run(layer, x, g))
    finally:
        npnet.threads.set_num_threads(old)
    assert npnet.threads.get_num_threads() == old
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)


@pytest.mark.parametrize("N, serial", [(1, True), (2, True), (3, False)],
                         ids=["one_image", "two_images_one_chunk", "two_chunks"])
def test_one_chunk_runs_the_kernels_serial_twins(N, serial, rng, draw, monkeypatch):
    """A call whose batch is one chunk (conv1 of LeNet-5 takes 2 samples a chunk) runs the
    kernels' ``_serial`` twins, which use no thread pool (npnet/kernels/fused.py); more
    chunks run the parallel kernels."""
    import npnet.layers.fused as layer_module
    ran = []
    for name in ("conv_relu_pool_forward", "conv_relu_pool_backward",
                 "conv_relu_pool_forward_serial", "conv_relu_pool_backward_serial"):
        kernel = getattr(layer_module, name)
        monkeypatch.setattr(layer_module, name,
                            lambda *a, k=kernel, n=name: ran.append(n) or k(*a))
    layer = _fused(1, 6, 5, 2, rng=rng)            # LeNet-5's conv1: 2 samples a chunk
    x = draw((N, 1, 28, 28), np.float32)
    y = layer(x)
    layer.backward(draw(y.shape, np.float32))
    suffix = "_serial" if serial else ""
    assert ran == ["conv_relu_pool_forward" + suffix, "conv_relu_pool_backward" + suffix]


# -- inside a model --------------------------------------------------------------------------
def _model(dtype, rng):
    return npnet.Sequential(Conv2d(2, 4, 3, padding=1, dtype=dtype, rng=rng), ReLU(),
                            MaxPool2d(2))


def _model_run(model, x, g):
    model.zero_grad()
    y = model(x)
    tape = str(npnet.autograd.tape_of(model))
    grad_in = np.asarray(model.backward(g))
    conv = model[0]
    return tape, {"y": np.asarray(y), "grad_in": grad_in,
                  **{k: v.copy() for k, v in conv.grads.items()}}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_a_model_runs_it_fused_and_equals_the_unfused_model(dtype, rng, draw, tol32):
    model = _model(dtype, rng)
    x = draw((3, 2, 9, 7), dtype)
    g = draw((3, 4, 4, 3), dtype)
    tape, fused = _model_run(model, x, g)
    assert "(1 fused)" in tape
    assert "0 -> 1 -> 2" in tape and "ConvReLUMaxPool2d" in tape
    npnet.fusion.set_fusion(model, False)
    tape, layers = _model_run(model, x, g)
    assert "(0 fused)" in tape and "ConvReLUMaxPool2d" not in tape
    assert all(name in tape for name in ("Conv2d", "ReLU", "MaxPool2d"))
    assert _live(layers["y"], both=True)
    _assert_close(fused, layers, _atol(model[0].weight, x, g, dtype, tol32), dtype, 0)


def test_a_model_with_a_hook_on_the_conv_is_not_fused(rng, draw):
    model = _model(np.float32, rng)
    seen = []
    model[0].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    model(draw((2, 2, 6, 6), np.float32))
    tape = str(npnet.autograd.tape_of(model))
    assert "ConvReLUMaxPool2d" not in tape and "(0 fused)" in tape
    assert seen == [(2, 4, 6, 6)]           # the hook saw the conv's own output


def test_a_model_does_not_fuse_a_pool_the_kernel_cannot_compute(rng, draw):
    """A 2x2 pool of stride 1 after conv -> relu: the model runs the three layers."""
    model = npnet.Sequential(Conv2d(2, 4, 3, rng=rng), ReLU(), MaxPool2d(2, stride=1))
    x = draw((2, 2, 6, 6), np.float32)
    y = model(x)
    tape = str(npnet.autograd.tape_of(model))
    assert "ConvReLUMaxPool2d" not in tape and "(0 fused)" in tape
    conv, relu, pool = model
    np.testing.assert_array_equal(y, pool(relu(conv(x))))   # the layers' own forwards


@pytest.mark.parametrize("which, replacement", [
    ("pool", lambda: npnet.AvgPool2d(2)), ("relu", lambda: npnet.Tanh()),
    ("conv", lambda: npnet.Linear(3, 3)), ("pool", lambda: npnet.Identity())],
    ids=["pool_avg", "relu_tanh", "conv_linear", "pool_identity"])
def test_a_part_replaced_by_another_layer_is_refused(which, replacement, rng, draw):
    """The three layers are read at every call: replacing one by a layer the kernel does not
    compute (an average pool, a tanh) is refused, never computed as if it were the old."""
    layer = _fused(1, 2, 3, 1, rng=rng)
    x = draw((1, 1, 6, 6), np.float32)
    layer(x)
    setattr(layer, which, replacement())
    with pytest.raises(ValueError, match=r"ConvReLUMaxPool2d: the kernel computes a Conv2d"):
        layer(x)
