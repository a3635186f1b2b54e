"""Tests of npnet/module.py: torch.nn.Module's semantics for npnet's layers and models."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

import npnet
import npnet.nn as nn


class Net(nn.Module):
    """Children assigned in an order that is not alphabetical, one reused, one nested."""

    def __init__(self, rng=None, dtype=np.float32):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3, dtype=dtype, rng=rng), nn.ReLU())
        self.head = nn.Linear(16, 3, dtype=dtype, rng=rng)
        self.act = nn.Tanh()
        self.aux = nn.Linear(3, 3, bias=False, dtype=dtype, rng=rng)

    def forward(self, x):
        h = self.features(x).flatten(1)
        return self.aux(self.act(self.head(h)))


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 3)
        self.act = torch.nn.Tanh()
        self.aux = torch.nn.Linear(3, 3, bias=False)


def test_children_register_in_assignment_order_with_torchs_names(rng):
    net, tnet = Net(rng), TorchNet()
    assert [n for n, _ in net.named_children()] == ["features", "head", "act", "aux"]
    assert [n for n, _ in net.named_modules()] == [n for n, _ in tnet.named_modules()]
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    assert list(net.state_dict()) == list(tnet.state_dict())
    assert list(net.children()) == [net.features, net.head, net.act, net.aux]
    assert net.aux.bias is None and "bias" not in net.aux.params


def test_state_dict_moves_to_torch_and_back(rng, draw):
    net, tnet = Net(rng), TorchNet()
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()},
                         strict=True)
    x = draw((2, 1, 4, 6), np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(x)
        ty = tnet.aux(tnet.act(tnet.head(tnet.features(tx).flatten(1))))
    np.testing.assert_allclose(np.asarray(net(x)), ty.numpy(), rtol=1e-5, atol=1e-6)
    other = Net()
    other.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(net(x)))


def test_state_dict_is_a_copy(rng):
    net = Net(rng)
    state = net.state_dict()
    state["head.weight"][...] = 7
    assert not (net.head.weight == 7).any()


@pytest.mark.parametrize("change, match", [
    (lambda s: s.pop("head.bias"), r"missing keys \['head\.bias'\]"),
    (lambda s: s.update(extra=np.zeros(1)), r"unexpected keys \['extra'\]"),
    (lambda s: s.update({"head.weight": np.zeros((3, 9))}),
     r"'head\.weight' has shape \(3, 9\), the model expects \(3, 16\)"),
    (lambda s: s.update({"head.bias": np.array(["a", "b", "c"])}), "not numeric"),
    (lambda s: s.update({"head.bias": np.zeros(3, complex)}), "complex"),
], ids=["missing", "unexpected", "shape", "strings", "complex"])
def test_load_state_dict_refuses_and_leaves_the_model_unchanged(change, match, rng):
    net = Net(rng)
    before = net.state_dict()
    state = Net().state_dict()
    change(state)
    with pytest.raises(ValueError, match=match):
        net.load_state_dict(state)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_not_strict_reports_the_keys(rng):
    net = Net(rng)
    state = Net().state_dict()
    state.pop("aux.weight")
    state["stray"] = np.zeros(2)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["aux.weight"] and result.unexpected_keys == ["stray"]
    np.testing.assert_array_equal(net.head.weight, state["head.weight"])


def test_train_eval_zero_grad_and_apply_walk_the_whole_tree(rng, draw):
    net = Net(rng)
    assert net.eval() is net and not any(m.training for m in net.modules())
    assert all(m.training for m in net.train().modules())
    with pytest.raises(ValueError, match="mode must be True or False"):
        net.train("yes")
    x = draw((2, 1, 4, 6), np.float32)
    net.backward(np.ones_like(net(x)))
    assert any(p.grad.any() for p in net.parameters())
    net.zero_grad()
    assert not any(p.grad.any() for p in net.parameters())
    names = []
    net.apply(lambda m: names.append(type(m).__name__))
    assert names == ["Conv2d", "ReLU", "Sequential", "Linear", "Tanh", "Linear", "Net"]


def test_to_converts_every_parameter_and_returns_the_model(rng, draw):
    net = Net(rng)
    before = net.state_dict()
    assert net.to(np.float64) is net
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64
               for p in net.parameters())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k].astype(np.float64))
    assert np.asarray(net(draw((2, 1, 4, 6)))).dtype == np.float64
    assert net.head.dtype == np.float64
    assert net.to("cpu") is net and net.to(np.float32) is net
    assert net.head.weight.dtype == np.float32
    with pytest.raises(ValueError, match="float32 or float64"):
        net.to(np.int32)
    with pytest.raises(ValueError, match="np.float32, np.float64 or 'cpu'"):
        net.to("cuda")


def test_assigning_a_dtype_converts_and_a_shape_attribute_is_refused(rng):
    conv = nn.Conv2d(1, 2, 3, rng=rng)
    conv.dtype = np.float64
    assert conv.weight.dtype == conv.bias.dtype == conv.grads["weight"].dtype == np.float64
    for attr in ("kernel_size", "in_channels", "out_channels"):
        with pytest.raises(ValueError, match=rf"Conv2d\.{attr} is read from the weight's "
                                             r"shape \(2, 1, 3, 3\)"):
            setattr(conv, attr, 5)
    with pytest.raises(ValueError, match=r"Linear\.in_features is read from the weight"):
        nn.Linear(2, 3).in_features = 4


def test_a_replaced_parameter_array_takes_effect(rng, draw):
    lin = nn.Linear(3, 2, rng=rng, **dict(dtype=np.float64))
    new = np.arange(8.0).reshape(2, 4)
    lin.weight = new                                 # a different in_features too
    assert lin.weight is new and lin.in_features == 4
    assert lin.grads["weight"].shape == (2, 4) and not lin.grads["weight"].any()
    x = draw((2, 4))
    np.testing.assert_allclose(np.asarray(lin(x)), x @ new.T + lin.bias)
    with pytest.raises(ValueError, match="parameter 'weight' must be a float32 or float64"):
        lin.weight = np.arange(8).reshape(2, 4)
    with pytest.raises(ValueError, match="parameter 'weight' must be a float32 or float64"):
        lin.weight = [[1.0]]


def test_parameters_and_buffers_register_by_assignment(rng):
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.ones(3))
            self.register_buffer("running", np.zeros(3))
            self.register_buffer("scratch", np.zeros(2), persistent=False)
            self.plain = np.zeros(4)              # a plain array is just an attribute
    m = Custom()
    assert [n for n, _ in m.named_parameters()] == ["scale"]
    assert [n for n, _ in m.named_buffers()] == ["running", "scratch"]
    assert list(m.state_dict()) == ["scale", "running"]
    m.running = np.full(3, 2.0)                  # replacing a buffer keeps it a buffer
    assert m.state_dict()["running"].tolist() == [2.0, 2.0, 2.0]
    m.to(np.float32)
    assert m.running.dtype == np.float32 and m.scale.dtype == np.float32
    assert m.plain.dtype == np.float64
    del m.scale
    assert m.parameters() == [] and not hasattr(m, "scale")


def test_batch_norm_buffers_are_state_but_not_parameters(rng, tmp_path):
    """Running statistics: in state_dict under torch's keys, saved and restored by a
    checkpoint, converted by to() (the float ones), never trained by an optimizer."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2))
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias"]
    assert list(model.state_dict())[4:] == [n for n, _ in model.named_buffers()]
    opt = npnet.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        y = model(rng.standard_normal((4, 1, 6, 6)).astype(np.float32))
        model.backward(np.ones_like(y))
        opt.step()
    state = model.state_dict()
    assert int(state["1.num_batches_tracked"]) == 3
    assert not np.allclose(state["1.running_mean"], 0)      # the statistics moved
    npnet.save({"model": state}, tmp_path / "ckpt.npz")
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2))
    fresh.load_state_dict(npnet.load(tmp_path / "ckpt.npz")["model"])
    for (k, a), (_, b) in zip(model.named_buffers(), fresh.named_buffers()):
        assert a.dtype == b.dtype and np.array_equal(a, b), k
    x = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    model.eval(), fresh.eval()
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(fresh(x)))
    model.to(np.float64)
    bn = model[1]
    assert bn.running_var.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    with pytest.raises(ValueError, match=r"'1.running_var' has shape \(3,\), the model "
                                         r"expects \(2,\)"):
        fresh.load_state_dict({**fresh.state_dict(), "1.running_var": np.ones(3)})


def test_assigning_a_module_before_super_init_is_a_clear_error():
    class Early(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)
            super().__init__()
    with pytest.raises(AttributeError, match=r"cannot assign module 'fc' before "
                                             r"Early\.__init__\(\) called super\(\)\.__init__"):
        Early()


def test_a_module_shared_by_two_parents_is_listed_once(rng):
    shared = nn.Linear(2, 2, rng=rng)
    model = nn.Sequential(OrderedDict(a=shared, b=nn.Sequential(shared, nn.ReLU())))
    assert [n for n, _ in model.named_parameters()] == ["a.weight", "a.bias"]
    assert len(model.parameters()) == 2 and model.num_parameters() == 6
    # state_dict keeps every path, as torch's does
    assert list(model.state_dict()) == ["a.weight", "a.bias", "b.0.weight", "b.0.bias"]


def test_repr_is_torchs(rng):
    net, tnet = Net(rng), TorchNet()
    ours = repr(net).splitlines()
    theirs = repr(tnet).splitlines()
    assert ours[0] == "Net(" and theirs[0] == "TorchNet("
    assert ours[1:] == theirs[1:]


def test_sequential_indexing(rng):
    a, b, c = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)
    seq = nn.Sequential(a, b, c)
    assert seq[0] is a and seq[-1] is c and seq["1"] is b and len(seq) == 3
    assert list(seq[1:]) == [b, c] and isinstance(seq[1:], nn.Sequential)
    assert seq.layers["2"] is c
    seq.append(nn.Tanh())
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2", "3"]


def test_init_generator_makes_a_torch_style_class_reproducible():
    with nn.init_generator(np.random.default_rng(3)):
        a = npnet.models.LeNet5()
    with nn.init_generator(np.random.default_rng(3)):
        b = npnet.models.LeNet5()
    c = npnet.models.LeNet5()                   # no generator: unseeded
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert not np.array_equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(ValueError, match="np.random.Generator"):
        with nn.init_generator(3):
            pass
