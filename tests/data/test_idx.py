"""read_idx on small IDX files written to tmp_path: round trips, then every kind of broken file.

The files are built here with struct and NumPy (``_idx_bytes``), not with idx2numpy, so
the reader is never its own oracle.
"""
import gzip
import re
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npnet.data import read_idx
from npnet.data.idx import MAX_NDIM

TYPE_CODES = {  # type code -> big-endian dtype, from the IDX format description
    0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(TYPE_CODES[type_code]).tobytes()


def _header(type_code: int, shape) -> bytes:
    return struct.pack(f">BBBB{len(shape)}I", 0, 0, type_code, len(shape), *shape)


def _write(tmp_path: Path, data: bytes, gz: bool = False, name: str = "x-idx") -> Path:
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _distinct(shape, type_code, seed=0) -> np.ndarray:
    """Distinct-ish values that fit the type, including negatives for the signed ones."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(TYPE_CODES[type_code]).newbyteorder("=")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype) * 1e3
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


# -- round trips -----------------------------------------------------------------------------
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"ndim{len(s)}")
@pytest.mark.parametrize("type_code", list(TYPE_CODES), ids=lambda c: f"0x{c:02X}")
def test_round_trip(tmp_path, type_code, shape, gz):
    expected = _distinct(shape, type_code)
    path = _write(tmp_path, _idx_bytes(expected, type_code), gz)
    got = read_idx(path)
    assert got.shape == shape
    assert got.dtype == expected.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    assert got.flags.writeable and got.flags.c_contiguous
    got[...] = 0  # really writable: the caller owns the array


def test_accepts_str_path_and_mnist_like_header(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    data = _idx_bytes(images, 0x08)
    assert data[:4] == bytes([0, 0, 8, 3])  # MNIST's image magic, 0x00000803
    np.testing.assert_array_equal(read_idx(str(_write(tmp_path, data))), images)


def test_multi_member_gzip(tmp_path):
    """Concatenated gzip members (e.g. `cat a.gz b.gz`) read as one stream, like gunzip."""
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    data = _idx_bytes(array, 0x0C)
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(data[:10]) + gzip.compress(data[10:]))
    np.testing.assert_array_equal(read_idx(path), array)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere-idx3-ubyte"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_idx(path)


# -- faults: each a ValueError naming the file and the fault ----------------------------------
GOOD = _idx_bytes(np.arange(24, dtype=np.int16).reshape(2, 3, 4), 0x0B)  # 16-byte header

FAULTS = {
    # name: (file content, words the message must contain)
    "empty": (b"", "shorter than the 4-byte"),
    "bad_magic": (b"\x01" + GOOD[1:], "magic"),
    "bad_magic_2nd_byte": (b"\x00\x07" + GOOD[2:], "magic"),
    "unknown_type_code": (GOOD[:2] + b"\x0a" + GOOD[3:], "type code 0x0A"),
    "ndim_0": (GOOD[:3] + b"\x00" + GOOD[4:], "ndim=0"),
    "ndim_too_large": (GOOD[:3] + bytes([MAX_NDIM + 1]) + GOOD[4:], f"ndim={MAX_NDIM + 1}"),
    "header_shorter_than_claimed": (_header(0x08, (2, 3, 4))[:10], "header truncated"),
    "zero_dimension": (_header(0x08, (2, 0, 4)), "zero dimension"),
    "truncated_payload": (GOOD[:-1], "truncated"),
    "payload_missing": (GOOD[:16], "truncated"),
    "extra_trailing_bytes": (GOOD + b"\x00", "extra bytes"),
    "many_extra_bytes": (GOOD + bytes(1000), "extra bytes"),
    "lying_dimension": (_header(0x08, (2**31, 2**31)) + bytes(10), "limit"),
    "lying_dimension_under_limit": (_header(0x0E, (2**20, 2**9)) + bytes(64), "truncated"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_value_error_naming_file(tmp_path, fault, gz):
    data, words = FAULTS[fault]
    path = _write(tmp_path, data, gz, name=f"{fault}-idx")
    with pytest.raises(ValueError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert words in message


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", [(2**31, 2**31), (2**32 - 1, 2), (2**28,)],
                         ids=["2^62B", "8GiB", "256MiB"])
def test_lying_header_fails_fast_without_allocating(tmp_path, shape, gz):
    """The header promises gigabytes; the file holds 100 bytes.  No allocation may follow
    the header's word: the check is against the real size (raw) or a bounded inflate (gz)."""
    path = _write(tmp_path, _header(0x08, shape) + bytes(100), gz)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=re.escape(str(path))):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1 << 20, f"peak {peak} bytes traced"


def test_gzip_bomb_is_not_inflated_past_the_promise(tmp_path):
    """A header promising 10 bytes over 50 MB of zeros: stop one byte past the promise."""
    path = tmp_path / "bomb-idx.gz"
    path.write_bytes(gzip.compress(_header(0x08, (10,)) + bytes(50_000_000), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="extra bytes"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes traced"


def _gz_faults():
    good = gzip.compress(GOOD)
    middle = len(good) // 2
    flipped = bytearray(good)
    flipped[middle] ^= 0xFF  # inside the deflate data
    crc = bytearray(good)
    crc[-8] ^= 0x01  # the CRC-32 in the trailer
    size = bytearray(good)
    size[-4] ^= 0x01  # the ISIZE in the trailer
    return {
        "not_gzip_after_magic": b"\x1f\x8b" + b"garbage" * 5,
        "truncated_stream": good[:middle],
        "truncated_trailer": good[:-3],
        "flipped_deflate_byte": bytes(flipped),
        "bad_crc": bytes(crc),
        "bad_isize": bytes(size),
        "trailing_garbage": good + b"not another gzip member",
        "empty_after_magic": b"\x1f\x8b",
    }


@pytest.mark.parametrize("fault", list(_gz_faults()))
def test_corrupt_gzip_is_value_error_naming_file(tmp_path, fault):
    path = tmp_path / f"{fault}-idx.gz"
    path.write_bytes(_gz_faults()[fault])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_idx(path)


# -- property: random corruption gives the right array or a ValueError, fast and small --------
VALID = _idx_bytes(np.arange(60, dtype=np.int16).reshape(3, 4, 5), 0x0B)  # header 16 bytes


@st.composite
def corrupted_files(draw):
    """A valid IDX file put through 1-4 random corruptions, then maybe gzipped (and maybe
    corrupted again after compression).  Returns (file bytes, whether gzipped)."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "dims", "append", "set_byte"]))
        if op == "flip" and data:
            i = draw(st.integers(0, min(len(data), 24) - 1))  # mostly the header
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "dims" and len(data) >= 4:
            k = draw(st.integers(0, max(0, (len(data) - 4) // 4 - 1)))
            dim = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 70)))
            data[4 + 4 * k: 8 + 4 * k] = struct.pack(">I", dim)
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "set_byte" and len(data) >= 4:  # type code or ndim to any value
            data[draw(st.sampled_from([2, 3]))] = draw(st.integers(0, 255))
    gz = draw(st.booleans())
    if gz:
        data = bytearray(gzip.compress(bytes(data), mtime=0))
        if draw(st.booleans()):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        if draw(st.booleans()):
            del data[draw(st.integers(0, len(data))):]
    return bytes(data), gz


def _expected_shape(raw: bytes):
    """What a correct parse must give: the dims in the (uncompressed) header."""
    return tuple(struct.unpack(f">{raw[3]}I", raw[4: 4 + 4 * raw[3]]))


@settings(max_examples=300, deadline=1000,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted_files())
def test_random_corruption_parses_or_raises_value_error(case):
    data, gz = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("case-idx.gz" if gz else "case-idx")
        path.write_bytes(data)
        tracemalloc.start()
        try:
            try:
                array = read_idx(path)
            except ValueError as err:
                assert str(path) in str(err)
                array = None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak} bytes traced"
    if array is not None:
        # It parsed: then the (decompressed) bytes must really be a well-formed IDX file.
        raw = gzip.decompress(data) if gz else data
        assert raw[0] == raw[1] == 0
        assert _expected_shape(raw) == array.shape
        assert len(raw) == 4 + 4 * raw[3] + array.nbytes
        stored = np.frombuffer(raw[4 + 4 * raw[3]:], dtype=TYPE_CODES[raw[2]])
        np.testing.assert_array_equal(array.ravel(), stored)


# -- issue 13: memory at most ~1.2x the payload, no FIFO or device, no MemoryError ---------
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("type_code", [0x08, 0x0D], ids=["uint8", "float32"])
def test_peak_memory_is_about_the_payload(tmp_path, gz, type_code):
    """The payload is read once into the buffer that becomes the array (no bytes object
    plus a concatenation plus a byte-swapped copy: that was 3x); a .gz grows its buffer
    as it inflates, by an eighth at most.  MNIST's training images are 47 MB: 1.2x of it
    is what a load of them may cost."""
    array = np.arange(8_000_000 // np.dtype(TYPE_CODES[type_code]).itemsize) % 251
    path = _write(tmp_path, _idx_bytes(array, type_code), gz)
    payload = array.size * np.dtype(TYPE_CODES[type_code]).itemsize
    tracemalloc.start()
    try:
        got = read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, array)
    assert got.dtype.isnative and got.flags.writeable and got.flags.c_contiguous
    assert peak <= 1.2 * payload, f"peak {peak / payload:.2f}x the payload"


def test_a_fifo_or_a_device_is_refused_unread(tmp_path):
    import os
    import signal
    fifo = tmp_path / "x-idx"
    os.mkfifo(fifo)                   # no writer: a plain open() would wait forever
    signal.alarm(10)                  # a regression fails the test rather than hanging
    try:
        with pytest.raises(ValueError, match=re.escape(f"'{fifo}': it is a FIFO")):
            read_idx(fifo)
        with pytest.raises(ValueError, match="'/dev/zero': it is a device"):
            read_idx("/dev/zero")
    finally:
        signal.alarm(0)


def test_memory_error_never_escapes(tmp_path, monkeypatch):
    """A header within MAX_PAYLOAD_BYTES may still promise more than the machine has."""
    import npnet.data.idx as idx

    def no_memory(*args):
        raise MemoryError
    monkeypatch.setattr(idx, "_read_exactly", no_memory)
    path = _write(tmp_path, _idx_bytes(np.zeros(10, np.uint8), 0x08))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not enough memory"):
        read_idx(path)
