"""Tests of npnet/models.py: LeNet-5 against the seed's PyTorch class, weights copied in."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import npnet
from npnet import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

KEYS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight",
        "conv3.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


class LeNet5(nn.Module):  # the seed's, with padding=2 on conv1
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2); self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5); self.fc1 = nn.Linear(120, 84); self.fc2 = nn.Linear(84, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2); x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x)); x = x.view(x.size(0), -1); x = F.relu(self.fc1(x)); return self.fc2(x)


class SeedLeNet5(LeNet5):
    """The seed document's class exactly: conv1 WITHOUT padding."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)


class ClassicLeNet5(nn.Module):
    """LeCun's form as npnet.models.lenet5_classic: tanh and average pooling."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.conv3(x)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(x)))


def to_tensors(state):
    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state.items())


def cross_entropy_grad(logits, labels):
    """dL/dlogits of the mean cross entropy, by hand: (softmax - onehot) / N."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(logits.shape[1], dtype=logits.dtype)[labels]
    return ((p - onehot) / len(labels)).astype(logits.dtype)


def assert_close_to_torch(ours, theirs, what):
    """float32 through the whole network.  Each value's error is a chain of float32 sums
    (longest: conv1's weight gradient, N*28*28 = 6272 terms); blocked BLAS sums err like
    sqrt(K) * eps ~ 80 * 6e-8 = 5e-6 of the magnitudes summed, so we allow 1e-5 of the
    tensor's largest entry (measured: ~1e-6).  A misrouted gradient or a missing term
    errs by the size of an entry, 1e5 times more."""
    scale = float(np.abs(theirs).max())
    assert ours.shape == theirs.shape and ours.dtype == np.float32, what
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def _parity(model, torch_model, x, labels):
    torch_model.load_state_dict(to_tensors(model.state_dict()), strict=True)
    logits = model(x)
    xt = torch.tensor(x, requires_grad=True)
    logits_t = torch_model(xt)
    assert_close_to_torch(logits, logits_t.detach().numpy(), "logits")
    # the same upstream gradient on both sides: npnet's cross-entropy gradient by hand
    g = cross_entropy_grad(logits, labels)
    grad_in = model.backward(g)
    logits_t.backward(torch.from_numpy(g))
    assert_close_to_torch(grad_in, xt.grad.numpy(), "input")
    theirs = dict(torch_model.named_parameters())
    for name, p in model.named_parameters():
        assert_close_to_torch(p.grad, theirs[name].grad.numpy(), name)
    # and the torch loss gradient agrees with the hand-made one
    logits_t2 = torch.tensor(logits, requires_grad=True)
    F.cross_entropy(logits_t2, torch.from_numpy(labels)).backward()
    np.testing.assert_allclose(g, logits_t2.grad.numpy(), rtol=1e-5, atol=1e-7)


# -- structure -------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [npnet.lenet5, npnet.lenet5_classic], ids=["relu_max",
                                                                             "classic"])
def test_parameter_count_and_keys(build, rng):
    model = build(rng)
    state = model.state_dict()
    assert list(state) == KEYS
    assert model.num_parameters() == 61_706
    assert sum(v.size for v in state.values()) == 61_706
    assert [state[k].shape for k in KEYS] == [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,),
                                              (120, 16, 5, 5), (120,), (84, 120), (84,),
                                              (10, 84), (10,)]
    assert model["conv1"].padding == (2, 2) and model["conv2"].padding == (0, 0)


def test_lenet5_state_dict_loads_strict_into_the_seed_class(rng):
    torch_model = LeNet5()
    result = torch_model.load_state_dict(to_tensors(npnet.lenet5(rng).state_dict()),
                                         strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert sum(p.numel() for p in torch_model.parameters()) == 61_706


def test_rng_decides_the_weights():
    a = npnet.lenet5(np.random.default_rng(3)).state_dict()
    b = npnet.lenet5(np.random.default_rng(3)).state_dict()
    c = npnet.lenet5(np.random.default_rng(4)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)
    assert not any(np.array_equal(a[k], c[k]) for k in KEYS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dtype(dtype, rng, draw):
    model = npnet.lenet5(rng, dtype=dtype)
    assert all(p.data.dtype == dtype and p.grad.dtype == dtype for p in model.parameters())
    y = model(draw((2, 1, 28, 28), dtype))
    assert y.shape == (2, 10) and y.dtype == dtype
    assert model.backward(np.ones_like(y)).dtype == dtype


# -- parity with the seed's PyTorch class ----------------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layers"])
@pytest.mark.parametrize("n", [1, 8], ids=["n1", "n8"])
def test_lenet5_matches_torch(n, fused, rng, draw):
    # LeNet-5 runs conv -> relu -> pool as one fused layer unless switched off
    # (npnet/fusion.py): check both paths against torch
    model = npnet.fusion.set_fusion(npnet.lenet5(rng), fused)
    _parity(model, LeNet5(), draw((n, 1, 28, 28), np.float32), rng.integers(0, 10, size=n))


@pytest.mark.parametrize("n", [1, 8], ids=["n1", "n8"])
def test_lenet5_classic_matches_torch(n, rng, draw):
    _parity(npnet.lenet5_classic(rng), ClassicLeNet5(), draw((n, 1, 28, 28), np.float32),
            rng.integers(0, 10, size=n))


def test_the_seed_class_without_padding_fails_on_28x28(rng):
    """Why conv1 pads: 28 -conv5-> 24 -pool-> 12 -conv5-> 8 -pool-> 4, and conv3 (5x5)
    cannot slide over a 4x4 map.  LeCun fed 32x32 images; padding 2 makes 28 into 32."""
    seed = SeedLeNet5()
    seed.load_state_dict(to_tensors(npnet.lenet5(rng).state_dict()), strict=True)
    with pytest.raises(RuntimeError):
        seed(torch.zeros(1, 1, 28, 28))
    assert seed(torch.zeros(1, 1, 32, 32)).shape == (1, 10)         # the size LeCun fed
    # npnet built the same way refuses at the same layer, with a ValueError naming it
    unpadded = Sequential(OrderedDict([
        ("conv1", Conv2d(1, 6, 5, rng=rng)), ("act1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(6, 16, 5, rng=rng)), ("act2", ReLU()), ("pool2", MaxPool2d(2)),
        ("conv3", Conv2d(16, 120, 5, rng=rng)), ("act3", ReLU()), ("flatten", Flatten()),
        ("fc1", Linear(120, 84, rng=rng)), ("act4", ReLU()), ("fc2", Linear(84, 10, rng=rng))]))
    with pytest.raises(ValueError, match=r"Conv2d\(16, 120.*\(1, 16, 4, 4\) is smaller than "
                                         r"the kernel"):
        unpadded(np.zeros((1, 1, 28, 28), np.float32))
    assert npnet.lenet5(rng)(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)


def test_lenet5_gradcheck_random_directions(rng, draw):
    """The whole float64 network against central differences, along random directions."""
    model = npnet.lenet5(rng, dtype=np.float64)
    report = npnet.gradcheck(model, draw((2, 1, 28, 28)), mode="random", n_directions=4,
                             rng=rng)
    assert [r.name for r in report] == ["input"] + KEYS
    assert all(r.passed for r in report), "\n".join(map(str, report))
