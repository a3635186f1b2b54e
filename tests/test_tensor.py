"""Tests of npnet/tensor.py: Tensor (an ndarray with torch's shape methods) and Deferred
(a value computed the first time it is read), including the Deferred that
model.backward returns as dL/d(input)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import npnet
import npnet.nn as nn
import npnet.nn.functional as F
from npnet import Deferred, Tensor


def tensor(draw, shape=(2, 3, 4), dtype=np.float32) -> Tensor:
    return draw(shape, dtype).view(Tensor)


# -- Tensor: torch's shape methods at top level -------------------------------------------------
@pytest.mark.parametrize("shape", [(24,), (-1,), (2, -1), (-1, 4), (6, 4), (2, 3, 2, 2),
                                   ((6, 4),), ([4, -1],)],
                         ids=["24", "-1", "2_-1", "-1_4", "6_4", "2_3_2_2", "tuple", "list"])
def test_view_takes_torch_shapes(shape, draw):
    x = tensor(draw)
    v = x.view(*shape)
    expected = torch.from_numpy(np.asarray(x)).view(*shape)
    assert isinstance(v, Tensor) and v.shape == tuple(expected.shape)
    np.testing.assert_array_equal(v, expected.numpy())
    assert np.shares_memory(v, x)                  # a view: writes show through, as torch
    v.reshape(-1)[0] = 100.0
    assert x.reshape(-1)[0] == 100.0


def test_numpys_view_still_works(draw):
    x = tensor(draw, dtype=np.float64)
    as32 = x.view(np.float32)                      # reinterpret the bytes, NumPy's meaning
    assert as32.shape == (2, 3, 8) and as32.dtype == np.float32
    np.testing.assert_array_equal(as32, np.asarray(x).view(np.float32))
    plain = x.view(np.ndarray)
    assert type(plain) is np.ndarray and np.shares_memory(plain, x)
    assert x.view(dtype=np.int64).dtype == np.int64
    same = x.view()
    assert isinstance(same, Tensor) and same.shape == x.shape and np.shares_memory(same, x)


def test_size_is_an_int_that_can_be_called(draw):
    x = tensor(draw)
    t = torch.zeros(2, 3, 4)
    assert isinstance(x.size, int) and x.size == 24 == t.numel()   # NumPy's size
    assert x.size * 2 == 48 and np.zeros(x.size).shape == (24,)
    assert x.size() == (2, 3, 4) == tuple(t.size())                 # torch's size()
    assert [x.size(d) for d in (0, 1, 2, -1, -3)] == [t.size(d) for d in (0, 1, 2, -1, -3)] \
        == [2, 3, 4, 4, 2]
    assert x.numel() == 24 and type(x.numel()) is int
    assert x.dim() == 3 == t.dim()


@pytest.mark.parametrize("args, kwargs", [((0,), {}), ((1,), {}), ((0, 1), {}), ((1, 2), {}),
                                          ((-2, -1), {}), ((), {"start_dim": 1}),
                                          ((), {"end_dim": 1}), ((1,), {"end_dim": -2})],
                         ids=["0", "1", "0_1", "1_2", "-2_-1", "start_dim=1", "end_dim=1",
                              "1_end_dim=-2"])
def test_flatten_with_dimensions_is_torchs(args, kwargs, draw):
    x = tensor(draw)
    f = x.flatten(*args, **kwargs)
    expected = torch.from_numpy(np.asarray(x)).flatten(*args, **kwargs)
    assert isinstance(f, Tensor) and f.shape == tuple(expected.shape)
    np.testing.assert_array_equal(f, expected.numpy())
    assert np.shares_memory(f, x)                  # torch.flatten: a view when it can be


def test_flatten_without_dimensions_is_numpys_copy(draw):
    x = tensor(draw)
    f = x.flatten()
    np.testing.assert_array_equal(f, np.asarray(x).ravel())
    assert f.shape == (24,) and not np.shares_memory(f, x)     # NumPy's flatten copies
    np.testing.assert_array_equal(x.flatten("F"), np.asarray(x).flatten("F"))


@pytest.mark.parametrize("shape", [(6, 4), ((6, -1),), ([-1],), (4, 3, 2)],
                         ids=["6_4", "tuple", "list", "4_3_2"])
def test_reshape_takes_torch_shapes(shape, draw):
    x = tensor(draw)
    r = x.reshape(*shape)
    expected = torch.from_numpy(np.asarray(x)).reshape(*shape)
    assert isinstance(r, Tensor) and r.shape == tuple(expected.shape)
    np.testing.assert_array_equal(r, expected.numpy())


def test_reshape_with_an_order_is_numpys(draw):
    x = tensor(draw)
    np.testing.assert_array_equal(x.reshape(6, 4, order="F"),
                                  np.asarray(x).reshape(6, 4, order="F"))
    t = x.transpose(2, 1, 0)
    r = t.reshape(-1)                              # cannot be a view: reshape copies
    np.testing.assert_array_equal(r, np.asarray(t).reshape(-1))
    assert not np.shares_memory(r, x)


def test_detach_and_numpy_are_the_same_memory(draw):
    x = tensor(draw)
    d = x.detach()
    assert isinstance(d, Tensor) and np.shares_memory(d, x)
    np.testing.assert_array_equal(d, x)
    n = x.numpy()
    assert type(n) is np.ndarray and np.shares_memory(n, x)
    np.testing.assert_array_equal(n, x)


def test_a_layer_returns_a_tensor(draw):
    y = nn.ReLU()(draw((2, 3)))
    assert isinstance(y, Tensor) and y.size(1) == 3 and y.view(-1).shape == (6,)


# -- Tensor: the same methods inside a model's forward are recorded ---------------------------
FLATTENS = {
    "nn.Flatten": None,                                        # the reference: a layer
    "view(size(0), -1)": lambda h: h.view(h.size(0), -1),
    "view(-1, 27)": lambda h: h.view(-1, 27),
    "view((N, 27))": lambda h: h.view((h.shape[0], 27)),
    "flatten(1)": lambda h: h.flatten(1),
    "flatten(start_dim=1)": lambda h: h.flatten(start_dim=1),
    "reshape(N, -1)": lambda h: h.reshape(h.shape[0], -1),
    "F.flatten(h, 1)": lambda h: F.flatten(h, 1),
}


class ConvNet(nn.Module):
    """conv -> relu -> pool -> (flatten, as given) -> linear."""

    def __init__(self, flatten, rng, dtype=np.float32):
        super().__init__()
        kw = dict(dtype=dtype, rng=rng)
        self.conv = nn.Conv2d(2, 3, 3, padding=1, **kw)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        if flatten is None:
            self.flat = nn.Flatten()
        else:
            self.flatten_fn = flatten
        self.fc = nn.Linear(27, 4, **kw)

    def forward(self, x):
        h = self.pool(self.relu(self.conv(x)))                 # (N, 3, 3, 3)
        h = self.flat(h) if "flat" in self._modules else self.flatten_fn(h)
        return self.fc(h)


@pytest.mark.parametrize("name", [n for n in FLATTENS if FLATTENS[n] is not None])
def test_shape_methods_inside_a_forward_pass_the_gradient(name, draw):
    """Each is a recorded call: the gradients are those of the model with nn.Flatten,
    bit for bit (the same layers, the same reshape of the same gradient)."""
    reference = ConvNet(None, np.random.default_rng(0))
    model = ConvNet(FLATTENS[name], np.random.default_rng(1))
    model.load_state_dict(reference.state_dict())
    x, g = draw((2, 2, 6, 6), np.float32), draw((2, 4), np.float32)
    out = {}
    for key, m in (("reference", reference), ("model", model)):
        y = m(x)
        grad_x = np.asarray(m.backward(g))
        out[key] = (np.asarray(y), grad_x, {k: p.grad.copy() for k, p in m.named_parameters()})
    (y1, gx1, grads1), (y2, gx2, grads2) = out["reference"], out["model"]
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(gx1, gx2)
    assert np.abs(gx1).max() > 0
    for k in grads1:
        np.testing.assert_array_equal(grads1[k], grads2[k], err_msg=k)
        assert np.abs(grads1[k]).max() > 0, k


def test_the_tape_lists_the_reshape(draw):
    model = ConvNet(FLATTENS["view(size(0), -1)"], np.random.default_rng(0))
    model(draw((2, 2, 6, 6), np.float32))
    rows = str(npnet.autograd.tape_of(model)).splitlines()
    assert any("Reshape" in r and "(2, 3, 3, 3)" in r and "(2, 27)" in r for r in rows), rows


def test_shape_methods_gradcheck_inside_a_model(draw, rng):
    model = ConvNet(lambda h: h.view(h.size(0), -1), rng, np.float64)
    report = npnet.gradcheck(model, draw((2, 2, 6, 6)), rng=rng)
    assert [r.name for r in report] == ["input", "conv.weight", "conv.bias", "fc.weight",
                                        "fc.bias"]
    assert all(r.passed for r in report)


def test_detach_method_inside_a_forward_stops_the_gradient(rng, draw):
    model = ConvNet(lambda h: h.detach().view(h.size(0), -1), rng, np.float64)
    x = draw((2, 2, 6, 6))
    model(x)
    grad_x = np.asarray(model.backward(draw((2, 4))))
    assert not grad_x.any() and not model.conv.grads["weight"].any()
    assert model.fc.grads["weight"].any()


def test_numpys_flatten_inside_a_forward_is_refused(rng, draw):
    """x.flatten() with no dimensions is NumPy's copy, not recorded: backward says so."""
    model = ConvNet(lambda h: h.flatten().reshape(2, 27), rng)
    model(draw((2, 2, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"input 0 of reshape \(Reshape\), an array of "
                                         r"shape \(54,\), was computed with NumPy"):
        model.backward(draw((2, 4), np.float32))


def test_outputs_are_read_only_inside_a_forward_and_writable_after(rng, draw):
    seen = {}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4, rng=rng)

        def forward(self, x):
            h = self.fc(x).view(-1)
            seen["writeable"] = h.flags.writeable
            return h

    y = Probe()(draw((2, 3), np.float32))
    assert seen["writeable"] is False and y.flags.writeable


# -- Deferred -----------------------------------------------------------------------------------
class Counter:
    """A compute function that counts its calls."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def deferred(value=None, about="a test value"):
    value = np.arange(1.0, 7.0).reshape(2, 3) if value is None else value
    compute = Counter(value)
    return Deferred(value.shape, value.dtype, compute, about=about), compute


def test_what_is_known_without_computing():
    d, compute = deferred()
    assert d.shape == (2, 3) and d.dtype == np.float64 and d.ndim == 2 and len(d) == 2
    assert d.size == 6 and isinstance(d.size, int) and d.size() == (2, 3) and d.size(-1) == 3
    assert d.dim() == 2 and d.numel() == 6
    assert not d.computed and compute.calls == 0


def test_repr_before_computing_says_what_it_is():
    d, compute = deferred(about="dL/d(input 0), computed when first read")
    assert repr(d) == ("Deferred(shape=(2, 3), dtype=float64: dL/d(input 0), computed when "
                       "first read)")
    assert compute.calls == 0                      # repr does not compute
    np.asarray(d)
    assert repr(d) == repr(np.arange(1.0, 7.0).reshape(2, 3))   # then: the array's repr


READERS = {
    "np.asarray": lambda d: np.asarray(d),
    "arithmetic": lambda d: d * 2 - 1,
    "reflected arithmetic": lambda d: 10 - d,
    "indexing": lambda d: d[1, ::-1],
    "str": lambda d: str(d),
    "iteration": lambda d: np.array([row for row in d]),
    "an ndarray method": lambda d: d.sum(axis=0),
    "np.mean": lambda d: np.mean(d, axis=1),
    "np.concatenate": lambda d: np.concatenate([d, d], axis=0),
    "a layer": lambda d: nn.Tanh()(d),
}


@pytest.mark.parametrize("name", READERS)
def test_computed_once_on_first_read(name):
    d, compute = deferred()
    array = compute.value
    expected = READERS[name](array)
    first = READERS[name](d)
    assert compute.calls == 1 and d.computed
    second = READERS[name](d)
    assert compute.calls == 1                      # the value is kept, not recomputed
    for got in (first, second):
        if isinstance(expected, str):
            assert got == expected
        else:
            np.testing.assert_array_equal(got, expected)


def test_float_int_and_format_of_a_0d_value():
    d, compute = deferred(np.array(2.5))
    assert float(d) == 2.5 and f"{d:.2f}" == "2.50" and compute.calls == 1
    i, _ = deferred(np.array(3))
    assert int(i) == 3 and [10, 20, 30, 40][i] == 40


def test_len_of_a_0d_value_is_a_type_error():
    d, compute = deferred(np.array(1.0))
    with pytest.raises(TypeError, match="len"):
        len(d)
    assert compute.calls == 0


def test_in_place_operations_modify_the_computed_array():
    d, compute = deferred()
    array = compute.value
    alias = d
    alias += 1                                     # d.__iadd__: np.add(value, 1, out=value)
    assert alias is array                          # the name now holds the array itself
    d[0, 0] = -5.0                                 # __setitem__ writes into the value
    np.testing.assert_array_equal(d.value(), [[-5.0, 3.0, 4.0], [5.0, 6.0, 7.0]])
    assert d.value() is array and compute.calls == 1
    np.multiply(d, 2, out=(d,))                    # out= a Deferred: its value
    assert array[0, 0] == -10.0


# -- Deferred inside a model: a conv output waits for the next call ----------------------------
def test_a_conv_output_in_a_forward_is_deferred_with_its_shape_known(rng, draw):
    seen = {}

    class Peek(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3, rng=rng), nn.Linear(2 * 4 * 4, 3, rng=rng)

        def forward(self, x):
            h = self.conv(x)
            seen["before"] = (type(h), h.shape, h.dtype, h.size(1), h.computed, repr(h))
            out = self.fc(h.view(h.size(0), -1))
            seen["after"] = h.computed
            return out

    Peek()(draw((2, 1, 6, 6), np.float32))
    kind, shape, dtype, channels, computed, text = seen["before"]
    assert kind is Deferred and shape == (2, 2, 4, 4) and dtype == np.float32
    assert channels == 2 and not computed
    assert text.startswith("Deferred(shape=(2, 2, 4, 4), dtype=float32: the output of Conv2d(")
    assert seen["after"]


# -- model.backward's dL/d(input) ------------------------------------------------------------
def lenet_like(dtype, fuse: bool, hook: bool):
    """conv -> relu -> pool -> flatten -> linear; a backward hook on the conv (which makes
    the replay compute dL/dx at once, for the hook to see) if ``hook``."""
    with nn.init_generator(np.random.default_rng(7)):
        model = npnet.Sequential(nn.Conv2d(1, 2, 3, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(2 * 3 * 3, 3, dtype=dtype))
    npnet.fusion.set_fusion(model, fuse)
    if hook:
        model[0].register_full_backward_hook(lambda module, grad_in, grad_out: None)
    return model


def test_input_gradient_is_deferred_and_equals_the_eager_one(draw):
    x, g = draw((2, 1, 8, 8)), draw((2, 3))
    lazy, eager = lenet_like(np.float64, False, False), lenet_like(np.float64, False, True)
    lazy(x)
    eager(x)
    d = lazy.backward(g)
    e = eager.backward(g)
    assert isinstance(d, Deferred) and not d.computed
    assert d.shape == x.shape and d.dtype == x.dtype
    assert "dL/d(input 0)" in repr(d)
    assert type(e) is np.ndarray                   # the hook needed it: computed at once
    np.testing.assert_array_equal(np.asarray(d), e)   # the same conv backward: same bits
    assert np.abs(e).max() > 0


def test_need_grad_in_false_returns_none(draw):
    model = lenet_like(np.float64, True, False)
    model(draw((2, 1, 8, 8)))
    assert model.backward(draw((2, 3)), need_grad_in=False) is None
    assert model[0].grads["weight"].any()


def _torch_input_grad(model, x, g):
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(18, 3)).double()
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                            model.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    tmodel(xt).backward(torch.from_numpy(g))
    return xt.grad.numpy()


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "layers"])
def test_input_gradient_read_after_the_weights_changed_uses_the_forwards(fuse, draw):
    """Training never reads dL/dx, so reading it late is allowed: it is computed from what
    the forward saw (its own copy of the weights), not from the weights of the moment."""
    x, g = draw((2, 1, 8, 8)), draw((2, 3))
    model = lenet_like(np.float64, fuse, False)
    expected = _torch_input_grad(model, x, g)      # with the weights of the forward
    opt = npnet.optim.SGD(model.parameters(), lr=0.5)
    model(x)
    d = model.backward(g)
    w = model[0].weight.copy()
    opt.step()                                     # the weights change in place...
    assert np.abs(model[0].weight - w).max() > 0.1
    model(draw((2, 1, 8, 8)))                      # ...and another step runs
    model.backward(draw((2, 3)))
    assert not d.computed
    # float64 against torch: sums of <= 18 terms, rounding ~1e-15; the gradient with the
    # changed weights differs from this one by O(1)
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-10, atol=1e-12)


def test_input_gradient_of_an_input_used_twice_sums_both(rng, draw):
    """x feeds fc1 (whose dL/dx is deferred) and the add (which gives it at once)."""
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(dtype=np.float64, rng=rng)
            self.fc1, self.fc2 = nn.Linear(4, 4, **kw), nn.Linear(4, 3, **kw)

        def forward(self, x):
            return self.fc2(F.add(self.fc1(x), x))

    model = Residual()
    x, g = draw((3, 4)), draw((3, 3))
    model(x)
    d = model.backward(g)
    assert isinstance(d, Deferred)
    W = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    xt = torch.tensor(x, requires_grad=True)
    h = torch.nn.functional.linear(xt, W["fc1.weight"], W["fc1.bias"]) + xt
    torch.nn.functional.linear(h, W["fc2.weight"], W["fc2.bias"]).backward(torch.tensor(g))
    # float64, sums of <= 4 terms
    np.testing.assert_allclose(np.asarray(d), xt.grad.numpy(), rtol=1e-12, atol=1e-14)
