"""Tests of npnet/nn/functional.py: the operations a forward uses between layers.

Each op is tested where it is meant to be used, inside a model's forward between layers:

* a float64 numerical gradient check of the whole model (npnet.gradcheck), so every input
  and parameter gradient that flows *through* the op is checked;
* float32 parity with torch: the same model, written once (CASES) and built on npnet and
  on torch (torch's own ops: torch.add, torch.cat, ...), the same weights, the output and
  every gradient, dL/dx included;
* the functional form against the module form (F.relu against nn.ReLU): bit-identical;
* the errors, and detach;
* plain NumPy in place of an op (``h + x``): backward refuses it, naming the layer that
  received the array, and changes no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

import npnet
import npnet.nn as nn
import npnet.nn.functional as F


# -- one model source, two frameworks -----------------------------------------------------------
class Offset(npnet.Layer):
    """A learned array of a fixed shape, the same for every sample (a per-channel bias of
    shape (C, 1, 1), say): the operand of an add that broadcasts.

    Its output does not depend on the values of x (x only places the call in the forward),
    so backward returns dL/dx = 0 and adds dL/dweight = G, the gradient of its output, as
    it arrives: summing G over the broadcast dimensions is the add's job, tested here.
    """

    def __init__(self, shape):
        super().__init__()
        size = int(np.prod(shape))
        self.weight = npnet.Parameter(
            np.linspace(-1.0, 1.0, size, dtype=np.float32).reshape(shape))

    def forward(self, x):
        self._cache = (x.shape, x.dtype) if self.training else None
        return self.weight.copy()          # a copy: never hand out the live parameter

    def backward(self, grad_out):
        x_shape, x_dtype = self._cache
        self._cache = None
        self.grads["weight"] += grad_out
        return np.zeros(x_shape, x_dtype)


class TorchOffset(torch.nn.Module):
    """Offset for torch: a Parameter, whatever the input."""

    def __init__(self, shape):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        return self.weight


# torch's equivalent of each npnet.nn.functional op, under npnet's names
TORCH_F = SimpleNamespace(
    add=torch.add, cat=torch.cat, flatten=torch.flatten, reshape=torch.reshape,
    relu=torch.relu, tanh=torch.tanh, sigmoid=torch.sigmoid,
    leaky_relu=torch.nn.functional.leaky_relu,
    max_pool2d=torch.nn.functional.max_pool2d, avg_pool2d=torch.nn.functional.avg_pool2d,
    adaptive_avg_pool2d=torch.nn.functional.adaptive_avg_pool2d,
    detach=torch.Tensor.detach)
NPNET = SimpleNamespace(nn=nn, F=F, Offset=Offset)
TORCH = SimpleNamespace(nn=torch.nn, F=TORCH_F, Offset=TorchOffset)


@dataclass
class Case:
    """A model written once for both frameworks: ``layers(lib)`` gives its layers by name
    (registered in that order), ``forward(F, m, x)`` is its forward with ``lib.F``;
    ``window``: the most values an op of the forward averages (a pooling window)."""
    layers: Callable
    forward: Callable
    x_shape: tuple
    window: int = 6


def build(lib, case: Case):
    """The model of ``case`` on ``lib`` (NPNET or TORCH)."""
    class Net(lib.nn.Module):
        def __init__(self):
            super().__init__()
            for name, layer in case.layers(lib).items():
                setattr(self, name, layer)

        def forward(self, x):
            return case.forward(lib.F, self, x)
    return Net()


def npnet_model(case: Case, rng, dtype=np.float32):
    with nn.init_generator(rng):
        model = build(NPNET, case)
    return model.to(dtype)


def torch_copy(case: Case, model):
    """The torch model of ``case`` with ``model``'s weights (same keys, same layouts)."""
    tmodel = build(TORCH, case)
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                            model.state_dict().items()}, strict=True)
    return tmodel


def _conv(L, *args, **kwargs):
    return L.nn.Conv2d(*args, **kwargs)


def _linear(L, *args):
    return L.nn.Linear(*args)


def _cat_case(dim: int, n: int) -> Case:
    """n conv branches of a (2, 2, 4, 4) input, concatenated along ``dim``, then a head.
    The branches differ exactly along ``dim``: channels 1, 2, 3 (dim 1), widths 4, 3, 2
    (dim -1), nothing (dim 0: the batch doubles or triples)."""
    def layers(L):
        if dim == 1:
            branches = [_conv(L, 2, i + 1, 3, padding=1) for i in range(n)]
            head = _conv(L, n * (n + 1) // 2, 2, 3)
        elif dim == 0:
            branches = [_conv(L, 2, 2, 3, padding=1) for _ in range(n)]
            head = _conv(L, 2, 2, 3)
        else:
            branches = [_conv(L, 2, 2, (1, i + 1)) for i in range(n)]
            head = _conv(L, 2, 2, 3)
        return {**{f"branch{i}": b for i, b in enumerate(branches)}, "head": head}

    def forward(F, m, x):
        return m.head(F.cat([getattr(m, f"branch{i}")(x) for i in range(n)], dim=dim))
    return Case(layers, forward, (2, 2, 4, 4))


def _flatten_case(dims) -> Case:
    """conv -> flatten(dims) -> tanh -> reshape to (N, -1) -> linear."""
    def forward(F, m, x):
        h = m.conv(x)                                  # (2, 2, 2, 2)
        t = F.flatten(h) if dims is None else F.flatten(h, *dims)
        return m.fc(F.reshape(m.act(t), (x.shape[0], -1)))
    return Case(lambda L: dict(conv=_conv(L, 2, 2, 3), act=L.nn.Tanh(), fc=_linear(L, 8, 3)),
                forward, (2, 2, 4, 4))


def _activation_case(op: str, four_d: bool) -> Case:
    if four_d:
        return Case(lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), conv2=_conv(L, 3, 2, 3)),
                    lambda F, m, x: m.conv2(getattr(F, op)(m.conv1(x))), (2, 2, 4, 4))
    return Case(lambda L: dict(fc1=_linear(L, 4, 5), fc2=_linear(L, 5, 3)),
                lambda F, m, x: m.fc2(getattr(F, op)(m.fc1(x))), (3, 4))


def _leaky_relu_case(slope, four_d: bool) -> Case:
    """fc -> leaky_relu(slope) -> fc, or conv -> leaky_relu -> conv; None: the default."""
    def act(F, h):
        return F.leaky_relu(h) if slope is None else F.leaky_relu(h, slope)
    if four_d:
        return Case(lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), conv2=_conv(L, 3, 2, 3)),
                    lambda F, m, x: m.conv2(act(F, m.conv1(x))), (2, 2, 4, 4))
    return Case(lambda L: dict(fc1=_linear(L, 4, 5), fc2=_linear(L, 5, 3)),
                lambda F, m, x: m.fc2(act(F, m.fc1(x))), (3, 4))


def _adaptive_case(output_size, hw, window) -> Case:
    """conv (2, 3, H, W) -> adaptive_avg_pool2d(output_size) -> 1x1 conv."""
    return Case(lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), conv2=_conv(L, 3, 2, 1)),
                lambda F, m, x: m.conv2(F.adaptive_avg_pool2d(m.conv1(x), output_size)),
                (2, 2, *hw), window)


def _pool_case(op: str, k, s, p) -> Case:
    """conv (2, 3, 5, 5) -> pool(k, s, p) -> 1x1 conv."""
    return Case(lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), conv2=_conv(L, 3, 2, 1)),
                lambda F, m, x: m.conv2(getattr(F, op)(m.conv1(x), k, s, p)), (2, 2, 5, 5))


POOL_GEOMETRIES = {"k2": (2, None, 0), "k3_s2_p1": (3, 2, 1), "k2_s1": (2, 1, 0),
                   "k2x3_s1x2": ((2, 3), (1, 2), 0)}

CASES = {
    # add: the operands' shapes, broadcasting as NumPy (and torch) do
    "add_NF+NF_residual": Case(                        # x + fc1(x): the model input is one
        lambda L: dict(fc1=_linear(L, 4, 4), fc2=_linear(L, 4, 3)),
        lambda F, m, x: m.fc2(F.add(m.fc1(x), x)), (3, 4)),
    "add_F+NF": Case(                                  # the first operand broadcasts
        lambda L: dict(off=L.Offset((5,)), fc1=_linear(L, 4, 5), fc2=_linear(L, 5, 3)),
        lambda F, m, x: m.fc2(F.add(m.off(x), m.fc1(x))), (3, 4)),
    "add_NCHW+C11": Case(                              # a per-channel bias
        lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), off=L.Offset((3, 1, 1)),
                       conv2=_conv(L, 3, 2, 3)),
        lambda F, m, x: m.conv2(F.add(m.conv1(x), m.off(x))), (2, 2, 4, 4)),
    "add_NCHW+NC11": Case(                             # a per-sample, per-channel value
        lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), squeeze=_conv(L, 2, 3, 4),
                       conv2=_conv(L, 3, 2, 3)),
        lambda F, m, x: m.conv2(F.add(m.conv1(x), m.squeeze(x))), (2, 2, 4, 4)),
    "add_N41+N13": Case(                               # both operands broadcast: (N, 4, 3)
        lambda L: dict(fc1=_linear(L, 4, 4), fc2=_linear(L, 4, 3), fc3=_linear(L, 12, 2)),
        lambda F, m, x: m.fc3(F.flatten(F.add(F.reshape(m.fc1(x), (-1, 4, 1)),
                                              F.reshape(m.fc2(x), (-1, 1, 3))), 1)), (3, 4)),
    "add_python_scalar": Case(                         # a float on either side: no gradient
        lambda L: dict(fc1=_linear(L, 4, 4), fc2=_linear(L, 4, 3)),
        lambda F, m, x: m.fc2(F.add(0.5, F.add(m.fc1(x), 2.0))), (3, 4)),
    # cat
    **{f"cat_dim{dim}_{n}_inputs": _cat_case(dim, n) for dim in (1, 0, -1) for n in (2, 3)},
    "cat_input_and_features": Case(                    # DenseNet's [x, conv(x)]
        lambda L: dict(conv=_conv(L, 2, 3, 3, padding=1), head=_conv(L, 5, 2, 3)),
        lambda F, m, x: m.head(F.cat([x, m.conv(x)], dim=1)), (2, 2, 4, 4)),
    # flatten (None: torch.flatten's defaults, 0..-1) and reshape
    **{"flatten_" + ("default" if d is None else f"{d[0]}_{d[1]}"): _flatten_case(d)
       for d in (None, (1, -1), (0, 1), (1, 2), (2, 3), (-3, -2), (2, 2))},
    "reshape_rows_across_samples": Case(               # (2, 2, 2, 2) -> (4, 4)
        lambda L: dict(conv=_conv(L, 2, 2, 3), fc=_linear(L, 4, 3)),
        lambda F, m, x: m.fc(F.reshape(m.conv(x), (-1, 4))), (2, 2, 4, 4)),
    "reshape_list_shape": Case(
        lambda L: dict(conv=_conv(L, 2, 2, 3), fc=_linear(L, 8, 3)),
        lambda F, m, x: m.fc(F.reshape(m.conv(x), [x.shape[0], 8])), (2, 2, 4, 4)),
    "reshape_twice": Case(                             # to 1-D and back
        lambda L: dict(conv=_conv(L, 2, 2, 3), fc=_linear(L, 8, 3)),
        lambda F, m, x: m.fc(F.reshape(F.reshape(m.conv(x), (-1,)), (x.shape[0], -1))),
        (2, 2, 4, 4)),
    # the layers' own code, called as functions
    **{f"{op}_{'4d' if four_d else '2d'}": _activation_case(op, four_d)
       for op in ("relu", "tanh", "sigmoid") for four_d in (False, True)},
    **{f"leaky_relu_{name}_{'4d' if four_d else '2d'}": _leaky_relu_case(slope, four_d)
       for name, slope in (("default", None), ("0.2", 0.2)) for four_d in (False, True)},
    # (output size, input size, largest window): 5 -> 2 and 5 -> 3 overlap, 1 is global
    **{f"adaptive_avg_pool2d_{name}": _adaptive_case(o, hw, win) for name, o, hw, win in (
        ("2", 2, (5, 5), 9), ("3", 3, (5, 5), 9), ("1_global", 1, (5, 5), 25),
        ("None_2", (None, 2), (4, 5), 3), ("2x3_from_4x6", (2, 3), (4, 6), 4))},
    **{f"{op}_{g}": _pool_case(op, *POOL_GEOMETRIES[g])
       for op in ("max_pool2d", "avg_pool2d") for g in POOL_GEOMETRIES},
    "relu_max_pool2d_fused": Case(                     # conv -> relu -> 2x2 pool: one call
        lambda L: dict(conv1=_conv(L, 2, 3, 3, padding=1), conv2=_conv(L, 3, 2, 1)),
        lambda F, m, x: m.conv2(F.max_pool2d(F.relu(m.conv1(x)), 2)), (2, 2, 4, 4)),
}


# -- (a) float64 gradient check through a model ---------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_gradcheck_through_a_model(name, rng, draw):
    """Every gradient that flows through the op, and every parameter's, against central
    differences.  draw() keeps the input's values distinct and away from 0; the values
    reaching a ReLU or a max-pool are sums of products of them, not exactly 0 or tied."""
    case = CASES[name]
    model = npnet_model(case, rng, np.float64)
    report = npnet.gradcheck(model, draw(case.x_shape), rng=rng)   # raises on a failure
    assert [r.name for r in report] == ["input"] + [k for k, _ in model.named_parameters()]
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_the_fused_case_runs_fused(rng, draw):
    """relu_max_pool2d_fused is checked above through the fused layer, not the three."""
    case = CASES["relu_max_pool2d_fused"]
    model = npnet_model(case, rng, np.float64)
    model(draw(case.x_shape))
    assert "ConvReLUMaxPool2d" in str(npnet.autograd.tape_of(model))


@pytest.mark.parametrize("name, recorded", [
    ("leaky_relu_0.2_4d", "LeakyReLU"), ("adaptive_avg_pool2d_3", "AdaptiveAvgPool2d"),
    ("adaptive_avg_pool2d_1_global", "AdaptiveAvgPool2d")])
def test_leaky_relu_and_adaptive_pool_are_recorded_and_the_gradient_flows(name, recorded,
                                                                          rng, draw):
    """The functional call is one call of the tape, between the two layers, and backward
    through it reaches the first layer's weights and the input."""
    case = CASES[name]
    model = npnet_model(case, rng, np.float64)
    x = draw(case.x_shape)
    y = model(x)
    tape = str(npnet.autograd.tape_of(model))
    lines = [line.split()[1:3] for line in tape.splitlines()[2:]]
    assert lines == [["conv1", "Conv2d"], [recorded, recorded], ["conv2", "Conv2d"]], tape
    grad_x = np.asarray(model.backward(draw(y.shape)))
    assert np.abs(grad_x).min() > 0                    # every input pixel gets a gradient
    assert np.all(np.abs(model.conv1.grads["weight"]) > 0)


# -- (b) float32 parity with torch -------------------------------------------------------------
def float32_additions(model, x, window: int = 6) -> int:
    """An upper bound on the float32 additions behind any value compared: each Linear and
    Conv2d adds its longest sum (its fan-in in forward, its fan-out in backward, or, for its
    weight gradient, the batch times the output positions, which in these models is never
    more than x.size), and the rounding errors of successive layers add up; ``window``:
    the longest average an op takes (Case.window)."""
    K = 0
    for m in model.modules():
        if isinstance(m, npnet.Linear):
            K += max(m.in_features, m.out_features, x.size)
        elif isinstance(m, npnet.Conv2d):
            kh, kw = m.kernel_size
            K += max(m.in_channels * kh * kw, m.out_channels * kh * kw, x.size)
    return K + window       # an average over a pooling window


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_float32(name, rng, draw, tol32):
    case = CASES[name]
    model = npnet_model(case, rng)
    tmodel = torch_copy(case, model)
    x = draw(case.x_shape, np.float32)
    y = model(x)
    g = draw(y.shape, np.float32)
    grad_x = np.asarray(model.backward(g))
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    yt.backward(torch.from_numpy(g))
    assert y.dtype == grad_x.dtype == np.float32
    K = float32_additions(model, x, case.window)

    def close(ours, theirs, what):
        # tests/conftest.py f32_atol: two float32 computations of sums of K terms, each at
        # most `term`, agree to 2 eps K term.  K bounds the additions on any path through
        # the model (float32_additions); the terms are no larger than the values compared
        # (weights <= 1/sqrt(fan_in), draws <= 2.1), whose scale is term (at least 1).
        # The ops themselves copy (cat, flatten, reshape, max-pool, relu) or round once
        # (add, tanh, sigmoid, average); a routing bug errs by O(term), 1e3 times more.
        term = max(1.0, float(np.abs(theirs).max()))
        assert ours.shape == theirs.shape, what
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol32(K, term), err_msg=what)

    close(np.asarray(y), yt.detach().numpy(), "output")
    close(grad_x, xt.grad.numpy(), "dL/dx")
    theirs = dict(tmodel.named_parameters())
    ours = dict(model.named_parameters())
    assert list(ours) == list(theirs)
    for k, p in ours.items():
        close(p.grad, theirs[k].grad.numpy(), k)


# -- (c) the functional form is the module form -----------------------------------------------
class Between(nn.Module):
    """first -> op -> second, the op a module (the module form) or a function of F."""

    def __init__(self, first, op, second):
        super().__init__()
        self.first = first
        if isinstance(op, nn.Module):
            self.op = op
        else:
            self.function = op
        self.second = second

    def forward(self, x):
        h = self.first(x)
        h = self.op(h) if "op" in self._modules else self.function(F, h)
        return self.second(h)


PAIRS = {   # name: (module form, functional form, first, second, x shape)
    "relu": (lambda: nn.ReLU(), lambda F, h: F.relu(h), "fc", "fc", (3, 4)),
    "tanh": (lambda: nn.Tanh(), lambda F, h: F.tanh(h), "fc", "fc", (3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), lambda F, h: F.sigmoid(h), "fc", "fc", (3, 4)),
    "relu_after_conv": (lambda: nn.ReLU(), lambda F, h: F.relu(h), "conv", "conv1x1",
                        (2, 2, 6, 6)),
    "max_pool2d": (lambda: nn.MaxPool2d(2), lambda F, h: F.max_pool2d(h, 2), "conv",
                   "conv1x1", (2, 2, 6, 6)),
    "max_pool2d_k3_s1_p1": (lambda: nn.MaxPool2d(3, 1, 1),
                            lambda F, h: F.max_pool2d(h, 3, stride=1, padding=1), "conv",
                            "conv1x1", (2, 2, 6, 6)),
    "avg_pool2d": (lambda: nn.AvgPool2d(2), lambda F, h: F.avg_pool2d(h, 2), "conv",
                   "conv1x1", (2, 2, 6, 6)),
    "avg_pool2d_k3_s2_p1": (lambda: nn.AvgPool2d(3, 2, 1),
                            lambda F, h: F.avg_pool2d(h, 3, 2, 1), "conv", "conv1x1",
                            (2, 2, 6, 6)),
    "flatten": (lambda: nn.Flatten(), lambda F, h: F.flatten(h, 1), "conv", "fc_after_conv",
                (2, 2, 4, 4)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda F, h: F.leaky_relu(h, 0.2), "fc", "fc",
                   (3, 4)),
    "leaky_relu_default": (lambda: nn.LeakyReLU(), lambda F, h: F.leaky_relu(h), "fc", "fc",
                           (3, 4)),
    "leaky_relu_after_conv": (lambda: nn.LeakyReLU(0.1), lambda F, h: F.leaky_relu(h, 0.1),
                              "conv", "conv1x1", (2, 2, 6, 6)),
    "adaptive_avg_pool2d": (lambda: nn.AdaptiveAvgPool2d(4),
                            lambda F, h: F.adaptive_avg_pool2d(h, 4), "conv", "conv1x1",
                            (2, 2, 6, 6)),
    "adaptive_avg_pool2d_global": (lambda: nn.AdaptiveAvgPool2d(1),
                                   lambda F, h: F.adaptive_avg_pool2d(h, 1), "conv", "conv1x1",
                                   (2, 2, 6, 6)),
}


def _between(first, op, second, rng):
    """Between(first layer, op, second layer), the layers' weights drawn from ``rng``."""
    firsts = {"fc": lambda: nn.Linear(4, 5), "conv": lambda: nn.Conv2d(2, 3, 3, padding=1)}
    seconds = {"fc": lambda: nn.Linear(5, 3), "conv1x1": lambda: nn.Conv2d(3, 2, 1),
               "fc_after_conv": lambda: nn.Linear(3 * 4 * 4, 3)}
    with nn.init_generator(rng):
        return Between(firsts[first](), op, seconds[second]())


def _run(model, x, g):
    y = model(x)
    grad_x = np.asarray(model.backward(g))
    return np.asarray(y), grad_x, {k: p.grad.copy() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", PAIRS)
def test_functional_is_bit_identical_to_the_module(name, rng, draw):
    make_module, function, first, second, x_shape = PAIRS[name]
    module_form = _between(first, make_module(), second, rng)
    functional_form = _between(first, function, second, rng)
    functional_form.load_state_dict(module_form.state_dict())
    x = draw(x_shape, np.float32)
    g = draw(module_form(x).shape, np.float32)
    y1, gx1, grads1 = _run(module_form, x, g)
    y2, gx2, grads2 = _run(functional_form, x, g)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(gx1, gx2)
    assert list(grads1) == list(grads2) == ["first.weight", "first.bias", "second.weight",
                                            "second.bias"]
    for k in grads1:
        np.testing.assert_array_equal(grads1[k], grads2[k], err_msg=k)
        assert np.abs(grads1[k]).max() > 0, k          # the gradient did reach it


def test_functional_relu_and_max_pool_fuse_as_the_modules_do(rng, draw):
    """conv -> F.relu -> F.max_pool2d(2) is fused exactly as conv -> nn.ReLU -> nn.MaxPool2d."""
    class Modules(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.pool = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), \
                nn.MaxPool2d(2)
            self.fc = nn.Linear(3 * 3 * 3, 2)

        def forward(self, x):
            return self.fc(F.flatten(self.pool(self.relu(self.conv(x))), 1))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 3 * 3, 2)

        def forward(self, x):
            return self.fc(F.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))

    with nn.init_generator(rng):
        a = Modules()
    b = Functional()
    b.load_state_dict(a.state_dict())
    x = draw((2, 2, 6, 6), np.float32)
    g = draw((2, 2), np.float32)
    y1, gx1, grads1 = _run(a, x, g)
    a(x)
    assert "conv -> relu -> pool" in str(npnet.autograd.tape_of(a))
    y2, gx2, grads2 = _run(b, x, g)
    b(x)
    assert "(1 fused)" in str(npnet.autograd.tape_of(b))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(gx1, gx2)
    for k in grads1:
        np.testing.assert_array_equal(grads1[k], grads2[k], err_msg=k)


# -- hand-made cases: numbers to check by eye ----------------------------------------------------
def test_add_sums_the_gradient_over_the_broadcast_dimensions():
    add = F.Add()
    a = np.arange(24.0).reshape(2, 3, 2, 2)
    b = np.array([100.0, 200.0, 300.0]).reshape(3, 1, 1)
    y = add(a, b)
    np.testing.assert_array_equal(y, a + b)
    G = np.arange(24.0).reshape(2, 3, 2, 2)
    ga, gb = add.backward(G)
    np.testing.assert_array_equal(ga, G)
    # channel c of b served 2 samples x 4 pixels: it collects their 8 gradients
    np.testing.assert_array_equal(gb, G.sum(axis=(0, 2, 3)).reshape(3, 1, 1))
    assert gb.shape == (3, 1, 1) and gb[0, 0, 0] == 0 + 1 + 2 + 3 + 12 + 13 + 14 + 15


def test_add_gradient_dtype_is_each_operands():
    """float32 + float64 is float64 (NumPy's rule); each operand gets its own dtype back."""
    add = F.Add()
    y = add(np.ones((2, 3), np.float32), np.ones(3, np.float64))
    assert y.dtype == np.float64
    ga, gb = add.backward(np.ones((2, 3)))
    assert (ga.dtype, gb.dtype, gb.shape) == (np.float32, np.float64, (3,))
    np.testing.assert_array_equal(gb, [2.0, 2.0, 2.0])


def test_add_with_a_python_scalar_gives_it_no_gradient():
    add = F.Add()
    y = add(np.ones((2, 2), np.float32), 0.5)
    assert y.dtype == np.float32                       # the scalar does not upcast
    ga, gs = add.backward(np.full((2, 2), 3.0, np.float32))
    assert gs is None
    np.testing.assert_array_equal(ga, np.full((2, 2), 3.0))


def test_cat_gives_each_input_its_slice():
    cat = F.Cat(dim=1)
    a, b, c = np.zeros((2, 1)), np.ones((2, 2)), np.full((2, 3), 2.0)
    y = cat(a, b, c)
    np.testing.assert_array_equal(y, [[0, 1, 1, 2, 2, 2]] * 2)
    G = np.arange(12.0).reshape(2, 6)
    ga, gb, gc = cat.backward(G)
    np.testing.assert_array_equal(ga, [[0], [6]])
    np.testing.assert_array_equal(gb, [[1, 2], [7, 8]])
    np.testing.assert_array_equal(gc, [[3, 4, 5], [9, 10, 11]])


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_cat_matches_torch_at_top_level(dim, draw):
    """At top level F.cat just computes (bit-exact: no arithmetic); a tuple works too."""
    a, b, c = draw((2, 3), np.float32), draw((2, 3), np.float32), draw((2, 3), np.float32)
    for arrays in ([a, b, c], (a, b)):
        y = F.cat(arrays, dim=dim)
        assert isinstance(y, npnet.Tensor)
        expected = torch.cat([torch.from_numpy(t) for t in arrays], dim=dim).numpy()
        np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("dims", [(), (0,), (1,), (0, 1), (1, 2), (-2, -1), (2, 3), (1, 1)],
                         ids=lambda d: "_".join(map(str, d)) or "default")
def test_flatten_shapes_match_torch(dims, draw):
    x = draw((2, 3, 4, 5), np.float32)
    y = F.flatten(x, *dims)
    expected = torch.flatten(torch.from_numpy(x), *dims).numpy()
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)         # identity on values, in C order
    assert np.shares_memory(y, x)                      # a view: nothing is copied


def test_reshape_accepts_a_tuple_a_list_and_an_int(draw):
    x = draw((2, 3), np.float32)
    np.testing.assert_array_equal(F.reshape(x, (3, -1)), x.reshape(3, 2))
    np.testing.assert_array_equal(F.reshape(x, [3, 2]), x.reshape(3, 2))
    assert F.reshape(x, 6).shape == (6,)              # torch.reshape wants a tuple here
    # a reshape that cannot be a view copies; view=True refuses (see the errors below)
    assert not np.shares_memory(F.reshape(x.T, (6,)), x)


@pytest.mark.parametrize("op, kwargs, layer", [
    ("relu", {}, nn.ReLU()), ("tanh", {}, nn.Tanh()), ("sigmoid", {}, nn.Sigmoid()),
    ("max_pool2d", {"kernel_size": 2}, nn.MaxPool2d(2)),
    ("max_pool2d", {"kernel_size": 3, "stride": 1, "padding": 1}, nn.MaxPool2d(3, 1, 1)),
    ("avg_pool2d", {"kernel_size": 2}, nn.AvgPool2d(2)),
    ("avg_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, nn.AvgPool2d(3, 2, 1)),
    ("leaky_relu", {}, nn.LeakyReLU()),
    ("leaky_relu", {"negative_slope": 0.3}, nn.LeakyReLU(0.3)),
    ("adaptive_avg_pool2d", {"output_size": 4}, nn.AdaptiveAvgPool2d(4)),
    ("adaptive_avg_pool2d", {"output_size": (None, 1)}, nn.AdaptiveAvgPool2d((None, 1)))],
    ids=["relu", "tanh", "sigmoid", "max_k2", "max_k3_s1_p1", "avg_k2", "avg_k3_s2_p1",
         "leaky_default", "leaky_0.3", "adaptive_4", "adaptive_None_1"])
def test_layer_functions_at_top_level_are_the_layer(op, kwargs, layer, draw):
    """Outside a model the function just computes: the same bits as the layer's forward."""
    x = draw((2, 3, 6, 6), np.float32)
    y = getattr(F, op)(x, **kwargs)
    assert isinstance(y, npnet.Tensor) and y.dtype == np.float32
    np.testing.assert_array_equal(y, layer(x))


# -- (d) errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("not_a_list, got", [
    (np.ones((2, 3)), "ndarray"), (npnet.Tensor((2, 3)), "Tensor"),
    ((a for a in [np.ones(2)]), "generator"), ({"a": np.ones(2)}, "dict")],
    ids=["ndarray", "Tensor", "generator", "dict"])
def test_cat_of_a_non_list_is_refused(not_a_list, got):
    with pytest.raises(ValueError, match=rf"cat: expected a list or tuple of arrays, "
                                         rf"got {got}$"):
        F.cat(not_a_list, dim=0)


def test_cat_of_nothing_is_refused():
    with pytest.raises(ValueError, match="cat: expected at least one array"):
        F.cat([])


def test_relu_inplace_is_refused_at_top_level_and_in_a_forward(draw):
    msg = r"relu\(inplace=True\): npnet does not record in-place operations"
    with pytest.raises(ValueError, match=msg):
        F.relu(draw((2, 3)), inplace=True)
    model = Between(nn.Linear(3, 3, dtype=np.float64, rng=np.random.default_rng(0)),
                    lambda F, h: F.relu(h, inplace=True),
                    nn.Linear(3, 2, dtype=np.float64, rng=np.random.default_rng(1)))
    with pytest.raises(ValueError, match=msg):
        model(draw((2, 3)))
    np.testing.assert_array_equal(F.relu(np.array([-1.0, 2.0]), inplace=False), [0.0, 2.0])


def test_leaky_relu_inplace_is_refused_at_top_level_and_in_a_forward(draw):
    msg = r"leaky_relu\(inplace=True\): npnet does not record in-place operations"
    with pytest.raises(ValueError, match=msg):
        F.leaky_relu(draw((2, 3)), 0.2, inplace=True)
    model = Between(nn.Linear(3, 3, dtype=np.float64, rng=np.random.default_rng(0)),
                    lambda F, h: F.leaky_relu(h, inplace=True),
                    nn.Linear(3, 2, dtype=np.float64, rng=np.random.default_rng(1)))
    with pytest.raises(ValueError, match=msg):
        model(draw((2, 3)))


@pytest.mark.parametrize("output_size", [0, (2, 0), "2"], ids=["zero", "pair_zero", "str"])
def test_adaptive_avg_pool2d_bad_output_size_is_refused(output_size, draw):
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: output_size must be a positive "
                                         r"int"):
        F.adaptive_avg_pool2d(draw((1, 1, 4, 4)), output_size)


INT = np.arange(1, 17, dtype=np.int64).reshape(1, 1, 4, 4)


@pytest.mark.parametrize("call, message", [
    (lambda: F.add(INT, INT), r"add: the sum must be a float32 or float64 array, got int64"),
    (lambda: F.add(INT.astype(np.float16), 1.0),
     r"add: the sum must be a float32 or float64 array, got float16"),
    (lambda: F.cat([INT, INT]), r"cat: input 0 must be a float32 or float64 array, got int64"),
    (lambda: F.cat([np.ones((1, 1, 4, 4)), INT], dim=1),
     r"cat: input 1 must be a float32 or float64 array, got int64"),
    (lambda: F.cat([[1.0, 2.0]]), r"cat: input 0 must be a float32 or float64 array, got list"),
    (lambda: F.flatten(INT, 1), r"Flatten\(start_dim=1, end_dim=-1\): input must be float32 "
                                r"or float64, got int64"),
    (lambda: F.reshape(INT, (16,)),
     r"reshape: the input must be a float32 or float64 array, got int64"),
    (lambda: F.reshape([1.0, 2.0], (2,)),
     r"reshape: the input must be a float32 or float64 array, got list"),
    (lambda: F.relu(INT), r"ReLU\(\): input must be a float32 or float64 array, got int64"),
    (lambda: F.relu([1.0, -1.0]), r"ReLU\(\): input must be a float32 or float64 array, "
                                  r"got list"),
    (lambda: F.tanh(INT), r"Tanh\(\): input must be a float32 or float64 array, got int64"),
    (lambda: F.sigmoid(INT.astype(bool)),
     r"Sigmoid\(\): input must be a float32 or float64 array, got bool"),
    (lambda: F.max_pool2d(INT, 2), r"MaxPool2d\(kernel_size=\(2, 2\), stride=\(2, 2\)\): "
                                   r"input must be float32 or float64, got int64"),
    (lambda: F.avg_pool2d(INT, 2), r"AvgPool2d\(kernel_size=\(2, 2\), stride=\(2, 2\)\): "
                                   r"input must be float32 or float64, got int64"),
    (lambda: F.detach([1.0, 2.0]), r"detach: expected a numpy array, got list"),
    (lambda: F.leaky_relu(INT), r"LeakyReLU\(negative_slope=0\.01\): input must be a float32 "
                                r"or float64 array, got int64"),
    (lambda: F.adaptive_avg_pool2d(INT, 2), r"AdaptiveAvgPool2d\(output_size=2\): input must "
                                            r"be float32 or float64, got int64"),
], ids=["add_int", "add_float16", "cat_int", "cat_second_int", "cat_list", "flatten_int",
        "reshape_int", "reshape_list", "relu_int", "relu_list", "tanh_int", "sigmoid_bool",
        "max_pool2d_int", "avg_pool2d_int", "detach_list", "leaky_relu_int",
        "adaptive_avg_pool2d_int"])
def test_non_float_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_view_that_would_copy_is_refused():
    """torch's view never copies: a transposed array cannot be seen as one row."""
    x = np.arange(6.0).reshape(2, 3).view(npnet.Tensor)
    msg = (r"view: an array of shape \(3, 2\) and strides \(8, 24\) cannot be seen as "
           r"shape \(6,\) without a copy; use reshape")
    with pytest.raises(ValueError, match=msg):
        x.T.view(6)
    with pytest.raises(ValueError, match=msg):
        F.reshape(x.T, (6,), view=True)
    np.testing.assert_array_equal(x.T.reshape(6), [0, 3, 1, 4, 2, 5])   # reshape copies
    assert np.shares_memory(x.view(3, 2), x)           # a view where one exists


# -- (e) detach ------------------------------------------------------------------------------------
class TwoPaths(nn.Module):
    """h = fc1(x); y = fc2(h') + fc3(h), with h' = h detached or not."""

    def __init__(self, detach: bool, rng):
        super().__init__()
        kw = dict(dtype=np.float64, rng=rng)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 5, **kw), nn.Linear(5, 3, **kw), \
            nn.Linear(5, 3, **kw)
        self.detach = detach

    def forward(self, x):
        h = self.fc1(x)
        return F.add(self.fc2(F.detach(h) if self.detach else h), self.fc3(h))


def test_detach_stops_the_gradient_and_backward_does_not_complain(rng, draw):
    kw = dict(dtype=np.float64, rng=rng)
    model = Between(nn.Linear(4, 5, **kw), lambda F, h: F.detach(h), nn.Linear(5, 3, **kw))
    x = draw((3, 4))
    y = model(x)
    grad_x = np.asarray(model.backward(draw(y.shape)))     # no error: a constant is fine
    np.testing.assert_array_equal(grad_x, np.zeros_like(x))
    assert not model.first.grads["weight"].any() and not model.first.grads["bias"].any()
    assert model.second.grads["weight"].any()              # the layer after it learns


def test_detach_blocks_one_path_of_two_as_torch_does(rng, draw):
    with_detach = TwoPaths(True, rng)
    without = TwoPaths(False, rng)
    without.load_state_dict(with_detach.state_dict())
    x, g = draw((3, 4)), draw((3, 3))
    grads = {}
    for name, model in (("detach", with_detach), ("plain", without)):
        model(x)
        model.backward(g)
        grads[name] = {k: p.grad for k, p in model.named_parameters()}
    W = {k: torch.tensor(v, requires_grad=True) for k, v in with_detach.state_dict().items()}
    h = torch.nn.functional.linear(torch.from_numpy(x), W["fc1.weight"], W["fc1.bias"])
    y = torch.nn.functional.linear(h.detach(), W["fc2.weight"], W["fc2.bias"]) + \
        torch.nn.functional.linear(h, W["fc3.weight"], W["fc3.bias"])
    y.backward(torch.from_numpy(g))
    for k, t in W.items():
        # float64, sums of <= 5 terms: rounding ~1e-15, far inside 1e-12
        np.testing.assert_allclose(grads["detach"][k], t.grad.numpy(), rtol=1e-12,
                                   atol=1e-12, err_msg=k)
    # fc1 got only fc3's share: without detach it gets fc2's too, so the test can fail
    assert not np.allclose(grads["detach"]["fc1.weight"], grads["plain"]["fc1.weight"])
    np.testing.assert_array_equal(grads["detach"]["fc2.weight"], grads["plain"]["fc2.weight"])


def test_detach_is_the_same_memory_and_values(draw):
    x = draw((2, 3))
    d = F.detach(x)
    assert isinstance(d, npnet.Tensor) and np.shares_memory(d, x)
    np.testing.assert_array_equal(d, x)


def test_detaching_the_model_input_gives_it_a_zero_gradient(rng, draw):
    kw = dict(dtype=np.float64, rng=rng)
    model = Between(nn.Identity(), lambda F, h: F.detach(h), nn.Linear(4, 3, **kw))
    x = draw((3, 4))
    model(x)
    grad_x = model.backward(draw((3, 3)))
    np.testing.assert_array_equal(np.asarray(grad_x), np.zeros((3, 4)))
    assert model.second.grads["weight"].any()


# -- plain NumPy between layers is refused at backward ----------------------------------------
class Net(nn.Module):
    """fc2(between(...)): ``between`` is the code under test, given the model and x."""

    def __init__(self, between, rng):
        super().__init__()
        kw = dict(dtype=np.float64, rng=rng)
        self.fc1, self.fc_a, self.fc_b = nn.Linear(4, 4, **kw), nn.Linear(4, 2, **kw), \
            nn.Linear(4, 2, **kw)
        self.fc2 = nn.Linear(4, 3, **kw)
        self.between = between

    def forward(self, x):
        return self.fc2(self.between(self, x))


FROM_A_RECORDED_VALUE = "was computed with NumPy from a recorded value"
PLAIN_ARRAY = "is a plain NumPy array that no recorded call produced"
NUMPY_BETWEEN = {   # what a torch user might write, and the kind of array it makes
    "h + x": (lambda m, x: m.fc1(x) + x, FROM_A_RECORDED_VALUE),
    "np.add(h, x)": (lambda m, x: np.add(m.fc1(x), x), FROM_A_RECORDED_VALUE),
    "h * 2": (lambda m, x: m.fc1(x) * 2, FROM_A_RECORDED_VALUE),
    "np.maximum(h, 0)": (lambda m, x: np.maximum(m.fc1(x), 0), FROM_A_RECORDED_VALUE),
    "h[:, ::-1]": (lambda m, x: m.fc1(x)[:, ::-1], FROM_A_RECORDED_VALUE),
    "np.concatenate": (lambda m, x: np.concatenate([m.fc_a(x), m.fc_b(x)], axis=1),
                       PLAIN_ARRAY),              # NumPy returns a plain ndarray here
    "np.concatenate of np.asarray": (
        lambda m, x: np.concatenate([np.asarray(m.fc_a(x)), np.asarray(m.fc_b(x))], axis=1),
        PLAIN_ARRAY),
}


@pytest.mark.parametrize("name", NUMPY_BETWEEN)
def test_numpy_between_layers_is_refused_naming_the_layer(name, rng, draw):
    between, kind = NUMPY_BETWEEN[name]
    model = Net(between, rng)
    x = draw((3, 4))
    y = model(x)                                       # the forward runs...
    assert y.shape == (3, 3)
    before = {}
    for k, p in model.named_parameters():              # gradients from an earlier step
        p.grad[...] = draw(p.grad.shape)
        before[k] = p.grad.copy()
    with pytest.raises(ValueError, match=rf"^Net\.backward: input 0 of fc2 \(Linear\), an "
                                         rf"array of shape \(3, 4\), {kind}") as err:
        model.backward(draw((3, 3)))                   # ...backward refuses
    assert "npnet.nn.functional" in str(err.value)     # and says what to use instead
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, before[k], err_msg=f"{k} changed")


def test_the_functional_versions_of_the_same_lines_are_accepted(rng, draw):
    """The fix the message suggests works: F.add and F.cat where NumPy was refused."""
    for between in (lambda m, x: F.add(m.fc1(x), x),
                    lambda m, x: F.cat([m.fc_a(x), m.fc_b(x)], dim=1)):
        model = Net(between, rng)
        report = npnet.gradcheck(model, draw((3, 4)), rng=rng)
        assert all(r.passed for r in report)


def test_flatten_takes_torch_flattens_defaults_on_1d_and_0d():
    """torch.flatten(x) with start_dim=0 works on any rank; a 0-d input becomes (1,)."""
    assert F.flatten(np.ones(5)).shape == (5,)
    assert F.flatten(np.array(3.0)).shape == (1,)
    assert F.flatten(np.ones((2, 3, 4)), 1, 1).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"at least 3 dimensions to flatten dimensions "
                                         r"2\.\.-1, got shape \(5,\)"):
        F.flatten(np.ones(5), 2)


def test_add_of_a_recorded_0d_array(rng):
    """_unbroadcast of a 0-d operand returns an array, not a NumPy scalar."""
    class Net(npnet.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = npnet.nn.Linear(3, 1, dtype=np.float64, rng=rng)
            self.fc = npnet.nn.Linear(3, 2, dtype=np.float64, rng=rng)

        def forward(self, x):
            return self.fc(F.add(x, F.reshape(self.scale(x), ())))
    report = npnet.gradcheck(Net(), rng.standard_normal((1, 3)), rng=rng)
    assert all(r.passed for r in report), "\n".join(map(str, report))


def test_shape_errors_name_the_operation():
    with pytest.raises(ValueError, match=r"add: cannot broadcast shapes \(2, 3\) and \(4,\)"):
        F.add(np.ones((2, 3)), np.ones(4))
    with pytest.raises(ValueError, match=r"cat: cannot join shapes \[\(2, 3\), \(3, 3\)\] "
                                         r"along dim 1"):
        F.cat([np.ones((2, 3)), np.ones((3, 3))], dim=1)
