"""base64url without padding (RFC 4648 §5), the encoding of JWK keys, GNAP hashes,
STREAM credentials and secrets in settings: one copy for all of them."""

from __future__ import annotations

import base64
import binascii


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode(text: str) -> bytes:
    """Padding optional. Raises ValueError on anything that is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as error:
        raise ValueError(f"not base64url: {error}") from None
