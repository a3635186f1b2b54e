"""npnet.onnx.export: every model of npnet's layers, checked by onnx, run by onnxruntime.

The reference is npnet itself: onnxruntime's logits must equal npnet's eval-mode logits on
random and real MNIST inputs at batch 1 and 64.  Tolerance: both compute float32 sums of
at most 2,400 products per value (conv3: 16*5*5*... K = 400, the ResNet's 576) in
different orders (onnxruntime's MLAS kernels block differently), and the error of a sum
grows like sqrt(K) * eps * the terms' size; through a dozen layers that stays near 1e-6 of
the largest logit.  We allow 1e-5 of it, the issue's bound; a wrong weight, layout,
padding or wiring errs by 1e-1 or more of it.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import npnet
import npnet.nn as nn
from npnet.models import LeNet5


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def assert_same_logits(ours, theirs):
    scale = float(np.abs(ours).max())
    assert theirs.shape == ours.shape and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * scale)


def trained_a_little(model, rng, steps=3):
    """A few SGD steps, so that weights and batch norm statistics are not the initial ones
    (the running variance starts at exactly 1: a wrong wiring could hide behind it)."""
    crit = npnet.CrossEntropyLoss()
    opt = npnet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
        opt.zero_grad()
        crit(model(x), rng.integers(0, 10, 16))
        model.backward(crit.backward())
        opt.step()
    return model


MODELS = {
    "lenet5": lambda rng: npnet.lenet5(rng=rng),
    "lenet5_classic": lambda rng: npnet.lenet5_classic(rng=rng),
    "seed_class": lambda rng: LeNet5(),
    "resnet": lambda rng: npnet.models.resnet(rng=rng),
}


@pytest.fixture(scope="module")
def mnist():
    images, _ = npnet.data.load_mnist(split="test")
    return npnet.data.normalize(images[:64], npnet.data.MNIST_MEAN, npnet.data.MNIST_STD)


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_gives_npnets_logits(name, rng, tmp_path, mnist):
    with nn.init_generator(rng):
        model = trained_a_little(MODELS[name](rng), rng)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    path = tmp_path / "model.onnx"
    proto = npnet.onnx.export(model, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version == npnet.onnx.OPSET
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    # the export leaves the model as it was: weights, statistics, mode, no record
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert model.training and npnet.autograd.tape_of(model) is None
    model.eval()
    for x in (rng.standard_normal((1, 1, 28, 28)).astype(np.float32),
              rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
              mnist[:1], mnist):
        assert_same_logits(np.asarray(model(x)), run_onnx(path, np.ascontiguousarray(x)))


def test_a_layer_called_four_times_is_four_nodes(rng, tmp_path):
    """The seed's class calls one ReLU four times and one max-pool twice: the graph has a
    node per call (two of the calls run fused: Conv, Relu, MaxPool each)."""
    with nn.init_generator(rng):
        proto = npnet.onnx.export(LeNet5(), tmp_path / "seed.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Relu") == 4 and ops.count("MaxPool") == 2 and ops.count("Conv") == 3
    assert ops.count("Gemm") == 2 and ops.count("Reshape") == 1
    names = {i.name for i in proto.graph.initializer}
    assert {"conv1.weight", "fc2.bias"} <= names and len(names) == 10 + 1  # + the shape


def test_the_residual_sums_are_adds_of_the_right_calls(rng, tmp_path):
    proto = npnet.onnx.export(npnet.models.resnet(rng=rng), tmp_path / "resnet.onnx")
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 3
    # the first block's shortcut is the identity: its sum adds the block's input itself
    made = {o: n for n in proto.graph.node for o in n.output}
    first = [made[i].name for i in adds[0].input]
    assert any("layer1.0.bn2" in s for s in first) and any("shortcut" in s for s in first)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 9


def test_dropout_exports_as_the_identity(rng, tmp_path):
    model = nn.Sequential(nn.Linear(6, 5, rng=rng), nn.ReLU(), nn.Dropout(0.5, rng=rng),
                          nn.Linear(5, 3, rng=rng))
    state = model[2].rng.bit_generator.state
    npnet.onnx.export(model, tmp_path / "d.onnx", input_shape=(1, 6))
    assert model[2].rng.bit_generator.state == state      # the trace drew no mask for good
    x = rng.standard_normal((4, 6)).astype(np.float32)
    assert_same_logits(np.asarray(model.eval()(x)), run_onnx(tmp_path / "d.onnx", x))


def test_a_layer_without_an_onnx_form_is_named(rng, tmp_path):
    class Square(npnet.Layer):
        def forward(self, x):
            self._cache = x
            return x * x

        def backward(self, grad_out):
            x, self._cache = self._cache, None
            return 2 * x * grad_out

    model = nn.Sequential(nn.Linear(3, 2, rng=rng), Square())
    path = tmp_path / "no.onnx"
    with pytest.raises(ValueError, match=r"cannot export 1 \(Square\)"):
        npnet.onnx.export(model, path, input_shape=(1, 3))
    assert not path.exists() and not list(tmp_path.iterdir())   # nothing half-written


@pytest.mark.parametrize("model, shape, match", [
    (lambda rng: npnet.lenet5(rng=rng, dtype=np.float64), (1, 1, 28, 28), "float32 model"),
    (lambda rng: nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), (1, 3),
     "no running statistics"),
    (lambda rng: npnet.lenet5(rng=rng), (0, 1, 28, 28), "input_shape must be a tuple"),
    (lambda rng: nn.Sequential(nn.AdaptiveAvgPool2d(3)), (1, 1, 5, 5), "windows overlap"),
], ids=["float64", "bn_no_stats", "bad_shape", "adaptive_overlap"])
def test_what_cannot_be_exported_is_a_clear_error(model, shape, match, rng, tmp_path):
    with pytest.raises(ValueError, match=match):
        npnet.onnx.export(model(rng), tmp_path / "x.onnx", input_shape=shape)
    assert not (tmp_path / "x.onnx").exists()


def test_the_main_job_writes_model_onnx(load_example, tmp_path):
    train = load_example("train_lenet")
    out = tmp_path / "run"
    assert train.main(["--limit", "500", "--eval-limit", "200", "--epochs", "1", "--out",
                       str(out), "--no-plots", "--no-progress", "--export-onnx"]) == 0
    model = npnet.lenet5()
    model.load_state_dict(npnet.load(out / "best.npz")["model"])
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    assert_same_logits(np.asarray(model.eval()(x)), run_onnx(out / "model.onnx", x))
