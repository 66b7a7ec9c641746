"""Stateless STREAM credentials: the ILP address carries the incoming payment, sealed.

token        = AES-256-GCM(HMAC(secret, "ilp_stream_connection_token"), payment uuid), random IV
ilpAddress   = {server address}.{base64url(token)}
sharedSecret = HMAC-SHA256(HMAC(secret, "ilp_stream_shared_secret"), token)

Nothing is stored per issue: every call mints a fresh address and secret (a new IV), all
of which open to the same payment, and no two payments can share a secret because the
token authenticates the payment id under a key only this server holds.
"""

from __future__ import annotations

import hmac
import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opay import base64url

SECRET_BYTES = 32
_IV_BYTES = 12
_TAG_BYTES = 16


class Credentials:
    def __init__(self, ilp_address: str, shared_secret: bytes) -> None:
        self.ilp_address = ilp_address
        self.shared_secret = shared_secret

    @property
    def shared_secret_b64url(self) -> str:
        return base64url.encode(self.shared_secret)





class CredentialMint:
    def __init__(self, server_secret: bytes, server_address: str) -> None:
        assert len(server_secret) == SECRET_BYTES, "the STREAM server secret must be 32 bytes"
        # One cipher for every call: building it (the key schedule) cost as much as sealing.
        self._token_cipher = AESGCM(hmac.digest(server_secret, b"ilp_stream_connection_token", "sha256"))
        self._secret_key = hmac.digest(server_secret, b"ilp_stream_shared_secret", "sha256")
        self._address = server_address

    def issue(self, payment_uuid: str) -> Credentials:
        iv = os.urandom(_IV_BYTES)
        sealed = self._token_cipher.encrypt(iv, uuid.UUID(payment_uuid).bytes, None)
        token = iv + sealed[-_TAG_BYTES:] + sealed[:-_TAG_BYTES]
        return Credentials(f"{self._address}.{base64url.encode(token)}", self.shared_secret_for(token))

    def shared_secret_for(self, token: bytes) -> bytes:
        return hmac.digest(self._secret_key, token, "sha256")

    def open(self, ilp_address: str) -> tuple[str, bytes] | None:
        """The payment uuid and token sealed in an address of ours; None if forged or foreign."""
        prefix = self._address + "."
        if not ilp_address.startswith(prefix):
            return None
        segment = ilp_address[len(prefix) :].split(".", 1)[0]
        try:
            token = base64url.decode(segment)
        except ValueError:
            return None
        if len(token) <= _IV_BYTES + _TAG_BYTES:
            return None
        iv, tag, body = token[:_IV_BYTES], token[_IV_BYTES : _IV_BYTES + _TAG_BYTES], token[_IV_BYTES + _TAG_BYTES :]
        try:
            plain = self._token_cipher.decrypt(iv, body + tag, None)
        except InvalidTag:
            return None
        return str(uuid.UUID(bytes=plain)), token
