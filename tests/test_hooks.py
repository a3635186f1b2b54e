"""Tests of the layer hooks (npnet/layers/base.py) and of npnet.hooks.trace."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import npnet
import npnet.hooks


def small_net(rng):
    """conv -> relu -> pool -> flatten -> linear, float64, with a nested Sequential."""
    kw = dict(dtype=np.float64, rng=rng)
    features = npnet.Sequential(OrderedDict(
        conv=npnet.Conv2d(1, 2, 3, padding=1, **kw), act=npnet.ReLU(),
        pool=npnet.MaxPool2d(2)))
    return npnet.Sequential(OrderedDict(
        features=features, flatten=npnet.Flatten(), fc=npnet.Linear(2 * 3 * 3, 4, **kw)))


LEAVES = ["features.conv", "features.act", "features.pool", "flatten", "fc"]


def run_step(model, x):
    y = model(x)
    grad_out = np.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size - 0.3
    grad_in = model.backward(grad_out)
    return y, grad_out, grad_in


# -- the raw hooks of a layer --------------------------------------------------------------
def test_forward_hook_fires_on_call_with_the_arrays(draw):
    relu = npnet.ReLU()
    seen = []
    relu.register_forward_hook(lambda layer, args, y: seen.append((layer, args, y)))
    x = draw((2, 3))
    y = relu(x)
    assert len(seen) == 1
    layer, args_seen, y_seen = seen[0]          # torch's form: the inputs as a tuple
    assert layer is relu and args_seen == (x,) and args_seen[0] is x and y_seen is y


def test_hook_handle_remove(draw):
    relu = npnet.ReLU()
    calls = []
    handle = relu.register_forward_hook(lambda *a: calls.append(1))
    relu(draw((3,)))
    handle.remove()
    handle.remove()                      # removing twice is harmless
    relu(draw((3,)))
    assert calls == [1]
    assert not relu._forward_hooks


def test_backward_hook_sees_grad_in_and_grad_out(rng, draw):
    model = small_net(rng)
    seen = {}
    model["fc"].register_full_backward_hook(
        lambda layer, gi, go: seen.update(layer=layer, grad_in=gi, grad_out=go))
    x = draw((2, 1, 6, 6))
    y, grad_out, _ = run_step(model, x)
    assert seen["layer"] is model["fc"]
    assert len(seen["grad_in"]) == len(seen["grad_out"]) == 1   # torch's form: tuples
    np.testing.assert_array_equal(seen["grad_out"][0], grad_out)   # fc is the last layer
    # fc's grad_in is grad_out @ W, by linear.md
    np.testing.assert_allclose(seen["grad_in"][0], grad_out @ model["fc"].params["weight"])


# -- trace ---------------------------------------------------------------------------------
def test_trace_names_nested_layers_in_forward_order(rng, draw):
    model = small_net(rng)
    with npnet.hooks.trace(model) as tape:
        run_step(model, draw((2, 1, 6, 6)))
    assert list(tape) == LEAVES
    assert len(tape) == 5
    assert tape["features.pool"].layer is model["features"]["pool"]


def test_trace_fires_forward_in_order_then_backward_in_reverse(rng, draw):
    model = small_net(rng)
    with npnet.hooks.trace(model) as tape:
        run_step(model, draw((2, 1, 6, 6)))
    assert tape.events == [("forward", n) for n in LEAVES] + \
        [("backward", n) for n in reversed(LEAVES)]
    assert all(r.forward_calls == 1 and r.backward_calls == 1 for r in tape.values())


def test_trace_records_the_right_arrays(rng, draw):
    model = small_net(rng)
    x = draw((2, 1, 6, 6))
    with npnet.hooks.trace(model) as tape:
        y, grad_out, grad_in = run_step(model, x)
    # forward: each layer's input is the previous layer's output
    np.testing.assert_array_equal(tape["features.conv"].input, x)
    for before, after in zip(LEAVES, LEAVES[1:]):
        np.testing.assert_array_equal(tape[after].input, tape[before].output)
    np.testing.assert_array_equal(tape["fc"].output, y)
    # backward: each layer's grad_out is the next layer's grad_in
    np.testing.assert_array_equal(tape["fc"].grad_out, grad_out)
    for before, after in zip(LEAVES, LEAVES[1:]):
        np.testing.assert_array_equal(tape[before].grad_out, tape[after].grad_in)
    np.testing.assert_array_equal(tape["features.conv"].grad_in, grad_in)
    # the shapes pair up: grad_out like output, grad_in like input
    for r in tape.values():
        assert r.grad_out.shape == r.output.shape and r.grad_in.shape == r.input.shape
    # an independent value: ReLU's output is max(conv's output, 0)
    np.testing.assert_array_equal(tape["features.act"].output,
                                  np.maximum(tape["features.conv"].output, 0))


def test_trace_keeps_copies(rng, draw):
    model = small_net(rng)
    x = draw((2, 1, 6, 6))
    with npnet.hooks.trace(model) as tape:
        model(x)
    kept = x.copy()
    x[...] = 0                      # the caller reuses its buffer
    np.testing.assert_array_equal(tape["features.conv"].input, kept)
    with npnet.hooks.trace(model, copy=False) as tape:
        model(x)
    assert tape["features.conv"].input.base is x       # the array itself, seen by the hook


def test_trace_removes_its_hooks(rng, draw):
    model = small_net(rng)
    with npnet.hooks.trace(model) as tape:
        model(draw((2, 1, 6, 6)))
    layers = [layer for _, layer in npnet.hooks.named_layers(model)]
    assert all(not l._forward_hooks and not l._backward_hooks for l in layers)
    run_step(model, draw((2, 1, 6, 6)))            # after the block: nothing recorded
    assert [r.forward_calls for r in tape.values()] == [1] * 5
    assert [r.backward_calls for r in tape.values()] == [0] * 5


def test_trace_removes_its_hooks_on_error_and_keeps_others(rng, draw):
    model = small_net(rng)
    mine = []
    handle = model["fc"].register_forward_hook(lambda *a: mine.append(1))
    with pytest.raises(ValueError):
        with npnet.hooks.trace(model):
            model(draw((2, 1, 5, 5)))             # fc expects 18 features: ValueError
    assert list(model["fc"]._forward_hooks.values()) == [handle._fn]
    model(draw((2, 1, 6, 6)))
    assert mine == [1]


def test_trace_skipped_grad_in_is_none(rng, draw):
    model = small_net(rng)
    with npnet.hooks.trace(model) as tape:
        y = model(draw((2, 1, 6, 6)))
        model.backward(np.ones_like(y), need_grad_in=False)
    assert tape["features.conv"].grad_in is None
    assert tape["features.conv"].grad_out.shape == (2, 2, 6, 6)


def test_trace_of_lenet5_matches_the_loss_gradient(rng):
    model = npnet.lenet5(rng=rng, dtype=np.float64)
    x = rng.standard_normal((3, 1, 28, 28))
    crit = npnet.CrossEntropyLoss()
    with npnet.hooks.trace(model) as tape:
        crit(model(x), np.array([1, 7, 3]))
        model.backward(crit.backward())
    assert list(tape) == ["conv1", "act1", "pool1", "conv2", "act2", "pool2", "conv3",
                          "act3", "flatten", "fc1", "act4", "fc2"]
    # the gradient arriving at fc2 is (softmax - onehot) / N
    z = tape["fc2"].output
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(3), [1, 7, 3]] -= 1
    np.testing.assert_allclose(tape["fc2"].grad_out, p / 3, rtol=1e-12, atol=1e-15)
    assert tape["conv1"].input.shape == (3, 1, 28, 28)
    assert tape["conv3"].output.shape == (3, 120, 1, 1)


def test_trace_sees_every_layer_of_a_float32_lenet5(rng):
    """float32 LeNet-5 normally runs conv -> ReLU -> pool fused; a trace must still see
    each of the twelve layers, forward and backward."""
    model = npnet.lenet5(rng=rng)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with npnet.hooks.trace(model) as tape:
        y = model(x)
        model.backward(np.ones_like(y))
    assert len(tape) == 12
    assert all(r.forward_calls == 1 and r.backward_calls == 1 for r in tape.values())
    assert tape["pool1"].output.shape == (2, 6, 14, 14)
    assert tape["act1"].grad_in.dtype == np.float32
    np.testing.assert_array_equal(tape["act1"].output, np.maximum(tape["conv1"].output, 0))


def test_trace_of_a_single_layer(draw):
    relu = npnet.ReLU()
    x = draw((2, 3))
    with npnet.hooks.trace(relu) as tape:
        relu(x)
    assert list(tape) == ["ReLU"]
    np.testing.assert_array_equal(tape["ReLU"].output, np.maximum(x, 0))
    assert tape["ReLU"].grad_out is None


def test_tape_table(rng, draw):
    model = small_net(rng)
    with npnet.hooks.trace(model) as tape:
        run_step(model, draw((2, 1, 6, 6)))
    lines = []
    tape.table(print_fn=lines.append)
    assert len(lines) == 1 + 5
    assert lines[1].split()[:2] == ["features.conv", "(2,"]
    assert "(2, 4)" in lines[-1]
