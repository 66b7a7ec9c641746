"""ILPv4 Prepare / Fulfill / Reject packets (RFC 0027)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from typing import Callable, Union

from opay.ilp.oer import OerError, Reader, Writer

_TIMESTAMP_LEN = 17
_HASH_LEN = 32


class IlpPacketType(IntEnum):
    PREPARE = 12
    FULFILL = 13
    REJECT = 14


def format_timestamp(value: datetime) -> bytes:
    if value.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    v = value.astimezone(timezone.utc)
    # Sub-millisecond precision is truncated: an earlier expiry is the safe side.
    text = f"{v.year:04d}{v.month:02d}{v.day:02d}{v.hour:02d}{v.minute:02d}{v.second:02d}{v.microsecond // 1000:03d}"
    return text.encode("ascii")


def parse_timestamp(raw: bytes) -> datetime:
    if len(raw) != _TIMESTAMP_LEN or not raw.isdigit():
        raise OerError(f"invalid ILP timestamp: {raw!r}")
    s = raw.decode("ascii")
    try:
        return datetime(
            int(s[0:4]), int(s[4:6]), int(s[6:8]),
            int(s[8:10]), int(s[10:12]), int(s[12:14]), int(s[14:17]) * 1000,
            tzinfo=timezone.utc,
        )
    except ValueError as exc:
        raise OerError(f"invalid ILP timestamp: {raw!r}") from exc


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise OerError(f"{what} is not ASCII") from exc


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(value)}")
    return bytes(value)


def _envelope(kind: IlpPacketType, body: Writer) -> bytes:
    out = Writer()
    out.write_uint8(kind)
    out.write_var_octets(body.getvalue())
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Prepare:
    amount: int
    expires_at: datetime
    execution_condition: bytes
    destination: str
    data: bytes = b""

    def encode(self) -> bytes:
        w = Writer()
        w.write_uint64(self.amount)
        w.write(format_timestamp(self.expires_at))
        w.write(_fixed(self.execution_condition, _HASH_LEN, "execution_condition"))
        w.write_var_octets(self.destination.encode("ascii"))
        w.write_var_octets(self.data)
        return _envelope(IlpPacketType.PREPARE, w)


@dataclass(frozen=True, slots=True)
class Fulfill:
    fulfillment: bytes
    data: bytes = b""

    def encode(self) -> bytes:
        w = Writer()
        w.write(_fixed(self.fulfillment, _HASH_LEN, "fulfillment"))
        w.write_var_octets(self.data)
        return _envelope(IlpPacketType.FULFILL, w)


@dataclass(frozen=True, slots=True)
class Reject:
    code: str
    triggered_by: str = ""
    message: bytes = b""
    data: bytes = b""

    def encode(self) -> bytes:
        code = self.code.encode("ascii")
        w = Writer()
        w.write(_fixed(code, 3, "code"))
        w.write_var_octets(self.triggered_by.encode("ascii"))
        w.write_var_octets(self.message)
        w.write_var_octets(self.data)
        return _envelope(IlpPacketType.REJECT, w)


IlpPacket = Union[Prepare, Fulfill, Reject]


def _decode_prepare(r: Reader) -> Prepare:
    return Prepare(
        amount=r.read_uint64(),
        expires_at=parse_timestamp(r.read(_TIMESTAMP_LEN)),
        execution_condition=r.read(_HASH_LEN),
        destination=_ascii(r.read_var_octets(), "destination"),
        data=r.read_var_octets(),
    )


def _decode_fulfill(r: Reader) -> Fulfill:
    return Fulfill(fulfillment=r.read(_HASH_LEN), data=r.read_var_octets())


def _decode_reject(r: Reader) -> Reject:
    return Reject(
        code=_ascii(r.read(3), "error code"),
        triggered_by=_ascii(r.read_var_octets(), "triggered_by"),
        message=r.read_var_octets(),
        data=r.read_var_octets(),
    )


_DECODERS: dict[int, Callable[[Reader], IlpPacket]] = {
    IlpPacketType.PREPARE: _decode_prepare,
    IlpPacketType.FULFILL: _decode_fulfill,
    IlpPacketType.REJECT: _decode_reject,
}


def decode_packet(data: bytes) -> IlpPacket:
    """Decode one ILPv4 packet; the input must contain exactly one packet."""
    outer = Reader(data)
    kind = outer.read_uint8()
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise OerError(f"unknown ILP packet type: {kind}")
    body = Reader(outer.read_var_octets())
    # ILPv4 has no extension marker, so extra bytes mean a corrupt packet.
    if not outer.at_end():
        raise OerError("trailing bytes after ILP packet")
    packet = decoder(body)
    if not body.at_end():
        raise OerError("trailing bytes inside ILP packet")
    return packet
