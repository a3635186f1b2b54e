"""Save and load checkpoints -- nested dicts of arrays and plain values -- without pickle.

    npnet.save({"model": model.state_dict(), "epoch": 3}, "ckpt.npz")
    ckpt = npnet.load("ckpt.npz")

What can be saved
-----------------
A tree whose inner nodes are ``dict`` / ``OrderedDict`` (``str`` keys only), ``list`` and
``tuple``, and whose leaves are NumPy arrays, NumPy scalars, or ``int`` (any size: the
128-bit state of a PCG64 generator survives), ``float`` (exactly, including nan, inf, -0.0),
``bool``, ``str`` or ``None``.  ``load`` gives back the same types: a ``dict`` comes back a
``dict``, an ``OrderedDict`` an ``OrderedDict`` (both in the saved key order), a tuple a
tuple, an ``np.float32(1.5)`` an ``np.float32``, an array an array of the same dtype and
shape.  Anything else -- a set, a custom object, an ``int`` key, an object-dtype array --
raises ``TypeError`` (wrong type) or ``ValueError`` (object dtype, a cycle) naming the key
path, e.g. ``optimizer.state.0.momentum_buffer``, and nothing is written.  An array that
appears twice in the tree is stored twice and loads as two independent arrays.

The file format (version 1)
---------------------------
An uncompressed zip archive (so ``np.load(path, allow_pickle=False)`` can open it too):

    npnet.json       the manifest, UTF-8 JSON, written first
    arrays/0.npy     one .npy member per array leaf, numbered in tree order
    arrays/1.npy
    ...

The manifest is ``{"format": "npnet-checkpoint", "version": 1, "root": NODE}``.  A NODE is
a JSON ``null`` / ``true`` / ``false`` / integer / finite float / string for the plain value
itself, or an object tagged by ``"type"``:

    {"type": "dict",   "items": [[key, NODE], ...]}     pairs, so the order is explicit
    {"type": "odict",  "items": [[key, NODE], ...]}     an OrderedDict
    {"type": "list",   "items": [NODE, ...]}
    {"type": "tuple",  "items": [NODE, ...]}
    {"type": "float",  "value": "nan" | "inf" | "-inf"} strict JSON has no nan / inf
    {"type": "array",  "member": "arrays/0.npy", "dtype": "<f4", "shape": [6, 1, 5, 5]}
    {"type": "scalar", "member": "arrays/1.npy", "dtype": "<f8", "shape": []}

Finite floats are written with ``repr`` (shortest round-trip), so they load bit for bit;
a nan loads as the Python ``float('nan')`` (its sign and payload bits are not kept).

Safety and atomicity
--------------------
- Nothing is ever unpickled: arrays are read with ``allow_pickle=False`` and an
  object-dtype member is refused, so a pickle, a torch ``.pt`` or an ``np.savez`` of object
  arrays raises ``ValueError`` before any of its code could run.
- Any file that is not a complete, consistent version-1 checkpoint (truncated, corrupted --
  every member is CRC-checked --, a text file, a PNG, an npz without the manifest, a
  manifest naming a missing member or of another version) raises ``ValueError`` naming
  the path.  A missing file raises ``FileNotFoundError``.
- ``save`` writes to a temporary ``.<name>.<random>.tmp`` in the target's directory,
  flushes and fsyncs it, ``os.replace``s it over the target and fsyncs the directory.  The
  target therefore holds either the old checkpoint or the new one, never a mix.  An error
  during ``save`` removes the temporary file; a process killed mid-save leaves the old
  checkpoint intact and may leave its temporary file behind (never under the final name).
"""
from __future__ import annotations

import json
import math
import os
import stat
import uuid
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load", "save_weights", "load_weights", "open_regular", "read_npy_header",
           "atomic_write", "FORMAT", "VERSION"]

FORMAT = "npnet-checkpoint"
VERSION = 1
MANIFEST = "npnet.json"


# --------------------------------------------------------------------------- saving

def save(obj, path) -> None:
    """Write ``obj`` (see the module docstring for what it may hold) to ``path`` atomically.

    Args:
        obj: the tree to save, e.g. ``{"model": model.state_dict(), "epoch": 3}``.
        path: the file to write (``str`` or ``os.PathLike``), used as given: no ``.npz``
            suffix is added.  An existing file is replaced only once the new one is
            complete on disk.

    Raises:
        TypeError: a value or key of an unsupported type; the message names its key path.
        ValueError: an object-dtype array or a cycle; the message names its key path.
    """
    path = os.fspath(path)
    arrays = []                                  # filled in tree order by _encode
    manifest = {"format": FORMAT, "version": VERSION, "root": _encode(obj, arrays, ())}
    # Everything is validated above, before any file is created.
    text = json.dumps(manifest, allow_nan=False, ensure_ascii=False)
    atomic_write(path, lambda f: _write_zip(f, text, arrays))


def _encode(value, arrays: list, key_path: tuple, _parents: frozenset = frozenset()):
    """Return the JSON node for ``value``; append its arrays to ``arrays``."""
    if isinstance(value, (dict, list, tuple)):
        if id(value) in _parents:
            raise ValueError(f"cannot save a cycle: {_where(key_path)} contains itself")
        _parents = _parents | {id(value)}

    if isinstance(value, np.ndarray):
        return _encode_array(value, arrays, key_path, "array")
    if isinstance(value, np.generic):            # before float/str: np.float64 is a float
        return _encode_array(np.asarray(value), arrays, key_path, "scalar")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"type": "float", "value": repr(value)}           # 'nan', 'inf', '-inf'
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"cannot save {_where(key_path)}: dict keys must be str, "
                                f"got {type(key).__name__} key {key!r}")
            items.append([key, _encode(item, arrays, key_path + (key,), _parents)])
        return {"type": "odict" if isinstance(value, OrderedDict) else "dict",
                "items": items}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, arrays, key_path + (str(i),), _parents)
                 for i, item in enumerate(value)]
        return {"type": "tuple" if isinstance(value, tuple) else "list", "items": items}
    raise TypeError(f"cannot save {_where(key_path)}: unsupported type "
                    f"{type(value).__module__}.{type(value).__qualname__}")


def _encode_array(array: np.ndarray, arrays: list, key_path: tuple, kind: str) -> dict:
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(f"cannot save {_where(key_path)}: masked arrays are not supported")
    if array.dtype.hasobject:
        raise ValueError(f"cannot save {_where(key_path)}: object-dtype arrays would need "
                         "pickle, which npnet never uses")
    member = f"arrays/{len(arrays)}.npy"
    arrays.append((member, np.asarray(array)))
    return {"type": kind, "member": member, "dtype": array.dtype.str,
            "shape": list(array.shape)}


def _write_zip(f, manifest_text: str, arrays: list) -> None:
    # ZIP_STORED: float weights barely compress, and storing keeps save/load fast.
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(MANIFEST, manifest_text.encode("utf-8"))
        for member, array in arrays:
            # force_zip64: the member size is unknown when its header is written.
            with zf.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, array, allow_pickle=False)


def atomic_write(path: str, write) -> None:
    """Call ``write(file)`` on a temporary binary file next to ``path``, then move it into
    place: ``path`` ends up holding the complete new content or its old one, never a mix.
    Used for checkpoints, metrics.json and the plots."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never reuse someone else's file.  Mode 0o666 lets the umask decide,
    # as open() does (mkstemp would force 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())             # the data is on disk before the rename
        os.replace(tmp, path)                # atomic on POSIX and Windows
    except BaseException as err:             # also KeyboardInterrupt: never leave the temp
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.filename is None:
            raise naming(err, path) from err
        raise
    _fsync_directory(directory)              # the rename itself is on disk


def naming(err: OSError, path) -> OSError:
    """The OSError of a failed write, naming the file written: a write that fails
    ("No space left on device") names no file of its own."""
    return OSError(err.errno, f"{err.strerror or err} while writing", os.fspath(path))


def lock_exclusive(path, create: bool = True):
    """Take the exclusive lock of the lock file ``path`` without waiting, or return None
    if a live process holds it.

    The lock is ``fcntl.flock``'s: the kernel releases it when its holder's descriptor is
    closed, however the holder ends (a kill -9 included), so a lock of a dead process
    never blocks.  The file's content does not matter; it is never deleted while in use
    (deleting a lock file others have open would let two holders lock two files).

    Returns:
        The open descriptor holding the lock (close it to release), or ``None``.

    Raises:
        FileNotFoundError: ``create`` is false and there is no such file.
        OSError: the file cannot be created or opened (e.g. a read-only directory).
    """
    import fcntl                             # POSIX only, like the rest of the locking
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = os.open(os.fspath(path), flags, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:                          # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:                          # some filesystems refuse; the data is safe
        pass
    finally:
        os.close(fd)


def save_weights(state_dict, path, metadata: dict | None = None) -> None:
    """Write a model's weights as a safetensors file, the format of torch's ecosystem.

    ``safetensors.torch.load_file(path)`` gives back torch tensors under the same keys
    (``conv1.weight`` ...), ready for ``load_state_dict`` of the same architecture in
    torch; :func:`load_weights` reads such a file (or one torch wrote) back into arrays.
    Only the weights travel: a training run's full state (optimizer, schedule, generator,
    history) stays in :func:`save`'s checkpoints, which hold more than a flat dict of
    arrays.

    Args:
        state_dict: a flat dict of ``str`` -> NumPy array, e.g. ``model.state_dict()``.
        path: the file to write, atomically (as :func:`save` does).
        metadata: optional ``str`` -> ``str`` pairs stored in the header (npnet's main job
            writes the model's name and its dataset there).
    """
    from safetensors.numpy import save as to_bytes
    path = os.fspath(path)
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray | np.generic):
            raise TypeError(f"save_weights: {key!r} is {type(value).__name__}; expected a "
                            "flat dict of str -> NumPy array (a state_dict)")
        tensors[key] = np.asarray(value, order="C")     # safetensors stores C order (and 0-d)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in metadata.items()):
        raise TypeError("save_weights: metadata must map str to str")
    data = to_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def load_weights(path, with_metadata: bool = False):
    """Read a safetensors file into a dict of NumPy arrays (see :func:`save_weights`).

    The file is checked to be a regular file first (:func:`open_regular`); safetensors
    itself refuses a header that is too large or whose offsets leave the file, so reading
    is bounded by the file's size.

    Returns:
        ``{key: array}`` in the file's order, or ``(that, metadata)`` with
        ``with_metadata=True`` (``metadata`` a ``str`` -> ``str`` dict, maybe empty).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, or not a valid safetensors file (the message names
            the path and the fault).
    """
    from safetensors import safe_open
    path = os.fspath(path)
    with open_regular(path, "safetensors file"):
        pass                                 # the check; safetensors opens it itself
    try:
        with safe_open(path, framework="np") as f:
            weights = {key: f.get_tensor(key) for key in f.keys()}
            metadata = dict(f.metadata() or {})
    except MemoryError:
        raise ValueError(f"cannot load {path!r}: not enough memory for its arrays") from None
    except Exception as err:                 # SafetensorError, or numpy's on a bad dtype
        raise ValueError(f"cannot load {path!r}: not a valid safetensors file "
                         f"({type(err).__name__}: {err})") from err
    return (weights, metadata) if with_metadata else weights


def _where(key_path: tuple) -> str:
    return ".".join(key_path) if key_path else "the top-level object"


# --------------------------------------------------------------------------- loading

# The bounds of a file npnet agrees to read.  A checkpoint of the ResNet holds about 200
# arrays and a manifest of a few kB; these leave room for models fifty times larger and
# for the history of 10,000 epochs.  Parsed, the densest zip directory takes about 12
# bytes of Python objects per byte (540 per entry of 47) and the densest JSON about 25
# ('{}' is a dict): at most ~75 MB in all, whatever the file.
MAX_MEMBERS = 10_000                 # zip entries
MAX_DIRECTORY_BYTES = 2 * 2**20      # the zip's central directory, read whole by zipfile
MAX_MANIFEST_BYTES = 2 * 2**20       # npnet.json
MAX_DEPTH = 64                       # nesting of dicts / lists in the manifest


class _Invalid(Exception):
    """The file is not a valid npnet checkpoint; becomes a ValueError naming the path."""


# What zipfile, json and np.lib.format raise on broken input: BadZipFile (bad CRC, bad
# headers), EOFError (a short member), NotImplementedError (unknown compression),
# RuntimeError (an encrypted member, a manifest nested too deep), ValueError (bad JSON,
# bad .npy header, object dtype), OSError (a seek to a corrupt offset; the message keeps
# the original error, so a real disk error still shows as one).
_BROKEN = (_Invalid, zipfile.BadZipFile, EOFError, zlib.error, ValueError, KeyError,
           NotImplementedError, RuntimeError, OSError)


def open_regular(path, what: str = "file"):
    """Open ``path`` for binary reading if, and only if, it is a regular file.

    A FIFO would make a reader wait for a writer forever, a device such as /dev/zero
    never ends, a directory is no file: all are refused with a ``ValueError`` naming the
    path before a byte is read.  ``os.stat`` comes first; the file is then opened with
    ``O_NONBLOCK`` (so that a FIFO swapped in after the check cannot block the open) and
    the opened descriptor is checked again with ``fstat`` (what was opened is what is
    read, whatever happened to the name meanwhile).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: ``path`` is not a regular file.
    """
    path = os.fspath(path)
    _check_regular(path, os.stat(path).st_mode, what)        # FileNotFoundError names it
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _check_regular(path, os.fstat(fd).st_mode, what)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")      # O_NONBLOCK changes nothing for a regular file


def _check_regular(path: str, mode: int, what: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise ValueError(f"cannot read {path!r}: it is {kind}, not a regular {what}")


def load(path):
    """Read a checkpoint written by :func:`save`; never unpickles anything.

    Reading is bounded: the arrays of a file are at most as large as the file itself
    (each is read once, into an array of the size its header and the manifest both
    declare, checked against the member's stored size before any of it is read), and
    the rest is bounded by constants (``MAX_MEMBERS``, ``MAX_DIRECTORY_BYTES``,
    ``MAX_MANIFEST_BYTES``, ``MAX_DEPTH``).  So no file makes ``load`` take much more
    memory than the arrays it validly declares, nor much more time than reading them.

    Returns:
        The saved tree with its types: dicts as ``dict``, OrderedDicts as ``OrderedDict``
        (key order as saved), lists, tuples, arrays (same dtype and shape), NumPy scalars
        and plain values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a regular file (a directory, a FIFO, a device), or not
            a complete, valid npnet checkpoint (truncated, corrupt, foreign, pickled,
            compressed, over a bound, another format version); the message names ``path``
            and the fault.
    """
    path = os.fspath(path)
    with open_regular(path, "checkpoint file") as f:
        try:
            return _read_zip(f, os.fstat(f.fileno()).st_size)
        except MemoryError:                  # not expected within the bounds; never escapes
            raise ValueError(f"cannot load {path!r}: not enough memory for the arrays "
                             "it declares") from None
        except RecursionError:
            raise ValueError(f"cannot load {path!r}: not a valid npnet checkpoint (the "
                             f"manifest is nested deeper than {MAX_DEPTH} levels)") from None
        except _BROKEN as err:
            raise ValueError(f"cannot load {path!r}: not a valid npnet checkpoint "
                             f"({type(err).__name__}: {err})") from err


class _CappedReader:
    """The file as zipfile sees it while it parses the archive's directory: no more than
    ``cap`` bytes in all may be read.  zipfile reads the whole central directory at once,
    as large as the end record claims; this is the bound on what it may ask for.  Once
    the directory is parsed, ``cap`` is lifted (``None``) for the members, whose sizes
    ``_read_array`` bounds itself."""

    def __init__(self, f, cap: int):
        self.f, self.cap, self.used = f, cap, 0

    def read(self, n=-1):
        if self.cap is not None:
            if n is None or n < 0:           # "to the end": that many bytes
                n = max(os.fstat(self.f.fileno()).st_size - self.f.tell(), 0)
            if n > self.cap - self.used:
                raise _Invalid(f"the zip directory is larger than {self.cap} bytes "
                               f"(more than {MAX_MEMBERS} members?)")
        data = self.f.read(n)
        self.used += len(data)
        return data

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def seekable(self):
        return True


def _read_zip(f, file_size: int):
    if not zipfile.is_zipfile(f):
        raise _Invalid("not a zip archive, or a truncated one; npnet checkpoints are "
                       ".npz files written by npnet.save (pickles such as torch .pt "
                       "files are never loaded)")
    f.seek(0)
    # The end record is searched for in the last 64 kB + 22 bytes: room for that too.
    reader = _CappedReader(f, MAX_DIRECTORY_BYTES + 2**16 + 1024)
    with zipfile.ZipFile(reader) as zf:
        reader.cap = None
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _Invalid(f"{len(infos)} members, more than the {MAX_MEMBERS} npnet reads")
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise _Invalid("two members share a name")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                # save never compresses, and a compressed member could inflate to any
                # size: refused before it is opened.
                raise _Invalid(f"member {info.filename!r} is compressed; npnet.save "
                               "stores members uncompressed")
            if info.compress_size != info.file_size:
                # stored means both sizes are one; zipfile would read (and allocate) the
                # larger of the two
                raise _Invalid(f"member {info.filename!r} is stored with two sizes, "
                               f"{info.compress_size} and {info.file_size}")
        if MANIFEST not in names:
            raise _Invalid(f"no {MANIFEST!r} manifest (an npz not written by npnet.save?)")
        if zf.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
            raise _Invalid(f"the manifest is {zf.getinfo(MANIFEST).file_size} bytes, more "
                           f"than the {MAX_MANIFEST_BYTES} npnet reads")
        manifest = json.loads(zf.read(MANIFEST).decode("utf-8"),
                              parse_constant=_refuse_constant)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _Invalid(f"the manifest does not declare format {FORMAT!r}")
        if manifest.get("version") != VERSION:
            raise _Invalid(f"format version {manifest.get('version')!r} is not supported "
                           f"(this npnet reads version {VERSION})")
        if "root" not in manifest:
            raise _Invalid("the manifest has no 'root'")
        # Members still to be read (each at most once) and the bytes the file has for them.
        reading = _Budget(set(names) - {MANIFEST}, file_size)
        return _decode(manifest["root"], zf, reading, ())


class _Budget:
    """What the arrays may still take: each member once, and together no more bytes than
    the file holds (a stored member's bytes are in the file, so a valid file never runs
    out; a member 'stored' many times over, or a size that lies, does)."""

    def __init__(self, members: set, file_size: int):
        self.members, self.bytes_left = members, file_size

    def take(self, info: zipfile.ZipInfo) -> None:
        if info.filename not in self.members:
            raise _Invalid(f"member {info.filename!r} is referenced twice")
        if info.file_size > self.bytes_left:
            raise _Invalid(f"member {info.filename!r} claims {info.file_size} bytes, more "
                           "than the file has left for it")
        self.members.discard(info.filename)
        self.bytes_left -= info.file_size


def _refuse_constant(name: str):
    raise _Invalid(f"the manifest contains {name}, which strict JSON forbids")


def _decode(node, zf: zipfile.ZipFile, budget: _Budget, key_path: tuple):
    """Rebuild the value of one manifest node (the inverse of ``_encode``)."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if len(key_path) >= MAX_DEPTH:
        raise _Invalid(f"the manifest is nested deeper than {MAX_DEPTH} levels at "
                       f"{_where(key_path[:3])}...")
    kind = node.get("type") if isinstance(node, dict) else None
    if kind in ("dict", "odict"):
        pairs = _items(node, key_path)
        result = OrderedDict() if kind == "odict" else {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise _Invalid(f"bad dict item at {_where(key_path)}: {_short(pair)}")
            key, item = pair
            if key in result:
                raise _Invalid(f"duplicate key {key!r} at {_where(key_path)}")
            result[key] = _decode(item, zf, budget, key_path + (key,))
        return result
    if kind in ("list", "tuple"):
        items = [_decode(item, zf, budget, key_path + (str(i),))
                 for i, item in enumerate(_items(node, key_path))]
        return tuple(items) if kind == "tuple" else items
    if kind == "float" and node.get("value") in ("nan", "inf", "-inf"):
        return float(node["value"])
    if kind in ("array", "scalar"):
        array = _read_array(node, zf, budget, key_path)
        return array[()] if kind == "scalar" else array    # 0-d array -> NumPy scalar
    raise _Invalid(f"unknown manifest node at {_where(key_path)}: {_short(node)}")


def _short(value) -> str:
    """A manifest node for an error message: one line, at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _items(node: dict, key_path: tuple) -> list:
    items = node.get("items")
    if not isinstance(items, list):
        raise _Invalid(f"node at {_where(key_path)} has no list of items")
    return items


def _read_array(node: dict, zf: zipfile.ZipFile, budget: _Budget,
                key_path: tuple) -> np.ndarray:
    """Read one array member, comparing every size before reading the data.

    The order is what bounds the work: the member's stored size against what the file
    has left (``budget``), then its ``.npy`` header (at most a few kB) against the
    manifest, then the data size the header implies against the stored size -- and only
    then is an array of exactly that size allocated and filled."""
    member, dtype, shape = node.get("member"), node.get("dtype"), node.get("shape")
    where = _where(key_path)
    if not isinstance(member, str) or member not in zf.NameToInfo or member == MANIFEST:
        raise _Invalid(f"the manifest refers to a missing member {_short(member)} at {where}")
    if not isinstance(dtype, str) or "O" in dtype:
        raise _Invalid(f"refusing dtype {_short(dtype)} at {where} (no pickle)")
    info = zf.getinfo(member)
    budget.take(info)
    with zf.open(member) as stream:
        try:
            npy_shape, fortran, npy_dtype = read_npy_header(stream)
        except Exception as err:             # a corrupt header can raise nearly anything
            raise _Invalid(f"member {member!r} is not a valid .npy "
                           f"({type(err).__name__}: {err})") from err
        if npy_dtype.hasobject:
            raise _Invalid(f"member {member!r} holds objects, which need pickle (refused)")
        if npy_dtype.str != dtype or list(npy_shape) != shape:
            raise _Invalid(f"member {member!r} holds {npy_dtype.str} {npy_shape}, the "
                           f"manifest says {_short(dtype)} {_short(shape)} at {where}")
        data_size = math.prod(npy_shape) * npy_dtype.itemsize
        if info.file_size != stream.tell() + data_size:
            raise _Invalid(f"member {member!r} stores {info.file_size} bytes, its header "
                           f"({npy_dtype.str} {npy_shape}) needs {stream.tell() + data_size}")
        # Fortran order is stored as the transpose's C order.
        array = np.empty(npy_shape[::-1] if fortran else npy_shape, dtype=npy_dtype)
        _fill(stream, array, member)
        if stream.read(1):                   # reading to the end also checks the CRC
            raise _Invalid(f"trailing data in member {member!r}")
    return array.T if fortran else array


def read_npy_header(stream) -> tuple:
    """``(shape, fortran_order, dtype)`` from the header of the ``.npy`` data at the
    stream's position, which is left at the first data byte.  The header is parsed as a
    Python literal (at most a few kB), never run, and nothing of the data is read, so its
    sizes can be checked before any array is made.

    Raises:
        ValueError: not a ``.npy`` header (NumPy's own message).
    """
    version = np.lib.format.read_magic(stream)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    return header(stream)


def _fill(stream, array: np.ndarray, member: str) -> None:
    """Read ``array.nbytes`` bytes from ``stream`` into ``array``, 1 MiB at a time (so the
    only copy is a chunk's)."""
    view = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    done = 0
    while done < len(view):
        n = stream.readinto(view[done:done + 2**20])
        if not n:
            raise _Invalid(f"member {member!r} is truncated")
        done += n
