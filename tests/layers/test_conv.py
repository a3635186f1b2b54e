"""Tests of npnet/layers/conv.py: gradcheck, torch parity, hand cases, properties, errors."""
import itertools

import numpy as np
import pytest

import npnet
from npnet import Conv2d

# -- geometries ------------------------------------------------------------------------------
# Every kernel 1/3/5 x stride 1/2 x padding 0/1/2, on non-square inputs, batch 1 or 2.
_SIZES = [(7, 9), (6, 5), (5, 8), (9, 6)]
GEOMS = [(k, s, p, 1 + (i % 2), *_SIZES[i % len(_SIZES)])
         for i, (k, s, p) in enumerate(itertools.product([1, 3, 5], [1, 2], [0, 1, 2]))]
GEOM_IDS = [f"k{k}_s{s}_p{p}_n{n}_{h}x{w}" for k, s, p, n, h, w in GEOMS]

# (kernel, stride, padding) as pairs, to catch a swapped height / width anywhere
PAIRS = [((3, 5), (1, 2), (2, 0)), ((1, 3), (2, 1), (0, 1)), ((5, 2), (2, 3), (1, 2))]
PAIR_IDS = ["k3x5_s1x2_p2x0", "k1x3_s2x1_p0x1", "k5x2_s2x3_p1x2"]



def _assert_conv_matches_torch(layer, x, g, vs_torch, tol32):
    ours, theirs = vs_torch(layer, x, g)
    assert ours.keys() == theirs.keys()
    N, C, H, W = x.shape
    F, _, kh, kw = layer.params["weight"].shape
    P = ours["y"].shape[2] * ours["y"].shape[3]
    wmax, xmax, gmax = (float(np.abs(a).max()) for a in (layer.params["weight"], x, g))
    # float32: each output is a sum of K products; see f32_atol for the reasoning
    atol = {"y": tol32(C * kh * kw, wmax * xmax),        # sum over (c, i, j)
            "grad_in": tol32(F * kh * kw, gmax * wmax),  # at most F*kh*kw uses per pixel
            "weight": tol32(N * P, gmax * xmax),         # sum over (n, output position)
            "bias": tol32(N * P, gmax)}
    for key in ours:
        assert ours[key].dtype == np.float32, key
        assert ours[key].shape == theirs[key].shape, key
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=atol[key],
                                   err_msg=key)


# -- numerical gradient check (float64) ------------------------------------------------------
@pytest.mark.parametrize("k,s,p,n,h,w", GEOMS, ids=GEOM_IDS)
def test_gradcheck(k, s, p, n, h, w, rng, draw):
    layer = Conv2d(2, 3, k, stride=s, padding=p, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((n, 2, h, w)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "weight", "bias"]
    assert all(r.passed for r in report), "\n".join(map(str, report))


@pytest.mark.parametrize("k,s,p", PAIRS, ids=PAIR_IDS)
def test_gradcheck_pairs(k, s, p, rng, draw):
    layer = Conv2d(2, 2, k, stride=s, padding=p, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((2, 2, 7, 6)), mode="full", rng=rng)
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_gradcheck_without_bias(rng, draw):
    layer = Conv2d(2, 3, 3, stride=2, padding=1, bias=False, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((2, 2, 6, 7)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "weight"]
    assert all(r.passed for r in report)


# -- torch parity (float32) ------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("k,s,p,n,h,w", GEOMS, ids=GEOM_IDS)
def test_matches_torch(k, s, p, n, h, w, bias, rng, draw, vs_torch, tol32):
    layer = Conv2d(3, 4, k, stride=s, padding=p, bias=bias, rng=rng)
    x = draw((n, 3, h, w), np.float32)
    g = draw(layer.output_shape(x.shape), np.float32)
    _assert_conv_matches_torch(layer, x, g, vs_torch, tol32)


@pytest.mark.parametrize("k,s,p", PAIRS, ids=PAIR_IDS)
def test_matches_torch_pairs(k, s, p, rng, draw, vs_torch, tol32):
    layer = Conv2d(3, 4, k, stride=s, padding=p, rng=rng)
    x = draw((2, 3, 9, 8), np.float32)
    g = draw(layer.output_shape(x.shape), np.float32)
    _assert_conv_matches_torch(layer, x, g, vs_torch, tol32)


def test_matches_torch_wide(rng, draw, vs_torch, tol32):
    """LeNet's conv3 shape: a long reduction (K = 400) and many filters."""
    layer = Conv2d(16, 120, 5, rng=rng)
    x = draw((4, 16, 5, 5), np.float32)
    g = draw((4, 120, 1, 1), np.float32)
    _assert_conv_matches_torch(layer, x, g, vs_torch, tol32)


# -- the roads: im2col and the shifted product (conv.shifted_product picks one) --------------
def test_the_road_is_chosen_by_stride_and_map_size(rng, draw):
    """Stride 1 or 2 on at least 32 output positions: the shifted product, which keeps the
    padded copy of the input for backward; a smaller map or a larger stride: im2col,
    which keeps nothing but x (its columns are rebuilt)."""
    cases = [((1, 3, 8, 8), 1, True),             # an 8x8 map: 64 positions
             ((1, 3, 8, 4), 1, True),             # 8x4: 32, the smallest shifted map
             ((1, 3, 7, 4), 1, False),            # 7x4: 28
             ((1, 3, 4, 4), 1, False),            # 4x4: 16 (the ResNet's last stage)
             ((1, 3, 16, 16), 2, True),           # stride 2 on 8x8: through the phases
             ((1, 3, 16, 8), (2, 1), True),       # 8x8 again
             ((1, 3, 8, 8), 2, False),            # 4x4 (the ResNet's last stage)
             ((1, 3, 24, 24), 3, False)]          # stride 3: im2col, whatever the size
    for x_shape, stride, shifted in cases:
        layer = Conv2d(3, 2, 3, stride=stride, padding=1, rng=rng)
        layer(draw(x_shape, np.float32))
        assert (layer._cache[1] is not None) is shifted, (x_shape, stride)


@pytest.mark.parametrize("N, serial", [(1, True), (8, True), (9, False)],
                         ids=["one_image", "eight_images_one_chunk", "two_chunks"])
def test_one_chunk_of_the_shifted_product_runs_the_serial_twins(N, serial, rng, draw,
                                                                monkeypatch):
    """The shifted product on a batch that is one chunk (8 samples of an 8x8 map) runs the
    kernels' ``_serial`` twins, without the thread pool (npnet/kernels/fused.py)."""
    import npnet.kernels.fused as shifted
    ran = []
    for name in ("conv_forward", "conv_backward", "conv_forward_serial",
                 "conv_backward_serial"):
        kernel = getattr(shifted, name)
        monkeypatch.setattr(shifted, name, lambda *a, k=kernel, n=name: ran.append(n) or k(*a))
    layer = Conv2d(3, 2, 3, padding=1, rng=rng)
    assert shifted.chunk_size(8, 8, 3, 3, 1, 1) == 8
    y = layer(draw((N, 3, 8, 8), np.float32))
    layer.backward(draw(y.shape, np.float32))
    suffix = "_serial" if serial else ""
    assert ran == ["conv_forward" + suffix, "conv_backward" + suffix]


def test_the_im2col_road_splits_a_batch_into_at_least_eight_chunks(rng, draw, monkeypatch):
    """Small columns (a 1x1 convolution of stride 2, as the ResNet's shortcuts) fit a whole
    batch in the chunks' 1 MiB budget; a chunk still holds at most an eighth of the
    batch, so that the threads share it (``chunks.chunk_size``'s min_chunks)."""
    counts = []
    real = npnet.layers.conv.run_chunks
    monkeypatch.setattr(npnet.layers.conv, "run_chunks",
                        lambda fn, N, S: counts.append(real(fn, N, S)) or counts[-1])
    layer = Conv2d(4, 8, 1, stride=2, rng=rng)
    y = layer(draw((64, 4, 8, 8), np.float32))
    layer.backward(draw(y.shape, np.float32))
    assert counts == [8, 8]                        # forward, backward: 8 samples a chunk


@pytest.mark.parametrize("k,s,p,c,h,w", [(3, 1, 1, 3, 8, 9), (5, 1, 2, 3, 7, 7),
                                         (1, 1, 0, 3, 6, 11), (3, 1, 0, 3, 10, 8),
                                         (3, 2, 1, 6, 14, 14), (1, 2, 0, 5, 14, 13),
                                         (3, (2, 1), 1, 3, 15, 9), (4, 2, 1, 4, 17, 16)],
                         ids=["k3_p1_8x9", "k5_p2_7x7", "k1_p0_6x11", "k3_p0_10x8",
                              "s2_k3_p1_14x14", "s2_k1_p0_14x13", "s2x1_k3_p1_15x9",
                              "s2_k4_p1_17x16"])
def test_shifted_product_equals_im2col(k, s, p, c, h, w, rng, draw, monkeypatch, tol32):
    """The same layer, input and gradient through both roads: equal to rounding.  Batch 11
    is not a multiple of either road's chunk (up to 8 samples side by side for the shifted
    product), so the last, shorter chunk is covered too.  Strides of 2 take the input's
    phases; 3 channels take dL/dx's rows 3 at a time, 4 to 6 channels four at a time
    (``_gemm_tn_shift_acc``)."""
    layer = Conv2d(c, 5, k, stride=s, padding=p, rng=rng)
    x = draw((11, c, h, w), np.float32)
    g = draw(layer.output_shape(x.shape), np.float32)
    runs = []
    for shifted in (True, False):
        monkeypatch.setattr(npnet.layers.conv, "shifted_product",
                            lambda stride, P, shifted=shifted: shifted)
        layer.zero_grad()
        y = layer(x)
        assert (layer._cache[1] is not None) is shifted
        runs.append((y, layer.backward(g), layer.grads["weight"].copy(),
                     layer.grads["bias"].copy()))
    wmax, xmax, gmax = (float(np.abs(a).max()) for a in (layer.weight, x, g))
    K, P = layer.weight[0].size, g.shape[2] * g.shape[3]
    # two float32 sums of the same terms in different orders, as against torch
    atols = [tol32(K, wmax * xmax), tol32(5 * k * k, gmax * wmax),
             tol32(11 * P, gmax * xmax), tol32(11 * P, gmax)]
    for a, b, atol, name in zip(*runs, atols, ["y", "grad_in", "weight", "bias"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("k,s,h,w", [(2, 2, 3, 3), (2, 2, 2, 3), (3, 3, 4, 5)],
                         ids=["k2_s2_3x3", "k2_s2_2x3", "k3_s3_4x5"])
def test_one_output_pixel_from_part_of_the_input(k, s, h, w, rng, draw, vs_torch, tol32):
    """A stride can leave a 1x1 output whose window does not cover the input: the shortcut
    for a kernel covering the whole input must not be taken (it reshaped the whole input
    into one column; npnet.testing's sweep found it)."""
    layer = Conv2d(2, 3, k, stride=s, rng=rng)
    x = draw((2, 2, h, w), np.float32)
    assert layer.output_shape(x.shape)[2:] == (1, 1)
    _assert_conv_matches_torch(layer, x, draw((2, 3, 1, 1), np.float32), vs_torch, tol32)


def test_init_matches_torch_distribution(rng):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as torch's default."""
    layer = Conv2d(4, 50, 3, rng=rng)
    bound = 1 / np.sqrt(4 * 9)
    w, b = layer.params["weight"], layer.params["bias"]
    assert w.shape == (50, 4, 3, 3) and b.shape == (50,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound          # really spread over the interval
    assert abs(w.mean()) < 0.05 * bound
    same = Conv2d(4, 50, 3, rng=np.random.default_rng(7)).params["weight"]
    again = Conv2d(4, 50, 3, rng=np.random.default_rng(7)).params["weight"]
    np.testing.assert_array_equal(same, again)     # only the explicit rng decides


# -- hand-made cases -------------------------------------------------------------------------
def _conv(weight, bias=None, **kw):
    F, C, kh, kw_ = weight.shape
    layer = Conv2d(C, F, (kh, kw_), bias=bias is not None, dtype=np.float64, **kw)
    layer.params["weight"][...] = weight
    if bias is not None:
        layer.params["bias"][...] = bias
    return layer


def test_hand_4x4_input_2x2_kernel():
    x = (np.arange(16.0) + 1).reshape(1, 1, 4, 4)          # x[i, j] = 4i + j + 1
    layer = _conv(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), bias=np.array([0.5]))
    y = layer(x)
    # y[i, j] = 1*x[i,j] + 2*x[i,j+1] + 3*x[i+1,j] + 4*x[i+1,j+1] + 0.5 = 40i + 10j + 44.5
    np.testing.assert_array_equal(y[0, 0], [[44.5, 54.5, 64.5],
                                            [84.5, 94.5, 104.5],
                                            [124.5, 134.5, 144.5]])
    g = np.arange(9.0).reshape(1, 1, 3, 3)                    # g[i, j] = 3i + j
    grad_in = layer.backward(g)
    # dW[a, b] = sum_ij g[i,j] x[i+a, j+b] = 258 + 36 * (4a + b + 1)
    np.testing.assert_array_equal(layer.grads["weight"][0, 0], [[294, 330], [438, 474]])
    np.testing.assert_array_equal(layer.grads["bias"], [36])   # sum of g
    # dx[h, w] = sum_ab W[a, b] g[h-a, w-b]  (a "full" correlation with the flipped kernel)
    np.testing.assert_array_equal(grad_in[0, 0], [[0, 1, 4, 4],
                                                  [3, 13, 23, 18],
                                                  [15, 43, 53, 36],
                                                  [18, 45, 52, 32]])


def test_hand_stride_2_sums_blocks():
    x = (np.arange(16.0) + 1).reshape(1, 1, 4, 4)
    layer = _conv(np.ones((1, 1, 2, 2)), stride=2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[14, 22], [46, 54]])  # 2x2 block sums
    g = np.arange(4.0).reshape(1, 1, 2, 2)
    # each pixel lies in exactly one window: it receives that window's gradient
    np.testing.assert_array_equal(layer.backward(g)[0, 0], np.kron(g[0, 0], np.ones((2, 2))))


def test_hand_padding_is_zero_and_not_flipped():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    layer = _conv(np.arange(9.0).reshape(1, 1, 3, 3), padding=1)
    # y[0,0] = W[1,1]*1 + W[1,2]*2 + W[2,1]*3 + W[2,2]*4 = 4 + 10 + 21 + 32 (no flip)
    np.testing.assert_array_equal(layer(x)[0, 0], [[67, 57], [37, 27]])
    g = np.array([[[[1.0, 10.0], [100.0, 1000.0]]]])
    grad_in = layer.backward(g)
    # dx[0,0] = g[0,0] W[1,1] + g[0,1] W[1,0] + g[1,0] W[0,1] + g[1,1] W[0,0]
    assert grad_in[0, 0, 0, 0] == 1 * 4 + 10 * 3 + 100 * 1 + 1000 * 0
    # dW[1,1] = sum of g * x over the aligned pixels; dW[0,0] sees x[0,0] only at out (1,1)
    assert layer.grads["weight"][0, 0, 1, 1] == 1 * 1 + 10 * 2 + 100 * 3 + 1000 * 4
    assert layer.grads["weight"][0, 0, 0, 0] == 1000 * 1


def test_channels_and_filters_are_not_mixed():
    """Two input channels, two filters, each filter reading one channel only."""
    x = np.stack([np.full((3, 3), 1.0), np.full((3, 3), 100.0)])[None]      # (1, 2, 3, 3)
    w = np.zeros((2, 2, 1, 1))
    w[0, 1], w[1, 0] = 2.0, 3.0          # filter 0 reads channel 1, filter 1 reads channel 0
    y = _conv(w)(x)
    np.testing.assert_array_equal(y[0, 0], np.full((3, 3), 200.0))
    np.testing.assert_array_equal(y[0, 1], np.full((3, 3), 3.0))


# -- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dtype_is_kept(dtype, rng, draw):
    layer = Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=rng)
    assert all(p.dtype == dtype for p in layer.params.values())
    y = layer(draw((2, 2, 5, 6), dtype))
    grad_in = layer.backward(draw(y.shape, dtype))
    assert y.dtype == dtype and grad_in.dtype == dtype
    assert all(g.dtype == dtype for g in layer.grads.values())


def test_gradients_accumulate_and_zero_grad_resets(rng, draw):
    layer = Conv2d(2, 3, 3, stride=2, padding=1, rng=rng)
    x, g = draw((2, 2, 7, 5), np.float32), draw((2, 3, 4, 3), np.float32)
    layer(x)
    first_in = layer.backward(g)
    once = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    layer(x)
    second_in = layer.backward(g)
    for k in once:  # the same sums, added once more: exactly twice (x + x is exact)
        np.testing.assert_array_equal(layer.grads[k], 2 * once[k])
    np.testing.assert_array_equal(first_in, second_in)   # grad_in does not accumulate
    layer.zero_grad()
    assert all(np.all(v == 0) for v in layer.grads.values())


def test_backward_without_forward_raises(rng):
    layer = Conv2d(1, 1, 3, rng=rng)
    with pytest.raises(RuntimeError, match=r"Conv2d.*forward\(\) in training mode"):
        layer.backward(np.zeros((1, 1, 1, 1), np.float32))


def test_one_backward_per_forward(rng, draw):
    layer = Conv2d(1, 2, 3, rng=rng)
    y = layer(draw((1, 1, 4, 4), np.float32))
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="Conv2d"):
        layer.backward(np.ones_like(y))


def test_eval_mode_keeps_no_cache(rng, draw):
    layer = Conv2d(1, 2, 3, rng=rng)
    x = draw((1, 1, 4, 4), np.float32)
    y_train = layer(x)
    layer.eval()
    y_eval = layer(x)
    np.testing.assert_array_equal(y_eval, y_train)
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="Conv2d"):
        layer.backward(np.ones_like(y_eval))


def test_need_grad_in_false_gives_the_same_param_grads(rng, draw):
    layer = Conv2d(2, 3, 3, padding=1, rng=rng)
    x, g = draw((2, 2, 5, 5), np.float32), draw((2, 3, 5, 5), np.float32)
    layer(x)
    assert layer.backward(g) is not None
    full = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    layer(x)
    assert layer.backward(g, need_grad_in=False) is None
    for k in full:
        np.testing.assert_array_equal(layer.grads[k], full[k])


def test_output_does_not_alias_between_calls(rng, draw):
    """The column buffer is reused between steps: earlier outputs must stay intact."""
    layer = Conv2d(2, 3, 3, rng=rng)
    x1, x2 = draw((2, 2, 5, 5), np.float32), draw((2, 2, 5, 5), np.float32)
    y1 = layer(x1)
    kept = y1.copy()
    layer(x2)
    np.testing.assert_array_equal(y1, kept)


def test_non_contiguous_input(rng, draw):
    layer = Conv2d(2, 3, 3, rng=rng)
    x = draw((2, 6, 5, 10), np.float32)[:, ::3, :, ::2]          # strided view (2, 2, 5, 5)
    np.testing.assert_array_equal(layer(x), layer(np.ascontiguousarray(x)))


# -- errors ----------------------------------------------------------------------------------
def test_wrong_ndim(rng):
    layer = Conv2d(3, 4, 3, rng=rng)
    with pytest.raises(ValueError, match=r"Conv2d.*expected a 4-D input.*\(3, 8, 8\)"):
        layer(np.zeros((3, 8, 8), np.float32))


def test_wrong_channel_count(rng):
    layer = Conv2d(3, 4, 3, rng=rng)
    with pytest.raises(ValueError, match=r"Conv2d.*expected 3 input channels.*\(2, 1, 8, 8\)"):
        layer(np.zeros((2, 1, 8, 8), np.float32))


def test_input_smaller_than_kernel(rng):
    layer = Conv2d(1, 1, 5, padding=1, rng=rng)
    with pytest.raises(ValueError, match=r"Conv2d.*\(1, 1, 2, 9\) is smaller than the kernel"):
        layer(np.zeros((1, 1, 2, 9), np.float32))
    assert layer(np.zeros((1, 1, 3, 3), np.float32)).shape == (1, 1, 1, 1)  # just fits


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.float16],
                         ids=["f64", "i64", "f16"])
def test_input_dtype_mismatch(dtype, rng):
    layer = Conv2d(1, 1, 3, rng=rng)
    with pytest.raises(ValueError, match=r"Conv2d.*float32"):
        layer(np.zeros((1, 1, 4, 4), dtype))


def test_not_an_array(rng):
    with pytest.raises(ValueError, match=r"Conv2d.*numpy array.*list"):
        Conv2d(1, 1, 1, rng=rng)([[[[1.0]]]])


def test_grad_out_wrong_shape(rng):
    layer = Conv2d(1, 2, 3, rng=rng)
    layer(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*grad_out has shape \(1, 2, 4, 3\), "
                                         r"expected \(1, 2, 3, 3\)"):
        layer.backward(np.zeros((1, 2, 4, 3), np.float32))


def test_grad_out_wrong_dtype(rng):
    layer = Conv2d(1, 2, 3, rng=rng)
    layer(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*grad_out is float64, expected float32"):
        layer.backward(np.zeros((1, 2, 3, 3), np.float64))


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=0), r"kernel_size and stride must be >= 1"),
    (dict(kernel_size=(3, 0)), r"kernel_size and stride must be >= 1"),
    (dict(kernel_size=(3,)), r"Conv2d kernel_size must be an int or a pair of ints"),
    (dict(kernel_size=(3, 3, 3)), r"Conv2d kernel_size must be an int or a pair"),
    (dict(kernel_size=3.0), r"Conv2d kernel_size must be an int or a pair"),
    (dict(kernel_size=True), r"Conv2d kernel_size must be an int or a pair"),
    (dict(kernel_size=3, stride=0), r"stride must be >= 1"),
    (dict(kernel_size=3, stride=(1, "2")), r"Conv2d stride must be an int or a pair"),
    (dict(kernel_size=3, padding=-1), r"padding >= 0"),
    (dict(kernel_size=3, padding=(0, -2)), r"padding >= 0"),
    (dict(kernel_size=3, in_channels=0), r"Conv2d: in_channels must be a positive int"),
    (dict(kernel_size=3, out_channels=2.5), r"Conv2d: out_channels must be a positive int"),
    (dict(kernel_size=3, dtype=np.int32), r"Conv2d: dtype must be float32 or float64"),
], ids=["k0", "k3x0", "k_one_elem", "k_triple", "k_float", "k_bool", "s0", "s_str", "p_neg",
        "p_pair_neg", "cin0", "cout_float", "dtype_int"])
def test_constructor_errors(kwargs, match):
    args = dict(in_channels=1, out_channels=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Conv2d(**args)


def test_repr_names_the_geometry(rng):
    r = repr(Conv2d(3, 4, 5, stride=2, padding=1, bias=False, rng=rng))
    assert r.startswith("Conv2d(3, 4, kernel_size=(5, 5), stride=(2, 2)")
    assert "padding=(1, 1)" in r and "bias=False" in r


def test_rng_must_be_a_generator():
    with pytest.raises(ValueError, match="rng must be a np.random.Generator"):
        Conv2d(1, 2, 3, rng=0)


def test_a_refused_grad_out_keeps_the_cache_for_a_corrected_retry():
    conv = Conv2d(1, 2, 3, rng=np.random.default_rng(0))
    y = conv(np.random.default_rng(1).standard_normal((2, 1, 5, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="grad_out has shape"):
        conv.backward(np.ones((2, 2, 4, 4), np.float32))
    assert conv.backward(np.ones_like(y)).shape == (2, 1, 5, 5)
