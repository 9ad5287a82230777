"""Pure-Python TFRecord reader/writer with CRC-32C checks (no TensorFlow).

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)`` and CRC-32C the Castagnoli
CRC (reflected polynomial 0x82F63B78). A record that fails a check raises :class:`TFRecordCorruptError`
naming the file and the byte offset of the record.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator

import numba
import numpy as np

from ...errors import DataError
from ...fileio import atomic_write

__all__ = ["TFRecordCorruptError", "crc32c", "iter_records", "masked_crc32c", "write_records"]

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _make_tables() -> np.ndarray:
    """(8, 256) uint32 slicing-by-8 tables; row 0 is the plain byte-wise table."""
    tables = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        tables[0, i] = crc
    for k in range(1, 8):
        prev = tables[k - 1]
        tables[k] = (prev >> 8) ^ tables[0][prev & 0xFF]
    return tables


_TABLES = _make_tables()


@numba.njit(cache=True, nogil=True)
def _crc32c_update(crc: np.uint32, data: np.ndarray, tables: np.ndarray) -> np.uint32:
    # Slicing-by-8: consume 8 bytes per step with 8 table lookups, then the tail byte by byte.
    crc = np.uint32(crc ^ np.uint32(0xFFFFFFFF))
    n = data.shape[0]
    i = 0
    while i + 8 <= n:
        lo = crc ^ (np.uint32(data[i]) | (np.uint32(data[i + 1]) << 8) | (np.uint32(data[i + 2]) << 16)
                    | (np.uint32(data[i + 3]) << 24))
        crc = (tables[7, lo & 0xFF] ^ tables[6, (lo >> 8) & 0xFF] ^ tables[5, (lo >> 16) & 0xFF]
               ^ tables[4, lo >> 24] ^ tables[3, data[i + 4]] ^ tables[2, data[i + 5]]
               ^ tables[1, data[i + 6]] ^ tables[0, data[i + 7]])
        i += 8
    while i < n:
        crc = tables[0, (crc ^ np.uint32(data[i])) & 0xFF] ^ (crc >> 8)
        i += 1
    return np.uint32(crc ^ np.uint32(0xFFFFFFFF))


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``; pass a previous result as ``crc`` to continue it."""
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    return int(_crc32c_update(np.uint32(crc), arr, _TABLES))


def masked_crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The masked CRC-32C that TFRecord stores."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordCorruptError(DataError):
    """A TFRecord record failed its framing or CRC check.

    Attributes:
        path: the file.
        offset: byte offset of the start of the bad record (its length field).
        reason: what was wrong.
    """

    def __init__(self, path: str | os.PathLike, offset: int, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{path}: corrupt TFRecord record at byte offset {int(offset)}: {reason}", path=path,
                         offset=offset)


def iter_records(path: str | os.PathLike, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record in the TFRecord file ``path``.

    Raises:
        TFRecordCorruptError: a truncated record or a length/data CRC mismatch (when ``check_crc``).
    """
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordCorruptError(path, offset, f"truncated header ({len(header)} of 12 bytes)")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if check_crc and masked_crc32c(header[:8]) != length_crc:
                raise TFRecordCorruptError(path, offset, f"length CRC mismatch (length field reads {length})")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordCorruptError(path, offset, f"truncated record (expected {length} data bytes + 4 CRC "
                                                         f"bytes, file ended after {len(data) + len(footer)})")
            if check_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordCorruptError(path, offset, f"data CRC mismatch ({length} bytes)")
            yield data
            offset += 12 + length + 4


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Write ``records`` as a TFRecord file (via a temp name, then rename); returns the record count."""
    count = 0
    with atomic_write(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))
            count += 1
    return count
