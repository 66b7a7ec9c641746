"""`opay keys new <wallet path>`: a client key for a wallet address, in one step.

Generates an Ed25519 key, registers its public JWK through the operator API and saves
the private key (PKCS#8 PEM, mode 0600) where the examples and the SDK read it. The
file is written first, exclusively, and removed again if the server refuses the key:
a key is never overwritten, and no registered key is left without its private half.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from opay.client import public_jwk
from opay.settings import WALLET_PATH, Settings, read_environment

TIMEOUT_SECONDS = 10.0


class Refused(Exception):
    """One line for the operator; `opay` prints it and exits 1."""


def _fail(message: str) -> int:
    print(f"opay: {message}", file=sys.stderr, flush=True)
    return 1


def _create_hint(settings: Settings, path: str) -> str:
    body = json.dumps({"path": path, "assetCode": "USD", "assetScale": 2})
    return (
        f"curl -H \"Authorization: Bearer $OPAY_OPERATOR_TOKEN\" -d '{body}' {settings.operator_api_url}/wallet-addresses"
    )


def _register(settings: Settings, path: str, jwk: dict) -> None:
    url = f"{settings.operator_api_url}/wallet-addresses/{path}/keys"
    try:
        answer = httpx.post(url, json=jwk, headers={"authorization": f"Bearer {settings.operator_token}"}, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        raise Refused(
            f"the operator API at {settings.operator_api_url} does not answer ({type(error).__name__}):"
            " is `opay serve` running? set OPAY_OPERATOR_URL if it listens elsewhere"
        ) from None
    if answer.status_code == 201:
        return
    try:
        error = answer.json()["error"]
        code, description = error["code"], error["description"]
    except (ValueError, KeyError, TypeError):
        code, description = "", answer.text[:200]
    if answer.status_code == 401:
        raise Refused("the operator API refused the token: set OPAY_OPERATOR_TOKEN to the one `opay serve` uses")
    if answer.status_code == 404 and code == "not_found":
        raise Refused(f"no wallet address {path!r} on this server; create it first: {_create_hint(settings, path)}")
    raise Refused(f"the operator API refused the key ({answer.status_code} {code}): {description}")


def new(wallet_path: str, out: str | None) -> int:
    settings = read_environment()
    if not settings.operator_token:
        return _fail("OPAY_OPERATOR_TOKEN is not set: export the token `opay serve` uses (it prints the one it generated)")
    path = wallet_path.strip("/")
    if re.fullmatch(WALLET_PATH, path) is None:
        return _fail(f"{wallet_path!r} is not a wallet address path (lowercase segments, e.g. alice or shop/alice)")
    kid = f"key-{secrets.token_hex(4)}"
    target = Path(out) if out else Path(settings.data_dir) / "keys" / f"{path}-{kid}.pem"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: never overwrite a key; 0600 from the first byte, not chmod-ed after.
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{target} exists: a key is never overwritten; pass another --out")
    except OSError as error:
        return _fail(f"cannot write {target}: {error.strerror}")
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    try:
        _register(settings, path, public_jwk(key, kid))
    except Refused as error:
        target.unlink()
        return _fail(str(error))
    wallet_address = f"{settings.public_url}/{path}"
    print(f"key {kid} registered for {wallet_address}")
    print(f"private key saved to {target} (mode 0600)")
    print("for the examples (README, Quickstart):")
    print(f"  export CLIENT_WALLET_ADDRESS={wallet_address} KEY_ID={kid} PRIVATE_KEY_FILE={target}")
    return 0
