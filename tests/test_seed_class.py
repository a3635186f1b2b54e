"""The seed document's LeNet5 class, written for torch, runs on npnet with only its import
changed: forward, backward, summary and training, against the same class on torch.

One source text serves both frameworks: SEED is exec'd once as written (torch) and once
with its import line replaced, so "only the import changed" is what is tested.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import npnet

SEED = '''
import torch.nn as nn


class LeNet5(nn.Module):
    def __init__(self):
        super(LeNet5, self).__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5, stride=1, padding=0)
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=16, kernel_size=5, stride=1, padding=0)
        self.conv3 = nn.Conv2d(in_channels=16, out_channels=120, kernel_size=5, stride=1, padding=0)
        self.fc1 = nn.Linear(in_features=120, out_features=84)
        self.fc2 = nn.Linear(in_features=84, out_features=10)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.pool(x)
        x = self.relu(self.conv2(x))
        x = self.pool(x)
        x = self.relu(self.conv3(x))
        x = x.view(x.size(0), -1)
        x = self.relu(self.fc1(x))
        x = self.fc2(x)
        return x
'''
TORCH_IMPORT, NPNET_IMPORT = "import torch.nn as nn", "import npnet.nn as nn"
KEYS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight",
        "conv3.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def seed_class(framework: str, padding: int = 0):
    """The seed's LeNet5 for 'torch' or 'npnet'; ``padding=2`` on conv1 for 28x28 MNIST
    (the one other edit the issue allows)."""
    source = SEED if framework == "torch" else SEED.replace(TORCH_IMPORT, NPNET_IMPORT)
    if padding:
        source = source.replace("kernel_size=5, stride=1, padding=0)\n        self.conv2",
                                f"kernel_size=5, stride=1, padding={padding})\n"
                                "        self.conv2", 1)
    namespace = {}
    exec(compile(source, f"<the seed's class for {framework}>", "exec"), namespace)
    return namespace["LeNet5"]


def test_only_the_import_line_differs():
    ours = SEED.replace(TORCH_IMPORT, NPNET_IMPORT).splitlines()
    theirs = SEED.splitlines()
    assert [(a, b) for a, b in zip(ours, theirs) if a != b] == [(NPNET_IMPORT, TORCH_IMPORT)]


def pair(padding, dtype, rng):
    """(npnet model, torch model) of the seed's class, torch's weights npnet's."""
    model = seed_class("npnet", padding)()
    if dtype == np.float64:
        model.to(np.float64)
    state = model.state_dict()
    tmodel = seed_class("torch", padding)()
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()},
                           strict=True)
    return model, tmodel.to(torch.float64 if dtype == np.float64 else torch.float32)


def test_registration_order_keys_and_repr():
    model, tmodel = seed_class("npnet")(), seed_class("torch")()
    assert list(model.state_dict()) == list(tmodel.state_dict()) == KEYS
    assert [n for n, _ in model.named_children()] == [n for n, _ in tmodel.named_children()]
    assert [n for n, _ in model.named_modules()] == [n for n, _ in tmodel.named_modules()]
    assert model.num_parameters() == 61_706
    # the same printout as torch's, but for the pool (npnet prints its pairs)
    ours, theirs = repr(model).splitlines(), repr(tmodel).splitlines()
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if "MaxPool2d" in b:
            assert a == "  (pool): MaxPool2d(kernel_size=(2, 2), stride=(2, 2))"
        else:
            assert a == b


# float32: every value is a chain of float32 sums; the longest (conv1's weight gradient)
# sums N*28*28 products, and blocked sums err like sqrt(K)*eps of the terms summed, so
# 1e-5 of each tensor's largest entry (measured ~1e-6).  float64: the same chains at
# eps = 2.2e-16, 1e-12.  A wrong route or a missing term errs by the size of an entry.
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("padding, size", [(0, 32), (2, 28)], ids=["32x32", "28x28"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layers"])
def test_logits_input_gradient_and_every_parameter_gradient_match_torch(
        padding, size, dtype, fused, rng, draw):
    model, tmodel = pair(padding, dtype, rng)
    npnet.fusion.set_fusion(model, fused)
    n = 5
    x = draw((n, 1, size, size), dtype)
    labels = rng.integers(0, 10, size=n)
    crit = npnet.CrossEntropyLoss()
    loss = crit(model(x), labels)
    grad_x = np.asarray(model.backward(crit.backward()))
    xt = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tmodel(xt), torch.from_numpy(labels))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=TOL[dtype] * 10)
    tol = TOL[dtype]

    def close(ours, theirs, what):
        assert ours.shape == theirs.shape and ours.dtype == dtype, what
        np.testing.assert_allclose(ours, theirs, rtol=tol,
                                   atol=tol * float(np.abs(theirs).max()), err_msg=what)
    close(grad_x, xt.grad.numpy(), "dL/dx")
    tgrads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}
    ours = dict(model.named_parameters())
    assert list(ours) == KEYS
    for k in KEYS:
        close(ours[k].grad, tgrads[k], k)
    with torch.no_grad():
        close(np.asarray(model(x)), tmodel(xt).numpy(), "logits")


def test_without_padding_28x28_fails_at_conv3_as_in_torch():
    model = seed_class("npnet")()
    with pytest.raises(ValueError, match=r"Conv2d\(16, 120.*\(1, 16, 4, 4\) is smaller than "
                                         r"the kernel"):
        model(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(RuntimeError):
        seed_class("torch")()(torch.zeros(1, 1, 28, 28))
    assert model(np.zeros((1, 1, 32, 32), np.float32)).shape == (1, 10)


def test_summary_prints_every_call_and_61706_parameters():
    lines = []
    result = npnet.summary(seed_class("npnet", padding=2)(), input_size=(1, 28, 28),
                           print_fn=lines.append)
    rows = [line.split()[0] for line in lines if re.search(r"\[-1", line)]
    assert rows == ["conv1", "relu", "pool", "conv2", "relu#2", "pool#2", "conv3", "relu#3",
                    "fc1", "relu#4", "fc2"]
    assert "Total params: 61,706" in lines and result["total_params"] == 61_706
    assert result["output_shapes"]["pool#2"] == (16, 5, 5)
    assert result["output_shapes"]["fc2"] == (10,)


def test_fusion_applies_to_the_seed_class_and_shows_in_its_tape(rng, draw):
    model = seed_class("npnet", padding=2)()
    model(draw((4, 1, 28, 28), np.float32))
    tape = npnet.autograd.tape_of(model)
    text = str(tape)
    assert text.count("ConvReLUMaxPool2d") == 2
    assert "conv1 -> relu -> pool" in text and "conv2 -> relu#2 -> pool#2" in text
    assert "(2 fused)" in text
    npnet.fusion.set_fusion(model, False)
    assert "fuse=False" in repr(model)
    model(draw((4, 1, 28, 28), np.float32))
    assert "ConvReLUMaxPool2d" not in str(npnet.autograd.tape_of(model))


@pytest.mark.parametrize("flatten", [
    "x.view(x.size(0), -1)", "x.view(-1, 120)", "x.reshape(x.shape[0], -1)",
    "x.flatten(1)", "nn.functional.flatten(x, 1)"])
def test_the_usual_ways_to_flatten_give_the_same_gradients(flatten, rng, draw):
    """torch code flattens in several ways; each is a recorded reshape in npnet."""
    source = SEED.replace(TORCH_IMPORT, NPNET_IMPORT).replace(
        "x.view(x.size(0), -1)", flatten)
    namespace = {}
    exec(source, namespace)
    model = namespace["LeNet5"]()
    reference = seed_class("npnet")()
    model.load_state_dict(reference.state_dict())
    x = draw((3, 1, 32, 32), np.float32)
    g = draw((3, 10), np.float32)
    for m in (model, reference):
        m(x)
        m.backward(g)
    for (k, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=k)


@pytest.mark.slow
def test_the_seed_class_trains_through_the_readme_loop(train_on_5000_images):
    """The README's loop on the seed's class (padding=2): 4 epochs on 5,000 MNIST images
    reach >= 90% on 1,000 test images, with the recipe lenet5() is held to
    (tests/conftest.py).  A model that learned nothing scores ~10%."""
    rng = np.random.default_rng(0)
    with npnet.nn.init_generator(rng):
        model = seed_class("npnet", padding=2)()
    accuracy, loss = train_on_5000_images(model, rng)
    assert np.isfinite(loss)
    assert accuracy >= 0.90, accuracy
