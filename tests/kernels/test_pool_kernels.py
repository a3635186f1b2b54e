"""npnet/kernels/pool.py (Numba) against npnet/kernels/reference.py (plain NumPy loops)."""
import itertools

import numpy as np
import pytest

from npnet.kernels.pool import avgpool_backward, avgpool_forward, maxpool2x2_backward, \
    maxpool2x2_forward, maxpool_backward, maxpool_forward
from npnet.kernels.reference import avgpool_backward_ref, avgpool_forward_ref, \
    maxpool_backward_ref, maxpool_forward_ref, out_size

# (kh, kw, sh, sw, ph, pw) with padding <= kernel / 2 (torch's rule: every window holds at
# least one real pixel); squares over kernel x stride x padding, then pairs
GEOMS = [(k, k, s, s, p, p) for k, s, p in itertools.product([1, 2, 3, 4, 5], [1, 2, 3],
                                                             [0, 1, 2]) if 2 * p <= k]
GEOMS += [(3, 2, 1, 2, 1, 0), (2, 5, 2, 1, 1, 2), (4, 3, 3, 2, 2, 1), (1, 4, 1, 3, 0, 2)]
GEOM_IDS = [f"k{kh}_s{sh}_p{ph}" if (kh, sh, ph) == (kw, sw, pw)
            else f"k{kh}x{kw}_s{sh}x{sw}_p{ph}x{pw}" for kh, kw, sh, sw, ph, pw in GEOMS]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


def _x_shape(geom):
    kh, kw = geom[:2]
    return 2, 3, max(7, kh), max(6, kw) + 3       # non-square, batch and channels > 1


def _out_shape(x_shape, geom):
    kh, kw, sh, sw, ph, pw = geom
    N, C, H, W = x_shape
    return N, C, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)


def _maxpool(x, geom):
    y = np.full(_out_shape(x.shape, geom), np.nan, dtype=x.dtype)   # garbage: all set
    argmax = np.full(y.shape, -7, dtype=np.int32)
    maxpool_forward(x, *geom, y, argmax)
    return y, argmax


def _maxpool_back(g, argmax, x_shape, geom):
    grad_in = np.full(x_shape, np.nan, dtype=g.dtype)                 # garbage: overwritten
    out = maxpool_backward(g, argmax, *geom, grad_in)
    assert out is grad_in
    return grad_in


def _avgpool(x, geom):
    y = np.full(_out_shape(x.shape, geom), np.nan, dtype=x.dtype)
    avgpool_forward(x, *geom, y)
    return y


def _avgpool_back(g, x_shape, geom):
    grad_in = np.full(x_shape, np.nan, dtype=g.dtype)
    out = avgpool_backward(g, *geom, grad_in)
    assert out is grad_in
    return grad_in


def _tol(dtype, n_terms, scale):
    """Sums of at most n_terms values of size <= scale, added in another order: each side
    rounds ~n_terms times by eps * scale (see tests/conftest.py f32_atol)."""
    return 2 * n_terms * float(np.finfo(dtype).eps) * scale


def _overlaps(geom):
    kh, kw, sh, sw = geom[:4]
    return -(-kh // sh) * -(-kw // sw)     # windows a pixel can lie in


# -- max pooling -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_maxpool_distinct_values(geom, dtype, rng):
    x = rng.permutation(np.prod(_x_shape(geom))).reshape(_x_shape(geom)).astype(dtype)
    x -= x.size / 2                                       # negatives too: padding is -inf
    y, argmax = _maxpool(x, geom)
    y_ref, argmax_ref = maxpool_forward_ref(x, *geom)
    assert y.dtype == dtype and argmax.dtype == argmax_ref.dtype == np.int32
    np.testing.assert_array_equal(y, y_ref)              # a max is one of the inputs: exact
    np.testing.assert_array_equal(argmax, argmax_ref)
    g = rng.standard_normal(y.shape).astype(dtype)
    grad = _maxpool_back(g, argmax, x.shape, geom)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, maxpool_backward_ref(g, argmax_ref, x.shape, *geom),
                               rtol=0, atol=_tol(dtype, _overlaps(geom), 5.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_maxpool_many_ties_first_maximum_wins(geom, dtype, rng):
    """Values from {-2, ..., 1}: most windows hold ties; argmax must be the first maximum
    in row-major window order (the reference uses np.argmax, documented as first)."""
    x = rng.integers(-2, 2, size=_x_shape(geom)).astype(dtype)
    y, argmax = _maxpool(x, geom)
    y_ref, argmax_ref = maxpool_forward_ref(x, *geom)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    g = np.arange(y.size, dtype=dtype).reshape(y.shape)  # small integers: sums are exact
    np.testing.assert_array_equal(_maxpool_back(g, argmax, x.shape, geom),
                                  maxpool_backward_ref(g, argmax_ref, x.shape, *geom))


def test_maxpool_tie_hand_case():
    x = np.array([[[[3, 1, 2, 9],
                    [0, 3, 9, 9],
                    [5, 5, 4, 4],
                    [5, 5, 4, 4]]]], np.float64)
    y, argmax = _maxpool(x, (2, 2, 2, 2, 0, 0))
    np.testing.assert_array_equal(y[0, 0], [[3, 9], [5, 4]])
    # ties: (0,0) vs (1,1) -> 0; three 9s -> index 1 = (0, 1); all-equal windows -> 0
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [0, 0]])


def test_maxpool_all_equal_window_with_padding():
    """An all-equal plane with padding: the first REAL pixel wins, never the padding."""
    x = np.full((1, 1, 3, 3), -1.0)
    y, argmax = _maxpool(x, (3, 3, 1, 1, 1, 1))
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), -1.0))
    # window (0, 0) starts at padded (-1, -1): its first real pixel is (i, j) = (1, 1) -> 4
    assert argmax[0, 0, 0, 0] == 1 * 3 + 1
    assert argmax[0, 0, 1, 1] == 0                       # an interior window: top-left
    np.testing.assert_array_equal(argmax, maxpool_forward_ref(x, 3, 3, 1, 1, 1, 1)[1])


@pytest.mark.parametrize("where", [[(0, 1)], [(0, 0), (0, 1)], [(0, 1), (1, 0)]],
                         ids=["one_nan", "two_nans_one_row", "two_nans_two_rows"])
def test_maxpool_nan_wins_like_the_reference(where):
    """A NaN is the maximum (np.max / np.argmax semantics, as the reference); with several
    NaNs the gradient goes to the first one, as any other tie."""
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    for ij in where:
        x[(0, 0, *ij)] = np.nan
    y, argmax = _maxpool(x, (2, 2, 2, 2, 0, 0))
    y_ref, argmax_ref = maxpool_forward_ref(x, 2, 2, 2, 2, 0, 0)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y_ref[0, 0, 0, 0])
    assert argmax[0, 0, 0, 0] == argmax_ref[0, 0, 0, 0] == where[0][0] * 2 + where[0][1]


# -- the unrolled 2x2 / stride 2 max-pool (LeNet's) ----------------------------------------
SHAPES_2X2 = [(1, 1, 2, 2), (2, 3, 8, 6), (3, 2, 7, 9), (2, 6, 28, 28), (1, 16, 11, 10)]
SHAPE_2X2_IDS = ["1x1x2x2", "2x3x8x6", "3x2x7x9_odd", "2x6x28x28", "1x16x11x10_odd"]


@pytest.mark.parametrize("values", ["distinct", "ties"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES_2X2, ids=SHAPE_2X2_IDS)
def test_maxpool2x2_matches_reference(shape, dtype, values, rng):
    if values == "distinct":
        x = (rng.permutation(np.prod(shape)) - np.prod(shape) / 2).reshape(shape)
    else:                                   # {-2, ..., 1}: ties in most windows
        x = rng.integers(-2, 2, size=shape)
    x = x.astype(dtype)
    geom = (2, 2, 2, 2, 0, 0)
    y = np.full(_out_shape(shape, geom), np.nan, dtype=dtype)   # odd sizes: floor mode
    argmax = np.full(y.shape, -7, dtype=np.int32)
    maxpool2x2_forward(x, y, argmax)
    y_ref, argmax_ref = maxpool_forward_ref(x, *geom)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    g = np.arange(y.size, dtype=dtype).reshape(y.shape)         # small integers: exact
    grad = np.full(shape, np.nan, dtype=dtype)
    assert maxpool2x2_backward(g, argmax, grad) is grad
    np.testing.assert_array_equal(grad, maxpool_backward_ref(g, argmax_ref, shape, *geom))


@pytest.mark.parametrize("where", [[(0, 1)], [(0, 0), (0, 1)], [(0, 1), (1, 0)],
                                   [(1, 1)]],
                         ids=["one_nan", "two_nans_one_row", "two_nans_two_rows", "last"])
def test_maxpool2x2_nan_wins_like_the_reference(where):
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    for ij in where:
        x[(0, 0, *ij)] = np.nan
    y = np.empty((1, 1, 1, 1))
    argmax = np.empty((1, 1, 1, 1), np.int32)
    maxpool2x2_forward(x, y, argmax)
    assert np.isnan(y[0, 0, 0, 0])
    assert argmax[0, 0, 0, 0] == maxpool_forward_ref(x, 2, 2, 2, 2, 0, 0)[1][0, 0, 0, 0] \
        == where[0][0] * 2 + where[0][1]


# -- average pooling -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_avgpool_matches_reference(geom, dtype, rng):
    kh, kw = geom[:2]
    x = rng.uniform(-2, 2, size=_x_shape(geom)).astype(dtype)
    y = _avgpool(x, geom)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, avgpool_forward_ref(x, *geom), rtol=0,
                               atol=_tol(dtype, kh * kw, 2.0))
    g = rng.uniform(-2, 2, size=y.shape).astype(dtype)
    grad = _avgpool_back(g, x.shape, geom)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, avgpool_backward_ref(g, x.shape, *geom), rtol=0,
                               atol=_tol(dtype, _overlaps(geom), 2.0 / (kh * kw)))


def test_avgpool_counts_padding_hand_case():
    x = np.ones((1, 1, 2, 3))
    y = _avgpool(x, (2, 2, 1, 1, 1, 1))                  # OH = 3, OW = 4
    # corner windows hold 1 real pixel of 4, edges 2, the middle 4: divisor always 4
    np.testing.assert_array_equal(y[0, 0], [[0.25, 0.5, 0.5, 0.25],
                                            [0.5, 1.0, 1.0, 0.5],
                                            [0.25, 0.5, 0.5, 0.25]])
    np.testing.assert_array_equal(y, avgpool_forward_ref(x, 2, 2, 1, 1, 1, 1))
    # backward of ones: each pixel lies in 4 windows and gets 1/4 from each
    np.testing.assert_array_equal(_avgpool_back(np.ones_like(y), x.shape, (2, 2, 1, 1, 1, 1)),
                                  np.ones((1, 1, 2, 3)))


@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_avgpool_backward_is_the_adjoint_of_forward(geom, rng):
    """<avgpool(x), g> == <x, avgpool_backward(g)>: avgpool is linear in x."""
    x = rng.standard_normal(_x_shape(geom))
    y = _avgpool(x, geom)
    g = rng.standard_normal(y.shape)
    assert np.sum(y * g) == pytest.approx(np.sum(x * _avgpool_back(g, x.shape, geom)),
                                          rel=1e-12, abs=1e-12)
