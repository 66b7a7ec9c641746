"""A small Open Payments client that signs like the official SDK. Used by tests and benchmarks."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opay import base64url
from opay.http import signatures


def public_jwk(private_key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kid": kid, "x": base64url.encode(raw), "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA"}


class RequestSigner:
    """One client key: the headers and body of a request signed as the official SDK signs it
    (`token` adds `Authorization: GNAP <token>`). Sending is the caller's: SignedClient sends
    with a plain httpx client (tests, benchmarks), the server's remote receivers through the
    fetch policy (opay/net/fetch.py)."""

    def __init__(self, wallet_address: str, private_key: Ed25519PrivateKey, keyid: str) -> None:
        self.wallet_address = wallet_address
        self.private_key = private_key
        self.keyid = keyid

    def prepare(
        self, method: str, url: str, *, json: Any = None, body: bytes | None = None, token: str | None = None, sign: bool = True
    ) -> tuple[bytes, dict[str, str]]:
        if body is None:
            body = b"" if json is None else msgspec.json.encode(json)
        headers: dict[str, str] = {}
        if body:
            headers["content-type"] = "application/json"
        if token is not None:
            headers["authorization"] = f"GNAP {token}"
        if sign:
            headers = signatures.sign(method=method, url=url, headers=headers, body=body, private_key=self.private_key, keyid=self.keyid)
        return body, headers

    def grant_body(self, access: list[dict], client: Any = None) -> dict:
        """A non-interactive grant request naming this client by its wallet address."""
        return {"access_token": {"access": access}, "client": client if client is not None else self.wallet_address}


class SignedClient(RequestSigner):
    """Requests signed with one client key, sent with `http`."""

    def __init__(self, http: httpx.AsyncClient, wallet_address: str, private_key: Ed25519PrivateKey, keyid: str) -> None:
        super().__init__(wallet_address, private_key, keyid)
        self.http = http

    async def request(
        self, method: str, url: str, *, json: Any = None, body: bytes | None = None, token: str | None = None, sign: bool = True
    ) -> httpx.Response:
        body, headers = self.prepare(method, url, json=json, body=body, token=token, sign=sign)
        return await self.http.request(method, url, content=body, headers=headers)

    async def grant(self, auth_server: str, access: list[dict], client: Any = None) -> dict:
        response = await self.request("POST", auth_server, json=self.grant_body(access, client))
        response.raise_for_status()
        return response.json()


class Operator:
    def __init__(self, http: httpx.AsyncClient, url: str, token: str) -> None:
        self.http = http
        self.url = url
        self.headers = {"authorization": f"Bearer {token}"}

    async def post(self, path: str, json: Any) -> httpx.Response:
        return await self.http.post(self.url + path, json=json, headers=self.headers)

    async def get(self, path: str, params: dict | None = None) -> httpx.Response:
        return await self.http.get(self.url + path, params=params, headers=self.headers)

    async def patch(self, path: str, json: Any) -> httpx.Response:
        return await self.http.patch(self.url + path, json=json, headers=self.headers)

    async def wallet_address(
        self, path: str, asset_code: str = "USD", asset_scale: int = 2, public_name: str | None = None, owner: str | None = None
    ) -> dict:
        body: dict = {"path": path, "assetCode": asset_code, "assetScale": asset_scale, "publicName": public_name}
        if owner is not None:
            body["owner"] = owner  # who may decide its consent on the built-in page
        response = await self.post("/wallet-addresses", body)
        response.raise_for_status()
        return response.json()

    async def add_key(self, path: str, jwk: dict) -> httpx.Response:
        return await self.post(f"/wallet-addresses/{path}/keys", jwk)

    async def credit(self, incoming_payment: str, amount: str, key: str) -> httpx.Response:
        return await self.post("/credits", {"incomingPayment": incoming_payment, "amount": amount, "idempotencyKey": key})
