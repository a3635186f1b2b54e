"""npnet.load against hostile files: what is not a regular file is refused unread, and no
file makes it use much more memory than the arrays it validly declares, nor much more
time than reading them.  Every refusal is a ValueError naming the path and the fault."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import signal
import struct
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npnet.io
from npnet.io import FORMAT, MANIFEST, VERSION, load, save

from test_io import assert_same  # tests/ is on sys.path (pytest rootdir-relative import)


@contextlib.contextmanager
def bounded(seconds=5, peak_bytes=8 << 20):
    """The block must end within ``seconds`` (SIGALRM interrupts a blocking open or read,
    so a regression fails instead of hanging the suite) and trace at most ``peak_bytes``."""
    def timeout(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert peak < peak_bytes, f"peak {peak} bytes traced"


def refused(path, match):
    """load(path) raises a ValueError naming the path and matching ``match``."""
    with pytest.raises(ValueError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and re.search(match, message), message
    assert "\n" not in message


def zip_of(path: Path, members: dict, compression=zipfile.ZIP_STORED):
    """A zip of ``members``; ``compression`` applies to all but the manifest."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data,
                        compress_type=zipfile.ZIP_STORED if name == MANIFEST else compression)


def manifest(root) -> bytes:
    return json.dumps({"format": FORMAT, "version": VERSION, "root": root}).encode()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def array_node(member="arrays/0.npy", dtype="<f4", shape=(3,)):
    return {"type": "array", "member": member, "dtype": dtype, "shape": list(shape)}


# -- 1. not a regular file: refused without reading ------------------------------------------
def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "ckpt.npz"
    os.mkfifo(fifo)                          # no writer: open() alone would block forever
    with bounded(seconds=5):
        refused(fifo, "a FIFO, not a regular checkpoint file")


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a device"), ("/dev/null", "a device"),
                                        (None, "a directory")], ids=["zero", "null", "dir"])
def test_devices_and_directories_are_refused(tmp_path, path, kind):
    with bounded(seconds=5):                 # /dev/zero read to the end would never end
        refused(path or tmp_path, kind)


def test_a_fifo_swapped_in_after_the_check_is_refused_too(tmp_path, monkeypatch):
    """The name is checked with stat, then what was opened is checked with fstat: a FIFO
    that replaces a regular file between the two (simulated: stat lies) neither blocks
    the open (O_NONBLOCK) nor gets read."""
    regular, fifo = tmp_path / "regular", tmp_path / "fifo.npz"
    regular.write_bytes(b"x")
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(
        regular if os.fspath(p) == str(fifo) else p, *a, **k))
    with bounded(seconds=5):
        refused(fifo, "a FIFO")


# -- 1. the bounds ----------------------------------------------------------------------------
def test_a_compressed_member_is_refused_before_it_is_inflated(tmp_path):
    """save never compresses; a deflated member of 100 MB of zeros is 100 kB on disk."""
    path = tmp_path / "bomb.npz"
    zip_of(path, {MANIFEST: manifest(array_node(dtype="|u1", shape=(100_000_000,))),
                  "arrays/0.npy": npy(np.zeros(100_000_000, np.uint8))},
           compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1_000_000
    with bounded(seconds=5, peak_bytes=2 << 20):
        refused(path, "member 'arrays/0.npy' is compressed")


def test_a_member_referenced_twice_is_refused(tmp_path):
    """One stored array named by a thousand nodes would load as a thousand arrays."""
    path = tmp_path / "twice.npz"
    zip_of(path, {MANIFEST: manifest({"type": "list", "items": [array_node()] * 1000}),
                  "arrays/0.npy": npy(np.zeros(3, np.float32))})
    with bounded(seconds=5):
        refused(path, "member 'arrays/0.npy' is referenced twice")


def test_a_header_promising_more_than_the_member_stores_is_refused_unallocated(tmp_path):
    """Manifest and .npy header agree on 8 GB; the member stores 100 bytes of it.  The
    sizes are compared before anything is allocated."""
    shape = (2**30,)
    header = npy(np.zeros(1, "<f8"))[:128].replace(b"(1,)", f"({shape[0]},)".encode())
    header = header[:127].ljust(127) + b"\n"           # keep the 128-byte header
    path = tmp_path / "lying.npz"
    zip_of(path, {MANIFEST: manifest(array_node(dtype="<f8", shape=shape)),
                  "arrays/0.npy": header + bytes(100)})
    with bounded(seconds=5, peak_bytes=1 << 20):
        refused(path, r"stores 228 bytes, its header \(<f8 \(1073741824,\)\) needs")


def test_a_member_claiming_more_bytes_than_the_file_has_is_refused(tmp_path):
    """The zip directory's sizes are the attacker's too: a member 'of 4 GB' in a file of
    a few hundred bytes is refused before its header is even read."""
    path = tmp_path / "claims.npz"
    zip_of(path, {MANIFEST: manifest(array_node(dtype="|u1", shape=(10,))),
                  "arrays/0.npy": npy(np.zeros(10, np.uint8))})
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")                 # the last central-directory entry
    struct.pack_into("<II", data, entry + 20, 2**32 - 2, 2**32 - 2)   # its two sizes
    path.write_bytes(bytes(data))
    with bounded(seconds=5, peak_bytes=1 << 20):
        refused(path, "claims 4294967294 bytes, more than the file has left")


def test_a_stored_member_with_two_sizes_is_refused_unread(tmp_path):
    """Found by the random test below: a compressed size of 4 GB beside the true size
    made zipfile ask the file for 4 GB in one read (and allocate it)."""
    path = tmp_path / "two-sizes.npz"
    zip_of(path, {MANIFEST: manifest(None)})
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.rindex(b"PK\x01\x02") + 20, 2**32 - 2)
    path.write_bytes(bytes(data))
    with bounded(seconds=5, peak_bytes=1 << 20):
        refused(path, "member 'npnet.json' is stored with two sizes, 4294967294 and")


def test_too_many_members_are_refused(tmp_path):
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST, manifest(None))
        for i in range(npnet.io.MAX_MEMBERS):
            zf.writestr(f"m/{i}", b"")
    with bounded(seconds=10, peak_bytes=64 << 20):
        refused(path, f"{npnet.io.MAX_MEMBERS + 1} members, more than the "
                      f"{npnet.io.MAX_MEMBERS}")


def test_a_zip_directory_over_the_bound_is_not_read(tmp_path, monkeypatch):
    """zipfile reads the central directory whole, as large as the end record says; the
    bound is on what it may read (here lowered, to keep the file small)."""
    monkeypatch.setattr(npnet.io, "MAX_DIRECTORY_BYTES", 1000)
    path = tmp_path / "wide.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST, manifest(None))
        for i in range(2000):                          # ~ 60 bytes of directory each
            zf.writestr(f"member-{i}", b"")
    refused(path, "the zip directory is larger than")


def test_a_manifest_over_the_bound_is_refused_unread(tmp_path):
    path = tmp_path / "big-manifest.npz"
    zip_of(path, {MANIFEST: manifest("x" * npnet.io.MAX_MANIFEST_BYTES)})
    with bounded(seconds=5, peak_bytes=1 << 20):
        refused(path, f"more than the {npnet.io.MAX_MANIFEST_BYTES} npnet reads")


def test_the_densest_manifest_under_the_bound_stays_within_the_stated_memory(tmp_path):
    """docs/training.md states 75 MB for directory and manifest together; '{}' is the
    JSON that costs Python the most per byte (a dict of 64 bytes for 3 bytes)."""
    path = tmp_path / "dense.npz"
    items = ",".join(["{}"] * ((npnet.io.MAX_MANIFEST_BYTES - 100) // 3))
    text = manifest(None).replace(b"null", b'{"type": "list", "items": [' + items.encode()
                                  + b"]}")
    assert len(text) <= npnet.io.MAX_MANIFEST_BYTES
    zip_of(path, {MANIFEST: text})
    with bounded(seconds=10, peak_bytes=75 << 20):
        refused(path, "unknown manifest node at 0")


@pytest.mark.parametrize("depth", [npnet.io.MAX_DEPTH + 1, 50_000], ids=["65", "50000"])
def test_a_manifest_nested_too_deep_is_refused(tmp_path, depth):
    root = None
    for _ in range(depth):
        root = {"type": "list", "items": [root]}
    path = tmp_path / "deep.npz"
    text = manifest(None).replace(b"null", b'{"type": "list", "items": [' * depth + b"null"
                                  + b"]}" * depth) if depth > 1000 else manifest(root)
    zip_of(path, {MANIFEST: text})
    with bounded(seconds=5, peak_bytes=32 << 20):
        refused(path, f"nested deeper than {npnet.io.MAX_DEPTH} levels")


def test_two_members_of_one_name_are_refused(tmp_path):
    path = tmp_path / "dup.npz"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr(MANIFEST, manifest(array_node()))
        zf.writestr("arrays/0.npy", npy(np.zeros(3, np.float32)))
        zf.writestr("arrays/0.npy", npy(np.ones(3, np.float32)))
    refused(path, "two members share a name")


def test_a_valid_checkpoint_loads_within_its_own_size(tmp_path):
    """The bound the docs state: the arrays (at most the file's size) and a small constant,
    not a copy of everything."""
    path = tmp_path / "big.npz"
    tree = {"w": np.arange(4_000_000, dtype=np.float32), "b": np.ones((1000, 1000))}
    save(tree, path)
    size = path.stat().st_size
    with bounded(seconds=10, peak_bytes=size + (3 << 20)):   # + 1 MiB chunk + zipfile's
        loaded = load(path)
    assert_same(tree, loaded)


def test_a_full_disk_names_the_file(tmp_path):
    def write(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    target = tmp_path / "last.npz"
    with pytest.raises(OSError, match=re.escape(str(target))) as info:
        npnet.io.atomic_write(str(target), write)
    assert info.value.errno == errno.ENOSPC and "No space left" in str(info.value)
    assert list(tmp_path.iterdir()) == []              # the temporary file is gone


# -- 8. random corruptions --------------------------------------------------------------------
GOOD = {"model": {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                  "b": np.array([1.5, -2.0])},
        "epoch": 3, "history": [0.5, float("nan")], "name": "run"}


def _good_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        save(GOOD, Path(tmp) / "good.npz")
        return (Path(tmp) / "good.npz").read_bytes()


GOOD_BYTES = _good_bytes()
NUMBERS = st.one_of(st.integers(-3, 70), st.integers(0, 2**64), st.sampled_from(
    [2**31, 2**32 - 1, 2**40, -1]))
LEAVES = st.one_of(
    st.none(), st.booleans(), NUMBERS, st.text(max_size=5),
    st.builds(array_node, member=st.sampled_from(["arrays/0.npy", "arrays/1.npy", MANIFEST,
                                                  "nope", ""]),
              dtype=st.sampled_from(["<f4", "<f8", "|u1", "|O", "<V8", "?", 7]),
              shape=st.lists(NUMBERS, max_size=4)),
    st.builds(lambda v: {"type": "float", "value": v},
              st.sampled_from(["nan", "inf", "1e400", None])))


def _containers(kids):
    """Manifest nodes holding ``kids``: dicts (pairs, or not), lists, tuples, unknown."""
    items = st.lists(st.one_of(kids, st.tuples(st.text(max_size=3), kids).map(list)),
                     max_size=4)
    kinds = st.sampled_from(["dict", "odict", "list", "tuple", "set"])
    return st.builds(lambda kind, xs: {"type": kind, "items": xs}, kinds, items)


NODES = st.recursive(LEAVES, _containers, max_leaves=12)


@st.composite
def corrupted_checkpoints(draw):
    """A valid checkpoint put through 1-3 corruptions of its bytes, of its zip structure
    (the sizes and compression method of a member, as the directory records them) or of
    its manifest (random nodes, shapes, dtypes and member names)."""
    data = bytearray(GOOD_BYTES)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "append", "sizes", "method",
                                   "manifest"]))
        entries = [m.start() for m in re.finditer(b"PK\x01\x02", data)]
        if op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "sizes" and entries:
            at = draw(st.sampled_from(entries))
            size = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 400)))
            fields = draw(st.sampled_from([(20,), (24,), (20, 24)]))
            for offset in fields:
                if at + offset + 4 <= len(data):
                    struct.pack_into("<I", data, at + offset, size)
        elif op == "method" and entries:
            at = draw(st.sampled_from(entries))
            if at + 12 <= len(data):
                struct.pack_into("<H", data, at + 10, draw(st.sampled_from([8, 12, 14, 99])))
        elif op == "manifest":
            root = draw(NODES)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "m.npz"
                with zipfile.ZipFile(io.BytesIO(GOOD_BYTES)) as zin, \
                        zipfile.ZipFile(path, "w") as zout:
                    for name in zin.namelist():
                        zout.writestr(name, manifest(root) if name == MANIFEST
                                      else zin.read(name))
                data = bytearray(path.read_bytes())
    return bytes(data)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(data=corrupted_checkpoints())
def test_random_corruption_loads_intact_or_raises_value_error(data):
    """Every case: the original data (a harmless corruption, e.g. of a timestamp), a
    valid other tree (a manifest that is itself valid), or a ValueError naming the file;
    within the deadline and a few MB, whatever sizes the corruption claims."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.npz"
        path.write_bytes(data)
        start = time.perf_counter()
        with bounded(seconds=5, peak_bytes=8 << 20):
            try:
                loaded = load(path)
            except ValueError as err:
                assert str(path) in str(err) and "\n" not in str(err)
                loaded = None
        assert time.perf_counter() - start < 1.0
    if loaded is not None and data[:len(GOOD_BYTES)] == GOOD_BYTES[:len(data)]:
        assert_same(GOOD, loaded)
