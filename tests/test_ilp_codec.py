"""Codec tests for opay.ilp: OER, ILPv4 packets, STREAM (RFC test vectors + properties)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from opay.ilp.oer import (
    U64_MAX,
    OerError,
    Reader,
    Writer,
    encode_length,
    encode_var_octets,
    encode_var_uint,
)
from opay.ilp.packet import Fulfill, Prepare, Reject, decode_packet
from opay.ilp.stream import (
    ConnectionAssetDetails,
    ConnectionClose,
    ConnectionDataBlocked,
    ConnectionMaxData,
    ConnectionMaxStreamId,
    ConnectionNewAddress,
    ConnectionStreamIdBlocked,
    StreamClose,
    StreamData,
    StreamDataBlocked,
    StreamDecryptError,
    StreamMaxData,
    StreamMaxMoney,
    StreamMoney,
    StreamMoneyBlocked,
    StreamPacket,
    StreamReceipt,
    condition_for,
    decode_stream_packet,
    decrypt,
    decrypt_stream_packet,
    encrypt,
    encrypt_stream_packet,
    fulfillment_for,
)

# ---------------------------------------------------------------- fixtures


def _fixture_path() -> Path:
    return Path(__file__).resolve().parent / "fixtures" / "StreamPacketFixtures.json"


FIXTURES: list[dict[str, Any]] = json.loads(_fixture_path().read_text())


def _frame_from_json(f: dict[str, Any]) -> Any:
    name = f["name"]

    def i(key: str) -> int:  # fixture integers are decimal strings
        return int(f[key])

    def b64(key: str) -> bytes:
        return base64.b64decode(f[key])

    builders = {
        "ConnectionClose": lambda: ConnectionClose(f["errorCode"], f["errorMessage"]),
        "ConnectionNewAddress": lambda: ConnectionNewAddress(f["sourceAccount"]),
        "ConnectionAssetDetails": lambda: ConnectionAssetDetails(f["sourceAssetCode"], f["sourceAssetScale"]),
        "ConnectionMaxData": lambda: ConnectionMaxData(i("maxOffset")),
        "ConnectionDataBlocked": lambda: ConnectionDataBlocked(i("maxOffset")),
        "ConnectionMaxStreamId": lambda: ConnectionMaxStreamId(i("maxStreamId")),
        "ConnectionStreamIdBlocked": lambda: ConnectionStreamIdBlocked(i("maxStreamId")),
        "StreamClose": lambda: StreamClose(i("streamId"), f["errorCode"], f["errorMessage"]),
        "StreamMoney": lambda: StreamMoney(i("streamId"), i("shares")),
        "StreamMaxMoney": lambda: StreamMaxMoney(i("streamId"), i("receiveMax"), i("totalReceived")),
        "StreamMoneyBlocked": lambda: StreamMoneyBlocked(i("streamId"), i("sendMax"), i("totalSent")),
        "StreamData": lambda: StreamData(i("streamId"), i("offset"), b64("data")),
        "StreamMaxData": lambda: StreamMaxData(i("streamId"), i("maxOffset")),
        "StreamDataBlocked": lambda: StreamDataBlocked(i("streamId"), i("maxOffset")),
        "StreamReceipt": lambda: StreamReceipt(i("streamId"), b64("receipt")),
    }
    frame = builders[name]()
    assert frame.TYPE == f["type"], name
    return frame


def _packet_from_json(p: dict[str, Any]) -> StreamPacket:
    return StreamPacket(
        sequence=int(p["sequence"]),
        ilp_packet_type=p["packetType"],
        prepare_amount=int(p["amount"]),
        frames=tuple(_frame_from_json(f) for f in p["frames"]),
    )


def test_fixture_file_is_complete() -> None:
    assert len(FIXTURES) == 53
    assert len({f["name"] for f in FIXTURES}) == len(FIXTURES)
    assert {k for f in FIXTURES for k in f} <= {"name", "packet", "buffer", "decode_only"}


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_stream_fixture(fixture: dict[str, Any]) -> None:
    buffer = base64.b64decode(fixture["buffer"])
    expected = _packet_from_json(fixture["packet"])
    assert decode_stream_packet(buffer) == expected
    if fixture.get("decode_only"):
        # Saturated values re-encode canonically, not as the oversized input.
        assert expected.encode() != buffer
        assert decode_stream_packet(expected.encode()) == expected
    else:
        assert expected.encode() == buffer


# ---------------------------------------------------------------- OER


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8180"),
        (255, "81ff"),
        (256, "820100"),
        (65536, "83010000"),
    ],
)
def test_length_determinant(n: int, encoded: str) -> None:
    assert encode_length(n).hex() == encoded
    r = Reader(bytes.fromhex(encoded))
    assert r.read_length() == n
    assert r.at_end()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 70000])
def test_var_octets_round_trip(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    encoded = encode_var_octets(payload)
    prefix = 1 if size < 128 else 1 + (size.bit_length() + 7) // 8
    assert len(encoded) == prefix + size
    r = Reader(encoded)
    assert r.read_var_octets() == payload
    assert r.at_end()


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "0100"),
        (1, "0101"),
        (255, "01ff"),
        (256, "020100"),
        (2**53 - 1, "071fffffffffffff"),
        (U64_MAX, "08ffffffffffffffff"),
    ],
)
def test_var_uint(n: int, encoded: str) -> None:
    assert encode_var_uint(n).hex() == encoded
    assert Reader(bytes.fromhex(encoded)).read_var_uint64() == n


def test_fixed_uints() -> None:
    w = Writer()
    w.write_uint8(0xAB)
    w.write_uint64(U64_MAX - 1)
    data = w.getvalue()
    assert data.hex() == "ab" + "fffffffffffffffe"
    r = Reader(data)
    assert (r.read_uint8(), r.read_uint64(), r.remaining) == (0xAB, U64_MAX - 1, 0)
    for bad in (lambda: w.write_uint8(256), lambda: w.write_uint64(2**64), lambda: encode_var_uint(-1)):
        with pytest.raises(ValueError):
            bad()


def test_var_uint_over_u64() -> None:
    big = "09010000000000000000"
    with pytest.raises(OerError):
        Reader(bytes.fromhex(big)).read_var_uint64()
    assert Reader(bytes.fromhex(big)).read_var_uint64_saturating() == U64_MAX
    assert Reader(bytes.fromhex(big)).read_var_uint() == 2**64


@pytest.mark.parametrize(
    ("hex_input", "op"),
    [
        ("", "read_uint8"),
        ("00000000000000", "read_uint64"),
        ("", "read_length"),
        ("80", "read_length"),  # indefinite form
        ("82", "read_length"),  # long form truncated
        ("8101", "read_length"),  # non-canonical: < 128 in long form
        ("820080", "read_length"),  # non-canonical: leading zero
        ("05aabb", "read_var_octets"),
        ("8180" + "00" * 127, "read_var_octets"),
        ("00", "read_var_uint"),  # empty VarUInt
        ("02ff", "read_var_uint"),
    ],
)
def test_oer_truncated_or_invalid(hex_input: str, op: str) -> None:
    with pytest.raises(OerError):
        getattr(Reader(bytes.fromhex(hex_input)), op)()


def test_oer_error_is_value_error() -> None:
    assert issubclass(OerError, ValueError)


# ---------------------------------------------------------------- ILPv4 packets

CONDITION = bytes(range(32))
EXPIRES = datetime(2017, 12, 23, 1, 21, 40, 549000, tzinfo=timezone.utc)


def test_prepare_hand_checked_bytes() -> None:
    prepare = Prepare(
        amount=107,
        expires_at=EXPIRES,
        execution_condition=CONDITION,
        destination="example.alice",
        data=b"hello",
    )
    body = (
        "000000000000006b"  # amount uint64
        + b"20171223012140549".hex()  # expiresAt, fixed 17 chars, no length prefix
        + CONDITION.hex()
        + "0d" + b"example.alice".hex()
        + "05" + b"hello".hex()
    )
    assert len(body) // 2 == 8 + 17 + 32 + 14 + 6 == 77
    expected = bytes.fromhex("0c" + "4d" + body)
    assert prepare.encode() == expected
    assert decode_packet(expected) == prepare


def test_fulfill_hand_checked_bytes() -> None:
    fulfill = Fulfill(fulfillment=b"\x11" * 32, data=b"\x01\x02")
    expected = bytes.fromhex("0d" + "23" + "11" * 32 + "02" + "0102")
    assert fulfill.encode() == expected
    assert decode_packet(expected) == fulfill


def test_reject_hand_checked_bytes_with_long_data() -> None:
    reject = Reject(code="F99", triggered_by="test.bob", message=b"nope", data=b"\xaa" * 200)
    body = b"F99".hex() + "08" + b"test.bob".hex() + "04" + b"nope".hex() + "81c8" + "aa" * 200
    assert len(body) // 2 == 3 + 9 + 5 + 202 == 219
    expected = bytes.fromhex("0e" + "81db" + body)
    assert reject.encode() == expected
    assert decode_packet(expected) == reject


@pytest.mark.parametrize(
    "packet",
    [
        Prepare(0, EXPIRES, CONDITION, "g.x", b""),
        Prepare(U64_MAX, datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc), CONDITION, "test.a.b", b"\x00" * 32767),
        Fulfill(b"\x00" * 32),
        Reject("T00"),
        Reject("F08", "test.me", "too much".encode(), (5).to_bytes(8, "big") + (3).to_bytes(8, "big")),
    ],
)
def test_ilp_round_trip(packet: Prepare | Fulfill | Reject) -> None:
    assert decode_packet(packet.encode()) == packet


def test_expires_at_normalised_to_utc_and_truncated_to_ms() -> None:
    local = datetime(2024, 1, 2, 3, 4, 5, 678999, tzinfo=timezone(timedelta(hours=2)))
    decoded = decode_packet(Prepare(1, local, CONDITION, "test.x").encode())
    assert isinstance(decoded, Prepare)
    assert decoded.expires_at == datetime(2024, 1, 2, 1, 4, 5, 678000, tzinfo=timezone.utc)
    assert decoded.expires_at.tzinfo == timezone.utc


def test_naive_expires_at_rejected() -> None:
    with pytest.raises(ValueError):
        Prepare(1, datetime(2024, 1, 1), CONDITION, "test.x").encode()


def test_ilp_encode_validation() -> None:
    for bad in (
        lambda: Prepare(2**64, EXPIRES, CONDITION, "test.x").encode(),
        lambda: Prepare(1, EXPIRES, b"short", "test.x").encode(),
        lambda: Fulfill(b"\x00" * 31).encode(),
        lambda: Reject("F0").encode(),
    ):
        with pytest.raises(ValueError):
            bad()


def _corrupt_prepares() -> list[bytes]:
    good = Prepare(1, EXPIRES, CONDITION, "test.x", b"d").encode()
    body = good[2:]
    bad_time = body[:8] + b"2017122301214X549" + body[25:]
    bad_date = body[:8] + b"20171332012140549" + body[25:]
    return [
        b"",
        b"\x0c",
        good[:-1],  # truncated body
        good + b"\x00",  # trailing bytes after the envelope
        bytes([0x0C, len(body) + 1]) + body + b"\x00",  # trailing bytes inside the envelope
        b"\x0b" + good[1:],  # unknown packet type
        bytes([0x0C, len(bad_time)]) + bad_time,
        bytes([0x0C, len(bad_date)]) + bad_date,
        bytes.fromhex("0e") + encode_var_octets(b"F0\xff" + b"\x00\x00\x00"),  # non-ascii code
    ]


@pytest.mark.parametrize("data", _corrupt_prepares())
def test_decode_packet_rejects_invalid(data: bytes) -> None:
    with pytest.raises(OerError):
        decode_packet(data)


# ---------------------------------------------------------------- STREAM extras


def test_unknown_frames_and_trailing_bytes_ignored() -> None:
    w = Writer()
    w.write(bytes([1, 13]))
    w.write_var_uint(7)
    w.write_var_uint(500)
    w.write_var_uint(3)
    w.write_uint8(0x99)  # unknown frame type
    w.write_var_octets(b"whatever")
    w.write_uint8(0x11)
    w.write_var_octets(encode_var_uint(1) + encode_var_uint(2) + b"extra")  # trailing bytes in a frame
    w.write_uint8(0x7F)
    w.write_var_octets(b"")
    w.write(b"junk after frames")
    packet = decode_stream_packet(w.getvalue())
    assert packet == StreamPacket(7, 13, 500, (StreamMoney(1, 2),))


@pytest.mark.parametrize(
    "hex_input",
    [
        "",
        "020c010001000100",  # version 2
        "010b010001000100",  # ILP type 11
        "010c0901000000000000000001000100",  # sequence > u64
        "010c0100010001",  # frame count truncated
        "010c01000100010111",  # frame contents missing
        "010c0100010001110401",  # frame contents truncated
        "010c01000100010111020100",  # StreamMoney missing shares
    ],
)
def test_stream_decode_rejects_invalid(hex_input: str) -> None:
    with pytest.raises(OerError):
        decode_stream_packet(bytes.fromhex(hex_input))


def test_stream_encode_validation() -> None:
    with pytest.raises(ValueError):
        StreamPacket(0, 15, 0).encode()
    with pytest.raises(ValueError):
        StreamPacket(2**64, 12, 0).encode()
    with pytest.raises(ValueError):
        StreamPacket(0, 12, 0, (StreamMoney(1, 2**64),)).encode()


# ---------------------------------------------------------------- crypto

SECRET = bytes(range(100, 132))


def test_encrypt_decrypt_round_trip() -> None:
    for plaintext in (b"", b"x", os.urandom(1000)):
        sealed = encrypt(SECRET, plaintext)
        assert len(sealed) == 12 + 16 + len(plaintext)
        assert decrypt(SECRET, sealed) == plaintext
    assert encrypt(SECRET, b"same") != encrypt(SECRET, b"same")  # random IV


def test_envelope_layout_is_iv_tag_ciphertext() -> None:
    key = hmac.new(SECRET, b"ilp_stream_encryption", hashlib.sha256).digest()
    iv = b"\x07" * 12
    ct_tag = AESGCM(key).encrypt(iv, b"layout check", None)
    envelope = iv + ct_tag[-16:] + ct_tag[:-16]
    assert decrypt(SECRET, envelope) == b"layout check"
    ours = encrypt(SECRET, b"layout check")
    assert AESGCM(key).decrypt(ours[:12], ours[28:] + ours[12:28], None) == b"layout check"


@pytest.mark.parametrize("index", [0, 11, 12, 27, 28, 40])
def test_decrypt_detects_tampering(index: int) -> None:
    sealed = bytearray(encrypt(SECRET, b"a secret stream packet"))
    sealed[index] ^= 0x01
    with pytest.raises(StreamDecryptError):
        decrypt(SECRET, bytes(sealed))


def test_decrypt_rejects_wrong_secret_and_short_input() -> None:
    sealed = encrypt(SECRET, b"hello")
    with pytest.raises(StreamDecryptError):
        decrypt(b"\x00" * 32, sealed)
    with pytest.raises(StreamDecryptError):
        decrypt(SECRET, sealed[:27])
    with pytest.raises(StreamDecryptError):
        decrypt(SECRET, sealed[:-1])


def test_encrypted_stream_packet_round_trip() -> None:
    packet = StreamPacket(3, 14, 99, (StreamMaxMoney(1, 1000, 99), ConnectionAssetDetails("USD", 2)))
    assert decrypt_stream_packet(SECRET, encrypt_stream_packet(SECRET, packet)) == packet


def test_fulfillment_and_condition() -> None:
    data = b"prepare data"
    inner = hmac.new(SECRET, b"ilp_stream_fulfillment", hashlib.sha256).digest()
    expected = hmac.new(inner, data, hashlib.sha256).digest()
    fulfillment = fulfillment_for(SECRET, data)
    assert fulfillment == expected and len(fulfillment) == 32
    assert condition_for(fulfillment) == hashlib.sha256(expected).digest()
    assert fulfillment_for(SECRET, data + b"!") != fulfillment


# ---------------------------------------------------------------- property

u64 = st.integers(min_value=0, max_value=U64_MAX)
u8 = st.integers(min_value=0, max_value=255)
address = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._~-", max_size=40)
text = st.text(max_size=40)
blob = st.binary(max_size=300)

frames = st.one_of(
    st.builds(ConnectionClose, u8, text),
    st.builds(ConnectionNewAddress, address),
    st.builds(ConnectionAssetDetails, text, u8),
    st.builds(ConnectionMaxData, u64),
    st.builds(ConnectionDataBlocked, u64),
    st.builds(ConnectionMaxStreamId, u64),
    st.builds(ConnectionStreamIdBlocked, u64),
    st.builds(StreamClose, u64, u8, text),
    st.builds(StreamMoney, u64, u64),
    st.builds(StreamMaxMoney, u64, u64, u64),
    st.builds(StreamMoneyBlocked, u64, u64, u64),
    st.builds(StreamData, u64, u64, blob),
    st.builds(StreamMaxData, u64, u64),
    st.builds(StreamDataBlocked, u64, u64),
    st.builds(StreamReceipt, u64, blob),
)

stream_packets = st.builds(
    StreamPacket,
    sequence=u64,
    ilp_packet_type=st.sampled_from([12, 13, 14]),
    prepare_amount=u64,
    frames=st.lists(frames, max_size=12).map(tuple),
)


@given(stream_packets)
def test_stream_packet_round_trip_property(packet: StreamPacket) -> None:
    encoded = packet.encode()
    assert decode_stream_packet(encoded) == packet
    assert decode_stream_packet(encoded + b"\x00trailing") == packet


@given(st.binary(max_size=200))
def test_stream_decode_never_raises_unexpected(data: bytes) -> None:
    try:
        decode_stream_packet(data)
    except OerError:
        pass


@given(st.binary(max_size=200))
def test_ilp_decode_never_raises_unexpected(data: bytes) -> None:
    try:
        decode_packet(data)
    except OerError:
        pass
