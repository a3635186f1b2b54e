"""Tests of npnet/fusion.py: where a model's forward runs Conv2d -> ReLU -> 2x2 MaxPool2d
as one ConvReLUMaxPool2d call, that the user can see it and switch it off, and that it is
never stale: every attribute is read at the call, so a change takes effect or is refused.

Fused and unfused compute the same sums in another order, so float32 results agree to
rounding: the longest sum (conv1's weight gradient, N*28*28 products of values ~1) errs
by about sqrt(K)*eps of its magnitude; 1e-5 of each tensor's largest entry covers it
with a factor 10 (a wrong route or a missing term errs by the size of an entry).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npnet
import npnet.nn as nn
from npnet.fusion import set_fusion


def run(model, x, g=None):
    model.zero_grad()
    y = np.asarray(model(x))
    g = np.linspace(-1, 1, y.size, dtype=y.dtype).reshape(y.shape) if g is None else g
    grad_x = np.asarray(model.backward(g))
    return y, grad_x, {k: p.grad.copy() for k, p in model.named_parameters()}


def assert_close(a, b, exact=False):
    for u, v, what in [(a[0], b[0], "output"), (a[1], b[1], "dL/dx")] + [
            (a[2][k], b[2][k], k) for k in b[2]]:
        if exact:
            np.testing.assert_array_equal(u, v, err_msg=what)
        else:
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5 * np.abs(v).max(),
                                       err_msg=what)
    assert a[2].keys() == b[2].keys()


def fused_calls(model):
    tape = npnet.autograd.tape_of(model)
    return [c for c in tape.calls if isinstance(c.module, npnet.ConvReLUMaxPool2d)]


def twins(build):
    """The same model twice from one seed: fused (the default) and with fusion off."""
    return build(np.random.default_rng(0)), set_fusion(build(np.random.default_rng(0)), False)


@pytest.mark.parametrize("build", [lambda rng: npnet.lenet5(rng=rng),
                                   lambda rng: _seed(rng)], ids=["lenet5", "seed_class"])
def test_lenet_fused_equals_unfused_and_the_tape_says_which_ran_fused(build):
    fast, slow = twins(build)
    x = np.random.default_rng(1).standard_normal((6, 1, 28, 28)).astype(np.float32)
    a = run(fast, x)
    fast(x)
    assert len(fused_calls(fast)) == 2
    b = run(slow, x)
    slow(x)
    assert fused_calls(slow) == []
    assert_close(a, b)


def _seed(rng):
    with nn.init_generator(rng):
        return npnet.models.LeNet5()


def test_what_runs_fused_is_printed_by_the_tape(rng):
    model = npnet.lenet5(rng=rng)
    model(np.zeros((2, 1, 28, 28), np.float32))
    text = str(npnet.autograd.tape_of(model))
    assert text.splitlines()[0] == ("Sequential: the last training forward recorded 8 calls "
                                    "(2 fused); backward runs them from the last to the first")
    assert "conv1 -> act1 -> pool1" in text and "ConvReLUMaxPool2d" in text
    assert "conv3" in text and "fc2" in text


def test_switched_off_the_layers_own_code_runs_bit_for_bit(rng):
    model = set_fusion(npnet.lenet5(rng=rng), False)
    assert all(not m.fuse for m in model.modules() if isinstance(m, nn.Conv2d))
    assert "fuse=False" in repr(model.conv1)
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    y = np.asarray(model(x))
    h = x
    for layer in model:                       # each layer called on its own
        h = layer(h)
    np.testing.assert_array_equal(y, h)
    with pytest.raises(ValueError, match="True or False"):
        set_fusion(model, "no")


def test_float64_fuses_too_and_the_whole_network_passes_a_gradient_check(rng, draw):
    model = npnet.lenet5(rng=rng, dtype=np.float64)
    x = draw((2, 1, 28, 28))
    report = npnet.gradcheck(model, x, mode="random", n_directions=4, rng=rng)
    assert all(r.passed for r in report), "\n".join(map(str, report))
    model(x)
    assert len(fused_calls(model)) == 2


def test_eval_mode_fuses_keeps_no_tape_and_matches(rng):
    fast, slow = twins(lambda r: npnet.lenet5(rng=r))
    fast.eval()
    slow.eval()
    x = np.random.default_rng(3).standard_normal((7, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(slow(x)), rtol=1e-5, atol=1e-6)
    assert npnet.autograd.tape_of(fast) is None
    assert fast.conv1._cache is None


def test_a_hook_on_any_of_the_three_runs_them_one_by_one(rng):
    fast, slow = twins(lambda r: npnet.lenet5(rng=r))
    seen = []
    fast.act1.register_forward_hook(lambda m, args, y: seen.append(y.shape))
    x = np.random.default_rng(4).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert_close(run(fast, x), run(slow, x))
    fast(x)
    assert seen == [(2, 6, 28, 28)] * 2
    assert len(fused_calls(fast)) == 1            # conv2's block still fused


def test_a_backward_hook_added_after_a_fused_forward_is_refused_not_skipped(rng):
    model = npnet.lenet5(rng=rng)
    y = model(np.zeros((2, 1, 28, 28), np.float32))
    handle = model.conv2.register_full_backward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match=r"a backward hook was registered on conv2 after "
                                           r"the forward, which ran it fused"):
        model.backward(np.ones_like(y))
    handle.remove()
    y = model(np.zeros((2, 1, 28, 28), np.float32))
    model.backward(np.ones_like(y))


def test_a_method_replaced_on_the_instance_runs_as_written(rng):
    fast, slow = twins(lambda r: npnet.lenet5(rng=r))
    calls = []
    forward = fast.conv2.forward
    fast.conv2.forward = lambda x: calls.append(x.shape) or forward(x)
    x = np.random.default_rng(5).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert_close(run(fast, x), run(slow, x))
    assert calls == [(2, 6, 14, 14)]


def test_patterns_that_do_not_fit_run_the_layers(rng):
    def build(r):
        return nn.Sequential(OrderedDict(
            conv_s2=nn.Conv2d(2, 4, 3, stride=2, rng=r), relu1=nn.ReLU(),
            pool3=nn.MaxPool2d(3, stride=1), conv=nn.Conv2d(4, 3, 3, padding=1, rng=r),
            relu2=nn.ReLU(), pool_p=nn.MaxPool2d(2, padding=1), conv3=nn.Conv2d(3, 2, 1, rng=r),
            pool_only=nn.MaxPool2d(2)))
    fast, slow = twins(build)
    x = np.random.default_rng(6).standard_normal((2, 2, 15, 15)).astype(np.float32)
    assert_close(run(fast, x), run(slow, x), exact=True)
    fast(x)
    assert fused_calls(fast) == []


# -- never stale: an attribute changed after a forward -------------------------------------
def reference(model):
    """The same model's function, every layer called on its own (no fusion, no tape)."""
    def f(x):
        h = x
        for layer in model:
            h = layer(h)
        return np.asarray(h)
    return f


def block(rng, dtype=np.float32):
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=rng), nn.ReLU(),
                         nn.MaxPool2d(2))


def test_the_issues_stale_plan_case_takes_effect_on_the_next_call(rng, draw):
    """m(x); pool.stride = (1, 1); m(x): right values, and backward works."""
    m = block(rng)
    x = draw((2, 2, 6, 6), np.float32)
    m(x)
    m[2].stride = (1, 1)
    y = np.asarray(m(x))
    assert y.shape == (2, 3, 5, 5)
    assert fused_calls(m) == []                     # a 2x2 pool of stride 1 does not fit
    np.testing.assert_allclose(y, reference(m)(x), rtol=1e-6)
    grad_x = np.asarray(m.backward(np.ones_like(y)))
    assert grad_x.shape == x.shape and np.isfinite(grad_x).all()
    m[2].stride = 2
    m(x)
    assert len(fused_calls(m)) == 1                 # fits again: fused again


CHANGES = {
    "pool_stride_1": lambda m: setattr(m[2], "stride", 1),
    "pool_kernel_3": lambda m: setattr(m[2], "kernel_size", 3),
    "pool_padding_1": lambda m: setattr(m[2], "padding", 1),
    "conv_stride_2": lambda m: setattr(m[0], "stride", 2),
    "conv_padding_0": lambda m: setattr(m[0], "padding", 0),
    "conv_padding_2": lambda m: setattr(m[0], "padding", (2, 1)),
    "new_weight_same_shape": lambda m: setattr(m[0], "weight", np.full((3, 2, 3, 3), 0.1,
                                                                       np.float32)),
    "new_weight_kernel_5": lambda m: setattr(m[0], "weight", np.linspace(
        -1, 1, 3 * 2 * 25, dtype=np.float32).reshape(3, 2, 5, 5)),
    "no_bias": lambda m: setattr(m[0], "bias", None),
    "float64": lambda m: m.to(np.float64),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_after_a_forward_takes_effect_on_the_next_call(change, rng, draw):
    m = block(rng)
    x = draw((2, 2, 8, 8), np.float32)
    m(x)
    change(m)
    x = x.astype(m[0].weight.dtype)
    y = np.asarray(m(x))
    np.testing.assert_allclose(y, reference(m)(x), rtol=1e-5, atol=1e-6)
    y2, grad_x, grads = run(m, x)
    slow = set_fusion(copy.deepcopy(m), False)          # the same layers, never fused
    assert_close((y2, grad_x, grads), run(slow, x))


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_between_forward_and_backward_cannot_change_the_gradients(change, rng,
                                                                            draw):
    """Backward uses what its forward saw (geometry, weights): the gradients are those of
    the function that was computed, or a clear error if a parameter's shape changed."""
    x, = (draw((2, 2, 8, 8), np.float32),)
    clean = run(block(np.random.default_rng(7)), x)
    m = block(np.random.default_rng(7))
    m.zero_grad()
    y = m(x)
    change(m)
    g = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
    # a parameter replaced by one of another shape, or removed: its gradient has nowhere
    # to go (a dtype change is fine: the same gradient, added into float64 arrays)
    replaced = m[0].grads["weight"].shape != (3, 2, 3, 3) or m[0].bias is None
    if replaced:
        with pytest.raises(ValueError, match="replaced between forward and backward"):
            m.backward(g)
        return
    grad_x = np.asarray(m.backward(g))
    np.testing.assert_allclose(grad_x, clean[1], rtol=1e-6, atol=1e-7)
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, clean[2][k], rtol=1e-6, atol=1e-7, err_msg=k)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(CHANGES)), min_size=1, max_size=4),
       st.integers(0, 10_000))
def test_any_sequence_of_changes_between_calls_gives_the_layers_result(names, seed):
    """Property: after any sequence of changes, each with a forward in between, the model's
    output is what its layers compute one by one, and backward gives finite gradients of
    the right shapes; never a wrong result, never a crash."""
    rng = np.random.default_rng(seed)
    m = block(rng)
    x = rng.standard_normal((2, 2, 9, 9)).astype(np.float32)
    for name in names:
        m(x.astype(m[0].weight.dtype))
        CHANGES[name](m)
        x = x.astype(m[0].weight.dtype)
        try:
            expected = reference(m)(x)
        except ValueError:                        # the layers refuse it (e.g. too small)
            with pytest.raises(ValueError):
                m(x)
            return
        y = np.asarray(m(x))
        tol = 1e-5 if y.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
        grad_x = np.asarray(m.backward(np.ones_like(y)))
        assert grad_x.shape == x.shape and np.isfinite(grad_x).all()


def test_a_deferred_conv_whose_geometry_changed_before_use_is_refused(rng, draw):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, rng=rng)

        def forward(self, x):
            h = self.conv(x)
            self.conv.padding = 1               # between the call and the use of h
            return h * 1.0
    with pytest.raises(ValueError, match=r"changed \(weight shape, stride or padding\) "
                                         r"between its call and the first use"):
        Odd()(draw((1, 1, 6, 6), np.float32))


def test_training_is_deterministic_and_independent_of_threads():
    import numba

    def train(threads, build):
        old = npnet.threads.set_num_threads(threads)
        try:
            model = build(np.random.default_rng(0))
            crit = npnet.CrossEntropyLoss()
            opt = npnet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            rng = np.random.default_rng(1)
            for _ in range(3):
                x = rng.standard_normal((37, 1, 28, 28)).astype(np.float32)
                t = rng.integers(0, 10, 37)
                opt.zero_grad()
                crit(model(x), t)
                model.backward(crit.backward())
                opt.step()
            return model.state_dict()
        finally:
            npnet.threads.set_num_threads(old)

    # the ResNet: batch norm's kernels split the channels, its convolutions the batch (in
    # chunks run by npnet's thread pool, kernels/chunks.py)
    for build in (lambda r: npnet.lenet5(rng=r), _seed, lambda r: npnet.models.resnet(rng=r)):
        runs = [train(1, build), train(1, build),
                train(numba.config.NUMBA_NUM_THREADS, build)]
        for k in runs[0]:
            np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
            np.testing.assert_array_equal(runs[0][k], runs[2][k], err_msg=k)
    # and the two ways of writing LeNet-5 train to the same weights, bit for bit
    a, b = train(2, lambda r: npnet.lenet5(rng=r)), train(2, _seed)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_values_pinned_by_a_compiles_garbage_are_not_computed_again(monkeypatch):
    """A Numba compile inside a forward leaves reference cycles behind (the typing errors
    it caught hold the frames that were running, npnet's among them), and they keep alive
    the deferred conv and ReLU outputs that ran fused.  The end of the forward must not
    take those for values the caller kept, and run the convolutions a second time."""
    import gc

    import numba
    from npnet.layers import fused as fused_layer
    kernel = fused_layer.conv_relu_pool_forward

    def compiling_kernel(*a):
        numba.njit(lambda v: v + 1)(1)              # a compile inside this forward
        try:
            raise ValueError("caught, as Numba's typing catches its own")
        except ValueError as e:
            garbage = [e]                           # a cycle through this frame, whose
            garbage.append(garbage)                 # callers are npnet's
        return kernel(*a)

    monkeypatch.setattr(fused_layer, "conv_relu_pool_forward", compiling_kernel)
    model = npnet.lenet5(rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    gc.disable()                                    # the cycles outlive the forward
    try:
        model(x)
    finally:
        gc.enable()
    names = [type(c.module).__name__ for c in npnet.autograd.tape_of(model).calls]
    assert names == ["ConvReLUMaxPool2d", "ConvReLUMaxPool2d", "Conv2d", "ReLU", "Flatten",
                     "Linear", "ReLU", "Linear"]


def test_a_deferred_value_the_forward_keeps_is_computed_at_its_end(rng):
    """What a forward keeps (here on the model) is computed before the forward returns,
    from the weights and input it was called with, even if fusion used it and no call
    read it."""
    class Keeps(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.pool = nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)

        def forward(self, x):
            h = self.conv(x)
            self.kept = h                           # never read inside the forward
            return self.pool(self.relu(h))

    model = Keeps()
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    model(x)
    assert len(fused_calls(model)) == 1
    assert model.kept.computed
    want = np.asarray(model.conv(x))                # the conv on its own, same weights
    model.conv.weight[...] += 1                     # later changes do not reach it
    np.testing.assert_array_equal(np.asarray(model.kept), want)


def test_the_fused_layer_kept_on_a_conv_is_reused_only_for_the_same_relu_and_pool():
    """A conv called twice in one forward, into two pools, runs two fused calls, each
    standing for the layers of its own call; a model whose convs each meet one ReLU and
    pool reuses the same fused layers from one forward to the next."""
    rng = np.random.default_rng(0)
    conv, relu = npnet.Conv2d(1, 2, 3, padding=1, rng=rng), npnet.ReLU()
    pools = [npnet.MaxPool2d(2), npnet.MaxPool2d(2)]

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.p0, self.p1 = conv, relu, *pools

        def forward(self, x):
            return self.p0(self.relu(self.conv(x))) + self.p1(self.relu(self.conv(x)))

    model = Twice()
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    for _ in range(2):
        model(x)
        assert [c.module.stands_for for c in fused_calls(model)] == [
            (conv, relu, pools[0]), (conv, relu, pools[1])]

    lenet = npnet.lenet5(rng=rng)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    lenet(x)
    first = [c.module for c in fused_calls(lenet)]
    lenet(x)
    assert [c.module for c in fused_calls(lenet)] == first and len(first) == 2
