"""The fused conv + ReLU + 2x2 max-pool kernels against their NumPy references.

npnet/kernels/fused.py is checked against npnet/kernels/reference.py (which composes the
plain im2col / max-pool references) over many geometries, in float32.
"""
import numpy as np
import pytest

from npnet.kernels.fused import (chunk_size, conv_backward, conv_backward_serial, conv_forward,
                                 conv_forward_serial, conv_relu_pool_backward,
                                 conv_relu_pool_backward_serial, conv_relu_pool_forward,
                                 conv_relu_pool_forward_serial, grad_input_weights, padded_shape,
                                 row_layout, tasks)
from npnet.kernels.reference import conv_relu_pool_backward_ref, conv_relu_pool_forward_ref

# (N, C, F, H, W, kh, kw, ph, pw)
GEOMETRIES = {
    "lenet_conv1": (4, 1, 6, 28, 28, 5, 5, 2, 2),
    "lenet_conv2": (3, 6, 16, 14, 14, 5, 5, 0, 0),
    "odd_map_k3_p1": (2, 3, 5, 9, 7, 3, 3, 1, 1),
    "rect_k3x5_p0x2": (2, 2, 7, 10, 8, 3, 5, 0, 2),
    "k1_single_sample": (1, 4, 3, 6, 6, 1, 1, 0, 0),
    "map_2x2_exactly": (2, 3, 9, 6, 6, 5, 5, 0, 0),
    "k4_big_pad": (2, 2, 4, 5, 5, 4, 4, 3, 3),
    "pad_wider_than_k2": (3, 2, 3, 5, 6, 2, 2, 0, 2),   # outputs wider than W + pw
}


def _draw(rng, N, C, F, H, W, kh, kw, ph, pw):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    weight = rng.standard_normal((F, C, kh, kw)).astype(np.float32) / np.sqrt(C * kh * kw)
    bias = rng.standard_normal(F).astype(np.float32) * 0.1
    return x, weight, bias


CHUNKS = [1, 2, 3]     # samples per task (the last chunk may be shorter)


def _forward(x, weight, bias, ph, pw, S=1, winners=True, kernel=conv_relu_pool_forward):
    """The forward kernel; ``winners=False`` passes arg with no rows (eval mode)."""
    N, (F, _, kh, kw) = x.shape[0], weight.shape
    OH, OW = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
    y = np.full((N, F, OH // 2, OW // 2), np.nan, dtype=np.float32)
    arg = np.full(y.shape if winners else (0, *y.shape[1:]), -1, dtype=np.int8)
    xps = np.full(padded_shape(x.shape, kw, ph, pw, S), np.nan, dtype=np.float32)  # all set
    kernel(x, weight.reshape(F, -1), bias, kh, kw, ph, pw, OH, OW, S, y, arg, xps)
    return y, arg, xps


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("S", CHUNKS, ids=[f"S{s}" for s in CHUNKS])
def test_forward_matches_reference(geom, S):
    x, weight, bias = _draw(np.random.default_rng(0), *geom)
    ph, pw = geom[7], geom[8]
    y, arg, _ = _forward(x, weight, bias, ph, pw, S)
    y_ref, arg_ref = conv_relu_pool_forward_ref(x, weight, bias, ph, pw)
    assert y.dtype == np.float32 and arg.dtype == np.int8
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    # the winner matters only where the output is positive (elsewhere no gradient flows)
    live = y_ref > 0
    assert live.any() and (~live).any()
    np.testing.assert_array_equal(arg[live], arg_ref[live])


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("S", CHUNKS, ids=[f"S{s}" for s in CHUNKS])
@pytest.mark.parametrize("need_grad_in", [True, False], ids=["grad_in", "no_grad_in"])
def test_backward_matches_reference(geom, S, need_grad_in):
    rng = np.random.default_rng(1)
    x, weight, bias = _draw(rng, *geom)
    ph, pw = geom[7], geom[8]
    N, F, K = x.shape[0], weight.shape[0], weight[0].size
    y, arg, xps = _forward(x, weight, bias, ph, pw, S)
    grad_out = rng.standard_normal(y.shape).astype(np.float32)
    chunks = -(-N // S)
    dw_c = np.full((chunks, F, K), np.nan, dtype=np.float32)
    db_n = np.full((N, F), np.nan, dtype=np.float32)
    grad_in = np.full(x.shape if need_grad_in else (0, *x.shape[1:]), 7.0, dtype=np.float32)
    OH, OW = x.shape[2] + 2 * ph - geom[5] + 1, x.shape[3] + 2 * pw - geom[6] + 1
    conv_relu_pool_backward(xps, grad_input_weights(weight), *geom[5:9], OH, OW, S,
                            grad_out, y, arg, dw_c, db_n, grad_in, need_grad_in)
    dw_ref, db_ref, gin_ref = conv_relu_pool_backward_ref(x, weight, ph, pw, grad_out, y, arg)
    # one weight gradient per chunk of S samples: the reference's per-sample ones summed
    dw_ref_c = np.stack([dw_ref[c * S:(c + 1) * S].sum(axis=0) for c in range(chunks)])
    np.testing.assert_allclose(dw_c, dw_ref_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db_n, db_ref, rtol=1e-4, atol=1e-5)
    if need_grad_in:
        np.testing.assert_allclose(grad_in, gin_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("S", CHUNKS, ids=[f"S{s}" for s in CHUNKS])
def test_the_padded_chunks_are_the_input_zero_padded_side_by_side(geom, S):
    """What the forward keeps for the backward instead of x: row c of xps is chunk c's
    samples side by side in every plane, sample s's columns from s*Wq + pw, zeros
    elsewhere, neighbours sharing their padding; a last, shorter chunk fills the start of
    its row."""
    x, weight, bias = _draw(np.random.default_rng(3), *geom)
    (N, C, H, W), kw, ph, pw = x.shape, geom[6], geom[7], geom[8]
    OW = W + 2 * pw - kw + 1
    Wq, Wt = row_layout(W, pw, OW)
    # the layout's promises: a sample and one side's zeros fit in Wq, its outputs too (they
    # must not run into the next sample's), the last sample's right padding fits in Wt,
    # and every sample starts at an even column (the pool's windows); no wider than that
    assert Wq >= W + pw and Wq >= OW and Wq + Wt >= W + 2 * pw
    assert Wq % 2 == 0 and Wt % 2 == 0 and Wq - max(W + pw, OW) < 2 and Wt < pw + 2
    _, _, xps = _forward(x, weight, bias, ph, pw, S)
    for c in range(-(-N // S)):
        part = x[c * S:(c + 1) * S]
        want = np.zeros((C, H + 2 * ph, len(part) * Wq + Wt), np.float32)
        for s, sample in enumerate(part):
            want[:, ph:ph + H, s * Wq + pw:s * Wq + pw + W] = sample
        np.testing.assert_array_equal(xps[c, :want.size], want.reshape(-1))


def test_ties_go_to_the_first_maximum_and_nan_wins():
    # a 1x1 identity convolution, so z is x itself and the windows are easy to write
    x = np.array([[[[1, 3, 0, -1],
                    [3, 2, -2, -1],
                    [np.nan, 5, 4, 4],
                    [9, 9, 4, 4]]]], dtype=np.float32)
    weight = np.ones((1, 1, 1, 1), dtype=np.float32)
    y, arg, _ = _forward(x, weight, np.zeros(1, np.float32), 0, 0)
    np.testing.assert_array_equal(y[0, 0], [[3, 0], [np.nan, 4]])
    np.testing.assert_array_equal(arg[0, 0, 0, 0], 1)         # 3 at (0,1) before (1,0)
    np.testing.assert_array_equal(arg[0, 0, 1], [0, 0])        # NaN wins; 4s: the first
    y_ref, arg_ref = conv_relu_pool_forward_ref(x, weight, np.zeros(1, np.float32), 0, 0)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg[y_ref > 0], arg_ref[y_ref > 0])


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("S", CHUNKS, ids=[f"S{s}" for s in CHUNKS])
def test_without_the_winners_the_output_is_the_same_bit_for_bit(geom, S):
    """Eval mode passes arg with no rows: the pool then keeps only the values (its own
    two passes, ``_pool_columns_max`` and ``_pool_pairs_max``), which must be exactly
    those of the training forward, here on inputs made of ties, zeros of both signs and
    NaNs: a few small integers, so that windows tie often."""
    rng = np.random.default_rng(4)
    x, weight, bias = _draw(rng, *geom)
    x = rng.integers(-2, 3, x.shape).astype(np.float32)
    x[0, 0, 0, 0] = x[0, -1, -1, -1] = np.nan      # two pixels: most windows stay finite
    x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, -0.0, 0.0)
    weight = np.round(weight * 2)                  # integer sums: exact, and ties
    ph, pw = geom[7], geom[8]
    y, arg, xps = _forward(x, weight, bias * 0, ph, pw, S)
    y_eval, arg_eval, xps_eval = _forward(x, weight, bias * 0, ph, pw, S, winners=False)
    assert arg_eval.shape[0] == 0
    assert np.isnan(y).any() and (y == 0).any() and (y > 0).any()
    np.testing.assert_array_equal(y_eval.view(np.int32), y.view(np.int32))   # bits
    np.testing.assert_array_equal(xps_eval, xps)


def test_chunk_size():
    assert chunk_size(28, 28, 5, 5, 2, 2) == 2          # LeNet-5 conv1: rows of 892
    assert chunk_size(14, 14, 5, 5, 0, 0) == 8          # conv2: rows of 136 -> 13, capped
    assert chunk_size(3, 3, 3, 3, 0, 0) == 8            # capped
    assert chunk_size(60, 60, 3, 3, 1, 1) == 1          # rows of 3,538: one sample


def test_results_do_not_depend_on_the_thread_count():
    import numba
    rng = np.random.default_rng(2)
    x, weight, bias = _draw(rng, 9, 6, 16, 14, 14, 5, 5, 0, 0)
    runs = []
    old = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            y, arg, xps = _forward(x, weight, bias, 0, 0, S=4)
            g = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
            dw_c = np.empty((3, 16, 150), np.float32)
            db_n = np.empty((9, 16), np.float32)
            gin = np.empty_like(x)
            conv_relu_pool_backward(xps, grad_input_weights(weight), 5, 5, 0, 0, 10, 10, 4,
                                    g, y, arg, dw_c, db_n, gin, True)
            runs.append((y, xps, dw_c, db_n, gin))
    finally:
        numba.set_num_threads(old)
    for a, b in zip(runs[0], runs[-1]):
        np.testing.assert_array_equal(a, b)


# -- the serial twins: the same kernels on the calling thread, for a call with one chunk -----
def _all_outputs(forward, backward, x, weight, bias, ph, pw, S, winners):
    """Every array the fused pair writes (forward, then backward with dL/dx)."""
    y, arg, xps = _forward(x, weight, bias, ph, pw, S, winners, kernel=forward)
    if not winners:
        return y, xps
    N, (F, _, kh, kw) = x.shape[0], weight.shape
    OH, OW = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
    w2 = weight.reshape(F, -1)
    g = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
    dw_c = np.full((tasks(N, S), F, w2.shape[1]), np.nan, dtype=np.float32)
    db_n = np.full((N, F), np.nan, dtype=np.float32)
    gin = np.full(x.shape, np.nan, dtype=np.float32)
    backward(xps, grad_input_weights(weight), kh, kw, ph, pw, OH, OW, S, g, y, arg, dw_c,
             db_n, gin, True)
    return y, arg, xps, dw_c, db_n, gin


@pytest.mark.parametrize("N", [1, 9], ids=["one_chunk", "three_chunks"])
@pytest.mark.parametrize("winners", [True, False], ids=["train", "eval"])
def test_the_serial_twins_compute_the_same_bits(N, winners):
    """A call with one chunk runs the ``_serial`` twin: the same loops compiled without
    the thread pool must give every output bit for bit (any N, not only one chunk)."""
    x, weight, bias = _draw(np.random.default_rng(3), N, 6, 16, 14, 14, 5, 5, 1, 1)
    parallel = _all_outputs(conv_relu_pool_forward, conv_relu_pool_backward, x, weight,
                            bias, 1, 1, 4, winners)
    serial = _all_outputs(conv_relu_pool_forward_serial, conv_relu_pool_backward_serial, x,
                          weight, bias, 1, 1, 4, winners)
    for a, b in zip(parallel, serial):
        np.testing.assert_array_equal(a, b)       # NaN where neither wrote: equal too


@pytest.mark.parametrize("N", [1, 9], ids=["one_chunk", "three_chunks"])
def test_the_unfused_convolution_s_serial_twins_compute_the_same_bits(N):
    x, weight, bias = _draw(np.random.default_rng(4), N, 3, 5, 9, 7, 3, 3, 1, 1)
    F, K = weight.shape[0], weight[0].size
    w2, S = weight.reshape(F, K), 4
    outs = []
    for fwd, bwd in ((conv_forward, conv_backward), (conv_forward_serial, conv_backward_serial)):
        y = np.full((N, F, 9, 7), np.nan, dtype=np.float32)
        xps = np.full(padded_shape(x.shape, 3, 1, 1, S), np.nan, dtype=np.float32)
        fwd(x, w2, bias, 3, 3, 1, 1, 1, 1, 9, 7, S, y, xps)
        g = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
        dw_c = np.full((tasks(N, S), F, K), np.nan, dtype=np.float32)
        gin = np.full(x.shape, np.nan, dtype=np.float32)
        bwd(xps, grad_input_weights(weight), 3, 3, 1, 1, 1, 1, 9, 7, S, g, dw_c, gin, True)
        outs.append((y, xps, dw_c, gin))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# (N, C, F, H, W, kh, kw, sh, sw, ph, pw): the convolution alone, with a stride
STRIDED = {
    "resnet_14x14_s2": (5, 4, 6, 14, 14, 3, 3, 2, 2, 1, 1),
    "shortcut_k1_s2": (4, 5, 3, 14, 14, 1, 1, 2, 2, 0, 0),
    "odd_map_s2": (3, 6, 4, 11, 9, 3, 3, 2, 2, 1, 1),
    "rect_s2x1_k3x5": (3, 3, 5, 12, 10, 3, 5, 2, 1, 1, 2),
    "s1x2_k2_p0": (2, 2, 3, 9, 12, 2, 2, 1, 2, 0, 0),
    "s3_k5_p2": (3, 2, 3, 13, 14, 5, 5, 3, 3, 2, 2),
    "stride1": (3, 5, 4, 9, 7, 3, 3, 1, 1, 1, 1),
}


@pytest.mark.parametrize("geom", STRIDED.values(), ids=STRIDED.keys())
@pytest.mark.parametrize("S", [1, 2], ids=["S1", "S2"])
def test_the_convolution_alone_through_the_phases_matches_im2col(geom, S):
    """conv_forward and conv_backward at any stride against the im2col references, and
    the padded chunks they keep: the stride-1 layout's rows (samples side by side,
    sharing their padding) split into their sh*sw phases, channel by channel."""
    from npnet.kernels.geometry import out_size
    from npnet.kernels.reference import col2im_ref, im2col_ref
    N, C, F, H, W, kh, kw, sh, sw, ph, pw = geom
    x, weight, bias = _draw(np.random.default_rng(5), N, C, F, H, W, kh, kw, ph, pw)
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    Wq, Wt = row_layout(W, pw, OW, sw)
    assert Wq >= W + pw and Wq >= sw * OW and Wq + Wt >= W + 2 * pw
    assert Wq % 2 == 0 and Wq % sw == 0 and Wt % 2 == 0 and Wt % sw == 0
    w2, K = weight.reshape(F, -1), C * kh * kw
    y = np.full((N, F, OH, OW), np.nan, dtype=np.float32)
    xps = np.full(padded_shape(x.shape, kw, ph, pw, S, (sh, sw)), np.nan, dtype=np.float32)
    conv_forward(x, w2, bias, kh, kw, sh, sw, ph, pw, OH, OW, S, y, xps)
    cols = im2col_ref(x, kh, kw, sh, sw, ph, pw)                         # (N, K, P)
    want = np.einsum("fk,nkp->nfp", w2, cols).reshape(y.shape) + bias[:, None, None]
    # float32 sums of at most 5*5*4 (y, dL/dx) or 5*49 (dL/dW) terms of about unit
    # size, in other orders than the references': a few float32 roundings of the sum
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    Hs = -(-(H + 2 * ph) // sh)
    for c in range(-(-N // S)):
        part = x[c * S:(c + 1) * S]
        rows = np.zeros((C, sh * Hs, len(part) * Wq + Wt), np.float32)
        for s, sample in enumerate(part):
            rows[:, ph:ph + H, s * Wq + pw:s * Wq + pw + W] = sample
        phases = rows.reshape(C, Hs, sh, -1, sw).transpose(0, 2, 4, 1, 3)  # (C, sh, sw, ..)
        np.testing.assert_array_equal(xps[c, :rows.size], phases.reshape(-1))
    g = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    dw_c = np.full((tasks(N, S), F, K), np.nan, dtype=np.float32)
    gin = np.full(x.shape, np.nan, dtype=np.float32)
    conv_backward(xps, grad_input_weights(weight), kh, kw, sh, sw, ph, pw, OH, OW, S, g, dw_c,
                  gin, True)
    g3 = g.reshape(N, F, -1)
    np.testing.assert_allclose(dw_c.sum(axis=0), np.einsum("nfp,nkp->fk", g3, cols),
                               rtol=1e-5, atol=5e-5)
    grad_cols = np.einsum("fk,nfp->nkp", w2, g3)
    np.testing.assert_allclose(gin, col2im_ref(grad_cols, x.shape, kh, kw, sh, sw, ph, pw),
                               rtol=1e-5, atol=1e-5)


def test_serial_twins_are_cached_apart_from_their_kernels():
    """Numba's cache names an entry by the function's name and line: the twins must not
    share their parallel kernel's, or one would load the other's machine code."""
    for kernel, twin in ((conv_relu_pool_forward, conv_relu_pool_forward_serial),
                         (conv_relu_pool_backward, conv_relu_pool_backward_serial),
                         (conv_forward, conv_forward_serial),
                         (conv_backward, conv_backward_serial)):
        assert twin.py_func.__qualname__ == kernel.py_func.__qualname__ + "_serial"
        assert twin.targetoptions.get("parallel") is None and kernel.targetoptions["parallel"]
        assert twin.targetoptions["fastmath"] == kernel.targetoptions.get("fastmath", False)


# -- the unrolled 2x2 max-pool used by MaxPool2d (npnet/kernels/pool.py) ----------------------
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 1, 2, 2)],
                         ids=["even", "odd_floor", "single_window"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool2x2_matches_reference(shape, dtype):
    from npnet.kernels.pool import maxpool2x2_backward, maxpool2x2_forward
    from npnet.kernels.reference import maxpool_backward_ref, maxpool_forward_ref
    rng = np.random.default_rng(3)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(dtype)   # distinct values
    N, C, H, W = shape
    y = np.empty((N, C, H // 2, W // 2), dtype)
    arg = np.empty(y.shape, np.int32)
    maxpool2x2_forward(x, y, arg)
    y_ref, arg_ref = maxpool_forward_ref(x, 2, 2, 2, 2, 0, 0)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    g = np.arange(y.size, dtype=dtype).reshape(y.shape) + 1
    gin = np.full(shape, np.nan, dtype)
    maxpool2x2_backward(g, arg, gin)
    np.testing.assert_array_equal(gin, maxpool_backward_ref(g, arg, shape, 2, 2, 2, 2, 0, 0))


def test_maxpool2x2_ties_and_nan_as_the_reference():
    from npnet.kernels.pool import maxpool2x2_forward
    from npnet.kernels.reference import maxpool_forward_ref
    x = np.array([[[[1, 1, np.nan, 2], [1, 0, 3, np.nan]]]], dtype=np.float32)
    y, arg = np.empty((1, 1, 1, 2), np.float32), np.empty((1, 1, 1, 2), np.int32)
    maxpool2x2_forward(x, y, arg)
    y_ref, arg_ref = maxpool_forward_ref(x, 2, 2, 2, 2, 0, 0)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)            # first maximum; first NaN
    np.testing.assert_array_equal(arg[0, 0, 0], [0, 0])
