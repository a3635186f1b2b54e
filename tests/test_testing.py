"""Tests of npnet/testing.py: assert_layer_correct passes right layers (built in, a Layer of
your own, a model) and catches each kind of bug, with a message that names it: the gallery
of broken layers below, one per fault.  tests/test_testing_sweep.py holds the no-false-alarm
sweep over hundreds of right layers."""
import numpy as np
import pytest

import npnet
import npnet.nn as nn
from npnet import GradcheckError
from npnet.testing import assert_layer_correct


class Affine(npnet.Layer):
    """y = x @ W.T + b written as a user would, to the contract: the right base of the
    gallery.  Each broken layer below overrides one thing."""

    def __init__(self, n_in, n_out, rng, dtype=np.float64):
        super().__init__()
        self.weight = npnet.Parameter(rng.standard_normal((n_out, n_in)).astype(dtype))
        self.bias = npnet.Parameter(rng.standard_normal(n_out).astype(dtype))

    def forward(self, x):
        self._cache = (x, self.weight) if self.training else None
        return x @ self.weight.T + self.bias

    def backward(self, grad_out):
        x, w = self._cache
        self._cache = None
        self.grads["weight"] += grad_out.T @ x             # (out, N) @ (N, in)
        self.grads["bias"] += grad_out.sum(axis=0)
        return grad_out @ w                                 # (N, out) @ (out, in)


def caught(layer, x, **options) -> str:
    """The message assert_layer_correct raises for ``layer``; fails if it passes."""
    with pytest.raises(GradcheckError) as info:
        assert_layer_correct(layer, x, **options)
    assert isinstance(info.value, AssertionError)           # pytest shows it as a failure
    return str(info.value)


def kinds(message_or_error) -> list:
    return [f.kind for f in message_or_error.report.faults]


# -- right layers pass -------------------------------------------------------------------------
def test_a_right_layer_of_your_own_passes_and_returns_the_report(rng, draw):
    x = draw((4, 3))
    report = assert_layer_correct(Affine(3, 2, rng), x)
    assert report.passed and [r.name for r in report] == ["input", "weight", "bias"]
    for r in report:
        # float64 central differences: O(eps**2) + O(u / eps) ~ 1e-10 on O(1) values
        assert r.rel_err < 1e-8 and r.compared == int(np.prod(r.shape)), str(r)
    assert str(report).startswith("Affine(): passed")


def test_a_float32_layer_is_checked_through_a_float64_copy(rng, draw):
    layer = npnet.Conv2d(2, 3, 3, padding=1, rng=rng)       # float32, npnet's default
    kept = {k: v.copy() for k, v in layer.state_dict().items()}
    x = draw((2, 2, 4, 4), np.float32)
    report = assert_layer_correct(layer, x)
    assert report.passed and layer.weight.dtype == np.float32
    for k, v in layer.state_dict().items():
        assert v.dtype == kept[k].dtype and np.array_equal(v, kept[k])


def test_a_model_passes(rng, draw):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 5, dtype=np.float64, rng=rng)
            self.act = nn.Tanh()
            self.fc2 = nn.Linear(5, 2, dtype=np.float64, rng=rng)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))
    model = Net()
    model.eval()
    report = assert_layer_correct(model, draw((3, 4)))
    assert [r.name for r in report] == ["input", "fc1.weight", "fc1.bias", "fc2.weight",
                                        "fc2.bias"]
    assert not model.training and not model.fc1.training          # mode put back


def test_the_model_with_batch_norm_says_why_samples_were_not_checked(rng, draw):
    model = npnet.Sequential(npnet.Linear(3, 4, dtype=np.float64, rng=rng),
                             npnet.BatchNorm1d(4, dtype=np.float64))
    report = assert_layer_correct(model, draw((5, 3)))
    assert "samples: independence not checked: 1 (BatchNorm1d) declares mixes_samples " \
           "= True" in str(report)
    running = model[1].running_mean.copy()
    assert_layer_correct(model, draw((5, 3)))
    np.testing.assert_array_equal(model[1].running_mean, running)   # buffers put back


def test_bad_arguments_are_refused_in_one_line(rng):
    with pytest.raises(TypeError, match=r"layer must be an npnet Module .* got function"):
        assert_layer_correct(lambda x: x, np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"x must be a float32 or float64 numpy array, "
                                        r"got int64"):
        assert_layer_correct(npnet.ReLU(), np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match=r"x must be .* got list"):
        assert_layer_correct(npnet.ReLU(), [1.0, 2.0])
    with pytest.raises(TypeError, match=r"redraw_kinks must be True or False, got 3"):
        assert_layer_correct(npnet.ReLU(), np.ones((2, 3)), redraw_kinks=3)
    with pytest.raises(ValueError, match=r"mode must be 'full', 'random' or 'auto'"):
        assert_layer_correct(npnet.ReLU(), np.ones((2, 3)), mode="every")


# -- the gallery of broken layers: each is caught, and the message names its fault ----------
class WrongInputGrad(Affine):
    def backward(self, grad_out):
        x, w = self._cache
        super().backward(grad_out)
        return grad_out @ (w * 1.1)                 # the input's gradient 10% too large


class WrongWeightGrad(Affine):
    def backward(self, grad_out):
        x, w = self._cache
        self._cache = None
        self.grads["weight"] += grad_out.T @ x[::-1]       # samples in the wrong order
        self.grads["bias"] += grad_out.sum(axis=0)
        return grad_out @ w


class AssignsGrad(Affine):
    def backward(self, grad_out):
        x, w = self._cache
        self._cache = None
        self.grads["weight"][...] = grad_out.T @ x         # = instead of +=
        self.grads["bias"] += grad_out.sum(axis=0)
        return grad_out @ w


class ReplacesGrad(Affine):
    def backward(self, grad_out):
        x, w = self._cache
        self._cache = None
        self.grads["weight"] = self.grads["weight"] + grad_out.T @ x   # a new array
        self.grads["bias"] += grad_out.sum(axis=0)
        return grad_out @ w


class GradOfTheWrongShape(Affine):
    def backward(self, grad_out):
        x, w = self._cache
        self._cache = None
        self.grads["weight"] = (grad_out.T @ x).sum(axis=0)    # summed away: (in,)
        self.grads["bias"] += grad_out.sum(axis=0)
        return grad_out @ w


class ScalesGradOutInPlace(Affine):
    def backward(self, grad_out):
        grad_out *= 2.0                                     # writes into its argument
        return super().backward(grad_out / 2.0)


class ReusesItsBuffer(Affine):
    def backward(self, grad_out):
        grad_in = super().backward(grad_out)
        if getattr(self, "buffer", None) is None or self.buffer.dtype != grad_in.dtype:
            self.buffer = np.empty_like(grad_in)
        self.buffer[...] = grad_in                          # the same array every call
        return self.buffer


class UpcastsInForward(Affine):
    def forward(self, x):
        return super().forward(x) * np.sqrt(1.0)           # np.float64: float32 -> float64


class UpcastsInBackward(Affine):
    def backward(self, grad_out):
        return super().backward(grad_out) * np.float64(1.0)


class MixesSamples(npnet.Layer):
    """y = x - mean over the batch, with the right backward, but it does not say that it
    mixes samples."""

    def forward(self, x):
        self._cache = x.shape if self.training else None
        return x - x.mean(axis=0)

    def backward(self, grad_out):
        self._cache = None
        return grad_out - grad_out.mean(axis=0)


class KeepsACacheInEval(Affine):
    def forward(self, x):
        y = super().forward(x)
        self._cache = (x, self.weight)                     # even in eval mode
        return y


class Noisy(Affine):
    def __init__(self, *args):
        super().__init__(*args)
        self.noise = np.random.default_rng(5)

    def forward(self, x):
        return super().forward(x) + 1e-3 * self.noise.standard_normal()


class InPlaceForward(npnet.Layer):
    def forward(self, x):
        np.tanh(x, out=x)                                  # "inplace=True"
        self._cache = x.copy() if self.training else None
        return x.copy()

    def backward(self, grad_out):
        y, self._cache = self._cache, None
        return grad_out * (1 - y * y)


GALLERY = [
    # (the broken layer, the fault kind or None for a wrong gradient, words in the message)
    (WrongInputGrad, None, r"dL/dx is wrong: at input\[\d, \d\] backward gives"),
    (WrongWeightGrad, None, r"the gradient of 'weight' is wrong: at weight\[\d, \d\]"),
    (AssignsGrad, "accumulation",
     r"backward assigns the gradient of 'weight' \(=\) instead of adding into it \(\+=\)"),
    (ReplacesGrad, "gradient replaced",
     r"backward replaced the array grads\['weight'\] of 'weight' with a new one"),
    (ScalesGradOutInPlace, "grad_out modified",
     r"backward changed its argument grad_out in place"),
    (ReusesItsBuffer, "not fresh", r"backward returns an array it reuses"),
    (UpcastsInForward, "dtype", r"a float32 input gave a float64 output"),
    (UpcastsInBackward, "dtype", r"with a float32 input, backward returned a float64 dL/dx"),
    (KeepsACacheInEval, "eval cache", r"in eval mode forward kept state for backward"),
    (Noisy, "not deterministic", r"two forwards of the same x gave different outputs"),
]


@pytest.mark.parametrize("cls, kind, words", GALLERY, ids=[g[0].__name__ for g in GALLERY])
def test_the_gallery_of_broken_layers(cls, kind, words, rng, draw):
    layer = cls(3, 2, rng)
    with pytest.raises(GradcheckError, match=words) as info:
        assert_layer_correct(layer, draw((4, 3)))
    report = info.value.report
    text = str(info.value)
    assert text.startswith(f"{cls.__name__}(): FAILED\n  - ")     # the fault comes first
    if kind is None:                     # a wrong gradient: no other fault is reported
        assert report.faults == [] and sum(not r.passed for r in report) == 1
    else:                                # a broken rule: the numbers are all right
        assert [f.kind for f in report.faults] == [kind]
        if kind != "not deterministic":
            assert all(r.passed for r in report), text


def test_the_gradient_of_the_wrong_shape(rng, draw):
    text = caught(GradOfTheWrongShape(3, 2, rng), draw((4, 3)))
    assert "the gradient of 'weight' has shape (3,), the parameter (2, 3): a gradient has " \
           "the shape of its tensor" in text


def test_an_input_gradient_of_the_wrong_shape(draw):
    class RowSum(npnet.Layer):
        def forward(self, x):
            return x.sum(axis=1, keepdims=True)

        def backward(self, grad_out):
            return grad_out                      # (N, 1), should be (N, D)
    text = caught(RowSum(), draw((3, 4)))
    assert "backward returned (3, 1) for an input of shape (3, 4)" in text


def test_a_backward_that_returns_a_parameter(draw):
    class ReturnsWeight(npnet.Layer):
        def __init__(self):
            super().__init__()
            self.weight = npnet.Parameter(np.full((4, 3), 2.0))

        def forward(self, x):
            self._cache = x if self.training else None
            return x * self.weight

        def backward(self, grad_out):
            x, self._cache = self._cache, None
            self.grads["weight"] += grad_out * x
            w = self.weight
            w *= 1.0                             # harmless here, but w is handed out...
            return np.multiply(grad_out, w, out=w)   # ...and overwritten: the weight is gone
    with pytest.raises(GradcheckError) as info:
        assert_layer_correct(ReturnsWeight(), draw((4, 3)))
    assert "backward returned an array that shares memory with parameter 'weight'" \
        in str(info.value)


def test_a_layer_that_refuses_the_other_dtype(draw):
    class KeepsAFloat64Array(npnet.Layer):      # an array outside self.params: .to() skips it
        def __init__(self):
            super().__init__()
            self.a = np.eye(3)

        def forward(self, x):
            if x.dtype != self.a.dtype:
                raise ValueError(f"input is {x.dtype}, the layer {self.a.dtype}")
            return x @ self.a

        def backward(self, grad_out):
            return grad_out @ self.a.T
    text = caught(KeepsAFloat64Array(), draw((2, 3)))
    assert "converted with .to(np.float32), the layer refused a float32 input: ValueError: " \
           "input is float32, the layer float64" in text


def test_a_layer_mixing_samples_is_caught_unless_it_says_so(draw):
    x = draw((4, 3))
    text = caught(MixesSamples(), x)
    assert "sample 1's output changed (by up to" in text and "when only sample 0's " \
           "input did" in text and "declares mixes_samples = True" in text

    class SaysSo(MixesSamples):
        mixes_samples = True                     # the declaration
    report = assert_layer_correct(SaysSo(), x)
    assert "samples: independence not checked: the layer (SaysSo) declares " \
           "mixes_samples = True" in str(report)


def test_a_forward_that_changes_its_input(draw):
    x = draw((3, 4))
    kept = x.copy()
    text = caught(InPlaceForward(), x)
    assert "forward changed its input x in place" in text
    np.testing.assert_array_equal(x, kept)


def test_several_faults_are_all_named(rng, draw):
    class TwoBugs(AssignsGrad):
        def backward(self, grad_out):
            grad_in = super().backward(grad_out)
            grad_out[...] = 0.0
            return grad_in
    with pytest.raises(GradcheckError) as info:
        assert_layer_correct(TwoBugs(3, 2, rng), draw((4, 3)))
    assert kinds(info.value) == ["grad_out modified", "accumulation"]


# -- kinks and ties ------------------------------------------------------------------------
def test_relu_at_zero_passes_with_its_kinks_reported(rng):
    x = np.maximum(rng.standard_normal((3, 4)), 0.0)          # many exact zeros
    zeros = int(np.sum(x == 0))
    assert zeros > 0
    report = assert_layer_correct(npnet.ReLU(), x)
    (r,) = report
    assert r.n_kinks == zeros and r.compared == x.size - zeros
    assert {k[0] for k in r.kinks} == {tuple(int(v) for v in i) for i in np.argwhere(x == 0)}
    text = str(report)
    assert f"({zeros} at a kink, not compared)" in text
    assert "from the left and" in text and "backward gives the left one, 0)" in text
    assert "pass redraw_kinks=True" in text


def test_redraw_kinks_moves_the_input_away(rng):
    x = np.maximum(rng.standard_normal((3, 4)), 0.0)
    zeros = int(np.sum(x == 0))
    kept = x.copy()
    report = assert_layer_correct(npnet.ReLU(), x, redraw_kinks=True, rng=rng)
    assert report[0].n_kinks == 0 and report[0].compared == x.size
    assert f"redraw_kinks: {zeros} elements of x moved away from kinks, 1 time" in str(report)
    np.testing.assert_array_equal(x, kept)                   # the caller's x is untouched


def test_max_pool_on_a_flat_image_has_ties_not_errors(rng):
    x = np.ones((2, 1, 4, 4))                                 # every window a four-way tie
    report = assert_layer_correct(npnet.MaxPool2d(2), x)
    assert report[0].n_kinks == x.size and report[0].compared == 0
    report = assert_layer_correct(npnet.MaxPool2d(2), x, redraw_kinks=True, rng=rng)
    assert report[0].n_kinks == 0
    assert "every element of x" not in str(report) and "32 elements of x" in str(report)


def test_kinks_found_in_a_parameter(rng, draw):
    """conv -> ReLU with a pre-activation at exactly 0: the weight's step crosses it."""
    conv = npnet.Conv2d(1, 1, 1, bias=False, dtype=np.float64, rng=rng)
    conv.weight[...] = 1.0
    model = npnet.Sequential(conv, npnet.ReLU())
    x = draw((2, 1, 2, 2))
    x[0, 0, 0, 0] = 0.0
    report = assert_layer_correct(model, x)
    assert report.passed and report[0].n_kinks == 1        # the input element at 0
    assert report[1].n_kinks == 0                          # w * 0 moves nothing
