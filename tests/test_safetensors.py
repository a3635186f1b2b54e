"""Weights in the ecosystem's format: npnet.save_weights / load_weights write and read
safetensors files (the `safetensors` package), which torch loads straight into the seed's
class, and the reverse."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import npnet
from test_seed_class import KEYS, seed_class  # tests/ is on sys.path under pytest


def batch(seed=0):
    return np.random.default_rng(seed).standard_normal((4, 1, 28, 28)).astype(np.float32)


# float32 logits of the same weights through two implementations whose sums run in other
# orders: ~1e-6 relative; 1e-4 absolute leaves margin, far below any wrong weight's effect
TOL = dict(rtol=1e-4, atol=1e-4)


def test_npnet_weights_load_into_the_seeds_torch_class(tmp_path):
    model = npnet.lenet5(rng=np.random.default_rng(0)).eval()
    path = tmp_path / "model.safetensors"
    npnet.save_weights(model.state_dict(), path, metadata={"model": "lenet5"})
    tensors = load_file(path)                       # torch's own loader
    assert sorted(tensors) == sorted(KEYS)
    torch_model = seed_class("torch", padding=2)()
    torch_model.load_state_dict(tensors, strict=True)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(batch())).numpy()
    np.testing.assert_allclose(model(batch()), expected, **TOL)


def test_a_torch_state_dict_loads_into_npnet(tmp_path):
    torch.manual_seed(0)
    torch_model = seed_class("torch", padding=2)()
    path = tmp_path / "torch.safetensors"
    save_file(torch_model.state_dict(), path)
    model = npnet.lenet5()
    model.load_state_dict(npnet.load_weights(path))
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(batch(1))).numpy()
    np.testing.assert_allclose(model.eval()(batch(1)), expected, **TOL)


def test_weights_round_trip_exactly_with_metadata(tmp_path):
    state = npnet.models.resnet(rng=np.random.default_rng(0)).state_dict()  # + buffers
    path = tmp_path / "w.safetensors"
    npnet.save_weights(state, path, metadata={"model": "resnet", "dataset": "mnist"})
    weights, metadata = npnet.load_weights(path, with_metadata=True)
    assert metadata == {"model": "resnet", "dataset": "mnist"}
    assert sorted(weights) == sorted(state)
    for key, value in state.items():
        assert weights[key].dtype == value.dtype and np.array_equal(weights[key], value), key
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]   # no temp left


@pytest.mark.parametrize("bad, error", [
    ({"w": [1.0, 2.0]}, TypeError), ({1: np.zeros(2)}, TypeError)], ids=["list", "int-key"])
def test_save_weights_takes_a_flat_dict_of_arrays(tmp_path, bad, error):
    with pytest.raises(error, match="flat dict of str -> NumPy array"):
        npnet.save_weights(bad, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["garbage", "huge-header", "fifo", "directory",
                                     "npz"])
def test_bad_safetensors_files_are_value_errors_naming_the_path(tmp_path, content):
    path = tmp_path / "w.safetensors"
    if content == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    elif content == "huge-header":                  # claims an 8 EB header
        path.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    elif content == "fifo":
        os.mkfifo(path)
    elif content == "directory":
        path.mkdir()
    else:
        npnet.save({"w": np.zeros(3)}, path)
    with pytest.raises(ValueError, match=str(path)):
        npnet.load_weights(path)
