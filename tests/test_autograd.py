"""Tests of npnet/autograd.py: a model's forward records each layer call, backward replays
the record in reverse.  Layer reuse, branches, residual sums, what is refused, in-place
safety, a user's own layers, hooks wherever a layer runs."""
from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest
import torch

import npnet
import npnet.nn as nn
from npnet.nn import functional as F

F64 = dict(dtype=np.float64)


def torch_grads(module_t, x, g):
    """(output, dL/dx, {name: grad}) of a torch module for upstream gradient g."""
    xt = torch.tensor(x, requires_grad=True)
    yt = module_t(xt)
    yt.backward(torch.from_numpy(g))
    return (yt.detach().numpy(), xt.grad.numpy(),
            {k: p.grad.numpy() for k, p in module_t.named_parameters()})


def run(model, x, g):
    """(output, dL/dx, {name: grad}) of an npnet model."""
    model.zero_grad()
    y = np.asarray(model(x))
    grad_x = np.asarray(model.backward(g))
    return y, grad_x, {k: p.grad.copy() for k, p in model.named_parameters()}


def assert_same(ours, theirs, rtol=1e-12):
    """float64 on both sides: the same sums, perhaps in another order; 1e-12 of each
    tensor's largest entry covers the rounding (eps 2.2e-16 times sums of < 1e3 terms)."""
    y, gx, grads = ours
    ty, tgx, tgrads = theirs
    for a, b, what in [(y, ty, "output"), (gx, tgx, "dL/dx")] + [
            (grads[k], tgrads[k], k) for k in tgrads]:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=what)
    assert set(grads) == set(tgrads)


# -- a layer used twice ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_a_layer_used_twice_gets_one_record_per_call(dtype, rng, draw):
    """Sequential(lin, Tanh(), lin): the same Linear twice, each call with its own input."""
    lin = npnet.Linear(4, 4, dtype=dtype, rng=rng)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    x, g = draw((3, 4), dtype), draw((3, 4), dtype)
    ours = run(model, x, g)
    tl = torch.nn.Linear(4, 4).to(torch.float64)
    tl.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in
                        lin.state_dict().items()})
    theirs = torch_grads(torch.nn.Sequential(tl, torch.nn.Tanh(), tl), x.astype(np.float64),
                         g.astype(np.float64))
    assert [k for k in ours[2]] == ["0.weight", "0.bias"]     # one layer, listed once
    ours = (ours[0], ours[1], {"0.weight": ours[2]["0.weight"], "0.bias": ours[2]["0.bias"]})
    assert_same(ours, theirs, rtol=1e-12 if dtype == np.float64 else 1e-5)
    tape = npnet.autograd.tape_of(model)
    assert tape is None                       # spent by the backward
    model(x)
    tape = npnet.autograd.tape_of(model)
    assert [type(c.module).__name__ for c in tape.calls] == ["Linear", "Tanh", "Linear"]
    assert tape.calls[0].module is tape.calls[2].module


def test_reuse_inside_a_class_matches_numerical_gradients(rng, draw):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, rng=rng, **F64)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.fc(self.act(self.fc(x))))
    report = npnet.gradcheck(Twice(), draw((4, 3)), rng=rng)
    assert [r.name for r in report] == ["input", "fc.weight", "fc.bias"]
    assert all(r.passed for r in report)


# -- branches and residual sums --------------------------------------------------------------
class Residual(nn.Module):
    """relu(conv2(relu(conv1(x))) + x): x feeds conv1 and the sum."""

    def __init__(self, rng, dtype=np.float64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1, dtype=dtype, rng=rng)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, dtype=dtype, rng=rng)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(F.add(self.conv2(self.relu(self.conv1(x))), x))


class TorchResidual(torch.nn.Module):
    def __init__(self, state):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.double()                     # before the weights go in: keep all their digits
        self.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


def test_a_residual_block_matches_torch_and_central_differences(rng, draw):
    model = Residual(rng)
    x, g = draw((2, 3, 5, 5)), draw((2, 3, 5, 5))
    assert_same(run(model, x, g), torch_grads(TorchResidual(model.state_dict()), x, g))
    report = npnet.gradcheck(model, x, rng=rng)
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_a_value_used_by_two_calls_gets_the_sum_of_their_gradients(rng, draw):
    """y = a(h) + b(h) with h = fc(x): dL/dh = a's contribution + b's."""
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.a, self.b = (nn.Linear(4, 4, rng=rng, **F64) for _ in range(3))

        def forward(self, x):
            h = self.fc(x)
            return F.add(self.a(h), self.b(h))
    model = Branch()
    x, g = draw((3, 4)), draw((3, 4))
    y, grad_x, grads = run(model, x, g)
    # by hand: dL/dh = g @ Wa + g @ Wb; dL/dWfc = dL/dh.T @ x; dL/dx = dL/dh @ Wfc
    grad_h = g @ model.a.weight + g @ model.b.weight
    np.testing.assert_allclose(grads["fc.weight"], grad_h.T @ x, rtol=1e-12)
    np.testing.assert_allclose(grad_x, grad_h @ model.fc.weight, rtol=1e-12)
    h = x @ model.fc.weight.T + model.fc.bias
    np.testing.assert_allclose(grads["a.weight"], g.T @ h, rtol=1e-12)


def test_cat_of_two_branches(rng, draw):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3, rng=rng, **F64), nn.Linear(4, 2, rng=rng, **F64)

        def forward(self, x):
            return F.cat([self.a(x), self.b(x)], dim=1)
    model = Two()
    x, g = draw((3, 4)), draw((3, 5))
    y, grad_x, grads = run(model, x, g)
    np.testing.assert_allclose(grads["a.weight"], g[:, :3].T @ x, rtol=1e-12)
    np.testing.assert_allclose(grads["b.weight"], g[:, 3:].T @ x, rtol=1e-12)
    np.testing.assert_allclose(grad_x, g[:, :3] @ model.a.weight + g[:, 3:] @ model.b.weight,
                               rtol=1e-12)


# -- what backward refuses, before changing anything -----------------------------------------
class NumpyBetween(nn.Module):
    def __init__(self, rng, how):
        super().__init__()
        self.c, self.d = nn.Linear(4, 4, rng=rng, **F64), nn.Linear(4, 2, rng=rng, **F64)
        self.how = how

    def forward(self, x):
        h = self.c(x)
        if self.how == "add":
            h = h + x                       # the residual sum written in NumPy
        elif self.how == "concatenate":
            h = np.concatenate([h[:, :2], x[:, 2:]], axis=1)
        elif self.how == "scale":
            h = h * 2
        elif self.how == "slice":
            h = h[:, [1, 0, 3, 2]]
        return self.d(h)


@pytest.mark.parametrize("how", ["add", "concatenate", "scale", "slice"])
def test_numpy_between_layers_is_refused_at_backward_naming_the_layer(how, rng, draw):
    model = NumpyBetween(rng, how)
    x = draw((3, 4))
    y = model(x)                             # the forward itself is fine
    assert y.shape == (3, 2)
    model.zero_grad()
    with pytest.raises(ValueError, match=r"NumpyBetween\.backward: input 0 of d \(Linear\), "
                                         r"an array of shape \(3, 4\)"):
        model.backward(np.ones((3, 2)))
    # nothing half-written: every gradient is still zero
    assert all(not p.grad.any() for p in model.parameters())


def test_an_output_computed_with_numpy_is_refused(rng, draw):
    class After(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, rng=rng, **F64)

        def forward(self, x):
            return self.fc(x) * 2
    model = After()
    y = model(draw((2, 3)))
    with pytest.raises(ValueError, match=r"output 0 of the forward, of shape \(2, 3\), was not "
                                         r"produced by a recorded call"):
        model.backward(np.ones_like(y))


def test_a_detached_constant_carries_no_gradient_and_no_error(rng, draw):
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, rng=rng, **F64)

        def forward(self, x):
            return F.add(self.fc(x), F.detach(np.full((1, 3), 0.5)))
    model = Shift()
    x, g = draw((2, 3)), draw((2, 3))
    y, grad_x, grads = run(model, x, g)
    np.testing.assert_allclose(grads["fc.weight"], g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(grad_x, g @ model.fc.weight, rtol=1e-12)


def test_backward_needs_a_training_forward_and_runs_once(rng, draw):
    model = nn.Sequential(nn.Linear(3, 2, rng=rng))
    g = np.ones((2, 2), np.float32)
    with pytest.raises(RuntimeError, match=r"Sequential: backward\(\) needs a forward\(\) in "
                                           r"training mode first"):
        model.backward(g)
    model(draw((2, 3), np.float32))
    model.backward(g)
    with pytest.raises(RuntimeError, match="each forward allows one backward"):
        model.backward(g)
    model.eval()
    model(draw((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(g)


def test_a_wrong_grad_out_is_refused_and_a_corrected_one_accepted(rng, draw):
    model = nn.Sequential(nn.Linear(3, 2, rng=rng))
    x = draw((4, 3), np.float32)
    model(x)
    with pytest.raises(ValueError, match=r"grad_out has shape \(4, 3\), expected \(4, 2\)"):
        model.backward(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="grad_out is float64, expected float32"):
        model.backward(np.ones((4, 2)))
    assert not model[0].grads["weight"].any()
    model.backward(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(model[0].grads["weight"], np.ones((2, 4)) @ x, rtol=1e-6)


# -- in-place safety ------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [npnet.ReLU, npnet.Tanh, npnet.Sigmoid])
def test_changing_an_activation_output_in_place_cannot_change_its_gradient(layer, draw):
    """y = tanh(x); y -= 0.5; backward: the gradient is tanh's at x, as torch would give
    (torch raises; npnet's layer kept its own copy)."""
    x, g = draw((3, 4)), draw((3, 4))
    act = layer()
    y = act(x)
    expected = torch_grads({npnet.ReLU: torch.nn.ReLU(), npnet.Tanh: torch.nn.Tanh(),
                            npnet.Sigmoid: torch.nn.Sigmoid()}[layer], x, g)[1]
    y -= 0.5
    np.testing.assert_allclose(act.backward(g), expected, rtol=1e-12)


def test_inside_a_forward_outputs_are_read_only(rng, draw):
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, rng=rng, **F64)
            self.act = nn.Tanh()

        def forward(self, x):
            h = self.fc(x)
            h -= 0.5                    # would silently change what act's gradient sees
            return self.act(h)
    with pytest.raises(ValueError, match="read-only"):
        InPlace()(draw((2, 3)))


def test_after_the_forward_nothing_the_caller_can_write_changes_the_gradients(rng, draw):
    """The final output, the input and the weights, all changed in place between forward
    and backward: backward still gives the gradients of the function the forward computed."""
    def build():
        return nn.Sequential(nn.Linear(4, 4, rng=np.random.default_rng(1), **F64), nn.Tanh(),
                             nn.Linear(4, 3, rng=np.random.default_rng(2), **F64), nn.Tanh())
    x, g = draw((3, 4)), draw((3, 3))
    clean = run(build(), x, g)
    model = build()
    x2 = x.copy()
    y = model(x2)
    assert y.flags.writeable                   # the caller's to use
    y *= 0
    x2 += 1
    for p in model.parameters():
        p.data += 1                          # e.g. an optimizer step before backward
    grad_x = np.asarray(model.backward(g))
    np.testing.assert_allclose(grad_x, clean[1], rtol=1e-12)
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, clean[2][k], rtol=1e-12, err_msg=k)


# -- the input gradient ------------------------------------------------------------------------
def test_the_input_gradient_is_computed_when_read(rng, draw):
    model = npnet.lenet5(rng=rng, dtype=np.float64)
    x, g = draw((2, 1, 28, 28)), draw((2, 10))
    model(x)
    grad_x = model.backward(g)
    assert isinstance(grad_x, npnet.Deferred) and not grad_x.computed
    assert grad_x.shape == x.shape and grad_x.dtype == np.float64
    # the same values as a replay that computes it at once (a hook on conv1 asks for it)
    weights = {k: p.data.copy() for k, p in model.named_parameters()}
    model.conv1.register_full_backward_hook(lambda m, gi, go: None)
    model(x)
    eager = model.backward(g)
    assert isinstance(eager, np.ndarray)
    for p in model.parameters():
        p.data -= 0.1 * p.grad               # the optimizer moves on before it is read...
    np.testing.assert_allclose(np.asarray(grad_x), eager, rtol=1e-12)   # ...the forward's
    assert all(np.array_equal(weights[k], p.data) is False
               for k, p in model.named_parameters())
    model(x)
    assert model.backward(g, need_grad_in=False) is None


def test_several_inputs_and_outputs(rng, draw):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2, rng=rng, **F64), nn.Linear(4, 2, rng=rng, **F64)

        def forward(self, u, v):
            s = F.add(self.a(u), self.b(v))
            return s, self.a(u)
    model = Two()
    u, v = draw((2, 3)), draw((2, 4))
    g1, g2 = draw((2, 2)), draw((2, 2))
    s, t = model(u, v)
    gu, gv = model.backward((g1, g2))
    np.testing.assert_allclose(np.asarray(gu), (g1 + g2) @ model.a.weight, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gv), g1 @ model.b.weight, rtol=1e-12)
    np.testing.assert_allclose(model.a.grads["weight"], (g1 + g2).T @ u, rtol=1e-12)


# -- a user's layers and a user's own backward ---------------------------------------------
class Square(npnet.Layer):
    """The layer contract as documented before models were code: forward keeps self._cache,
    backward reads it and returns dL/dx."""

    def forward(self, x):
        self._cache = x
        return x * x

    def backward(self, grad_out):
        x, self._cache = self._cache, None
        return grad_out * 2 * x


class Scale(npnet.Layer):
    """A layer with a parameter, written to the old contract (params, _init_grads)."""

    def __init__(self, n):
        super().__init__()
        self.params["s"] = np.linspace(0.5, 1.5, n)
        self._init_grads()

    def forward(self, x):
        self._cache = x
        return x * self.params["s"]

    def backward(self, grad_out):
        x, self._cache = self._cache, None
        self.grads["s"] += (grad_out * x).sum(axis=0)
        return grad_out * self.params["s"]


def test_a_user_layer_to_the_old_contract_works_alone_and_reused_in_a_model(rng, draw):
    x = draw((3, 4))
    sq = Square()
    np.testing.assert_allclose(sq.backward(np.ones((3, 4))) if sq(x) is not None else 0, 2 * x)
    scale = Scale(4)
    model = nn.Sequential(scale, Square(), scale, nn.Linear(4, 2, rng=rng, **F64))
    report = npnet.gradcheck(model, x, rng=rng)
    assert [r.name for r in report] == ["input", "0.s", "3.weight", "3.bias"]
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_a_model_with_its_own_backward_is_used_as_written(rng, draw):
    """The teaching path: a container that writes its own backward, calling its children's
    hand-written backward, is a layer: its inner calls are not recorded, its backward runs."""
    calls = []

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(3, 3, rng=rng, **F64), nn.Tanh()

        def forward(self, x):
            return self.act(self.fc(x))

        def backward(self, grad_out):
            calls.append("Chain.backward")
            return self.fc.backward(self.act.backward(grad_out))
    chain = Chain()
    x = draw((2, 3))
    report = npnet.gradcheck(chain, x, rng=rng)                      # alone
    assert all(r.passed for r in report)
    model = nn.Sequential(chain, nn.Linear(3, 2, rng=rng, **F64))    # inside a model
    report = npnet.gradcheck(model, x, rng=rng)
    assert all(r.passed for r in report), "\n".join(map(str, report))
    assert "Chain.backward" in calls
    model(x)
    assert [type(c.module).__name__ for c in npnet.autograd.tape_of(model).calls] == [
        "Chain", "Linear"]


# -- hooks wherever a layer runs ------------------------------------------------------------
def test_hooks_fire_alone_in_a_sequential_and_in_a_class_once_per_call(rng, draw):
    fc = nn.Linear(3, 3, rng=rng, **F64)
    seen = []
    fc.register_forward_hook(lambda m, args, y: seen.append(("fwd", args[0].shape)))
    fc.register_full_backward_hook(
        lambda m, gi, go: seen.append(("bwd", gi[0].shape, go[0].shape)))
    x, g = draw((2, 3)), draw((2, 3))
    fc(x)
    fc.backward(g)                                           # alone
    assert seen == [("fwd", (2, 3)), ("bwd", (2, 3), (2, 3))]
    seen.clear()
    model = nn.Sequential(fc, nn.Tanh(), fc)                  # reused in a Sequential
    model(x)
    model.backward(g)
    assert seen == [("fwd", (2, 3)), ("fwd", (2, 3)), ("bwd", (2, 3), (2, 3)),
                    ("bwd", (2, 3), (2, 3))]


def test_a_models_backward_hook_sees_the_gradients_at_its_edges(rng, draw):
    block = nn.Sequential(nn.Linear(3, 4, rng=rng, **F64), nn.Tanh())
    model = nn.Sequential(nn.Linear(3, 3, rng=rng, **F64), block, nn.Linear(4, 2, rng=rng, **F64))
    seen = {}
    block.register_full_backward_hook(
        lambda m, gi, go: seen.update(module=m, grad_in=gi, grad_out=go))
    x, g = draw((2, 3)), draw((2, 2))
    model(x)
    model.backward(g)
    grad_block_out = g @ model[2].weight
    np.testing.assert_allclose(seen["grad_out"][0], grad_block_out, rtol=1e-12)
    h = np.tanh((x @ model[0].weight.T + model[0].bias) @ block[0].weight.T + block[0].bias)
    np.testing.assert_allclose(seen["grad_in"][0],
                               (grad_block_out * (1 - h * h)) @ block[0].weight, rtol=1e-12)
    assert seen["module"] is block


def test_forward_pre_hooks_and_a_hook_that_replaces_the_output(rng, draw):
    relu = nn.ReLU()
    relu.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    x = draw((2, 3))
    np.testing.assert_allclose(relu(x), np.maximum(2 * x, 0))
    relu2 = nn.ReLU()
    relu2.register_forward_hook(lambda m, args, y: y + 1)
    np.testing.assert_allclose(relu2(x), np.maximum(x, 0) + 1)


def test_views_of_views_are_traced_to_their_memory(rng, draw):
    """What a call keeps is protected whatever chain of views reaches its memory: the
    model's output a view of an activation's kept output, and an input given as a Tensor
    view of the caller's array (NumPy's .base chain stops at a change of array type)."""
    class ViewOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4, rng=np.random.default_rng(0), **F64)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.fc(x)).view(-1)
    x, g = draw((2, 3)), np.arange(8.0)
    clean = run(ViewOut(), x, g)
    model = ViewOut()
    y = model(x)
    y -= 100.0                              # the output views ReLU's kept output
    model.backward(g)
    np.testing.assert_array_equal(model.fc.grads["weight"], clean[2]["fc.weight"])
    seq = nn.Sequential(nn.Linear(3, 2, rng=np.random.default_rng(0), **F64))
    x, g = draw((4, 3)), draw((4, 2))
    clean = run(seq, x, g)
    seq.zero_grad()
    t = x.copy().view(npnet.Tensor).view(np.ndarray).view(npnet.Tensor)   # three steps
    seq(t)
    t[...] = 0
    seq.backward(g)
    np.testing.assert_array_equal(seq[0].grads["weight"], clean[2]["0.weight"])


@pytest.mark.parametrize("build", [npnet.lenet5, npnet.models.LeNet5, npnet.models.resnet],
                         ids=["lenet5", "seed_class", "resnet"])
def test_a_training_step_leaves_no_reference_cycle(build):
    """What a forward records is freed by reference counting alone, as soon as nothing
    holds it: a training step, and a training forward that no backward followed, leave
    nothing for Python's garbage collector (whose collections would otherwise come every
    few dozen steps, and a full one now and then, in the middle of training)."""
    rng = np.random.default_rng(0)
    with nn.init_generator(rng):
        model = build()
    crit = npnet.CrossEntropyLoss()
    opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)   # the warm-up's batch
    y = rng.integers(0, 10, 16)

    def step():
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        model(x)                          # a forward whose tape the next one replaces
    step()                                # compiles or loads the kernels first
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(3):
            step()
        found = gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert found == 0


def test_a_model_pickled_between_forward_and_backward_gives_the_same_gradients():
    """A model with a recorded forward still pickles (the tape's calls carry its mark, a
    plain object, not a reference to the tape), and the copy's backward is the original's,
    into the copy's own parameters."""
    rng = np.random.default_rng(0)
    model = npnet.lenet5(rng=rng)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    g = rng.standard_normal((16, 10)).astype(np.float32)
    model(x)
    twin = pickle.loads(pickle.dumps(model))
    model.backward(g)
    twin.backward(g)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
