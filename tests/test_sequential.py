"""Tests of npnet/sequential.py and of Parameter (npnet/layers/base.py)."""
from collections import OrderedDict

import numpy as np
import pytest

import npnet
from npnet import Conv2d, Flatten, Linear, MaxPool2d, Parameter, ReLU, Sequential, Tanh


class Record(npnet.Layer):
    """Identity that writes its name into a shared log on forward and on backward."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(("forward", self.name))
        return x

    def backward(self, grad_out):
        self.log.append(("backward", self.name))
        return grad_out


def small_net(rng, dtype=np.float32):
    """(N, 2, 6, 6) -> conv 3@3x3 p1 -> ReLU -> maxpool 2 -> flatten 27 -> linear 4."""
    return Sequential(OrderedDict([
        ("conv", Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=rng)), ("relu", ReLU()),
        ("pool", MaxPool2d(2)), ("flatten", Flatten()),
        ("fc", Linear(27, 4, dtype=dtype, rng=rng))]))


def snapshot(model):
    return {k: p.data.copy() for k, p in model.named_parameters()}


def assert_params_equal(model, snap):
    now = snapshot(model)
    assert now.keys() == snap.keys()
    for k in snap:
        np.testing.assert_array_equal(now[k], snap[k], err_msg=k)


# -- construction and names ------------------------------------------------------------------
def test_positional_construction_names_by_index(rng):
    a, b, c = Linear(3, 4, rng=rng), ReLU(), Linear(4, 2, rng=rng)
    model = Sequential(a, b, c)
    assert list(model.layers) == ["0", "1", "2"]
    assert model[0] is a and model["1"] is b and model[-1] is c and len(model) == 3
    assert list(model) == [a, b, c]
    assert [k for k, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                        "2.bias"]


@pytest.mark.parametrize("mapping", [OrderedDict, dict], ids=["ordereddict", "dict"])
def test_named_construction(mapping, rng):
    model = Sequential(mapping([("fc1", Linear(3, 4, rng=rng)), ("act", Tanh()),
                                ("fc2", Linear(4, 2, bias=False, rng=rng))]))
    assert list(model.layers) == ["fc1", "act", "fc2"]
    assert list(model.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert "(fc1): Linear(in_features=3, out_features=4, bias=True)" in repr(model)


def test_construction_errors(rng):
    with pytest.raises(ValueError, match=r"Sequential: '1' is a function, not an npnet Module"):
        Sequential(ReLU(), lambda x: x)
    with pytest.raises(ValueError, match=r"layer names must be non-empty strings without "
                                         r"'\.', got 'a\.b'"):
        Sequential(OrderedDict([("a.b", ReLU())]))
    with pytest.raises(ValueError, match=r"non-empty strings.*got ''"):
        Sequential(OrderedDict([("", ReLU())]))


def test_nested_names_and_state(rng):
    block = Sequential(OrderedDict([("conv", Conv2d(1, 2, 3, rng=rng)), ("act", ReLU())]))
    model = Sequential(OrderedDict([("block", block), ("flat", Flatten()),
                                    ("fc", Linear(16, 3, rng=rng))]))
    assert [k for k, _ in model.named_parameters()] == [
        "block.conv.weight", "block.conv.bias", "fc.weight", "fc.bias"]
    state = model.state_dict()
    assert list(state) == ["block.conv.weight", "block.conv.bias", "fc.weight", "fc.bias"]
    other = Sequential(OrderedDict([
        ("block", Sequential(OrderedDict([("conv", Conv2d(1, 2, 3)), ("act", ReLU())]))),
        ("flat", Flatten()), ("fc", Linear(16, 3))]))
    other.load_state_dict(state)
    x = rng.standard_normal((2, 1, 4, 6)).astype(np.float32)          # -> (2, 2, 2, 4) -> 16
    np.testing.assert_array_equal(other(x), model(x))


# -- forward / backward ----------------------------------------------------------------------
def test_forward_and_backward_order():
    log = []
    model = Sequential(Record("a", log), Sequential(Record("b", log), Record("c", log)),
                       Record("d", log))
    x = np.ones((2, 3))
    model(x)
    model.backward(x)
    assert log == [("forward", "a"), ("forward", "b"), ("forward", "c"), ("forward", "d"),
                   ("backward", "d"), ("backward", "c"), ("backward", "b"), ("backward", "a")]


def test_hooks_see_each_layer_in_order_and_can_be_removed(rng, draw):
    model = small_net(rng)
    seen = []
    handles = []
    for name, layer in model.layers.items():
        handles.append(layer.register_forward_hook(
            lambda m, args, y, name=name: seen.append(("fwd", name, args[0].shape,
                                                       y.shape))))
        handles.append(layer.register_full_backward_hook(
            lambda m, gi, go, name=name: seen.append(("bwd", name, gi[0].shape,
                                                      go[0].shape))))
    y = model(draw((2, 2, 6, 6), np.float32))
    model.backward(np.ones_like(y))
    assert seen == [
        ("fwd", "conv", (2, 2, 6, 6), (2, 3, 6, 6)), ("fwd", "relu", (2, 3, 6, 6), (2, 3, 6, 6)),
        ("fwd", "pool", (2, 3, 6, 6), (2, 3, 3, 3)), ("fwd", "flatten", (2, 3, 3, 3), (2, 27)),
        ("fwd", "fc", (2, 27), (2, 4)),
        ("bwd", "fc", (2, 27), (2, 4)), ("bwd", "flatten", (2, 3, 3, 3), (2, 27)),
        ("bwd", "pool", (2, 3, 6, 6), (2, 3, 3, 3)), ("bwd", "relu", (2, 3, 6, 6), (2, 3, 6, 6)),
        ("bwd", "conv", (2, 2, 6, 6), (2, 3, 6, 6))]
    for h in handles:
        h.remove()
    seen.clear()
    model.backward(np.ones_like(model(draw((2, 2, 6, 6), np.float32))))
    assert seen == []


def test_forward_is_the_composition(rng, draw):
    # with fusion off every call is the layer's own forward, so the result is bit-identical;
    # fused (conv -> relu -> pool as one kernel, npnet/fusion.py), it is the same sums in
    # another order: float64 rounding, 1e-15 of values of order 1
    model = small_net(rng, np.float64)
    x = draw((3, 2, 6, 6))
    expected = x
    for layer in model:
        expected = layer(expected)
    np.testing.assert_allclose(model(x), expected, rtol=0, atol=1e-14)
    npnet.fusion.set_fusion(model, False)
    np.testing.assert_array_equal(model(x), expected)


def test_gradcheck_through_a_small_net(rng, draw):
    model = small_net(rng, np.float64)
    report = npnet.gradcheck(model, draw((2, 2, 6, 6)), mode="full", rng=rng)
    assert [r.name for r in report] == ["input", "conv.weight", "conv.bias", "fc.weight",
                                        "fc.bias"]
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_backward_need_grad_in_false(rng, draw):
    model = small_net(rng)
    x, g = draw((2, 2, 6, 6), np.float32), draw((2, 4), np.float32)
    model(x)
    grad_in = model.backward(g)
    assert grad_in.shape == x.shape
    full = {k: p.grad.copy() for k, p in model.named_parameters()}
    model.zero_grad()
    model(x)
    assert model.backward(g, need_grad_in=False) is None
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, full[k], err_msg=k)


def test_gradients_accumulate_and_zero_grad(rng, draw):
    model = small_net(rng)
    x, g = draw((2, 2, 6, 6), np.float32), draw((2, 4), np.float32)
    model(x)
    model.backward(g)
    once = {k: p.grad.copy() for k, p in model.named_parameters()}
    model(x)
    model.backward(g)
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, 2 * once[k], err_msg=k)
    model.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())


def test_train_and_eval_reach_every_layer(rng, draw):
    model = Sequential(OrderedDict([("inner", small_net(rng)), ("act", Tanh())]))
    model.eval()
    leaves = [*model["inner"], model["act"]]
    assert not model.training and not any(layer.training for layer in leaves)
    y = model(draw((1, 2, 6, 6), np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.ones_like(y))
    model.train()
    assert model.training and all(layer.training for layer in leaves)
    y = model(draw((1, 2, 6, 6), np.float32))
    assert model.backward(np.ones_like(y)).shape == (1, 2, 6, 6)


def test_errors_name_the_failing_layer(rng):
    model = small_net(rng)
    with pytest.raises(ValueError, match=r"Conv2d.*expected 2 input channels"):
        model(np.zeros((1, 3, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"Linear.*expected input of shape \(N, 27\)"):
        model(np.zeros((1, 2, 8, 8), np.float32))


# -- parameters ------------------------------------------------------------------------------
def test_parameters_are_live_views(rng):
    model = small_net(rng)
    named = model.named_parameters()
    assert [k for k, _ in named] == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    assert [p.data.shape for p in model.parameters()] == [(3, 2, 3, 3), (3,), (4, 27), (4,)]
    assert all(isinstance(p, Parameter) for p in model.parameters())
    assert named[0][1].data is model["conv"].params["weight"]
    assert named[0][1].grad is model["conv"].grads["weight"]
    assert model.num_parameters() == 3 * 2 * 9 + 3 + 4 * 27 + 4


def test_parameter_in_place_update_and_unpacking(rng):
    layer = Linear(3, 2, rng=rng)
    before = layer.params["weight"].copy()
    p = layer.parameters()[0]
    p.grad[...] = 1.0
    p.data -= 0.5 * p.grad                          # the optimizers' update
    np.testing.assert_array_equal(layer.params["weight"], before - 0.5)
    w, g = p                                         # unpacks like a pair
    assert w is layer.params["weight"] and g is layer.grads["weight"]
    p.data = np.zeros((2, 3), np.float32)            # copies in; the array stays the same
    assert p.data is w and np.all(layer.params["weight"] == 0)
    assert "shape=(2, 3)" in repr(p) and "float32" in repr(p)


# -- state_dict / load_state_dict ------------------------------------------------------------
def test_state_dict_holds_copies(rng):
    model = small_net(rng)
    state = model.state_dict()
    assert list(state) == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    assert isinstance(state, OrderedDict)
    state["fc.bias"][...] = 123.0
    assert not np.any(model["fc"].params["bias"] == 123.0)   # editing the copy: no effect
    model["fc"].params["weight"][...] = 7.0
    assert not np.any(state["fc.weight"] == 7.0)             # training on: copy unchanged


def test_load_state_dict_round_trip(rng, draw):
    src, dst = small_net(rng), small_net(np.random.default_rng(99))
    x = draw((2, 2, 6, 6), np.float32)
    assert not np.array_equal(src(x), dst(x))
    live = [p.data for p in dst.parameters()]
    dst.load_state_dict(src.state_dict())
    np.testing.assert_array_equal(dst(x), src(x))
    assert all(a is p.data for a, p in zip(live, dst.parameters()))   # copied in place


def _bad_states(good):
    missing = OrderedDict(good)
    del missing["fc.bias"]
    unexpected = OrderedDict(good, **{"fc.extra": np.zeros(3, np.float32)})
    wrong_shape = OrderedDict(good)
    wrong_shape["fc.weight"] = np.zeros((27, 4), np.float32)      # transposed
    text = OrderedDict(good)
    text["conv.bias"] = np.array(["a", "b", "c"])
    return {"missing": (missing, r"missing keys \['fc\.bias'\]"),
            "unexpected": (unexpected, r"unexpected keys \['fc\.extra'\]"),
            "wrong_shape": (wrong_shape, r"'fc\.weight' has shape \(27, 4\), the model "
                                         r"expects \(4, 27\)"),
            "not_numeric": (text, r"'conv\.bias' is not numeric")}


@pytest.mark.parametrize("case", ["missing", "unexpected", "wrong_shape", "not_numeric"])
def test_load_state_dict_refuses_and_leaves_the_model_untouched(case, rng):
    model = small_net(rng)
    # every good key carries new values, so a partial load would show
    good = OrderedDict((k, v + 1) for k, v in model.state_dict().items())
    state, match = _bad_states(good)[case]
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"load_state_dict refused, the model is unchanged: "
                                         r".*" + match):
        model.load_state_dict(state)
    assert_params_equal(model, before)


def test_load_state_dict_refuses_a_non_mapping(rng):
    model = small_net(rng)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"expected a dict of arrays, got list"):
        model.load_state_dict([np.zeros(3)])
    assert_params_equal(model, before)


def test_load_state_dict_non_strict(rng):
    model = small_net(rng)
    before = snapshot(model)
    state = {"fc.bias": np.full(4, 5.0, np.float32), "not.a.key": np.zeros(2)}
    model.load_state_dict(state, strict=False)       # missing + unexpected ignored
    np.testing.assert_array_equal(model["fc"].params["bias"], np.full(4, 5.0))
    for k in ("conv.weight", "conv.bias", "fc.weight"):
        np.testing.assert_array_equal(snapshot(model)[k], before[k])
    # a wrong shape is refused even when not strict
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'fc\.bias' has shape \(5,\)"):
        model.load_state_dict({"fc.bias": np.zeros(5), "fc.weight": np.zeros((4, 27))},
                              strict=False)
    assert_params_equal(model, before)


def test_load_state_dict_keeps_the_model_dtype(rng):
    model = small_net(rng)
    model.load_state_dict({k: v.astype(np.float64) for k, v in model.state_dict().items()})
    assert all(p.data.dtype == np.float32 for p in model.parameters())


def test_parameter_data_refuses_a_value_of_another_shape():
    layer = Linear(3, 2, rng=np.random.default_rng(0))
    (w, _), _ = layer.parameters()
    before = w.copy()
    with pytest.raises(ValueError, match=r"shape \(2, 3\), got a value of shape \(3,\)"):
        layer.parameters()[0].data = np.arange(3.0)
    assert np.array_equal(layer.params["weight"], before)


def test_load_state_dict_refuses_complex_arrays():
    model = Sequential(Linear(2, 2, rng=np.random.default_rng(0)))
    state = model.state_dict()
    state["0.weight"] = state["0.weight"] + 1j
    with pytest.raises(ValueError, match="'0.weight' is complex"):
        model.load_state_dict(state)
