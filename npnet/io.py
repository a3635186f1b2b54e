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
import uuid
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load", "atomic_write", "FORMAT", "VERSION"]

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
    except BaseException:                    # also KeyboardInterrupt: never leave the temp
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)              # the rename itself is on disk


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


def _where(key_path: tuple) -> str:
    return ".".join(key_path) if key_path else "the top-level object"


# --------------------------------------------------------------------------- loading

class _Invalid(Exception):
    """The file is not a valid npnet checkpoint; becomes a ValueError naming the path."""


# What zipfile, json and np.lib.format raise on broken input: BadZipFile (bad CRC, bad
# headers), EOFError (a short member), NotImplementedError (unknown compression),
# RuntimeError (an encrypted member, a manifest nested too deep), ValueError (bad JSON,
# bad .npy header, object dtype), OSError (a seek to a corrupt offset; the message keeps
# the original error, so a real disk error still shows as one).
_BROKEN = (_Invalid, zipfile.BadZipFile, EOFError, zlib.error, ValueError, KeyError,
           NotImplementedError, RuntimeError, OSError)


def load(path):
    """Read a checkpoint written by :func:`save`; never unpickles anything.

    Returns:
        The saved tree with its types: dicts as ``dict``, OrderedDicts as ``OrderedDict``
        (key order as saved), lists, tuples, arrays (same dtype and shape), NumPy scalars
        and plain values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a complete, valid npnet checkpoint (truncated, corrupt,
            foreign, pickled, another format version); the message names ``path``.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:              # FileNotFoundError names the path
        try:
            return _read_zip(f)
        except _BROKEN as err:
            raise ValueError(f"cannot load {path!r}: not a valid npnet checkpoint "
                             f"({type(err).__name__}: {err})") from err


def _read_zip(f):
    if not zipfile.is_zipfile(f):
        raise _Invalid("not a zip archive, or a truncated one; npnet checkpoints are "
                       ".npz files written by npnet.save (pickles such as torch .pt "
                       "files are never loaded)")
    with zipfile.ZipFile(f) as zf:
        names = set(zf.namelist())
        if MANIFEST not in names:
            raise _Invalid(f"no {MANIFEST!r} manifest (an npz not written by npnet.save?)")
        manifest = json.loads(zf.read(MANIFEST).decode("utf-8"),
                              parse_constant=_refuse_constant)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _Invalid(f"the manifest does not declare format {FORMAT!r}")
        if manifest.get("version") != VERSION:
            raise _Invalid(f"format version {manifest.get('version')!r} is not supported "
                           f"(this npnet reads version {VERSION})")
        if "root" not in manifest:
            raise _Invalid("the manifest has no 'root'")
        return _decode(manifest["root"], zf, names, ())


def _refuse_constant(name: str):
    raise _Invalid(f"the manifest contains {name}, which strict JSON forbids")


def _decode(node, zf: zipfile.ZipFile, names: set, key_path: tuple):
    """Rebuild the value of one manifest node (the inverse of ``_encode``)."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    kind = node.get("type") if isinstance(node, dict) else None
    if kind in ("dict", "odict"):
        pairs = _items(node, key_path)
        result = OrderedDict() if kind == "odict" else {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise _Invalid(f"bad dict item at {_where(key_path)}: {pair!r}")
            key, item = pair
            if key in result:
                raise _Invalid(f"duplicate key {key!r} at {_where(key_path)}")
            result[key] = _decode(item, zf, names, key_path + (key,))
        return result
    if kind in ("list", "tuple"):
        items = [_decode(item, zf, names, key_path + (str(i),))
                 for i, item in enumerate(_items(node, key_path))]
        return tuple(items) if kind == "tuple" else items
    if kind == "float" and node.get("value") in ("nan", "inf", "-inf"):
        return float(node["value"])
    if kind in ("array", "scalar"):
        array = _read_array(node, zf, names, key_path)
        return array[()] if kind == "scalar" else array    # 0-d array -> NumPy scalar
    raise _Invalid(f"unknown manifest node at {_where(key_path)}: {node!r}")


def _items(node: dict, key_path: tuple) -> list:
    items = node.get("items")
    if not isinstance(items, list):
        raise _Invalid(f"node at {_where(key_path)} has no list of items")
    return items


def _read_array(node: dict, zf: zipfile.ZipFile, names: set, key_path: tuple) -> np.ndarray:
    member, dtype, shape = node.get("member"), node.get("dtype"), node.get("shape")
    if not isinstance(member, str) or member not in names:
        raise _Invalid(f"the manifest refers to a missing member {member!r} "
                       f"at {_where(key_path)}")
    if not isinstance(dtype, str) or "O" in dtype:
        raise _Invalid(f"refusing dtype {dtype!r} at {_where(key_path)} (no pickle)")
    with zf.open(member) as stream:
        try:
            # allow_pickle=False: an object-dtype header raises, nothing is unpickled.
            array = np.lib.format.read_array(stream, allow_pickle=False)
        except Exception as err:             # a corrupt header can raise nearly anything
            raise _Invalid(f"member {member!r} is not a valid .npy "
                           f"({type(err).__name__}: {err})") from err
        if stream.read(1):                   # reading to the end also checks the CRC
            raise _Invalid(f"trailing data in member {member!r}")
    if array.dtype.str != dtype or list(array.shape) != shape:
        raise _Invalid(f"member {member!r} holds {array.dtype.str} {array.shape}, the "
                       f"manifest says {dtype} {shape} at {_where(key_path)}")
    return array
