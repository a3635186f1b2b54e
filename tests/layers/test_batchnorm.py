"""Tests of npnet/layers/batchnorm.py (BatchNorm1d, BatchNorm2d): gradcheck in training
mode, torch parity over several training steps (outputs, gradients, running statistics),
eval mode, hand cases, properties, state and errors."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

import npnet
from npnet import BatchNorm1d, BatchNorm2d

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)

# (layer class, input shape): (N, C), (N, C, L) and (N, C, H, W); M = N (x L, x H x W)
# values per channel, from the smallest training batch (M = 2) up
GEOMS = [(BatchNorm1d, (4, 3)), (BatchNorm1d, (2, 5)), (BatchNorm1d, (3, 2, 5)),
         (BatchNorm1d, (1, 4, 3)), (BatchNorm2d, (2, 3, 3, 2)), (BatchNorm2d, (1, 2, 3, 3)),
         (BatchNorm2d, (3, 1, 2, 2)), (BatchNorm2d, (1, 2, 1, 2))]
GEOM_IDS = [f"{'1d' if cls is BatchNorm1d else '2d'}_" + "x".join(map(str, s))
            for cls, s in GEOMS]
# larger batches for torch parity (the reductions are longer)
PARITY = [(BatchNorm1d, (2, 3)), (BatchNorm1d, (16, 5)), (BatchNorm1d, (8, 3, 7)),
          (BatchNorm2d, (4, 3, 6, 5)), (BatchNorm2d, (2, 8, 7, 7))]
STEPS = 5


def _per_channel(v, ndim):
    """(C,) -> broadcastable against (N, C, ...)."""
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def _batch(draw, rng, shape, dtype=np.float32):
    """Distinct values (draw) spread and shifted per channel: every channel has its own mean
    (in [-3, 3]) and spread (x0.5 to x2), so the running statistics are not trivial."""
    C = shape[1]
    spread = _per_channel(rng.uniform(0.5, 2.0, C), len(shape))
    shift = _per_channel(rng.uniform(-3.0, 3.0, C), len(shape))
    return (draw(shape) * spread + shift).astype(dtype)


def _randomise_affine(layer, rng):
    """weight and bias away from torch's initial ones and zeros, so both paths matter."""
    C = layer.num_features
    dtype = layer.params["weight"].dtype
    layer.params["weight"][...] = (rng.choice([-1, 1], C) * rng.uniform(0.5, 1.5, C))
    layer.params["bias"][...] = rng.uniform(-1, 1, C).astype(dtype)


def _stats64(x):
    """x viewed as (N, C, S) in float64, with its per-channel mean and biased variance."""
    x3 = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1)
    return x3, x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))


# -- float32 error budget, channel by channel ---------------------------------------------------
def _affine_budget(x, mean, var, d_mu, d_var, w, b, eps):
    """Per channel, the float32 error of y = w (x - mean) r + b, r = (var + eps)**-1/2,
    when mean and var are each known to d_mu and d_var: the errors carried by the
    derivatives dy/dmean = -w r and dy/dvar = -w x_hat r**2 / 2, plus 4 roundings of the
    largest element-wise term (torch folds the mean into a shift, y = x (w r) + (b - mean w
    r): its terms are as large as |w| (|x| + |mean|) r + |b|).

    Returns (d_y, d_xhat, max|x_hat|, r), each of shape (C,)."""
    x3 = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1)
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    r = 1 / np.sqrt(var + eps)
    hmax = np.abs(x3 - mean[None, :, None]).max(axis=(0, 2)) * r
    wabs = 1.0 if w is None else np.abs(w).astype(np.float64)
    babs = 0.0 if b is None else np.abs(b).astype(np.float64)
    d_xhat = r * d_mu + hmax * r ** 2 * d_var / 2
    big = wabs * (np.abs(x3).max(axis=(0, 2)) + np.abs(mean)) * r + babs
    return wabs * d_xhat + 4 * EPS32 * big, d_xhat, hmax, r


def _float32_budget(x, g, w, b, eps, tol32):
    """How far npnet's float32 training step and torch's may drift apart, channel by
    channel (npnet sums in its Numba kernels, torch in ATen's loops, in other orders).

    The only long computations are four reductions per channel over its M values, each
    bounded by f32_atol (tests/conftest.py: a sum of K terms, each at most `term`)::

        mean      mu = sum(x) / M                d_mu  = f32_atol(M, max|x| / M)
        variance  v  = sum((x - mu)**2) / M      d_var = f32_atol(M, max(x - mu)**2 / M)
        dL/dbeta     = sum(g)                    d_db  = f32_atol(M, max|g|)
        dL/dgamma    = sum(g * x_hat)            d_dg  = f32_atol(M, max|g x_hat|)
                                                         + M max|g| d_xhat

    (the last term: each x_hat multiplied is itself off by d_xhat, _affine_budget).  Each
    error is carried to the value compared by its derivative, and the element-wise
    arithmetic after the sums adds 4 roundings of its largest term.  dL/dx = k (g - m_b -
    x_hat m_g), with k = w r, m_b = dL/dbeta / M and m_g = dL/dgamma / M, is off by
    k (d_db + |x_hat| d_dg) / M + k |m_g| d_xhat, plus the bracket times k's own error
    (dk/dv = -k r**2 / 2).  A real bug (a wrong index, a missing term, the unbiased
    variance where the biased one belongs) errs by O(|w| max|x_hat|), far more.

    Returns {'y', 'grad_in', 'weight', 'bias', 'mean', 'var'} -> atol of shape (C,), the
    last two being d_mu and d_var (for the running statistics).
    """
    def f32_atol(M, terms):
        return np.array([tol32(M, float(t)) for t in terms])
    M = x.size // x.shape[1]
    x3, mean, var = _stats64(x)
    dmax = np.abs(x3 - mean[None, :, None]).max(axis=(0, 2))
    d_mu = f32_atol(M, np.abs(x3).max(axis=(0, 2)) / M)
    d_var = f32_atol(M, dmax ** 2 / M)
    d_y, d_xhat, hmax, r = _affine_budget(x, mean, var, d_mu, d_var, w, b, eps)
    g3 = g.astype(np.float64).reshape(x3.shape)
    gmax = np.abs(g3).max(axis=(0, 2))
    xhat = (x3 - mean[None, :, None]) / np.sqrt(var[None, :, None] + eps)
    m_b = np.abs(g3.sum(axis=(0, 2))) / M
    m_g = np.abs((g3 * xhat).sum(axis=(0, 2))) / M
    d_db = f32_atol(M, gmax)
    d_dg = f32_atol(M, gmax * hmax) + M * gmax * d_xhat
    k = (1.0 if w is None else np.abs(w).astype(np.float64)) * r
    bracket = gmax + m_b + hmax * m_g
    d_in = (k * ((d_db + hmax * d_dg) / M + m_g * d_xhat) + 4 * EPS32 * k * bracket
            + bracket * k * r ** 2 * d_var / 2)
    return {"y": d_y, "grad_in": d_in, "weight": d_dg, "bias": d_db, "mean": d_mu,
            "var": d_var}


def _close(ours, theirs, atol, what):
    """|ours - theirs| <= atol[c] in every channel c (dimension 1; 0 for a (C,) array)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, what
    axis = 0 if ours.ndim == 1 else 1
    for c in range(ours.shape[axis]):
        np.testing.assert_allclose(np.take(ours, c, axis), np.take(theirs, c, axis), rtol=0,
                                   atol=float(atol[c]), err_msg=f"{what}, channel {c}")


def _torch_step(module, x, g):
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.from_numpy(g))
    grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
    module.zero_grad()
    return yt.detach().numpy(), xt.grad.numpy(), grads


# -- numerical gradient check (float64, training mode) -----------------------------------------
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("cls,shape", GEOMS, ids=GEOM_IDS)
def test_gradcheck(cls, shape, affine, rng, draw):
    layer = cls(shape[1], affine=affine, dtype=np.float64)
    if affine:
        _randomise_affine(layer, rng)
    # the batch statistics depend on every x: dL/dx has the three paths (direct, mean, var)
    report = npnet.gradcheck(layer, _batch(draw, rng, shape, np.float64), mode="full",
                             rng=rng)
    assert [r.name for r in report] == ["input"] + (["weight", "bias"] if affine else [])
    assert all(r.passed for r in report), "\n".join(map(str, report))


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (3, 4)), (BatchNorm2d, (2, 2, 3, 2))],
                         ids=["1d", "2d"])
def test_gradcheck_without_running_stats_and_momentum_none(cls, shape, rng, draw):
    for layer in (cls(shape[1], track_running_stats=False, dtype=np.float64),
                  cls(shape[1], momentum=None, eps=1e-3, dtype=np.float64)):
        _randomise_affine(layer, rng)
        report = npnet.gradcheck(layer, _batch(draw, rng, shape, np.float64), rng=rng)
        assert all(r.passed for r in report), "\n".join(map(str, report))


# -- torch parity (float32): several training steps, then eval ----------------------------------
CONFIGS = {"default": {}, "momentum_none": {"momentum": None},
           "momentum_0.3_eps_1e-3": {"momentum": 0.3, "eps": 1e-3},
           "no_affine": {"affine": False}}
# every geometry with torch's defaults, every other configuration on a 1d and a 2d one
STEP_CASES = [(cls, shape, "default") for cls, shape in PARITY] + [
    (cls, shape, config) for config in list(CONFIGS)[1:]
    for cls, shape in (PARITY[2], PARITY[3])]
STEP_IDS = [f"{'1d' if cls is BatchNorm1d else '2d'}_{'x'.join(map(str, shape))}-{config}"
            for cls, shape, config in STEP_CASES]


@pytest.mark.parametrize("cls,shape,config", STEP_CASES, ids=STEP_IDS)
def test_training_steps_match_torch(cls, shape, config, rng, draw, to_torch, tol32):
    """STEPS training steps on different batches, the running statistics after each, then
    the eval output: all as torch.nn.BatchNorm1d/2d with the same state_dict."""
    layer = cls(shape[1], **CONFIGS[config])
    if layer.affine:
        _randomise_affine(layer, rng)
    module = to_torch(layer)
    assert module.training and type(module).__name__ == cls.__name__
    d_rm = d_rv = np.zeros(shape[1])     # the running statistics' error bounds, per step
    for step in range(1, STEPS + 1):
        x, g = _batch(draw, rng, shape), draw(shape, np.float32)
        y = layer(x)
        grad_in = layer.backward(g)
        y_t, grad_t, grads_t = _torch_step(module, x, g)
        tol = _float32_budget(x, g, layer.params.get("weight"), layer.params.get("bias"),
                              layer.eps, tol32)
        assert y.dtype == grad_in.dtype == np.float32
        _close(y, y_t, tol["y"], f"y, step {step}")
        _close(grad_in, grad_t, tol["grad_in"], f"dL/dx, step {step}")
        assert sorted(layer.grads) == sorted(grads_t)
        for k in layer.grads:
            _close(layer.grads[k], grads_t[k], tol[k], f"{k}, step {step}")
        layer.zero_grad()
        # running = (1 - m) running + m batch: the batch statistic's error enters with
        # weight m, the old error shrinks by (1 - m), and the update itself rounds at most
        # 3 times in float32 (two products, a sum; 4 with the unbiased factor M / (M - 1))
        m = 1 / step if layer.momentum is None else layer.momentum
        M = x.size // x.shape[1]
        rm, rv = layer.running_mean, layer.running_var
        d_rm = (1 - m) * d_rm + m * tol["mean"] + 3 * EPS32 * np.abs(rm)
        d_rv = (1 - m) * d_rv + m * tol["var"] * M / (M - 1) + 4 * EPS32 * np.abs(rv)
        assert rm.dtype == rv.dtype == np.float32
        _close(rm, module.running_mean.numpy(), d_rm, f"running_mean, step {step}")
        _close(rv, module.running_var.numpy(), d_rv, f"running_var, step {step}")
        assert layer.num_batches_tracked.dtype == np.int64
        assert int(layer.num_batches_tracked) == int(module.num_batches_tracked) == step
    # the running statistics moved: eval is not the identity, nor the batch's statistics
    assert np.abs(layer.running_mean).max() > 0.1
    layer.eval()
    module.eval()
    x = _batch(draw, rng, shape)
    y = layer(x)
    y_t = module(torch.from_numpy(x)).detach().numpy()
    w, b = layer.params.get("weight"), layer.params.get("bias")
    atol, *_ = _affine_budget(x, layer.running_mean, layer.running_var, d_rm, d_rv, w, b,
                              layer.eps)
    _close(y, y_t, atol, "eval output")
    # and eval did use the running statistics: the batch's own would give another output
    _, mean, var = _stats64(x)
    own = (x - _per_channel(mean, x.ndim)) / np.sqrt(_per_channel(var, x.ndim) + layer.eps)
    if w is not None:
        own = own * _per_channel(w, x.ndim) + _per_channel(b, x.ndim)
    assert np.abs(y - own).max() > 0.1


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (6, 3)), (BatchNorm1d, (4, 2, 5)),
                                       (BatchNorm2d, (3, 4, 5, 5))], ids=["1d", "1d_L", "2d"])
def test_without_running_stats_eval_uses_the_batch_statistics(cls, shape, rng, draw,
                                                              to_torch, tol32):
    """track_running_stats=False: no buffers, and eval normalises by the batch's own
    statistics (torch's rule), keeping nothing for backward."""
    layer = cls(shape[1], track_running_stats=False)
    _randomise_affine(layer, rng)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert layer.running_mean is None and layer.running_var is None
    assert layer.num_batches_tracked is None
    module = to_torch(layer)
    x, g = _batch(draw, rng, shape), draw(shape, np.float32)
    y_train = layer(x)
    grad_in = layer.backward(g)
    y_t, grad_t, grads_t = _torch_step(module, x, g)
    tol = _float32_budget(x, g, layer.weight, layer.bias, layer.eps, tol32)
    _close(y_train, y_t, tol["y"], "y")
    _close(grad_in, grad_t, tol["grad_in"], "dL/dx")
    for k in ("weight", "bias"):
        _close(layer.grads[k], grads_t[k], tol[k], k)
    layer.eval()
    module.eval()
    y_eval = layer(x)
    assert layer._cache is None
    np.testing.assert_array_equal(y_eval, y_train)    # the same statistics, the same loops
    _close(y_eval, module(torch.from_numpy(x)).detach().numpy(), tol["y"], "eval y")


def test_momentum_none_is_the_cumulative_average(rng, draw):
    """momentum=None: after k batches the running mean is the plain mean of the k batch
    means, and the running variance that of the k unbiased variances (torch's meaning)."""
    layer = BatchNorm2d(3, momentum=None, dtype=np.float64)
    means, uvars = [], []
    for _ in range(4):
        x = _batch(draw, rng, (2, 3, 3, 4), np.float64)
        layer(x)
        x3, mean, var = _stats64(x)
        M = x3.shape[0] * x3.shape[2]
        means.append(mean)
        uvars.append(var * M / (M - 1))
        # float64 averages of a few numbers of size <= 10: rounding ~1e-15
        np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(layer.running_var, np.mean(uvars, axis=0), rtol=1e-12)
    assert int(layer.num_batches_tracked) == 4


@pytest.mark.parametrize("momentum", [0.0, 1.0], ids=["m0", "m1"])
def test_momentum_extremes(momentum, rng, draw):
    """momentum 0 never moves the running statistics; 1 replaces them by the last batch's."""
    layer = BatchNorm1d(2, momentum=momentum, dtype=np.float64)
    x = _batch(draw, rng, (5, 2), np.float64)
    layer(x)
    _, mean, var = _stats64(x)
    if momentum == 0:
        np.testing.assert_array_equal(layer.running_mean, [0, 0])
        np.testing.assert_array_equal(layer.running_var, [1, 1])
    else:
        np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-14)
        np.testing.assert_allclose(layer.running_var, var * 5 / 4, rtol=1e-14)
    assert int(layer.num_batches_tracked) == 1


def test_eval_does_not_move_the_running_statistics(rng, draw):
    layer = BatchNorm2d(2)
    layer(_batch(draw, rng, (2, 2, 3, 3)))
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    layer.eval()
    for _ in range(3):
        layer(_batch(draw, rng, (2, 2, 3, 3)))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


# -- hand-made case -------------------------------------------------------------------------------
def test_hand_case():
    """Channel 0 holds 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5,
    unbiased 14 / 3.  Channel 1 holds -1, -1, 1, 1: mean 0, variance 1, unbiased 4 / 3."""
    layer = BatchNorm1d(2, dtype=np.float64)
    layer.weight = np.array([2.0, -1.0])
    layer.bias = np.array([0.5, 0.0])
    x = np.array([[1.0, -1.0], [2.0, -1.0], [3.0, 1.0], [6.0, 1.0]])
    y = layer(x)
    s0, s1 = np.sqrt(3.5 + 1e-5), np.sqrt(1.0 + 1e-5)
    xhat = np.array([[-2 / s0, -1 / s1], [-1 / s0, -1 / s1], [0.0, 1 / s1], [3 / s0, 1 / s1]])
    # float64, a handful of operations on small numbers: rounding ~1e-15
    np.testing.assert_allclose(y, xhat * [2.0, -1.0] + [0.5, 0.0], rtol=1e-13, atol=1e-15)
    # running = 0.9 * initial + 0.1 * batch, with the unbiased variance
    np.testing.assert_allclose(layer.running_mean, [0.3, 0.0], rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(layer.running_var, [0.9 + 0.1 * 14 / 3, 0.9 + 0.1 * 4 / 3],
                               rtol=1e-14)
    assert int(layer.num_batches_tracked) == 1
    g = np.arange(8.0).reshape(4, 2)                     # columns [0, 2, 4, 6], [1, 3, 5, 7]
    grad_in = layer.backward(g)
    np.testing.assert_array_equal(layer.grads["bias"], [12.0, 16.0])      # column sums
    # dL/dgamma = sum g x_hat: (0 (-2) + 2 (-1) + 0 + 6 (3)) / s0 and (-1 - 3 + 5 + 7) / s1
    np.testing.assert_allclose(layer.grads["weight"], [16 / s0, 8 / s1], rtol=1e-14)
    # dL/dx = w / s (g - sum g / M - x_hat sum(g x_hat) / M)
    expected = np.stack([2 / s0 * (g[:, 0] - 3 - xhat[:, 0] * (16 / s0) / 4),
                         -1 / s1 * (g[:, 1] - 4 - xhat[:, 1] * (8 / s1) / 4)], axis=1)
    np.testing.assert_allclose(grad_in, expected, rtol=1e-13, atol=1e-14)
    # channel 0 by eye: x_hat (16 / s0) / 4 = 4 (x - 3) / v, v = 3.5 + eps, g - 3 = -3, -1, 1, 3
    v = 3.5 + 1e-5
    np.testing.assert_allclose(grad_in[:, 0], 2 / s0 * np.array(
        [-3 + 8 / v, -1 + 4 / v, 1.0, 3 - 12 / v]), rtol=1e-13)
    # eval: the running statistics, a fixed affine map
    layer.eval()
    np.testing.assert_allclose(layer(np.array([[0.3, 0.0]])),
                               [[0.5, 0.0]], rtol=0, atol=1e-15)


def test_hand_case_2d_statistics_over_n_h_w():
    """BatchNorm2d reduces over N, H and W: channel c of x = c + [[0, 1], [2, 3]] over two
    samples (the second sample + 4) has mean c + 3.5 and biased variance 5.25."""
    layer = BatchNorm2d(3, dtype=np.float64)
    base = np.arange(4.0).reshape(2, 2)
    x = np.stack([np.stack([c + base, c + base + 4]) for c in range(3)], axis=1)  # (2,3,2,2)
    y = layer(x)
    values = np.arange(8.0)                              # the 8 values of every channel
    assert values.var() == 5.25
    np.testing.assert_allclose(layer.running_mean, 0.1 * (np.arange(3) + 3.5), rtol=1e-14)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * 5.25 * 8 / 7, rtol=1e-14)
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 3.5) / np.sqrt(5.25 + 1e-5), rtol=1e-13)
    np.testing.assert_array_equal(y[:, 1], y[:, 0])      # the same values up to a shift
    np.testing.assert_array_equal(y[:, 2], y[:, 0])


# -- properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", GEOMS, ids=GEOM_IDS)
def test_grad_in_sums_to_zero_and_is_orthogonal_to_x_hat(cls, shape, rng, draw):
    """y does not change when a channel of x shifts by a constant, so each channel's dL/dx
    sums to 0.  Scaling a channel changes y only through eps, so dL/dx is orthogonal to
    x_hat up to that: sum(dL/dx x_hat) = k dL/dgamma (1 - mean(x_hat**2)) = k dL/dgamma
    eps / (var + eps), with k = w / sqrt(var + eps) (0 when eps -> 0)."""
    layer = cls(shape[1], dtype=np.float64)
    _randomise_affine(layer, rng)
    x = _batch(draw, rng, shape, np.float64)
    layer(x)
    g = draw(shape)
    grad_in = layer.backward(g)
    x3, mean, var = _stats64(x)
    xhat = (x3 - mean[None, :, None]) / np.sqrt(var[None, :, None] + layer.eps)
    gi, g3 = grad_in.reshape(x3.shape), g.reshape(x3.shape)
    M = x3.shape[0] * x3.shape[2]
    k = layer.weight / np.sqrt(var + layer.eps)
    eps_term = k * layer.grads["weight"] * layer.eps / (var + layer.eps)
    # each dL/dx = k (g - m_b - x_hat m_g) is rounded at the size of the bracket's terms
    # (it may cancel to far less: at M = 2, x_hat = +-1 and dL/dx is tiny), so a float64
    # sum of M of them errs by f32_atol's 2 eps M term with eps64, doubled for the
    # rounding of dL/dx and x_hat themselves
    m_b, m_g = g3.mean(axis=(0, 2)), (g3 * xhat).mean(axis=(0, 2))
    size = float(np.max(np.abs(k)[None, :, None] * (np.abs(g3) + np.abs(m_b)[None, :, None]
                                                    + np.abs(xhat * m_g[None, :, None]))))
    hmax = float(np.abs(xhat).max())
    for what, terms, expected, term in (("sum", gi, 0.0, size),
                                        ("dot with x_hat", gi * xhat, eps_term, size * hmax)):
        np.testing.assert_allclose(terms.sum(axis=(0, 2)), expected, rtol=0,
                                   atol=4 * EPS64 * M * term, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (4, 3)), (BatchNorm1d, (2, 3, 4)),
                                       (BatchNorm2d, (2, 3, 2, 2))], ids=["1d", "1d_L", "2d"])
def test_dtype_is_kept(cls, shape, dtype, rng, draw):
    layer = cls(3, dtype=dtype)
    y = layer(_batch(draw, rng, shape, dtype))
    grad_in = layer.backward(draw(shape, dtype))
    assert y.dtype == grad_in.dtype == dtype and y.shape == grad_in.shape == shape
    assert all(a.dtype == dtype for a in (*layer.params.values(), *layer.grads.values(),
                                          layer.running_mean, layer.running_var))
    assert layer.num_batches_tracked.dtype == np.int64
    layer.eval()
    assert layer(_batch(draw, rng, shape, dtype)).dtype == dtype


def test_to_float64_converts_the_running_statistics_not_the_counter(rng, draw):
    layer = BatchNorm2d(2)
    layer(_batch(draw, rng, (2, 2, 2, 2)))
    layer.to(np.float64)
    assert layer.running_mean.dtype == layer.running_var.dtype == np.float64
    assert layer.weight.dtype == np.float64 and layer.num_batches_tracked.dtype == np.int64
    assert layer(_batch(draw, rng, (2, 2, 2, 2), np.float64)).dtype == np.float64
    assert int(layer.num_batches_tracked) == 2


def test_gradients_accumulate_and_zero_grad_resets(rng, draw):
    layer = BatchNorm2d(3)
    _randomise_affine(layer, rng)
    x, g = _batch(draw, rng, (2, 3, 3, 3)), draw((2, 3, 3, 3), np.float32)
    layer(x)
    first = layer.backward(g)
    once = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    layer(x)                           # the same batch: the same statistics, the same sums
    np.testing.assert_array_equal(layer.backward(g), first)   # grad_in is not accumulated
    for k in once:
        np.testing.assert_array_equal(layer.grads[k], 2 * once[k])   # x + x: exact
    layer.zero_grad()
    assert all(np.all(v == 0) for v in layer.grads.values())


def test_input_is_not_modified(rng, draw):
    layer = BatchNorm2d(2)
    x = _batch(draw, rng, (2, 2, 3, 3))
    kept = x.copy()
    y = layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(x, kept)


def test_non_contiguous_input(rng, draw):
    """A transposed (non-contiguous) input gives the same result as its contiguous copy."""
    layer = BatchNorm2d(3, dtype=np.float64)
    x = _batch(draw, rng, (2, 3, 4, 5), np.float64)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    g = draw(x.shape)
    y1, gi1 = layer(x), layer.backward(g)
    y2, gi2 = layer(xt), layer.backward(g)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(gi1, gi2)


def test_eval_mode_keeps_no_cache(rng, draw):
    layer = BatchNorm2d(2)
    layer(_batch(draw, rng, (2, 2, 3, 3)))              # some running statistics
    layer.eval()
    y = layer(_batch(draw, rng, (2, 2, 3, 3)))
    assert layer._cache is None
    with pytest.raises(RuntimeError, match=r"BatchNorm2d.*forward\(\) in training mode"):
        layer.backward(np.ones_like(y))
    layer.train()
    y = layer(_batch(draw, rng, (2, 2, 3, 3)))
    assert layer.backward(np.ones_like(y)).shape == (2, 2, 3, 3)


def test_one_backward_per_forward(rng, draw):
    layer = BatchNorm1d(3)
    y = layer(_batch(draw, rng, (4, 3)))
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="BatchNorm1d"):
        layer.backward(np.ones_like(y))


# -- one value per channel --------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (1, 3)), (BatchNorm1d, (1, 3, 1)),
                                       (BatchNorm2d, (1, 3, 1, 1))],
                         ids=["1d_1x3", "1d_1x3x1", "2d_1x3x1x1"])
def test_one_value_per_channel_in_training_is_refused_as_torch(cls, shape, to_torch):
    layer = cls(3)
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(3.*\): expected more than 1 "
                                         rf"value per channel to use batch statistics, got input "
                                         rf"of shape {re_shape(shape)}"):
        layer(np.ones(shape, np.float32))
    assert int(layer.num_batches_tracked) == 0           # refused before any update
    np.testing.assert_array_equal(layer.running_mean, 0)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        to_torch(cls(3))(torch.ones(shape))              # torch refuses it too
    layer.eval()                                         # eval: the running statistics
    np.testing.assert_allclose(layer(np.full(shape, 2.0, np.float32)),
                               2.0 / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (1, 3)), (BatchNorm2d, (1, 3, 1, 1))],
                         ids=["1d_1x3", "2d_1x3x1x1"])
def test_one_value_per_channel_without_running_stats_is_refused_in_eval_too(cls, shape,
                                                                             to_torch):
    """Without running statistics eval normalises by the batch's, so a batch of one value
    per channel has no variance in eval either: torch refuses it (F.batch_norm runs with
    training=True when there are no running statistics)."""
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        to_torch(cls(3, track_running_stats=False).eval())(torch.from_numpy(x))
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(3.*\): expected more than 1 "
                                         r"value per channel"):
        cls(3, track_running_stats=False).eval()(x)


@pytest.mark.parametrize("shape", [(1, 3, 2, 2), (1, 3, 1, 2)], ids=["1x3x2x2", "1x3x1x2"])
def test_one_sample_with_several_positions_is_accepted(shape, rng, draw, to_torch, tol32):
    layer = BatchNorm2d(3)
    x, g = draw(shape, np.float32), draw(shape, np.float32)
    y = layer(x)
    grad_in = layer.backward(g)
    y_t, grad_t, _ = _torch_step(to_torch(BatchNorm2d(3)), x, g)
    tol = _float32_budget(x, g, layer.weight, layer.bias, layer.eps, tol32)
    _close(y, y_t, tol["y"], "y")
    _close(grad_in, grad_t, tol["grad_in"], "dL/dx")
    assert int(layer.num_batches_tracked) == 1


def re_shape(shape):
    """A shape as it appears in a message, escaped for a regex."""
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


# -- state: parameters, buffers, state_dict, torch's state --------------------------------------
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("track", [True, False], ids=["track", "no_track"])
@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d], ids=["1d", "2d"])
def test_state_dict_keys_are_torchs(cls, track, affine):
    layer = cls(4, affine=affine, track_running_stats=track)
    tcls = getattr(torch.nn, cls.__name__)
    expected = list(tcls(4, affine=affine, track_running_stats=track).state_dict())
    assert list(layer.state_dict()) == expected
    if affine and track:
        assert expected == ["weight", "bias", "running_mean", "running_var",
                            "num_batches_tracked"]
    # buffers are state, not trained: never in parameters()
    assert [k for k, _ in layer.named_parameters()] == (["weight", "bias"] if affine else [])
    assert layer.num_parameters() == (8 if affine else 0)
    assert [k for k, _ in layer.named_buffers()] == (
        ["running_mean", "running_var", "num_batches_tracked"] if track else [])


def test_initial_state_is_torchs():
    layer = BatchNorm2d(3)
    state = torch.nn.BatchNorm2d(3).state_dict()
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k].numpy(), err_msg=k)
        assert v.dtype == state[k].numpy().dtype, k
        assert v.shape == tuple(state[k].shape), k


def test_state_dict_is_a_copy_and_load_restores(rng, draw):
    layer = BatchNorm1d(3)
    layer(_batch(draw, rng, (4, 3)))
    saved = layer.state_dict()
    saved_copy = {k: v.copy() for k, v in saved.items()}
    layer(_batch(draw, rng, (4, 3)))
    for k, v in saved.items():                      # a copy: the second step changed nothing
        np.testing.assert_array_equal(v, saved_copy[k], err_msg=k)
    layer.load_state_dict(saved)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, saved_copy[k], err_msg=k)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (6, 4)), (BatchNorm1d, (3, 4, 5)),
                                       (BatchNorm2d, (2, 4, 5, 6))], ids=["1d", "1d_L", "2d"])
def test_loads_a_trained_torch_state_dict(cls, shape, rng, draw):
    """A torch BatchNorm trained for a few steps: its state_dict (tensors -> numpy) loads
    into npnet, and eval outputs agree."""
    torch.manual_seed(int(rng.integers(2 ** 31)))
    tmod = getattr(torch.nn, cls.__name__)(4)
    with torch.no_grad():
        tmod.weight.uniform_(0.5, 1.5)
        tmod.bias.uniform_(-1, 1)
    for _ in range(3):
        tmod(torch.from_numpy(_batch(draw, rng, shape)))
    layer = cls(4)
    layer.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    for k, v in tmod.state_dict().items():
        np.testing.assert_array_equal(layer.state_dict()[k], v.numpy(), err_msg=k)
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    tmod.eval()
    x = _batch(draw, rng, shape)
    y = layer(x)
    y_t = tmod(torch.from_numpy(x)).detach().numpy()
    # the same state: only the element-wise roundings differ (no reduction in eval)
    atol, *_ = _affine_budget(x, layer.running_mean, layer.running_var, 0.0, 0.0,
                              layer.weight, layer.bias, layer.eps)
    _close(y, y_t, atol, "eval y")


def test_inside_a_sequential_matches_torch(rng, draw, to_torch, tol32):
    """conv -> BatchNorm2d -> LeakyReLU -> Identity -> AdaptiveAvgPool2d -> Flatten ->
    Dropout -> Linear, as a model: two training steps (without the Dropout, whose masks
    cannot match), then eval with it; to_torch copies the buffers and the modes."""
    def make(with_dropout):
        layers = [("conv", npnet.Conv2d(2, 4, 3, padding=1, rng=rng)), ("bn", BatchNorm2d(4)),
                  ("act", npnet.LeakyReLU(0.1)), ("id", npnet.Identity()),
                  ("pool", npnet.AdaptiveAvgPool2d((2, 3))), ("flat", npnet.Flatten())]
        layers += [("drop", npnet.Dropout(0.5, rng=rng))] if with_dropout else []
        return npnet.Sequential(OrderedDict(layers + [("fc", npnet.Linear(24, 3, rng=rng))]))
    model = make(False)
    tmodel = to_torch(model)
    for _ in range(2):
        x = draw((4, 2, 6, 7), np.float32)
        y = model(x)
        g = draw(y.shape, np.float32)
        grad_x = np.asarray(model.backward(g))
        y_t, grad_t, grads_t = _torch_step(tmodel, x, g)
        # tests/nn/test_functional.py float32_additions' reasoning: the longest sums on a
        # path (conv fan-in 18, batch norm's 4 reductions over M = 168, the 3x3 pool window,
        # the linear fan-in 24) add up; term: the scale of the values compared (>= 1)
        K = 18 + 4 * 4 * 6 * 7 + 9 + 24
        named = model.named_parameters()            # torch's keys are positions: '0.weight'
        assert len(named) == len(grads_t) == 6
        for ours, theirs, what in [(y, y_t, "y"), (grad_x, grad_t, "dL/dx")] + [
                (p.grad, theirs, k) for (k, p), theirs in zip(named, grads_t.values())]:
            np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0,
                                       atol=tol32(K, max(1.0, float(np.abs(theirs).max()))),
                                       err_msg=what)
        model.zero_grad()
    bn = model["bn"]
    np.testing.assert_allclose(bn.running_mean, tmodel[1].running_mean.numpy(), rtol=0,
                               atol=tol32(K, 1.0))
    assert int(bn.num_batches_tracked) == int(tmodel[1].num_batches_tracked) == 2
    # eval, with a Dropout: the identity on both sides
    with_dropout = make(True)
    with_dropout.load_state_dict(model.state_dict())
    with pytest.raises(TypeError, match="Dropout.*training mode"):
        to_torch(with_dropout)
    with_dropout.eval()
    tmodel = to_torch(with_dropout)
    assert not tmodel.training and not tmodel[1].training
    x = draw((4, 2, 6, 7), np.float32)
    y_t = tmodel(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(with_dropout(x)), y_t, rtol=0,
                               atol=tol32(K, max(1.0, float(np.abs(y_t).max()))))


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape,layout", [
    (BatchNorm1d, (2, 3, 4, 4), r"a 2-D \(N, C\) or 3-D \(N, C, L\) input, got 4-D input "
                                r"of shape \(2, 3, 4, 4\)"),
    (BatchNorm1d, (3,), r"a 2-D \(N, C\) or 3-D \(N, C, L\) input, got 1-D input of shape "
                        r"\(3,\)"),
    (BatchNorm2d, (2, 3, 4), r"a 4-D \(N, C, H, W\) input, got 3-D input of shape "
                             r"\(2, 3, 4\)"),
    (BatchNorm2d, (1, 2, 3, 3, 3), r"a 4-D \(N, C, H, W\) input, got 5-D input"),
], ids=["1d_4d", "1d_1d", "2d_3d", "2d_5d"])
def test_wrong_ndim(cls, shape, layout):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(3, .*\): expected {layout}"):
        cls(3)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (2, 4)), (BatchNorm1d, (2, 2, 5)),
                                       (BatchNorm2d, (2, 4, 3, 3))],
                         ids=["1d", "1d_L", "2d"])
def test_wrong_channel_count(cls, shape):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(3, .*\): expected 3 channels "
                                         rf"\(dimension 1\), got input of shape "
                                         rf"{re_shape(shape)}"):
        cls(3)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_input_dtype_mismatch(affine):
    """affine=False has no weight: the running statistics carry the layer's dtype."""
    with pytest.raises(ValueError, match=r"BatchNorm2d\(2, .*\): input is float64 but the "
                                         r"layer is float32; cast the input or convert the "
                                         r"layer with \.to\(np\.float64\)"):
        BatchNorm2d(2, affine=affine)(np.zeros((2, 2, 2, 2), np.float64))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(2, .*\): input is float32 but the "
                                         r"layer is float64"):
        BatchNorm1d(2, affine=affine, dtype=np.float64)(np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("bad,got", [(np.zeros((2, 2), np.int64), "int64"),
                                     (np.zeros((2, 2), np.float16), "float16"),
                                     ([[1.0, 2.0], [3.0, 4.0]], "list")],
                         ids=["int64", "float16", "list"])
def test_non_float_input(bad, got):
    with pytest.raises(ValueError, match=rf"BatchNorm1d\(2, .*\):.*{got}"):
        BatchNorm1d(2)(bad)


def test_grad_out_wrong_shape_and_dtype(rng, draw):
    layer = BatchNorm2d(2)
    layer(_batch(draw, rng, (2, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*grad_out has shape \(2, 2, 3, 2\), "
                                         r"expected \(2, 2, 3, 3\)"):
        layer.backward(np.ones((2, 2, 3, 2), np.float32))
    layer(_batch(draw, rng, (2, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*grad_out is float64, expected "
                                         r"float32"):
        layer.backward(np.ones((2, 2, 3, 3), np.float64))


def test_backward_without_forward_raises():
    with pytest.raises(RuntimeError, match=r"BatchNorm1d.*forward\(\) in training mode"):
        BatchNorm1d(2).backward(np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d], ids=["1d", "2d"])
@pytest.mark.parametrize("args,kwargs,match", [
    ((0,), {}, r"num_features must be a positive int, got 0"),
    ((-2,), {}, r"num_features must be a positive int, got -2"),
    ((2.0,), {}, r"num_features must be a positive int, got 2\.0"),
    ((True,), {}, r"num_features must be a positive int, got True"),
    ((3,), {"eps": 0}, r"eps must be a positive number, got 0"),
    ((3,), {"eps": -1e-5}, r"eps must be a positive number, got -1e-05"),
    ((3,), {"eps": "1e-5"}, r"eps must be a positive number, got '1e-5'"),
    ((3,), {"eps": True}, r"eps must be a positive number, got True"),
    ((3,), {"momentum": -0.1}, r"momentum must be a number in \[0, 1\] or None"),
    ((3,), {"momentum": 1.5}, r"momentum must be a number in \[0, 1\] or None .*got 1\.5"),
    ((3,), {"momentum": "0.1"}, r"momentum must be a number in \[0, 1\] or None"),
    ((3,), {"momentum": True}, r"momentum must be a number in \[0, 1\] or None"),
    ((3,), {"dtype": np.float16}, r"dtype must be float32 or float64"),
    ((3,), {"dtype": np.int32}, r"dtype must be float32 or float64"),
], ids=["C0", "C_neg", "C_float", "C_bool", "eps0", "eps_neg", "eps_str", "eps_bool",
        "momentum_neg", "momentum_1.5", "momentum_str", "momentum_bool", "dtype_f16",
        "dtype_i32"])
def test_constructor_errors(cls, args, kwargs, match):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: {match}"):
        cls(*args, **kwargs)
