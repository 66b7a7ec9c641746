"""Wallet addresses and keys: the operator API and the public documents it produces."""

from __future__ import annotations

import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay.client import public_jwk

pytestmark = pytest.mark.anyio


def path_of(wallet: dict) -> str:
    return wallet["id"].rsplit("/", 1)[1]


async def test_wallet_address_document_and_jwks(world) -> None:
    wallet = {k: v for k, v in world.receiver.items() if k not in ("owner", "active", "createdAt")}  # the operator's only
    assert wallet == {
        "id": wallet["id"],
        "publicName": "Alice",
        "assetCode": "USD",
        "assetScale": 2,
        "authServer": f"{world.server.public_url}/auth",
        "resourceServer": world.server.public_url,
    }
    # The operator sees the owner; the public document never shows it.
    assert world.receiver["owner"] == f"user-{path_of(wallet)}"
    fetched = await world.http.get(wallet["id"])
    assert fetched.status_code == 200 and fetched.json() == wallet
    keys = (await world.http.get(world.client.wallet_address + "/jwks.json")).json()
    [key] = keys["keys"]
    assert set(key) == {"kid", "alg", "kty", "crv", "x"}
    assert (key["alg"], key["kty"], key["crv"], key["kid"]) == ("EdDSA", "OKP", "Ed25519", "key-1")
    assert (await world.http.get(world.server.public_url + "/nobody-here")).status_code == 404
    assert (await world.http.get(world.server.public_url + "/nobody-here/jwks.json")).status_code == 404


async def test_operator_creates_lists_and_refuses_bad_paths(world) -> None:
    path = f"bob-{uuid.uuid4().hex[:8]}"
    created = await world.operator.post("/wallet-addresses", {"path": path, "assetCode": "EUR", "assetScale": 2})
    assert created.status_code == 201 and created.json()["id"] == f"{world.server.public_url}/{path}"
    assert "publicName" not in created.json()
    again = await world.operator.post("/wallet-addresses", {"path": path, "assetCode": "EUR", "assetScale": 2})
    assert again.status_code == 409 and again.json()["error"]["code"] == "exists"
    listed = await world.http.get(world.server.operator_url + "/wallet-addresses", headers=world.server.operator_headers)
    assert path in [w["id"].rsplit("/", 1)[1] for w in listed.json()["result"]]
    for bad in ("Upper", "incoming-payments", "auth", "x/jwks.json", "", "a//b", "../x"):
        answer = await world.operator.post("/wallet-addresses", {"path": bad, "assetCode": "EUR", "assetScale": 2})
        assert answer.status_code == 400, bad
        assert set(answer.json()["error"]) >= {"code", "description"}
    unknown_field = await world.operator.post("/wallet-addresses", {"path": "zed", "assetCode": "EUR", "assetScale": 2, "x": 1})
    assert unknown_field.status_code == 400


async def test_operator_api_needs_its_token(world) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"GNAP {world.server.operator_token}"}):
        answer = await world.http.get(world.server.operator_url + "/wallet-addresses", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


async def test_bad_keys_are_refused(world) -> None:
    path = path_of(world.receiver)
    good = public_jwk(Ed25519PrivateKey.generate(), "k-good")
    for bad in (
        {**good, "crv": "P-256"},
        {**good, "kty": "EC"},
        {**good, "x": good["x"][:-2]},
        {**good, "x": good["x"] + "="},
        {**good, "alg": "RS256"},
    ):
        answer = await world.operator.add_key(path, bad)
        assert answer.status_code == 400, bad
    assert (await world.operator.add_key(path, good)).status_code == 201
    duplicate = await world.operator.add_key(path, good)
    assert duplicate.status_code == 409
    assert (await world.operator.add_key("no-such-wallet", {**good, "kid": "k2"})).status_code == 404


async def test_revoked_key_stops_signing_at_once(world) -> None:
    token = await world.token()
    assert (await world.create_payment(token)).status_code == 201
    revoked = await world.http.delete(
        f"{world.server.operator_url}/wallet-addresses/{path_of(world.client_wallet)}/keys/key-1",
        headers=world.server.operator_headers,
    )
    assert revoked.status_code == 204
    refused = await world.create_payment(token)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_signature"
    again = await world.http.delete(
        f"{world.server.operator_url}/wallet-addresses/{path_of(world.client_wallet)}/keys/key-1",
        headers=world.server.operator_headers,
    )
    assert again.status_code == 404
