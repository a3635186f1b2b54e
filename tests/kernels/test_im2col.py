"""npnet/kernels/im2col.py (Numba) against npnet/kernels/reference.py (plain NumPy loops)."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npnet.kernels.im2col import col2im, im2col
from npnet.kernels.reference import col2im_ref, im2col_ref, out_size

# (kh, kw, sh, sw, ph, pw): squares over kernel x stride x padding, then pairs
GEOMS = [(k, k, s, s, p, p) for k, s, p in itertools.product([1, 2, 3, 5], [1, 2, 3],
                                                             [0, 1, 2])]
GEOMS += [(3, 5, 1, 2, 2, 0), (1, 3, 2, 1, 0, 1), (5, 2, 2, 3, 1, 2), (2, 4, 3, 1, 3, 0)]
GEOM_IDS = [f"k{kh}_s{sh}_p{ph}" if (kh, sh, ph) == (kw, sw, pw)
            else f"k{kh}x{kw}_s{sh}x{sw}_p{ph}x{pw}" for kh, kw, sh, sw, ph, pw in GEOMS]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


def _x_shape(kh, kw, ph, pw):
    """A non-square input at least as large as the kernel: (N, C, H, W)."""
    return 2, 3, max(7, kh), max(6, kw) + 3


def _run_im2col(x, geom):
    kh, kw, sh, sw, ph, pw = geom
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    cols = np.full((C * kh * kw, N, OH * OW), np.nan, dtype=x.dtype)  # garbage: all set
    out = im2col(x, *geom, OH, OW, cols)
    assert out is cols
    return cols.transpose(1, 0, 2)          # stored (K, N, P); the reference's (N, K, P)


def _run_col2im(cols, x_shape, geom):
    kh, kw, sh, sw, ph, pw = geom
    OH, OW = out_size(x_shape[2], kh, sh, ph), out_size(x_shape[3], kw, sw, pw)
    x = np.full(x_shape, np.nan, dtype=cols.dtype)           # garbage: col2im overwrites
    out = col2im(np.ascontiguousarray(cols.transpose(1, 0, 2)), *geom, OH, OW, x)
    assert out is x
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_im2col_equals_reference(geom, dtype, rng):
    x = rng.standard_normal(_x_shape(*geom[:2], *geom[4:])).astype(dtype)
    cols = _run_im2col(x, geom)
    expected = im2col_ref(x, *geom)
    assert cols.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(cols, expected)           # pure data movement: exact


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_col2im_matches_reference(geom, dtype, rng):
    kh, kw, sh, sw, ph, pw = geom
    x_shape = _x_shape(kh, kw, ph, pw)
    N, C, H, W = x_shape
    P = out_size(H, kh, sh, ph) * out_size(W, kw, sw, pw)
    cols = rng.standard_normal((N, C * kh * kw, P)).astype(dtype)
    got = _run_col2im(cols, x_shape, geom)
    expected = col2im_ref(cols, x_shape, *geom)
    assert got.dtype == dtype
    # each pixel sums at most kh*kw entries, maybe in another order: a few roundings of
    # values |v| < ~5 -> float32 atol ~ kh*kw * eps * 5 (see tests/conftest.py f32_atol)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * kh * kw * eps * 5)


@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_col2im_is_the_adjoint_of_im2col(geom, rng):
    """<im2col(x), c> == <x, col2im(c)>: the identity that makes col2im the gradient."""
    x = rng.standard_normal(_x_shape(*geom[:2], *geom[4:]))
    cols_x = _run_im2col(x, geom)
    c = rng.standard_normal(cols_x.shape)
    lhs = np.sum(cols_x * c)
    rhs = np.sum(x * _run_col2im(c, x.shape, geom))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_im2col_hand_case():
    """2x3 input, 2x2 kernel, padding (0, 1): rows (i, j), columns (oh, ow)."""
    x = np.arange(1.0, 7.0).reshape(1, 1, 2, 3)         # [[1, 2, 3], [4, 5, 6]]
    cols = _run_im2col(x, (2, 2, 1, 1, 0, 1))           # OH = 1, OW = 4
    np.testing.assert_array_equal(cols[0], [[0, 1, 2, 3],     # (i, j) = (0, 0)
                                            [1, 2, 3, 0],     # (0, 1)
                                            [0, 4, 5, 6],     # (1, 0)
                                            [4, 5, 6, 0]])    # (1, 1)
    # col2im counts how often each pixel is read when fed ones: 2 windows per pixel
    np.testing.assert_array_equal(_run_col2im(np.ones_like(cols), x.shape,
                                              (2, 2, 1, 1, 0, 1))[0, 0], np.full((2, 3), 2.0))


def test_pixels_skipped_by_the_stride_get_zero():
    """H = 6, k = 2, s = 3: rows 2 and 5 lie in no window; their gradient is 0, not garbage."""
    x_shape = (1, 1, 6, 6)
    cols = np.ones((1, 4, 4))
    grad = _run_col2im(cols, x_shape, (2, 2, 3, 3, 0, 0))
    expected = np.ones((6, 6))
    expected[[2, 5], :] = 0
    expected[:, [2, 5]] = 0
    np.testing.assert_array_equal(grad[0, 0], expected)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
def test_im2col_and_col2im_any_geometry(n, c, h, w, kh, kw, sh, sw, ph, pw, seed):
    if h + 2 * ph < kh or w + 2 * pw < kw:      # the kernel does not fit: nothing to compare
        kh, kw = min(kh, h + 2 * ph), min(kw, w + 2 * pw)
    rng = np.random.default_rng(seed)
    geom = (kh, kw, sh, sw, ph, pw)
    x = rng.standard_normal((n, c, h, w))
    np.testing.assert_array_equal(_run_im2col(x, geom), im2col_ref(x, *geom))
    cols = rng.standard_normal(im2col_ref(x, *geom).shape)
    np.testing.assert_allclose(_run_col2im(cols, x.shape, geom),
                               col2im_ref(cols, x.shape, *geom), rtol=0, atol=1e-13)
