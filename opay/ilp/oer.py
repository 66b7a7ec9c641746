"""Octet Encoding Rules (OER) primitives used by ILPv4 and STREAM (RFC 0030)."""

from __future__ import annotations

U64_MAX = 2**64 - 1


class OerError(ValueError):
    """Truncated, non-canonical or otherwise invalid OER input."""


def encode_length(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"negative length: {n}")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(body) > 0x7F:
        raise ValueError("length too large for OER")
    return bytes([0x80 | len(body)]) + body


def encode_var_uint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"negative VarUInt: {n}")
    # Zero still takes one content byte: an empty VarUInt is invalid OER.
    body = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return encode_length(len(body)) + body


def encode_var_octets(data: bytes) -> bytes:
    return encode_length(len(data)) + bytes(data)


def encode_uint8(n: int) -> bytes:
    if not 0 <= n <= 0xFF:
        raise ValueError(f"uint8 out of range: {n}")
    return bytes([n])


def encode_uint64(n: int) -> bytes:
    if not 0 <= n <= U64_MAX:
        raise ValueError(f"uint64 out of range: {n}")
    return n.to_bytes(8, "big")


class Writer:
    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data

    def write_uint8(self, n: int) -> None:
        self._buf += encode_uint8(n)

    def write_uint64(self, n: int) -> None:
        self._buf += encode_uint64(n)

    def write_length(self, n: int) -> None:
        self._buf += encode_length(n)

    def write_var_uint(self, n: int) -> None:
        self._buf += encode_var_uint(n)

    def write_var_octets(self, data: bytes) -> None:
        self._buf += encode_var_octets(data)

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise OerError(f"need {n} bytes at offset {self._pos}, have {self.remaining}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def read_uint8(self) -> int:
        return self.read(1)[0]

    def read_uint64(self) -> int:
        return int.from_bytes(self.read(8), "big")

    def read_length(self) -> int:
        first = self.read_uint8()
        if first < 0x80:
            return first
        size = first & 0x7F
        if size == 0:
            raise OerError("indefinite length form is not allowed")
        body = self.read(size)
        # Reject non-canonical forms so each value has exactly one encoding.
        if body[0] == 0:
            raise OerError("length determinant has leading zero bytes")
        n = int.from_bytes(body, "big")
        if n < 0x80:
            raise OerError("long-form length determinant for a value below 128")
        return n

    def read_var_octets(self) -> bytes:
        return self.read(self.read_length())

    def read_var_uint(self) -> int:
        body = self.read_var_octets()
        if not body:
            raise OerError("empty VarUInt")
        return int.from_bytes(body, "big")

    def read_var_uint64(self) -> int:
        n = self.read_var_uint()
        if n > U64_MAX:
            raise OerError("VarUInt exceeds uint64")
        return n

    def read_var_uint64_saturating(self) -> int:
        return min(self.read_var_uint(), U64_MAX)
