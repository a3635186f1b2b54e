"""npnet/kernels/batchnorm.py (Numba) against npnet/kernels/reference.py (NumPy lines).

The three kernels see x as (N, C, S): S positions per sample and channel (H*W for
BatchNorm2d, L or 1 for BatchNorm1d).  Each test fills the output arrays with NaN first:
a kernel must write every element it owns.
"""
import numpy as np
import pytest

import npnet
from npnet.kernels.batchnorm import batchnorm_backward, batchnorm_forward, channel_mean_var
from npnet.kernels.reference import batchnorm_backward_ref, batchnorm_forward_ref

# (N, C, S): two values per channel (the smallest training batch), S = 1 (BatchNorm1d on
# (N, C)), one sample, LeNet-sized maps, a long row
SHAPES = [(2, 1, 1), (1, 3, 2), (5, 4, 1), (3, 2, 7), (4, 6, 25), (2, 16, 49), (1, 2, 300)]
SHAPE_IDS = [f"n{n}_c{c}_s{s}" for n, c, s in SHAPES]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


def _tol(dtype, n_terms, scale):
    """A sum of at most n_terms values of size <= scale, added in another order: each side
    rounds ~n_terms times by eps * scale (tests/conftest.py f32_atol; the kernels add in
    float64, the reference in the array's dtype with NumPy's pairwise sum)."""
    return 2 * n_terms * float(np.finfo(dtype).eps) * scale


def _draw(rng, shape, dtype):
    """Per channel its own mean (in [-3, 3]) and spread (x0.5 to x2): uniform values."""
    N, C, S = shape
    shift = rng.uniform(-3, 3, (1, C, 1))
    spread = rng.uniform(0.5, 2.0, (1, C, 1))
    return (rng.uniform(-1, 1, shape) * spread + shift).astype(dtype)


def _affine(rng, C, dtype):
    return (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(dtype), \
        rng.uniform(-1, 1, C).astype(dtype)


def _mean_var(x):
    C = x.shape[1]
    mean, var = np.full(C, np.nan, x.dtype), np.full(C, np.nan, x.dtype)
    out = channel_mean_var(x, mean, var)
    assert out[0] is mean and out[1] is var          # written into the arrays given
    return mean, var


def _forward(x, mean, inv_std, w, b):
    x_hat, y = np.full_like(x, np.nan), np.full_like(x, np.nan)
    assert batchnorm_forward(x, mean, inv_std, w, b, x_hat, y) is y
    return x_hat, y


def _backward(g, x_hat, scale):
    C = g.shape[1]
    d_beta, d_gamma = np.full(C, np.nan, g.dtype), np.full(C, np.nan, g.dtype)
    grad_in = np.full_like(g, np.nan)
    assert batchnorm_backward(g, x_hat, scale, d_beta, d_gamma, grad_in) is grad_in
    return grad_in, d_beta, d_gamma


# -- the three kernels against the reference ---------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_channel_mean_var_matches_reference(shape, dtype, rng):
    x = _draw(rng, shape, dtype)
    mean, var = _mean_var(x)
    _, _, mean_ref, var_ref, _ = batchnorm_forward_ref(x, np.ones(shape[1], dtype),
                                                       np.zeros(shape[1], dtype), 1e-5)
    assert mean.dtype == var.dtype == mean_ref.dtype == dtype
    M = shape[0] * shape[2]
    xmax = float(np.abs(x).max())
    # the mean: M terms x / M; the variance: M terms (x - mu)**2 / M, each moved by the
    # mean's error d_mu by at most 2 |x - mu| d_mu
    d_mu = _tol(dtype, M, xmax / M)
    dev = float(np.abs(x - mean_ref[None, :, None]).max())
    np.testing.assert_allclose(mean, mean_ref, rtol=0, atol=d_mu)
    np.testing.assert_allclose(var, var_ref, rtol=0,
                               atol=_tol(dtype, M, dev ** 2 / M) + 2 * dev * d_mu)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_matches_reference(shape, dtype, rng):
    """Given the reference's statistics, the element-wise lines: x_hat = (x - mean) r and
    y = w x_hat + b, two roundings each (the kernel may fuse w x_hat + b into one)."""
    x = _draw(rng, shape, dtype)
    w, b = _affine(rng, shape[1], dtype)
    y_ref, x_hat_ref, mean, _, inv_std = batchnorm_forward_ref(x, w, b, 1e-5)
    x_hat, y = _forward(x, mean, inv_std.astype(dtype), w, b)
    assert x_hat.dtype == y.dtype == dtype
    eps = float(np.finfo(dtype).eps)
    hmax, wmax, bmax = (float(np.abs(a).max()) for a in (x_hat_ref, w, b))
    d_xhat = 2 * eps * hmax
    np.testing.assert_allclose(x_hat, x_hat_ref, rtol=0, atol=d_xhat)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=wmax * d_xhat + 2 * eps * (wmax * hmax
                                                                                 + bmax))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_backward_matches_reference(shape, dtype, rng):
    x = _draw(rng, shape, dtype)
    w, b = _affine(rng, shape[1], dtype)
    _, x_hat, _, _, inv_std = batchnorm_forward_ref(x, w, b, 1e-5)
    scale = (w * inv_std).astype(dtype)
    g = rng.uniform(-2, 2, shape).astype(dtype)
    grad_in, d_beta, d_gamma = _backward(g, x_hat, scale)
    grad_ref, d_beta_ref, d_gamma_ref = batchnorm_backward_ref(g, x_hat, scale)
    assert grad_in.dtype == d_beta.dtype == d_gamma.dtype == dtype
    M = shape[0] * shape[2]
    eps = float(np.finfo(dtype).eps)
    gmax, hmax, kmax = (float(np.abs(a).max()) for a in (g, x_hat, scale))
    np.testing.assert_allclose(d_beta, d_beta_ref, rtol=0, atol=_tol(dtype, M, gmax))
    np.testing.assert_allclose(d_gamma, d_gamma_ref, rtol=0, atol=_tol(dtype, M, gmax * hmax))
    # dL/dx = k (g - d_beta / M - x_hat d_gamma / M): the two means are off by the sums'
    # errors / M; the bracket then rounds ~4 times at the size of its largest term
    m_b = float(np.abs(d_beta_ref).max()) / M
    m_g = float(np.abs(d_gamma_ref).max()) / M
    atol = kmax * (_tol(dtype, M, gmax) / M + hmax * _tol(dtype, M, gmax * hmax) / M
                   + 4 * eps * (gmax + m_b + hmax * m_g))
    np.testing.assert_allclose(grad_in, grad_ref, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_hand_case(dtype):
    """One channel of 1, 2, 3, 6 (mean 3, biased variance 3.5) and one of -1, -1, 1, 1
    (mean 0, variance 1), as (N=2, C=2, S=2)."""
    x = np.array([[[1, 2], [-1, -1]], [[3, 6], [1, 1]]], dtype)
    mean, var = _mean_var(x)
    np.testing.assert_array_equal(mean, [3, 0])                  # exact: small integers
    np.testing.assert_array_equal(var, [3.5, 1])
    r = np.array([0.5, 1.0], dtype)                              # any 1/std will do
    x_hat, y = _forward(x, mean, r, np.array([2, -1], dtype), np.array([0.5, 0], dtype))
    np.testing.assert_array_equal(x_hat, [[[-1, -0.5], [-1, -1]], [[0, 1.5], [1, 1]]])
    np.testing.assert_array_equal(y, [[[-1.5, -0.5], [1, 1]], [[0.5, 3.5], [-1, -1]]])
    g = np.arange(8, dtype=dtype).reshape(2, 2, 2)               # channel 0: 0, 1, 4, 5
    grad_in, d_beta, d_gamma = _backward(g, x_hat, np.array([1, 2], dtype))
    np.testing.assert_array_equal(d_beta, [0 + 1 + 4 + 5, 2 + 3 + 6 + 7])
    np.testing.assert_array_equal(d_gamma, [0 * -1 + 1 * -0.5 + 0 + 5 * 1.5,
                                            -2 - 3 + 6 + 7])
    # channel 0: g - 10/4 - x_hat * 7/4; channel 1 (k = 2): 2 (g - 18/4 - x_hat * 8/4)
    expected = np.empty_like(g)
    expected[:, 0] = g[:, 0] - 2.5 - x_hat[:, 0] * 1.75
    expected[:, 1] = 2 * (g[:, 1] - 4.5 - x_hat[:, 1] * 2)
    np.testing.assert_allclose(grad_in, expected, rtol=0, atol=4 * np.finfo(dtype).eps * 10)


def test_variance_of_values_with_a_large_mean(rng):
    """Two passes (squared deviations, accumulated in float64): the variance of float32
    values near 1000 is right to float32 precision, where sum(x**2)/M - mean**2 in float32
    cancels away (it would err by ~ eps * 1000**2 = 0.1, on a variance of 1e-2)."""
    x = (1000 + 0.1 * rng.standard_normal((8, 3, 50))).astype(np.float32)
    mean, var = _mean_var(x)
    exact = x.astype(np.float64).var(axis=(0, 2))
    np.testing.assert_allclose(var, exact, rtol=4 * np.finfo(np.float32).eps)
    naive = (x * x).mean(axis=(0, 2)) - x.mean(axis=(0, 2)) ** 2      # what it avoids
    assert np.abs(naive - exact).max() > 100 * np.abs(var - exact).max()


def test_non_finite_values_propagate(rng):
    """fastmath keeps NaN and inf semantics: a NaN poisons its channel only."""
    x = _draw(rng, (2, 3, 4), np.float32)
    x[1, 1, 2] = np.nan
    mean, var = _mean_var(x)
    assert np.isnan(mean[1]) and np.isnan(var[1])
    assert np.all(np.isfinite(mean[[0, 2]])) and np.all(np.isfinite(var[[0, 2]]))


# -- threads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_results_are_bit_identical_for_1_and_2_threads(dtype, rng):
    """Each channel is summed by one thread, always by the same compiled loop: the thread
    count changes who sums a channel, never the order, so not one bit differs."""
    shape = (8, 16, 49)
    x = _draw(rng, shape, dtype)
    w, b = _affine(rng, shape[1], dtype)
    g = rng.uniform(-2, 2, shape).astype(dtype)
    runs = []
    old = npnet.threads.get_num_threads()
    try:
        for n in (1, 2):   # needs NUMBA_NUM_THREADS >= 2: the CPU count, or set it so
            npnet.threads.set_num_threads(n)
            assert npnet.threads.get_num_threads() == n
            mean, var = _mean_var(x)
            inv_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
            x_hat, y = _forward(x, mean, inv_std, w, b)
            grad_in, d_beta, d_gamma = _backward(g, x_hat, w * inv_std)
            runs.append(dict(mean=mean, var=var, x_hat=x_hat, y=y, grad_in=grad_in,
                             d_beta=d_beta, d_gamma=d_gamma))
    finally:
        npnet.threads.set_num_threads(old)
    assert npnet.threads.get_num_threads() == old
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)
