"""A job's metrics as a TensorBoard event file, so users open them beside their other runs.

Written here rather than with a TensorBoard writer: tensorboardX imports torch when it is
installed and TensorBoard's own writer brings its server along, and the api stays without
either. The file is what TensorBoard reads: TFRecord framing (a little-endian length, its
masked CRC-32C, the record, its masked CRC-32C) around `Event` protocol buffers, first the
file version, then one event per (step, metric) with the metric's value as a scalar
(`simple_value`) under the metric's name as its tag.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

FILE_VERSION = b"brain.Event:2"


@dataclass(frozen=True)
class ScalarPoint:
    tag: str
    step: int
    value: float
    wall_time: float
    """Seconds since the epoch when the value was recorded."""


def events_file(points: Iterable[ScalarPoint], created: float) -> bytes:
    """The event file's bytes; ``created`` (seconds since the epoch) dates its first event."""
    records = [_event(created, 0, file_version=FILE_VERSION)]
    records += [_event(p.wall_time, p.step, summary=_summary(p.tag, p.value)) for p in points]
    return b"".join(_record(r) for r in records)


def events_file_name(job_id: str, created: float) -> str:
    """TensorBoard reads files whose name holds ``tfevents``."""
    return f"events.out.tfevents.{int(created)}.{job_id}"


# -- protocol buffers (event.proto, summary.proto: the fields used here) --------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf writes a negative one
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _summary(tag: str, value: float) -> bytes:
    # Summary.value (1) = Summary.Value{tag (1), simple_value (2, float)}
    summary_value = _length_delimited(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value)
    return _length_delimited(1, summary_value)


def _event(wall_time: float, step: int, *, file_version: bytes | None = None,
           summary: bytes | None = None) -> bytes:
    # Event: wall_time (1, double), step (2, int64), file_version (3), summary (5)
    event = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        event += _length_delimited(3, file_version)
    if summary is not None:
        event += _length_delimited(5, summary)
    return event


# -- TFRecord framing --------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))
