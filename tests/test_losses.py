"""Tests of npnet/losses.py: torch parity, numerical gradients, stability, validation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npnet.losses import CrossEntropyLoss, MSELoss


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f at x (float64), one coordinate at a time.

    Error O(eps^2 f''') from truncation plus O(ulp(f) / eps) ~ 1e-10 from rounding."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        f_plus = f(x)
        x[i] = old - eps
        f_minus = f(x)
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


SHAPES = [(1, 2), (4, 3), (8, 10), (64, 100)]
SHAPE_IDS = [f"N{n}_C{c}" for n, c in SHAPES]


# -- CrossEntropyLoss -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cross_entropy_matches_torch_float32(shape):
    rng = np.random.default_rng(0)
    n, c = shape
    logits = (3 * rng.standard_normal(shape)).astype(np.float32)
    targets = rng.integers(0, c, size=n)
    crit = CrossEntropyLoss()
    loss = crit(logits, targets)
    grad_in = crit.backward()

    x = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(x, torch.tensor(targets))
    ref.backward()
    # float32: a few roundings of values O(1) (log, exp, a sum over C, a mean over N),
    # each ~6e-8 relative; 1e-5 relative leaves a wide margin without hiding a wrong formula.
    assert loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    # the gradient entries are O(1/N): absolute 1e-7 is ~1 ulp of the largest ones
    np.testing.assert_allclose(grad_in, x.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert grad_in.dtype == np.float32 and grad_in.shape == shape


@pytest.mark.parametrize("shape", [(1, 2), (3, 4), (5, 7)], ids=["N1_C2", "N3_C4", "N5_C7"])
def test_cross_entropy_numerical_gradient_float64(shape):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape)
    targets = rng.integers(0, shape[1], size=shape[0])
    crit = CrossEntropyLoss()
    crit(logits, targets)
    grad_in = crit.backward()
    expected = numerical_grad(lambda x: CrossEntropyLoss()(x, targets), logits.copy())
    # central differences in float64 with eps=1e-6: error ~1e-10, far below 1e-7
    np.testing.assert_allclose(grad_in, expected, rtol=1e-6, atol=1e-8)


def test_cross_entropy_hand_case():
    # log-softmax of [0, ln 3] is [ln 1/4, ln 3/4]: the loss for label 1 is -ln(3/4)
    logits = np.array([[0.0, np.log(3.0)]])
    crit = CrossEntropyLoss()
    assert crit(logits, np.array([1])) == pytest.approx(-np.log(0.75), rel=1e-15)
    np.testing.assert_allclose(crit.backward(), [[0.25, -0.25]], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_huge_logits_are_stable(dtype):
    # without the shift, exp(1000) overflows to inf and the loss is nan
    base = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=dtype)
    targets = np.array([2, 0])
    crit = CrossEntropyLoss()
    shifted_loss = crit(base, targets)
    shifted_grad = crit.backward()
    for offset in (1e3, -1e3):
        loss = crit(base + dtype(offset), targets)
        grad_in = crit.backward()
        assert np.isfinite(loss) and np.all(np.isfinite(grad_in))
        # softmax is shift-invariant; in float32 adding 1e3 already rounds the logits to
        # ulp(1000) = 6e-5, hence the looser tolerance there
        tol = 1e-12 if dtype == np.float64 else 2e-4
        assert loss == pytest.approx(shifted_loss, rel=tol, abs=tol)
        np.testing.assert_allclose(grad_in, shifted_grad, rtol=tol, atol=tol)


def test_cross_entropy_one_huge_logit():
    # the true class scores 1000 above the rest: loss ~ e^-1000 = 0; the wrong class: 1000
    logits = np.array([[1000.0, 0.0], [1000.0, 0.0]])
    crit = CrossEntropyLoss()
    assert crit(logits, np.array([0, 0])) == 0.0
    assert crit(logits, np.array([1, 1])) == pytest.approx(1000.0, rel=1e-15)
    np.testing.assert_allclose(crit.backward(), [[0.5, -0.5], [0.5, -0.5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("target_dtype", [np.int64, np.int32, np.uint8], ids=["int64", "int32", "uint8"])
def test_cross_entropy_keeps_dtype(dtype, target_dtype):
    logits = np.linspace(-1, 1, 12).reshape(4, 3).astype(dtype)
    crit = CrossEntropyLoss()
    loss = crit(logits, np.array([0, 1, 2, 1], dtype=target_dtype))
    assert type(loss) is float
    grad_in = crit.backward()
    assert grad_in.dtype == dtype
    # each row of softmax - onehot sums to 0
    np.testing.assert_allclose(grad_in.sum(axis=1), 0, atol=1e-7)


def test_cross_entropy_forward_is_call():
    logits = np.array([[1.0, 2.0, 0.0]])
    assert CrossEntropyLoss().forward(logits, [1]) == CrossEntropyLoss()(logits, [1])


def test_cross_entropy_backward_does_not_touch_logits():
    logits = np.array([[1.0, 2.0, 0.0]])
    before = logits.copy()
    crit = CrossEntropyLoss()
    crit(logits, [1])
    crit.backward()
    np.testing.assert_array_equal(logits, before)


BAD_CE = [
    ("logits_1d", np.zeros(3), np.array([0]), r"logits of shape \(N, C\), got shape \(3,\)"),
    ("logits_4d", np.zeros((2, 3, 4, 4)), np.array([0, 1]), r"logits of shape \(N, C\), got shape \(2, 3, 4, 4\)"),
    ("logits_int", np.zeros((2, 3), dtype=np.int64), np.array([0, 1]), r"float32 or float64 .*got dtype int64"),
    ("empty", np.zeros((0, 3)), np.array([], dtype=np.int64), r"non-empty .*got shape \(0, 3\)"),
    ("targets_2d", np.zeros((2, 3)), np.array([[0], [1]]), r"targets of shape \(2,\) .*got shape \(2, 1\)"),
    ("targets_short", np.zeros((2, 3)), np.array([0]), r"targets of shape \(2,\) .*got shape \(1,\)"),
    ("targets_float", np.zeros((2, 3)), np.array([0.0, 1.0]), r"integer class labels .*got dtype float64"),
    ("label_too_big", np.zeros((2, 3)), np.array([0, 3]), r"target label 3 is outside \[0, C\) with C=3"),
    ("label_negative", np.zeros((2, 3)), np.array([-1, 0]), r"target label -1 is outside \[0, C\) with C=3"),
]


@pytest.mark.parametrize("logits,targets,message", [b[1:] for b in BAD_CE], ids=[b[0] for b in BAD_CE])
def test_cross_entropy_bad_input(logits, targets, message):
    with pytest.raises(ValueError, match="^CrossEntropyLoss: .*" + message):
        CrossEntropyLoss()(logits, targets)


def test_cross_entropy_backward_needs_forward():
    crit = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: backward\(\) called before forward\(\)"):
        crit.backward()
    crit(np.zeros((1, 2)), [0])
    crit.backward()
    with pytest.raises(ValueError, match="before forward"):  # the cache was released
        crit.backward()


# -- MSELoss ----------------------------------------------------------------------------------
MSE_SHAPES = [(5,), (4, 3), (2, 3, 4, 5)]
MSE_IDS = ["1d", "2d", "4d"]


@pytest.mark.parametrize("shape", MSE_SHAPES, ids=MSE_IDS)
def test_mse_matches_torch_float32(shape):
    rng = np.random.default_rng(2)
    pred = rng.standard_normal(shape).astype(np.float32)
    target = rng.standard_normal(shape).astype(np.float32)
    crit = MSELoss()
    loss = crit(pred, target)
    grad_in = crit.backward()
    p = torch.tensor(pred, requires_grad=True)
    ref = F.mse_loss(p, torch.tensor(target))
    ref.backward()
    # float32 sums of O(1) squares: 1e-5 relative covers the different summation orders
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(grad_in, p.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert grad_in.dtype == np.float32


@pytest.mark.parametrize("shape", MSE_SHAPES[:2], ids=MSE_IDS[:2])
def test_mse_numerical_gradient_float64(shape):
    rng = np.random.default_rng(3)
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    crit = MSELoss()
    crit(pred, target)
    grad_in = crit.backward()
    expected = numerical_grad(lambda x: MSELoss()(x, target), pred.copy())
    np.testing.assert_allclose(grad_in, expected, rtol=1e-6, atol=1e-8)


def test_mse_hand_case():
    crit = MSELoss()
    assert crit(np.array([1.0, 2.0, 4.0, 0.0]), np.array([0.0, 2.0, 2.0, 0.0])) == 1.25
    np.testing.assert_array_equal(crit.backward(), [0.5, 0.0, 1.0, 0.0])


def test_mse_keeps_pred_dtype():
    crit = MSELoss()
    crit(np.ones(3, dtype=np.float32), np.zeros(3))  # a float64 target is cast to float32
    assert crit.backward().dtype == np.float32


BAD_MSE = [
    ("shape_mismatch", np.zeros((2, 3)), np.zeros((3, 2)), r"target of shape \(2, 3\) like pred, got shape \(3, 2\)"),
    ("broadcastable", np.zeros((2, 3)), np.zeros(3), r"target of shape \(2, 3\) like pred, got shape \(3,\)"),
    ("pred_int", np.zeros(3, dtype=np.int32), np.zeros(3), r"float32 or float64 .*got dtype int32"),
    ("empty", np.zeros((0, 2)), np.zeros((0, 2)), r"non-empty pred, got shape \(0, 2\)"),
]


@pytest.mark.parametrize("pred,target,message", [b[1:] for b in BAD_MSE], ids=[b[0] for b in BAD_MSE])
def test_mse_bad_input(pred, target, message):
    with pytest.raises(ValueError, match="^MSELoss: .*" + message):
        MSELoss()(pred, target)


def test_mse_backward_needs_forward():
    with pytest.raises(ValueError, match=r"MSELoss: backward\(\) called before forward\(\)"):
        MSELoss().backward()
