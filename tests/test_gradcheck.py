"""Tests of npnet/gradcheck.py: it passes right layers and catches wrong ones."""
import textwrap

import numpy as np
import pytest

import npnet
from npnet import Conv2d, GradcheckError, Linear, TensorCheck


class ScaledWeightGrad(Linear):
    """A Linear whose backward is off by a factor for the weight (a typical slip)."""

    def backward(self, grad_out, need_grad_in=True):
        before = self.grads["weight"].copy()
        grad_in = super().backward(grad_out, need_grad_in)
        self.grads["weight"][...] = before + 1.01 * (self.grads["weight"] - before)
        return grad_in


class TransposedInputGrad(npnet.Layer):
    """y = x @ A with a fixed (non-parameter) A, whose backward forgets to transpose A."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x):
        self._cache = True
        return x @ self.a

    def backward(self, grad_out):
        self._cache = None
        return grad_out @ self.a          # should be grad_out @ self.a.T


def test_passes_a_correct_layer(rng, draw):
    layer = Conv2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((2, 2, 5, 6)), rng=rng)
    assert all(isinstance(r, TensorCheck) for r in report)
    assert [(r.name, r.shape) for r in report] == [("input", (2, 2, 5, 6)),
                                                   ("weight", (3, 2, 3, 3)), ("bias", (3,))]
    for r in report:
        # float64 central differences: O(eps**2) + O(u / eps) ~ 1e-10 on O(1) values
        assert r.passed and r.max_abs_err < 1e-7 and r.max_rel_err < 1e-5, str(r)
        assert str(r).startswith("ok")


@pytest.mark.parametrize("mode", ["full", "random"])
def test_catches_a_wrong_weight_gradient(mode, rng, draw):
    layer = ScaledWeightGrad(4, 3, dtype=np.float64, rng=rng)
    x = draw((5, 4))
    with pytest.raises(GradcheckError, match=r"FAIL weight"):
        npnet.gradcheck(layer, x, mode=mode, rng=rng)
    report = npnet.gradcheck(layer, x, mode=mode, rng=rng, raise_on_fail=False)
    assert {r.name: r.passed for r in report} == {"input": True, "weight": False,
                                                  "bias": True}
    weight = report[1]
    # 1% too large: the relative error is ~0.01 / 1.01 wherever the gradient is not tiny
    assert 0.005 < weight.max_rel_err < 0.02
    assert str(weight).startswith("FAIL")


def test_catches_a_wrong_input_gradient(rng, draw):
    layer = TransposedInputGrad(draw((3, 3)))
    with pytest.raises(GradcheckError) as info:
        npnet.gradcheck(layer, draw((2, 3)), rng=rng)
    assert isinstance(info.value, AssertionError)          # pytest shows it as a failure
    assert "FAIL input" in str(info.value)
    report = npnet.gradcheck(layer, draw((2, 3)), rng=rng, raise_on_fail=False)
    assert [(r.name, r.passed) for r in report] == [("input", False)]


def test_random_mode_on_a_bigger_layer(rng, draw):
    layer = Conv2d(8, 16, 3, padding=1, dtype=np.float64, rng=rng)   # 1168 parameters
    x = draw((4, 8, 12, 12))                                           # 4608 inputs
    report = npnet.gradcheck(layer, x, mode="random", n_directions=6, rng=rng)
    assert [r.name for r in report] == ["input", "weight", "bias"]
    assert all(r.passed for r in report)


def test_leaves_the_layer_and_input_unchanged(rng, draw):
    layer = Linear(4, 3, dtype=np.float64, rng=rng)
    before = {k: v.copy() for k, v in layer.params.items()}
    x = draw((2, 4))
    x_before = x.copy()
    for mode in ("full", "random"):
        npnet.gradcheck(layer, x, mode=mode, rng=rng)
    np.testing.assert_array_equal(x, x_before)
    for k in before:
        np.testing.assert_array_equal(layer.params[k], before[k])
        assert layer.params[k] is layer.parameters()[list(before).index(k)].data


def test_refuses_float32(rng):
    with pytest.raises(ValueError, match=r"gradcheck: x must be a float64 array.*float32"):
        npnet.gradcheck(Linear(3, 2, dtype=np.float64, rng=rng), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"gradcheck: parameter 'weight' is float32; build "
                                         r"the layer with dtype=np.float64"):
        npnet.gradcheck(Linear(3, 2, rng=rng), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"gradcheck: parameter 'fc\.weight' is float32"):
        npnet.gradcheck(npnet.Sequential({"fc": Linear(3, 2, rng=rng)}), np.ones((2, 3)))


def test_refuses_an_unknown_mode(rng):
    with pytest.raises(ValueError, match=r"mode must be 'full' or 'random', got 'fast'"):
        npnet.gradcheck(Linear(3, 2, dtype=np.float64, rng=rng), np.ones((2, 3)), mode="fast")


def test_the_docstring_example_runs(capsys):
    doc = npnet.gradcheck.__doc__
    assert "Checking a layer of your own::" in doc
    code = textwrap.dedent(doc.split("Checking a layer of your own::", 1)[1])
    assert "class Square(npnet.Layer)" in code
    exec(compile(code, "<gradcheck docstring>", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("ok") and "input" in out[0]
    assert "(3, 4)" in out[0]


def test_an_input_gradient_of_the_wrong_shape_fails():
    """A broadcastable but wrong-shaped dL/dx must not slip through the comparison."""
    class RowSum(npnet.Layer):
        def forward(self, x):
            return x.sum(axis=1, keepdims=True)

        def backward(self, grad_out):
            return grad_out                      # (N, 1), should be (N, D)
    with pytest.raises(GradcheckError, match=r"returned \(3, 1\) for an input of shape "
                                             r"\(3, 4\)"):
        npnet.gradcheck(RowSum(), np.random.default_rng(0).standard_normal((3, 4)))


def test_gradcheck_leaves_mode_and_accumulated_gradients_as_they_were():
    rng = np.random.default_rng(1)
    model = npnet.Sequential(Linear(3, 2, dtype=np.float64, rng=rng), npnet.Tanh())
    model.eval()
    model[0].grads["weight"][...] = 7.0          # gradients the caller accumulated
    npnet.gradcheck(model, rng.standard_normal((2, 3)))
    assert not model.training and not model[0].training and not model[1].training
    assert np.all(model[0].grads["weight"] == 7.0)


def test_running_statistics_are_put_back(rng):
    """Every forward of the check is a training step of a batch norm: the check must not
    leave the layer's running statistics moved."""
    layer = npnet.BatchNorm2d(3, dtype=np.float64)
    layer.running_mean[...] = [1.0, 2.0, 3.0]
    before = {k: v.copy() for k, v in layer.named_buffers()}
    npnet.gradcheck(layer, rng.standard_normal((4, 3, 2, 2)) + 5, rng=rng)
    for k, v in layer.named_buffers():
        assert v.dtype == before[k].dtype and np.array_equal(v, before[k]), k
