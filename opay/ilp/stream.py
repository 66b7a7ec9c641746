"""STREAM packets, frames, encryption and fulfillments (RFC 0029)."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opay.ilp.oer import U64_MAX, OerError, Reader, Writer

STREAM_VERSION = 1
_ILP_PACKET_TYPES = (12, 13, 14)
_IV_LEN = 12
_TAG_LEN = 16


class StreamErrorCode(IntEnum):
    NO_ERROR = 0x01
    INTERNAL_ERROR = 0x02
    ENDPOINT_BUSY = 0x03
    FLOW_CONTROL_ERROR = 0x04
    STREAM_ID_ERROR = 0x05
    STREAM_STATE_ERROR = 0x06
    FRAME_FORMAT_ERROR = 0x07
    PROTOCOL_VIOLATION = 0x08
    APPLICATION_ERROR = 0x09


class FrameType(IntEnum):
    CONNECTION_CLOSE = 0x01
    CONNECTION_NEW_ADDRESS = 0x02
    CONNECTION_MAX_DATA = 0x03
    CONNECTION_DATA_BLOCKED = 0x04
    CONNECTION_MAX_STREAM_ID = 0x05
    CONNECTION_STREAM_ID_BLOCKED = 0x06
    CONNECTION_ASSET_DETAILS = 0x07
    STREAM_CLOSE = 0x10
    STREAM_MONEY = 0x11
    STREAM_MAX_MONEY = 0x12
    STREAM_MONEY_BLOCKED = 0x13
    STREAM_DATA = 0x14
    STREAM_MAX_DATA = 0x15
    STREAM_DATA_BLOCKED = 0x16
    STREAM_RECEIPT = 0x17


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OerError("invalid UTF-8 in STREAM frame") from exc


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise OerError("non-ASCII ILP address in STREAM frame") from exc


def _check_u64(*values: int) -> None:
    for v in values:
        if not 0 <= v <= U64_MAX:
            raise ValueError(f"uint64 out of range: {v}")


@dataclass(frozen=True, slots=True)
class ConnectionClose:
    code: int
    message: str = ""
    TYPE = FrameType.CONNECTION_CLOSE

    def _write(self, w: Writer) -> None:
        w.write_uint8(self.code)
        w.write_var_octets(self.message.encode("utf-8"))

    @classmethod
    def _read(cls, r: Reader) -> ConnectionClose:
        return cls(r.read_uint8(), _utf8(r.read_var_octets()))


@dataclass(frozen=True, slots=True)
class ConnectionNewAddress:
    source_account: str
    TYPE = FrameType.CONNECTION_NEW_ADDRESS

    def _write(self, w: Writer) -> None:
        w.write_var_octets(self.source_account.encode("ascii"))

    @classmethod
    def _read(cls, r: Reader) -> ConnectionNewAddress:
        return cls(_ascii(r.read_var_octets()))


@dataclass(frozen=True, slots=True)
class ConnectionAssetDetails:
    source_asset_code: str
    source_asset_scale: int
    TYPE = FrameType.CONNECTION_ASSET_DETAILS

    def _write(self, w: Writer) -> None:
        w.write_var_octets(self.source_asset_code.encode("utf-8"))
        w.write_uint8(self.source_asset_scale)

    @classmethod
    def _read(cls, r: Reader) -> ConnectionAssetDetails:
        return cls(_utf8(r.read_var_octets()), r.read_uint8())


@dataclass(frozen=True, slots=True)
class ConnectionMaxData:
    max_offset: int
    TYPE = FrameType.CONNECTION_MAX_DATA

    def _write(self, w: Writer) -> None:
        _check_u64(self.max_offset)
        w.write_var_uint(self.max_offset)

    @classmethod
    def _read(cls, r: Reader) -> ConnectionMaxData:
        return cls(r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class ConnectionDataBlocked:
    max_offset: int
    TYPE = FrameType.CONNECTION_DATA_BLOCKED

    def _write(self, w: Writer) -> None:
        _check_u64(self.max_offset)
        w.write_var_uint(self.max_offset)

    @classmethod
    def _read(cls, r: Reader) -> ConnectionDataBlocked:
        return cls(r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class ConnectionMaxStreamId:
    max_stream_id: int
    TYPE = FrameType.CONNECTION_MAX_STREAM_ID

    def _write(self, w: Writer) -> None:
        _check_u64(self.max_stream_id)
        w.write_var_uint(self.max_stream_id)

    @classmethod
    def _read(cls, r: Reader) -> ConnectionMaxStreamId:
        return cls(r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class ConnectionStreamIdBlocked:
    max_stream_id: int
    TYPE = FrameType.CONNECTION_STREAM_ID_BLOCKED

    def _write(self, w: Writer) -> None:
        _check_u64(self.max_stream_id)
        w.write_var_uint(self.max_stream_id)

    @classmethod
    def _read(cls, r: Reader) -> ConnectionStreamIdBlocked:
        return cls(r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class StreamClose:
    stream_id: int
    code: int
    message: str = ""
    TYPE = FrameType.STREAM_CLOSE

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id)
        w.write_var_uint(self.stream_id)
        w.write_uint8(self.code)
        w.write_var_octets(self.message.encode("utf-8"))

    @classmethod
    def _read(cls, r: Reader) -> StreamClose:
        return cls(r.read_var_uint64(), r.read_uint8(), _utf8(r.read_var_octets()))


@dataclass(frozen=True, slots=True)
class StreamMoney:
    stream_id: int
    shares: int
    TYPE = FrameType.STREAM_MONEY

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id, self.shares)
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.shares)

    @classmethod
    def _read(cls, r: Reader) -> StreamMoney:
        return cls(r.read_var_uint64(), r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class StreamMaxMoney:
    stream_id: int
    receive_max: int
    total_received: int
    TYPE = FrameType.STREAM_MAX_MONEY

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id, self.receive_max, self.total_received)
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.receive_max)
        w.write_var_uint(self.total_received)

    @classmethod
    def _read(cls, r: Reader) -> StreamMaxMoney:
        # These are unbounded VarUInts in Stream.asn; the RFC says to saturate.
        return cls(r.read_var_uint64(), r.read_var_uint64_saturating(), r.read_var_uint64_saturating())


@dataclass(frozen=True, slots=True)
class StreamMoneyBlocked:
    stream_id: int
    send_max: int
    total_sent: int
    TYPE = FrameType.STREAM_MONEY_BLOCKED

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id, self.send_max, self.total_sent)
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.send_max)
        w.write_var_uint(self.total_sent)

    @classmethod
    def _read(cls, r: Reader) -> StreamMoneyBlocked:
        return cls(r.read_var_uint64(), r.read_var_uint64_saturating(), r.read_var_uint64_saturating())


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    offset: int
    data: bytes
    TYPE = FrameType.STREAM_DATA

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id, self.offset)
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.offset)
        w.write_var_octets(self.data)

    @classmethod
    def _read(cls, r: Reader) -> StreamData:
        return cls(r.read_var_uint64(), r.read_var_uint64(), r.read_var_octets())


@dataclass(frozen=True, slots=True)
class StreamMaxData:
    stream_id: int
    max_offset: int
    TYPE = FrameType.STREAM_MAX_DATA

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id, self.max_offset)
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.max_offset)

    @classmethod
    def _read(cls, r: Reader) -> StreamMaxData:
        return cls(r.read_var_uint64(), r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class StreamDataBlocked:
    stream_id: int
    max_offset: int
    TYPE = FrameType.STREAM_DATA_BLOCKED

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id, self.max_offset)
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.max_offset)

    @classmethod
    def _read(cls, r: Reader) -> StreamDataBlocked:
        return cls(r.read_var_uint64(), r.read_var_uint64())


@dataclass(frozen=True, slots=True)
class StreamReceipt:
    stream_id: int
    receipt: bytes
    TYPE = FrameType.STREAM_RECEIPT

    def _write(self, w: Writer) -> None:
        _check_u64(self.stream_id)
        w.write_var_uint(self.stream_id)
        w.write_var_octets(self.receipt)

    @classmethod
    def _read(cls, r: Reader) -> StreamReceipt:
        return cls(r.read_var_uint64(), r.read_var_octets())


Frame = Union[
    ConnectionClose, ConnectionNewAddress, ConnectionAssetDetails,
    ConnectionMaxData, ConnectionDataBlocked, ConnectionMaxStreamId, ConnectionStreamIdBlocked,
    StreamClose, StreamMoney, StreamMaxMoney, StreamMoneyBlocked,
    StreamData, StreamMaxData, StreamDataBlocked, StreamReceipt,
]

_FRAME_READERS: dict[int, Callable[[Reader], Frame]] = {
    cls.TYPE: cls._read
    for cls in (
        ConnectionClose, ConnectionNewAddress, ConnectionAssetDetails,
        ConnectionMaxData, ConnectionDataBlocked, ConnectionMaxStreamId, ConnectionStreamIdBlocked,
        StreamClose, StreamMoney, StreamMaxMoney, StreamMoneyBlocked,
        StreamData, StreamMaxData, StreamDataBlocked, StreamReceipt,
    )
}


@dataclass(frozen=True, slots=True)
class StreamPacket:
    sequence: int
    ilp_packet_type: int
    prepare_amount: int
    frames: tuple[Frame, ...] = ()

    def encode(self) -> bytes:
        if self.ilp_packet_type not in _ILP_PACKET_TYPES:
            raise ValueError(f"invalid ilp_packet_type: {self.ilp_packet_type}")
        _check_u64(self.sequence, self.prepare_amount)
        w = Writer()
        w.write_uint8(STREAM_VERSION)
        w.write_uint8(self.ilp_packet_type)
        w.write_var_uint(self.sequence)
        w.write_var_uint(self.prepare_amount)
        w.write_var_uint(len(self.frames))
        for frame in self.frames:
            contents = Writer()
            frame._write(contents)
            w.write_uint8(frame.TYPE)
            w.write_var_octets(contents.getvalue())
        return w.getvalue()


def decode_stream_packet(data: bytes) -> StreamPacket:
    """Decode a plaintext STREAM packet, skipping unknown frames and trailing bytes."""
    r = Reader(data)
    version = r.read_uint8()
    if version != STREAM_VERSION:
        raise OerError(f"unsupported STREAM version: {version}")
    ilp_packet_type = r.read_uint8()
    if ilp_packet_type not in _ILP_PACKET_TYPES:
        raise OerError(f"invalid ilp_packet_type: {ilp_packet_type}")
    sequence = r.read_var_uint64()
    prepare_amount = r.read_var_uint64()
    count = r.read_var_uint()
    frames: list[Frame] = []
    for _ in range(count):
        frame_type = r.read_uint8()
        contents = r.read_var_octets()
        reader = _FRAME_READERS.get(frame_type)
        if reader is not None:
            # Extra bytes at the end of a frame's contents are ignored for forward compatibility.
            frames.append(reader(Reader(contents)))
    return StreamPacket(sequence, ilp_packet_type, prepare_amount, tuple(frames))


class StreamDecryptError(ValueError):
    """Ciphertext is malformed or fails authentication (reply F06)."""


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _encryption_key(shared_secret: bytes) -> bytes:
    return _hmac(shared_secret, b"ilp_stream_encryption")


def encrypt(shared_secret: bytes, plaintext: bytes) -> bytes:
    iv = os.urandom(_IV_LEN)
    sealed = AESGCM(_encryption_key(shared_secret)).encrypt(iv, plaintext, None)
    # cryptography returns ct||tag; the STREAM envelope is iv||tag||ct.
    return iv + sealed[-_TAG_LEN:] + sealed[:-_TAG_LEN]


def decrypt(shared_secret: bytes, data: bytes) -> bytes:
    if len(data) < _IV_LEN + _TAG_LEN:
        raise StreamDecryptError("ciphertext too short")
    iv = data[:_IV_LEN]
    tag = data[_IV_LEN : _IV_LEN + _TAG_LEN]
    ciphertext = data[_IV_LEN + _TAG_LEN :]
    try:
        return AESGCM(_encryption_key(shared_secret)).decrypt(iv, ciphertext + tag, None)
    except InvalidTag as exc:
        raise StreamDecryptError("STREAM data failed authentication") from exc


def encrypt_stream_packet(shared_secret: bytes, packet: StreamPacket) -> bytes:
    return encrypt(shared_secret, packet.encode())


def decrypt_stream_packet(shared_secret: bytes, data: bytes) -> StreamPacket:
    """Raises StreamDecryptError or OerError; both mean reply F06."""
    return decode_stream_packet(decrypt(shared_secret, data))


def fulfillment_for(shared_secret: bytes, prepare_data: bytes) -> bytes:
    return _hmac(_hmac(shared_secret, b"ilp_stream_fulfillment"), prepare_data)


def condition_for(fulfillment: bytes) -> bytes:
    return hashlib.sha256(fulfillment).digest()
