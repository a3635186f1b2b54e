"""Tests of npnet/summary.py, through its injectable print_fn."""
import re

import numpy as np
import pytest

import npnet
from npnet import Linear, ReLU, Sequential


def run_summary(model, **kwargs):
    lines = []
    result = npnet.summary(model, print_fn=lines.append, **kwargs)
    return lines, result


def test_lenet5_rows_totals_and_result(rng):
    lines, result = run_summary(npnet.lenet5(rng))
    shape_rows = [re.search(r"\[-1(, \d+)*\]", line).group(0)
                  for line in lines if re.search(r"\[-1(, \d+)*\]", line)]
    assert len(shape_rows) == 12                          # one row per layer
    # the shapes that change, in forward order (activations repeat the previous shape)
    distinct = [s for i, s in enumerate(shape_rows) if i == 0 or s != shape_rows[i - 1]]
    assert distinct == ["[-1, 6, 28, 28]", "[-1, 6, 14, 14]", "[-1, 16, 10, 10]",
                        "[-1, 16, 5, 5]", "[-1, 120, 1, 1]", "[-1, 120]", "[-1, 84]",
                        "[-1, 10]"]
    rows = {line.split()[0]: line for line in lines if re.search(r"\[-1", line)}
    assert list(rows)[:3] == ["conv1", "act1", "pool1"]
    assert "(Conv2d)" in rows["conv1"] and rows["conv1"].rstrip().endswith("156")
    assert rows["conv3"].rstrip().endswith("48,120")
    assert rows["fc1"].rstrip().endswith("10,164") and rows["act4"].rstrip().endswith(" 0")
    assert "Total params: 61,706" in lines
    assert "Trainable params: 61,706" in lines
    assert any("Layer (type)" in line and "Output Shape" in line and "Param #" in line
               for line in lines)
    assert result["total_params"] == result["trainable_params"] == 61_706
    assert result["output_shapes"]["conv1"] == (6, 28, 28)
    assert result["output_shapes"]["pool2"] == (16, 5, 5)
    assert result["output_shapes"]["fc2"] == (10,)
    # 61,706 float32 parameters = 246,824 bytes
    assert result["params_mb"] == pytest.approx(61_706 * 4 / 2**20)
    assert result["total_mb"] == pytest.approx(result["input_mb"] + result["params_mb"]
                                               + result["forward_backward_mb"])
    assert "Params size (MB): 0.24" in lines


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_training_mode_is_restored(training, rng):
    model = npnet.lenet5(rng).train(training)
    run_summary(model)
    assert model.training == training
    assert all(layer.training == training for layer in model)


def test_mode_restored_after_a_failure(rng):
    model = npnet.lenet5(rng)
    with pytest.raises(ValueError, match="Conv2d"):
        run_summary(model, input_size=(3, 28, 28))        # wrong channel count
    assert model.training and all(layer.training for layer in model)


def test_summary_does_not_touch_weights_or_grads(rng):
    model = npnet.lenet5(rng)
    before = model.state_dict()
    run_summary(model)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.all(p.grad == 0) for p in model.parameters())


def test_other_models_and_batch_size(rng):
    model = Sequential(Linear(5, 3, rng=rng), ReLU(), Linear(3, 2, bias=False, rng=rng))
    lines, result = run_summary(model, input_size=(5,), batch_size=16)
    assert result["total_params"] == 5 * 3 + 3 + 3 * 2
    assert any("[16, 3]" in line for line in lines)
    assert "Total params: 24" in lines
    assert result["output_shapes"] == {"0": (3,), "1": (3,), "2": (2,)}


@pytest.mark.parametrize("bad", [28, (1, 0, 28), (1, -28, 28), (1, 28.0, 28), "1x28x28"],
                         ids=["int", "zero", "negative", "float", "str"])
def test_bad_input_size(bad, rng):
    with pytest.raises(ValueError, match=r"summary: input_size must be a tuple of positive "
                                         r"ints"):
        run_summary(npnet.lenet5(rng), input_size=bad)


def test_each_layer_gets_its_own_mode_back():
    model = Sequential(Linear(3, 4, rng=np.random.default_rng(0)), ReLU())
    model[0].eval()                                    # a frozen layer in a training model
    npnet.summary(model, input_size=(3,), print_fn=lambda *_: None)
    assert model.training and model[1].training and not model[0].training


def test_a_float_input_size_is_a_value_error():
    with pytest.raises(ValueError, match="input_size must be a tuple"):
        npnet.summary(Sequential(ReLU()), input_size=3.5, print_fn=lambda *_: None)
