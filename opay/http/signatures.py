"""RFC 9421 HTTP message signatures as Open Payments uses them: Ed25519, Content-Digest sha-512.

Verification is stricter than the SDK's own checker: a request with a body must cover
content-digest, the digest is over the raw body bytes (not re-serialised JSON), and
`created` must be recent. `sign` is the client side, used by tests and benchmarks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from typing import Mapping

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay import base64url

BODY_COMPONENTS = ("content-digest", "content-length", "content-type")

_INPUT = re.compile(r'^\s*([a-zA-Z][a-zA-Z0-9_-]*)=\(([^)]*)\)(.*)$')
_COMPONENT = re.compile(r'"([^"]*)"')
_PARAM = re.compile(r';\s*([a-z]+)=("([^"]*)"|-?[0-9]+)')
_SIGNATURE = re.compile(r'^\s*([a-zA-Z][a-zA-Z0-9_-]*)=:([A-Za-z0-9+/=]*):\s*$')
_DIGEST = re.compile(r'sha-512=:([A-Za-z0-9+/=]*):')


class SignatureError(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class SignatureInput:
    def __init__(self, label: str, components: list[str], params: dict[str, str | int], raw_params: str) -> None:
        self.label = label
        self.components = components
        self.params = params
        self.raw_params = raw_params  # the exact "(...);k=v" text, which the signature covers

    @property
    def keyid(self) -> str:
        value = self.params.get("keyid")
        if not isinstance(value, str) or not value:
            raise SignatureError("invalid_signature", "Signature-Input has no keyid")
        return value


def parse_signature_input(header: str | None) -> SignatureInput:
    if not header:
        raise SignatureError("missing_signature", "the request is not signed (no Signature-Input)")
    match = _INPUT.match(header)
    if match is None:
        raise SignatureError("invalid_signature", "Signature-Input is malformed")
    label, inner, rest = match.groups()
    components = _COMPONENT.findall(inner)
    params: dict[str, str | int] = {}
    for name, raw, quoted in _PARAM.findall(rest):
        params[name] = quoted if raw.startswith('"') else int(raw)
    raw_params = header.split("=", 1)[1].strip()
    return SignatureInput(label, components, params, raw_params)


# Clients' keys in use at once; a key's parse (and its checks) is done once per key, not per request.
VERIFY_KEYS_CACHED = 4096


@functools.lru_cache(maxsize=VERIFY_KEYS_CACHED)
def _verify_key(public_key_x: str) -> nacl.signing.VerifyKey:
    """libsodium's Ed25519: its verify costs a third of OpenSSL's here (about 70 us against
    215), and it is as strict or stricter (canonical S, no small-order key or R)."""
    return nacl.signing.VerifyKey(base64url.decode(public_key_x))


def content_digest(body: bytes) -> str:
    return f"sha-512=:{base64.b64encode(hashlib.sha512(body).digest()).decode()}:"


def signature_base(
    method: str, target_uri: str, headers: Mapping[str, str], signature_input: SignatureInput
) -> bytes:
    lines = []
    for component in signature_input.components:
        if component == "@method":
            value = method.upper()
        elif component == "@target-uri":
            value = target_uri
        elif component.startswith("@"):
            raise SignatureError("invalid_signature", f"unsupported derived component {component}")
        else:
            if component != component.lower():
                raise SignatureError("invalid_signature", "component names must be lowercase")
            found = headers.get(component)
            if found is None:
                raise SignatureError("invalid_signature", f"covered header {component} is missing")
            value = found.strip()
        lines.append(f'"{component}": {value}')
    lines.append(f'"@signature-params": {signature_input.raw_params}')
    return "\n".join(lines).encode()


def verify(
    *,
    method: str,
    target_uri: str,
    headers: Mapping[str, str],
    body: bytes,
    public_key_x: str,
    signature_input: SignatureInput,
    now_s: int,
    max_age_s: int,
    max_skew_s: int,
) -> None:
    """Raises SignatureError unless the request is signed as Open Payments requires."""
    covered = set(signature_input.components)
    if not {"@method", "@target-uri"} <= covered:
        raise SignatureError("invalid_signature", "the signature must cover @method and @target-uri")
    if "authorization" in headers and "authorization" not in covered:
        raise SignatureError("invalid_signature", "the signature must cover the authorization header")
    if body:
        if not set(BODY_COMPONENTS) <= covered:
            raise SignatureError("invalid_signature", "a request with a body must sign content-digest, content-length and content-type")
        digest = _DIGEST.search(headers.get("content-digest", ""))
        if digest is None or digest.group(0) != content_digest(body):
            raise SignatureError("invalid_digest", "Content-Digest does not match the body")
    alg = signature_input.params.get("alg")
    if alg is not None and alg != "ed25519":
        raise SignatureError("invalid_signature", "only ed25519 signatures are accepted")
    created = signature_input.params.get("created")
    if not isinstance(created, int):
        raise SignatureError("invalid_signature", "Signature-Input must carry created")
    if created < now_s - max_age_s or created > now_s + max_skew_s:
        raise SignatureError("stale_signature", "the signature's created time is outside the accepted window")
    expires = signature_input.params.get("expires")
    if isinstance(expires, int) and expires < now_s:
        raise SignatureError("stale_signature", "the signature has expired")

    match = _SIGNATURE.match(headers.get("signature", ""))
    if match is None or match.group(1) != signature_input.label:
        raise SignatureError("invalid_signature", f"no Signature for label {signature_input.label}")
    try:
        signature = base64.b64decode(match.group(2), validate=True)
        _verify_key(public_key_x).verify(signature_base(method, target_uri, headers, signature_input), signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise SignatureError("invalid_signature", "the signature does not verify with the client's key") from None


def sign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    private_key: Ed25519PrivateKey,
    keyid: str,
    created: int | None = None,
) -> dict[str, str]:
    """The headers a client adds, exactly as the official SDK builds them."""
    out = {k.lower(): v for k, v in headers.items()}
    components = ["@method", "@target-uri"]
    if "authorization" in out:
        components.append("authorization")
    if body:
        out["content-digest"] = content_digest(body)
        out["content-length"] = str(len(body))
        out.setdefault("content-type", "application/json")
        components += BODY_COMPONENTS
    created = int(time.time()) if created is None else created
    inner = " ".join(f'"{c}"' for c in components)
    raw_params = f'({inner});keyid="{keyid}";created={created}'
    signature_input = parse_signature_input(f"sig1={raw_params}")
    base = signature_base(method, url, out, signature_input)
    out["signature-input"] = f"sig1={raw_params}"
    out["signature"] = f"sig1=:{base64.b64encode(private_key.sign(base)).decode()}:"
    return out



