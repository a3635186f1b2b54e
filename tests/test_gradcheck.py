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
    with pytest.raises(ValueError, match=r"mode must be 'full', 'random' or 'auto', "
                                         r"got 'fast'"):
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


# -- the contract, and no false alarms (issue 12) ---------------------------------------------
class AssignsWeightGrad(Linear):
    """A Linear whose backward assigns its weight gradient (=) instead of adding (+=)."""

    def backward(self, grad_out, need_grad_in=True):
        x, w, _ = self._cache
        grad_in = super().backward(grad_out, need_grad_in)
        self.grads["weight"][...] = grad_out.T @ x
        return grad_in


class InPlaceLeakyReLU(npnet.Layer):
    """A right LeakyReLU backward that scales grad_out in place (a common slip)."""

    def forward(self, x):
        self._cache = x > 0
        return np.where(x > 0, x, 0.1 * x)

    def backward(self, grad_out):
        positive, self._cache = self._cache, None
        grad_out[~positive] *= 0.1
        return grad_out


def test_the_first_backward_alone_cannot_see_an_assignment(rng, draw):
    """One backward from zeroed gradients gives the right numbers with = as with +=: only
    the second call tells them apart, and the report names the fault."""
    layer = AssignsWeightGrad(4, 3, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((5, 4)), rng=rng, raise_on_fail=False)
    assert all(r.passed for r in report)                  # every number is right...
    assert not report.passed                              # ...and the check still fails
    assert [f.kind for f in report.faults] == ["accumulation"]
    assert "assigns the gradient of 'weight' (=) instead of adding into it (+=)" in str(report)
    with pytest.raises(GradcheckError, match=r"assigns the gradient of 'weight'"):
        npnet.gradcheck(layer, draw((5, 4)), rng=rng)


def test_a_backward_writing_into_grad_out_is_named_not_called_a_wrong_gradient(rng, draw):
    report = npnet.gradcheck(InPlaceLeakyReLU(), draw((3, 4)), rng=rng, raise_on_fail=False)
    (r,) = report
    assert r.passed and r.rel_err < 1e-8, str(r)      # the gradient itself is right
    assert [f.kind for f in report.faults] == ["grad_out modified"]
    assert "backward changed its argument grad_out in place" in str(report)


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_parameters_in_any_memory_order_are_perturbed_where_they_live(layout, rng, draw):
    layer = Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng)
    w = layer.weight
    if layout == "fortran":
        layer.weight = np.asfortranarray(w)
        assert not layer.weight.flags.c_contiguous and layer.weight.flags.f_contiguous
    else:
        big = np.zeros(w.shape[:-1] + (w.shape[-1] + 2,))
        big[..., :-2] = w
        layer.weight = big[..., :-2]                     # a view into a bigger array
        assert not layer.weight.flags.c_contiguous and layer.weight.base is big
    # the old check perturbed t.reshape(-1), which for these arrays is a copy: the layer
    # never saw the step, the numerical gradient was 0 and a right layer failed
    assert not np.shares_memory(layer.weight.reshape(-1), layer.weight)
    report = npnet.gradcheck(layer, draw((2, 2, 4, 5)), rng=rng)
    assert report.passed and [r.name for r in report] == ["input", "weight", "bias"]
    assert report[1].rel_err < 1e-8, str(report[1])
    np.testing.assert_array_equal(layer.weight, w)        # put back exactly


def test_an_input_in_any_memory_order_and_a_read_only_one(rng, draw):
    layer = Linear(4, 3, dtype=np.float64, rng=rng)
    big = draw((6, 8))
    for x in (np.asfortranarray(draw((5, 4))), big[::2, 1::2], big[:3, :4]):
        kept = x.copy()
        assert npnet.gradcheck(layer, x, rng=rng).passed
        np.testing.assert_array_equal(x, kept)
    x = draw((5, 4))
    x.flags.writeable = False
    assert npnet.gradcheck(layer, x, rng=rng).passed       # checked through a copy


@pytest.mark.parametrize("mode", ["full", "random"])
def test_relu_at_zero_is_a_kink_not_a_wrong_gradient(mode, rng, draw):
    x = draw((3, 4))
    x[0, :2] = 0.0                                          # two elements on the kink
    report = npnet.gradcheck(npnet.ReLU(), x, mode=mode, n_directions=4, rng=rng)
    (r,) = report
    assert r.passed and report.passed
    if mode == "full":
        assert [k[0] for k in r.kinks] == [(0, 0), (0, 1)]
        assert r.compared == x.size - 2
        # torch's convention, the slope from the left: 0
        for _, analytic, left, right in r.kinks:
            assert analytic == 0 and left == 0 and abs(right) > 1e-3
        assert "kink:  input[0, 0]: the slope is 0 from the left" in str(report)
    else:
        assert r.n_kinks == 4 and r.compared == 0           # every direction crosses both
    assert "at a kink, not compared" in str(r)


def test_max_pool_ties_and_near_ties_are_kinks(rng):
    x = rng.permutation(32).reshape(1, 2, 4, 4) / 4.0       # distinct: no tie
    x[0, 0, :2, :2] = 1.0                                   # a flat window: a tie
    x[0, 1, :2, :2] = [[5.0, 5.0 + 3e-7], [0.0, 0.1]]       # closer than the step: near-tie
    report = npnet.gradcheck(npnet.MaxPool2d(2), x, rng=rng)
    (r,) = report
    assert r.passed
    assert {k[0] for k in r.kinks} == {(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0),
                                       (0, 0, 1, 1), (0, 1, 0, 0), (0, 1, 0, 1)}


def test_a_wrong_gradient_next_to_a_kink_is_still_caught(rng, draw):
    class HalfSlopeReLU(npnet.ReLU):            # the positive side's slope halved: wrong
        def backward(self, grad_out):
            return 0.5 * super().backward(grad_out)
    x = draw((3, 4))
    x[0, 0] = 0.0
    report = npnet.gradcheck(HalfSlopeReLU(), x, rng=rng, raise_on_fail=False)
    (r,) = report
    assert not r.passed and r.n_kinks == 1 and r.compared == x.size - 1
    assert r.worst != (0, 0) and x[r.worst] > 0
    assert r.worst_analytic == pytest.approx(0.5 * r.worst_numeric, rel=1e-6)


def test_the_report_names_the_worst_element_and_the_tolerance(rng, draw):
    layer = ScaledWeightGrad(4, 3, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((5, 4)), rng=rng, raise_on_fail=False)
    weight = report[1]
    assert isinstance(weight.worst, tuple) and len(weight.worst) == 2
    # the scaled weight gradient: backward gives 1.01 times the numerical value there
    assert weight.worst_analytic == pytest.approx(1.01 * weight.worst_numeric, rel=1e-6)
    text = str(report)
    assert text.splitlines()[0].endswith("FAILED")
    assert f"the gradient of 'weight' is wrong: at weight[{weight.worst[0]}, " \
           f"{weight.worst[1]}] backward gives" in text
    assert "tolerance |backward - numerical| <= atol + rtol * |numerical| = 1e-05 + " \
           "0.001 * |numerical|" in text
    assert "(truncation)" in text and "(rounding, u = 1.1e-16)" in text
    assert "worst: input[" in text and "worst: bias[" in text


def test_a_forward_that_changes_its_input_stops_the_check(rng, draw):
    class InPlaceReLU(npnet.Layer):
        def forward(self, x):
            np.maximum(x, 0, out=x)                    # "inplace=True"
            self._cache = x > 0
            return x.copy()

        def backward(self, grad_out):
            return grad_out * self._cache
    x = draw((3, 4))
    kept = x.copy()
    with pytest.raises(GradcheckError, match=r"forward changed its input x in place"):
        npnet.gradcheck(InPlaceReLU(), x, rng=rng, raise_on_fail=False)
    np.testing.assert_array_equal(x, kept)                 # and x is given back


def test_random_mode_reports_directions(rng, draw):
    layer = ScaledWeightGrad(6, 5, dtype=np.float64, rng=rng)
    report = npnet.gradcheck(layer, draw((4, 6)), mode="random", n_directions=5, rng=rng,
                             raise_on_fail=False)
    weight = report[1]
    assert weight.mode == "random" and weight.compared == 5 and isinstance(weight.worst, int)
    assert f"weight along random direction {weight.worst}" in str(report)


def test_auto_mode_chooses_per_tensor(rng, draw):
    layer = Linear(30, 40, dtype=np.float64, rng=rng)        # weight: 1200 elements
    report = npnet.gradcheck(layer, draw((2, 30)), mode="auto", full_max=1000, rng=rng)
    assert [(r.name, r.mode) for r in report] == [("input", "full"), ("weight", "random"),
                                                  ("bias", "full")]
