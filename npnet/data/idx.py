"""Reading IDX files (the format MNIST ships in), checked before anything is allocated.

An IDX file is a header and a payload, all big-endian::

    bytes 0-1   0x00 0x00                  the magic number's first two bytes, always zero
    byte  2     type code                  0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                           0x0D float32, 0x0E float64
    byte  3     ndim                       number of dimensions
    4 * ndim    d_1 ... d_ndim             each dimension, an unsigned 32-bit integer
    payload     d_1 * ... * d_ndim items   row-major (C order)

``idx2numpy`` does the conversion, but it trusts the header: a file that lies about its
dimensions makes it ask for as much memory as the header claims, and a short file turns into
a reshape error.  So :func:`read_idx` checks every header field first, compares the payload
the header promises with the bytes really there (the file size for a raw file, a bounded
decompression for a ``.gz``), and only then hands the bytes to ``idx2numpy``.  Every fault is
a ``ValueError`` that names the file and what is wrong with it.
"""
from __future__ import annotations

import math
import os
import zlib

import idx2numpy
import numpy as np

from ..io import open_regular

# Type code -> NumPy dtype, big-endian as stored in the file.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Limits of a sane file.  The format allows 255 dimensions; nothing real needs more than a
# handful, and a corrupt byte 3 is far likelier than a 200-dimensional array.
MAX_NDIM = 16
# No header may promise more payload than this (8 GiB), whatever the file holds.
MAX_PAYLOAD_BYTES = 2**33

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16  # compressed bytes read from disk at a time
_OUT_CHUNK = 1 << 18  # decompressed bytes made at a time (a copy of this size is made)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzip-compressed IDX file into a NumPy array.

    Args:
        path: the file.  A ``.gz`` file is recognised by its content (the gzip magic
            ``1f 8b``), not by its name; IDX files never start with ``1f``.

    Returns:
        An array of shape ``(d_1, ..., d_ndim)`` with the file's dtype in native byte order
        (uint8, int8, int16, int32, float32 or float64), writable and C-contiguous.  Its
        memory is the buffer the payload was read into (``array.base``): the payload is
        read once and never copied, so the peak memory of a read is the payload's size
        (a ``.gz``: at most an eighth more, the growth of that buffer).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the path is not a regular file (a FIFO, a device, a directory: refused
            unread), there is not enough memory for the payload, or the file is not a
            well-formed IDX file: bad magic, unknown type code,
            ndim outside ``1..MAX_NDIM``, a zero dimension, a header promising more than
            ``MAX_PAYLOAD_BYTES``, a header or payload shorter or longer than promised, or a
            corrupt gzip stream.  The message names the file and the fault.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such IDX file")
    with open_regular(path, "IDX file") as f:   # a FIFO or a device: ValueError, unread
        gzipped = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        try:
            if gzipped:
                return _parse(path, _BoundedGunzip(path, f), raw_size=None)
            return _parse(path, f, raw_size=os.fstat(f.fileno()).st_size)
        except MemoryError:     # a header within MAX_PAYLOAD_BYTES, but more than is free
            raise ValueError(f"{path}: not enough memory for the payload its IDX header "
                             "promises") from None


def _parse(path: str, stream, raw_size: int | None) -> np.ndarray:
    """Check the header read from ``stream``, then read exactly the promised payload.

    ``raw_size`` is the file's length when it is known without reading (a raw file): the
    payload size is then checked against it before a single payload byte is read.
    """
    magic = stream.read(4)
    if len(magic) < 4:
        raise ValueError(f"{path}: only {len(magic)} bytes, shorter than the 4-byte IDX magic")
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file: the magic number starts 0x{magic[0]:02X} "
            f"0x{magic[1]:02X}, expected 0x00 0x00"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X} (known: {known})")
    if not 1 <= ndim <= MAX_NDIM:
        raise ValueError(f"{path}: IDX header says ndim={ndim}, expected 1..{MAX_NDIM}")

    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(
            f"{path}: header truncated: ndim={ndim} needs {4 * ndim} bytes of dimensions "
            f"after the magic, the file has {len(dims_bytes)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    if 0 in shape:
        raise ValueError(f"{path}: IDX header has a zero dimension: shape {shape}")

    dtype = IDX_DTYPES[type_code]
    header_size = 4 + 4 * ndim
    # Python ints: no overflow however large the dimensions.
    payload_size = math.prod(shape) * dtype.itemsize
    if payload_size > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"{path}: IDX header promises shape {shape} of {dtype.name}, {payload_size} bytes, "
            f"more than the {MAX_PAYLOAD_BYTES}-byte limit: a corrupt header?"
        )
    if raw_size is not None and raw_size != header_size + payload_size:
        # The cheap, allocation-free check for a raw file: compare with its size on disk.
        raise ValueError(_size_fault(path, shape, dtype, payload_size, raw_size - header_size))

    if raw_size is None:
        payload = stream.read_payload(payload_size)
        # One byte more than promised, if there is one, tells "too long" from "exact".
        found = len(payload) + (len(stream.read(1)) if len(payload) == payload_size else 0)
    else:
        payload = _read_exactly(stream, payload_size)
        found = len(payload)
    if found != payload_size:
        raise ValueError(_size_fault(path, shape, dtype, payload_size, found))

    try:
        # idx2numpy reads the header again and views the payload's bytes as the array:
        # no copy is made (the payload buffer becomes the array's memory).
        array = idx2numpy.convert_from_file(_Replay(magic + dims_bytes, payload))
    except idx2numpy.FormatError as err:  # not expected after the checks above
        raise ValueError(f"{path}: idx2numpy rejected the file: {err}") from err
    native = array.dtype.newbyteorder("=")     # the file is big-endian; hand back native
    if array.dtype != native:
        array = array.byteswap(inplace=True).view(native)           # in place: no copy
    return array


def _read_exactly(f, n: int) -> bytearray:
    """Read ``n`` bytes of a raw file (its size already checked) into one buffer: the
    payload is read once, into the memory that will hold the array."""
    buffer = bytearray(n)
    view, done = memoryview(buffer), 0
    while done < n:
        got = f.readinto(view[done:])
        if not got:
            break
        done += got
    del view
    if done < n:                         # the file shrank under us
        del buffer[done:]
    return buffer


class _Replay:
    """The file as idx2numpy reads it: the header, then the payload buffer itself (a
    memoryview, so ``np.frombuffer`` takes it without copying), then the end."""

    def __init__(self, header: bytes, payload: bytearray):
        self.parts = [header, memoryview(payload), b""]

    def read(self, n: int = -1):
        part = self.parts[0]
        if len(self.parts) > 1 and len(part) <= n:
            self.parts.pop(0)
            return part
        self.parts[0] = part[n:]
        return part[:n]


def _size_fault(path, shape, dtype, expected: int, found: int) -> str:
    if found < expected:
        what = f"payload truncated: {found} bytes"
    else:
        # A .gz is never inflated past one byte more than promised, hence "at least".
        what = f"extra bytes after the payload: at least {found - expected} more"
    return (
        f"{path}: {what}, but the IDX header (shape {shape}, {dtype.name}) promises "
        f"exactly {expected} bytes"
    )


class _BoundedGunzip:
    """A ``read(n)`` over a gzip file that never decompresses more than it is asked for.

    ``gzip.GzipFile.read(n)`` allocates ``n`` bytes up front, so a lying header would make it
    allocate whatever the header says.  Here the output grows only with the data really
    decompressed, and zlib's ``max_length`` stops each step at the amount still wanted.
    Corrupt or truncated streams raise ``ValueError`` naming the file, not ``OSError``,
    ``EOFError`` or ``zlib.error``.  Concatenated gzip members are read one after another,
    as ``gunzip`` does.
    """

    def __init__(self, path: str, f):
        self.path, self.f = path, f
        self.decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # 16+: gzip wrapper
        self.pending = b""  # compressed bytes read from disk but not yet fed to zlib

    def read(self, n: int) -> bytes:
        return bytes(self.read_payload(n))

    def read_payload(self, n: int) -> bytearray:
        """Up to ``n`` decompressed bytes, in a buffer grown only as data arrives (a
        bytearray over-allocates by an eighth at most, hence the bound of 1.2x)."""
        out = bytearray()
        while len(out) < n:
            if self.decomp.eof:  # end of a member: another one may follow
                rest = self.decomp.unused_data or self.f.read(_CHUNK)
                if not rest:
                    break  # clean end of the file
                self.decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                self.pending = rest
            if not self.pending:
                self.pending = self.f.read(_CHUNK)
                if not self.pending:
                    raise ValueError(f"{self.path}: corrupt gzip file: the stream is truncated")
            try:
                # At most _OUT_CHUNK at a time: the one copy is a chunk, not the payload.
                out += self.decomp.decompress(self.pending, min(n - len(out), _OUT_CHUNK))
            except zlib.error as err:
                raise ValueError(f"{self.path}: corrupt gzip file: {err}") from err
            # What zlib did not consume because max_length was reached waits for next time.
            self.pending = self.decomp.unconsumed_tail
        return out
