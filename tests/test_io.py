"""Tests for npnet.io: exact round trips, no pickle, broken files, atomic saves."""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npnet.io import FORMAT, MANIFEST, VERSION, load, save

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers

def assert_same(expected, actual, where="root"):
    """Exact equality: same types, key order, dtypes, shapes and bits (nan == nan)."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, np.ndarray | np.generic):
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape}"
        assert np.ascontiguousarray(actual).tobytes() == \
            np.ascontiguousarray(expected).tobytes(), f"{where}: values differ"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: length {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}.{i}")
    elif isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(actual), f"{where}: {actual} is not nan"
        else:                                 # compare bits: keeps -0.0 apart from 0.0
            assert actual.hex() == expected.hex(), f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def make_checkpoint(seed=0):
    """A training checkpoint as npnet's model, optimizer and scheduler would produce."""
    rng = np.random.default_rng(seed)
    state_dict = OrderedDict([             # deliberately not in sorted order
        ("conv1.weight", rng.standard_normal((6, 1, 5, 5)).astype(np.float32)),
        ("conv1.bias", rng.standard_normal(6).astype(np.float32)),
        ("fc.weight", rng.standard_normal((10, 84))),                  # float64
        ("fc.bias", np.zeros(10, np.float32)),
        ("bn.num_batches_tracked", np.array(7, dtype=np.int64)),         # 0-d
        ("empty", np.empty((0, 3), np.float32)),
    ])
    generator = np.random.default_rng(seed + 1)
    generator.integers(0, 10, size=3, dtype=np.uint32)    # leaves has_uint32/uinteger set
    return {
        "model": state_dict,
        "optimizer": {
            "state": {"0": {"momentum_buffer": rng.standard_normal((6, 1, 5, 5))
                            .astype(np.float32)},
                      "1": {"momentum_buffer": np.zeros(6, np.float32)}},
            "param_groups": [{"lr": 0.1, "momentum": 0.9, "nesterov": False,
                              "weight_decay": 0.0, "params": [0, 1]}],
        },
        "scheduler": {"last_epoch": 3, "gamma": 0.5, "milestones": (2, 4),
                      "base_lrs": [0.1]},
        "epoch": 3,
        "rng": generator.bit_generator.state,
        "metrics": {"train_loss": [2.302585092994046, 0.1 + 0.2, float("nan")],
                    "best": float("inf"), "worst": float("-inf"), "zero": -0.0,
                    "tiny": 5e-324, "huge": 1.7976931348623157e308,
                    "big_int": 2**200 + 1, "neg_big_int": -(2**130) + 7,
                    "note": "ünïcode ✓ \"quoted\"", "nothing": None, "flags": [True, False],
                    "nested": [[1, (2, [3.5])], {}, [], ()],
                    "np_float32": np.float32(0.1), "np_int64": np.int64(-5),
                    "np_bool": np.bool_(True)},
    }


def other_files(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != name)


def rezip(src: Path, dst: Path, *, manifest=None, drop=(), add=None):
    """Copy checkpoint ``src`` to ``dst``, editing the manifest and members on the way."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            data = zin.read(name)
            if name == MANIFEST and manifest is not None:
                data = manifest(json.loads(data))
                data = data if isinstance(data, bytes) else json.dumps(data).encode()
            zout.writestr(name, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.npz"
    save(make_checkpoint(), path)
    return path


# --------------------------------------------------------------------------- round trips

def test_checkpoint_round_trips_exactly(tmp_path):
    ckpt = make_checkpoint()
    path = tmp_path / "ckpt.npz"
    save(ckpt, path)
    loaded = load(path)
    assert_same(ckpt, loaded)
    assert type(loaded["model"]) is OrderedDict        # a state_dict stays an OrderedDict
    assert list(loaded["model"]) == ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias",
                                     "bn.num_batches_tracked", "empty"]
    assert loaded["metrics"]["big_int"] == 2**200 + 1
    assert math.copysign(1.0, loaded["metrics"]["zero"]) == -1.0


def test_rng_state_restores_the_same_stream(tmp_path):
    generator = np.random.default_rng(2024)
    generator.random(5)
    state = generator.bit_generator.state
    assert state["state"]["state"] > 2**64        # really a 128-bit int, beyond int64
    expected = (generator.random(10), generator.integers(0, 2**63, 10))

    save({"rng": state}, tmp_path / "rng.npz")
    restored = np.random.default_rng(0)
    restored.bit_generator.state = load(tmp_path / "rng.npz")["rng"]
    np.testing.assert_array_equal(restored.random(10), expected[0])
    np.testing.assert_array_equal(restored.integers(0, 2**63, 10), expected[1])


def test_key_order_and_dict_types_are_kept(tmp_path):
    keys = ["z", "a", "conv10.weight", "conv2.weight", "m", ""]
    tree = {"plain": {k: i for i, k in enumerate(keys)},
            "ordered": OrderedDict((k, i) for i, k in enumerate(reversed(keys)))}
    save(tree, tmp_path / "order.npz")
    loaded = load(tmp_path / "order.npz")
    assert list(loaded) == ["plain", "ordered"]
    assert type(loaded["plain"]) is dict and list(loaded["plain"]) == keys
    assert type(loaded["ordered"]) is OrderedDict
    assert list(loaded["ordered"]) == keys[::-1]


DTYPES = ["float16", "float32", "float64", ">f4", "int8", "uint8", "int32", "int64",
          "uint64", "bool", "complex64", "complex128", "U5", "S3", "datetime64[s]",
          [("a", "<i4"), ("b", ">f8")]]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(np.dtype(d)))
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (1,), (2, 3, 4)],
                         ids=lambda s: "x".join(map(str, s)) or "0d")
def test_arrays_keep_dtype_shape_and_bits(tmp_path, dtype, shape):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize,
                       dtype=np.uint8)
    if np.dtype(dtype).kind in "USM":              # keep these valid: no random bytes
        raw = np.frombuffer(np.arange(raw.size, dtype=np.uint8) % 26 + 65, np.uint8)
    array = raw.view(dtype).reshape(shape)
    save({"a": array}, tmp_path / "a.npz")
    loaded = load(tmp_path / "a.npz")["a"]
    assert loaded.dtype == np.dtype(dtype) and loaded.shape == shape
    assert loaded.tobytes() == array.tobytes()


def test_non_contiguous_and_fortran_arrays(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    tree = {"t": base.transpose(2, 0, 1), "s": base[:, ::2, 1:], "f": np.asfortranarray(base)}
    save(tree, tmp_path / "v.npz")
    loaded = load(tmp_path / "v.npz")
    for key, array in tree.items():
        assert loaded[key].dtype == array.dtype and loaded[key].shape == array.shape
        np.testing.assert_array_equal(loaded[key], array)


def test_numpy_scalars_come_back_as_numpy_scalars(tmp_path):
    tree = [np.float32(1.5), np.float64(0.1), np.int8(-3), np.uint64(2**64 - 1),
            np.bool_(False), np.str_("hi")]
    save(tree, tmp_path / "s.npz")
    loaded = load(tmp_path / "s.npz")
    assert [type(x) for x in loaded] == [type(x) for x in tree]
    assert_same(tree, loaded)


def test_top_level_need_not_be_a_dict(tmp_path):
    for obj in [np.arange(3), 7, None, float("nan"), ("a", [1])]:
        save(obj, tmp_path / "top.npz")
        assert_same(obj, load(tmp_path / "top.npz"))


def test_file_layout_matches_the_documented_format(good_file):
    """Manifest first, one .npy member per array, readable by np.load without pickle."""
    with zipfile.ZipFile(good_file) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read(MANIFEST))
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert names[0] == MANIFEST
    assert names[1:] == [f"arrays/{i}.npy" for i in range(len(names) - 1)]
    assert manifest["format"] == FORMAT and manifest["version"] == VERSION == 1
    model = dict(manifest["root"]["items"])["model"]
    assert model["type"] == "odict"
    assert model["items"][0] == ["conv1.weight", {"type": "array", "member": "arrays/0.npy",
                                                  "dtype": "<f4", "shape": [6, 1, 5, 5]}]
    with np.load(good_file, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["arrays/0"], make_checkpoint()["model"]["conv1.weight"])


def test_save_uses_the_path_as_given_and_respects_umask(tmp_path):
    path = tmp_path / "model.ckpt"
    old_umask = os.umask(0o022)
    try:
        save({"x": 1}, str(path))
    finally:
        os.umask(old_umask)
    assert other_files(tmp_path, "model.ckpt") == []        # no "model.ckpt.npz", no temp
    assert path.stat().st_mode & 0o777 == 0o644              # not mkstemp's 0o600
    assert load(path) == {"x": 1}


def test_save_overwrites_an_existing_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    save({"epoch": 1, "w": np.ones(3)}, path)
    save({"epoch": 2, "w": np.zeros(4)}, path)
    loaded = load(path)
    assert loaded["epoch"] == 2 and loaded["w"].shape == (4,)
    assert other_files(tmp_path, "ckpt.npz") == []


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.bool_]),
               shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4).map(
            lambda d: OrderedDict(reversed(list(d.items())))),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_any_supported_tree_round_trips(tmp_path, tree):
    save(tree, tmp_path / "h.npz")
    assert_same(tree, load(tmp_path / "h.npz"))


# --------------------------------------------------------------------------- refused on save

class Custom:
    pass


@pytest.mark.parametrize("tree, error, key_path", [
    ({"optimizer": {"state": {"0": {"momentum_buffer": {1, 2}}}}}, TypeError,
     "optimizer.state.0.momentum_buffer"),
    ({"metrics": {"loss": [0.5, 0.4, Custom()]}}, TypeError, "metrics.loss.2"),
    ({"state": {0: np.zeros(2)}}, TypeError, "state"),
    ({"model": OrderedDict(w=np.array([None, 1], dtype=object))}, ValueError, "model.w"),
    ({"x": np.zeros(2, dtype=[("a", "O")])}, ValueError, "x"),
    ({"x": np.ma.masked_array([1, 2], mask=[0, 1])}, TypeError, "x"),
    ({"bytes": b"raw"}, TypeError, "bytes"),
    ({"c": 1 + 2j}, TypeError, "c"),
], ids=["set", "custom", "int-key", "object-array", "object-field", "masked", "bytes",
        "complex"])
def test_unsupported_values_name_their_key_path_and_write_nothing(tmp_path, tree, error,
                                                                  key_path):
    with pytest.raises(error, match=f"cannot save {key_path}:"):
        save(tree, tmp_path / "new.npz")
    assert list(tmp_path.iterdir()) == []                     # nothing, not even a temp

    save({"old": 1}, tmp_path / "old.npz")
    before = (tmp_path / "old.npz").read_bytes()
    with pytest.raises(error):
        save(tree, tmp_path / "old.npz")
    assert (tmp_path / "old.npz").read_bytes() == before
    assert other_files(tmp_path, "old.npz") == []


def test_cycles_are_refused(tmp_path):
    tree = {"a": {"b": []}}
    tree["a"]["b"].append(tree["a"])
    with pytest.raises(ValueError, match="cycle.*a.b.0"):
        save(tree, tmp_path / "c.npz")
    assert list(tmp_path.iterdir()) == []


def test_the_same_array_twice_is_not_a_cycle(tmp_path):
    w = np.arange(3.0)
    save({"a": w, "b": [w, w]}, tmp_path / "twice.npz")
    loaded = load(tmp_path / "twice.npz")
    np.testing.assert_array_equal(loaded["b"][1], w)
    assert loaded["a"] is not loaded["b"][0]


# --------------------------------------------------------------------------- no pickle

class Payload:
    """Unpickling this runs ``touch marker`` -- code execution, if anything unpickles."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_the_payload_is_live(tmp_path):
    """Control: unpickling really runs the payload, so the marker tests below mean something."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def _npz_with_object_array(path, marker):
    np.savez(path, w=np.array([Payload(marker), 1.0], dtype=object))


def _raw_pickle(path, marker):
    path.write_bytes(pickle.dumps({"model": Payload(marker)}))


def _torch_like_zip(path, marker):
    with zipfile.ZipFile(path, "w") as zf:               # the layout of a torch .pt
        zf.writestr("archive/data.pkl", pickle.dumps({"model": Payload(marker)}))
        zf.writestr("archive/version", "3\n")


def _npy_with_object_array(path, marker):
    with open(path, "wb") as f:
        np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)


def _npnet_manifest_over_pickled_member(path, marker, declared_dtype):
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    manifest = {"format": FORMAT, "version": VERSION,
                "root": {"type": "array", "member": "arrays/0.npy",
                         "dtype": declared_dtype, "shape": [1]}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        zf.writestr("arrays/0.npy", buffer.getvalue())


@pytest.mark.parametrize("make", [
    _npz_with_object_array, _raw_pickle, _torch_like_zip, _npy_with_object_array,
    lambda p, m: _npnet_manifest_over_pickled_member(p, m, "|O"),
    lambda p, m: _npnet_manifest_over_pickled_member(p, m, "<f8"),     # a lying manifest
], ids=["np.savez-object", "raw-pickle", "torch-pt", "npy-object", "manifest-says-object",
        "manifest-lies"])
def test_pickled_files_are_refused_and_nothing_runs(tmp_path, make):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    make(path, marker)
    with pytest.raises(ValueError, match=str(path)):
        load(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- broken files

def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load(path)


def test_truncated_files_are_refused(good_file, tmp_path):
    data = good_file.read_bytes()
    cuts = sorted({0, 1, 4, 30, 100, len(data) // 2, len(data) - 22, len(data) - 1,
                   *range(0, len(data), 97)})
    path = tmp_path / "cut.npz"
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(path)):
            load(path)


def test_every_single_bit_flip_is_caught_or_harmless(tmp_path):
    """Each member is CRC-checked: a corrupted file either fails or loads identical data."""
    expected = {"model": OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3),
                                     b=np.array(-1.5)),
                "lr": [0.1, float("nan")], "epoch": (3, None, True), "big": 2**100}
    save(expected, tmp_path / "small.npz")
    data = (tmp_path / "small.npz").read_bytes()
    path = tmp_path / "flip.npz"
    rng = np.random.default_rng(0)
    refused = 0
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << int(rng.integers(8))
        path.write_bytes(flipped)
        try:
            loaded = load(path)
        except ValueError as err:
            assert str(path) in str(err)
            refused += 1
        else:                 # e.g. a flipped timestamp: harmless, data must be intact
            assert_same(expected, loaded)
    assert refused > len(data) // 2


def _foreign_files():
    def edit(**kwargs):
        return lambda good, path: rezip(good, path, **kwargs)

    def write(data):
        return lambda good, path: path.write_bytes(data)

    def npz(good, path):
        with open(path, "wb") as f:
            np.savez(f, w=np.ones(3))

    def npy(good, path):
        with open(path, "wb") as f:
            np.save(f, np.ones(3))

    def set_root(root):
        return edit(manifest=lambda m: {**m, "root": root})

    return {
        "empty": write(b""),
        "text": write(b"epoch=3\nlr=0.1\n"),
        "png": write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)),
        "npz-without-manifest": npz,
        "raw-npy": npy,
        "missing-member": edit(drop=("arrays/0.npy",)),
        "version-2": edit(manifest=lambda m: {**m, "version": 2}),
        "no-version": edit(manifest=lambda m: {"format": m["format"], "root": m["root"]}),
        "other-format": edit(manifest=lambda m: {**m, "format": "something-else"}),
        "manifest-not-json": edit(manifest=lambda m: b"{not json"),
        "manifest-not-utf8": edit(manifest=lambda m: b"\xff\xfe{}"),
        "manifest-a-list": edit(manifest=lambda m: [m]),
        "manifest-with-NaN": edit(manifest=lambda m: json.dumps(
            {**m, "root": float("nan")}).encode()),
        "no-root": edit(manifest=lambda m: {"format": FORMAT, "version": VERSION}),
        "unknown-node": set_root({"type": "set", "items": [1]}),
        "bad-dict-item": set_root({"type": "dict", "items": [["a"]]}),
        "duplicate-key": set_root({"type": "dict", "items": [["a", 1], ["a", 2]]}),
        "bad-float": set_root({"type": "float", "value": "1e400"}),
        "wrong-shape": set_root({"type": "array", "member": "arrays/0.npy",
                                 "dtype": "<f4", "shape": [150]}),
        "wrong-dtype": set_root({"type": "array", "member": "arrays/0.npy",
                                 "dtype": "<f8", "shape": [6, 1, 5, 5]}),
        "member-not-npy": set_root({"type": "array", "member": MANIFEST,
                                    "dtype": "<f4", "shape": [1]}),
        "trailing-bytes": edit(drop=("arrays/1.npy",), add={
            "arrays/1.npy": (lambda b: (np.save(b, np.zeros(6, np.float32)),
                                        b.getvalue() + b"extra")[1])(io.BytesIO())}),
    }


FOREIGN = _foreign_files()


@pytest.mark.parametrize("name", list(FOREIGN))
def test_foreign_and_inconsistent_files_are_refused(good_file, tmp_path, name):
    path = tmp_path / f"{name}.npz"
    FOREIGN[name](good_file, path)
    with pytest.raises(ValueError, match=str(path)):
        load(path)


# --------------------------------------------------------------------------- atomic saves

@pytest.mark.parametrize("exception", [OSError(28, "No space left on device"),
                                       KeyboardInterrupt()], ids=["disk-full", "ctrl-c"])
def test_a_save_failing_halfway_keeps_the_old_file(tmp_path, monkeypatch, exception):
    path = tmp_path / "ckpt.npz"
    first = make_checkpoint(seed=1)
    save(first, path)
    before = path.read_bytes()

    real_write_array = np.lib.format.write_array
    calls = []

    def failing_write_array(fp, array, *args, **kwargs):
        calls.append(array.shape)
        if len(calls) == 3:                 # some members are already in the temp file
            fp.write(b"\x93NUMPY half an array")
            raise exception
        return real_write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.raises(type(exception)):
        save(make_checkpoint(seed=2), path)
    assert len(calls) == 3
    assert other_files(tmp_path, "ckpt.npz") == []           # the temp file is gone
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert_same(first, load(path))


CHILD = """
import sys
import numpy as np
from npnet.io import save
# ~200 MB of float64 (5 x 40 MB), different from the first checkpoint in every value.
big = {"model": {f"w{i}": np.full((1_000_000, 5), i + 1.0) for i in range(5)}, "epoch": 99}
while True:
    save(big, sys.argv[1])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_a_process_killed_mid_save_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    first = make_checkpoint(seed=3)
    save(first, path)
    before = path.read_bytes()

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:                          # wait for a temp file with data in it
            temps = [p for p in tmp_path.iterdir() if p.name != path.name]
            if any(p.stat().st_size > 1_000_000 for p in temps if p.exists()):
                break
            assert child.poll() is None, child.stderr.read().decode()
            assert path.stat().st_size == len(before), "the target is written in place"
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)    # mid-write: 1 MB of ~200 MB is down
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    assert path.read_bytes() == before       # no partial file under the final name
    assert_same(first, load(path))
    leftovers = other_files(tmp_path, path.name)
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt.npz.")
    assert leftovers[0].endswith(".tmp")
    with pytest.raises(ValueError):          # the leftover really is a partial write
        load(tmp_path / leftovers[0])
