"""Every bad authentication gets a clear, spec-shaped error and stores nothing.

HTTP message signatures, GNAP tokens and access rights on the resource server, grant
requests on the authorization server, and outages (introspection unreachable, Redis
killed), which must answer 503 with Retry-After and never pass for a bad token.
"""

from __future__ import annotations

import base64
import os
import signal
import time
import urllib.parse
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay.client import SignedClient, public_jwk
from opay.http import signatures
from opay.persistence import keys
from tests.conftest import INCOMING_ALL, make_world
from tests.support import OpayServer, free_port
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio

USD100 = {"value": "100", "assetCode": "USD", "assetScale": 2}
STORED = ("opay:e:*", "opay:ix:*", "opay:j:*", keys.grant("*"), keys.token("*"), keys.token_by_id("*"))


def assert_401(response, world, code: str | None = None) -> dict:
    error = assert_error(response, 401, code)
    assert response.headers.get("www-authenticate") == f"GNAP as_uri={world.receiver['authServer']}", response.headers
    return error


def assert_503(response, code: str | None = None) -> dict:
    error = assert_error(response, 503, code)
    assert response.headers.get("retry-after", "").isdigit(), response.headers
    return error


class Store:
    """Redis key counts of everything a request could create: entities, indexes, journals, grants, tokens."""

    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)

    async def counts(self) -> dict[str, int]:
        return {p: len([k async for k in self.redis.scan_iter(match=p, count=1000)]) for p in STORED}

    @asynccontextmanager
    async def unchanged(self):
        before = await self.counts()
        yield
        assert await self.counts() == before


@pytest.fixture
async def store(server):
    probe = Store(server.redis_url)
    try:
        yield probe
    finally:
        await probe.redis.aclose()


@pytest.fixture
async def token(world) -> str:
    return await world.token()


@pytest.fixture
async def payment(world, token) -> dict:
    created = await world.create_payment(token, incomingAmount=USD100)
    assert created.status_code == 201, created.text
    return created.json()


def create_url(world) -> str:
    return f"{world.server.public_url}/incoming-payments"


def list_url(world, wallet: str | None = None) -> str:
    return f"{create_url(world)}?wallet-address={urllib.parse.quote(wallet or world.receiver['id'], safe='')}"


def create_body(world) -> bytes:
    return f'{{"walletAddress":"{world.receiver["id"]}","incomingAmount":{{"value":"100","assetCode":"USD","assetScale":2}}}}'.encode()


def signed(
    client: SignedClient,
    method: str,
    url: str,
    body: bytes = b"",
    token: str | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
    keyid: str | None = None,
    created: int | None = None,
) -> dict[str, str]:
    headers = {"content-type": "application/json"} if body else {}
    if token is not None:
        headers["authorization"] = f"GNAP {token}"
    return signatures.sign(
        method=method,
        url=url,
        headers=headers,
        body=body,
        private_key=key or client.private_key,
        keyid=keyid or client.keyid,
        created=created,
    )


async def send(world, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> httpx.Response:
    return await world.http.request(method, url, content=body, headers=headers)


async def state_of(world, token: str, payment: dict) -> dict:
    fetched = await world.client.request("GET", payment["id"], token=token)
    assert fetched.status_code == 200, fetched.text
    return fetched.json()


# --- HTTP message signatures ----------------------------------------------------------


async def test_the_well_signed_request_is_accepted(world, token) -> None:
    """The control for every refusal below: the same request, signed properly, is created."""
    body = create_body(world)
    response = await send(world, "POST", create_url(world), signed(world.client, "POST", create_url(world), body, token), body)
    assert response.status_code == 201, response.text


async def test_unsigned_requests_with_a_token_are_401(world, token, payment, store) -> None:
    async with store.unchanged():
        assert_401(await world.client.request("POST", create_url(world), body=create_body(world), token=token, sign=False), world)
        assert_401(await world.client.request("GET", payment["id"], token=token, sign=False), world)
        assert_401(await world.client.request("GET", list_url(world), token=token, sign=False), world)
        assert_401(await world.client.request("POST", f"{payment['id']}/complete", token=token, sign=False), world)
    assert (await state_of(world, token, payment))["completed"] is False


async def test_body_changed_after_signing_is_401(world, token, store) -> None:
    body = create_body(world)
    tampered = body.replace(b'"100"', b'"900"')
    assert len(tampered) == len(body) and tampered != body
    headers = signed(world.client, "POST", create_url(world), body, token)
    async with store.unchanged():
        # The Content-Digest no longer matches the body.
        assert_401(await send(world, "POST", create_url(world), headers, tampered), world, "invalid_digest")
        # A digest recomputed for the new body is not the one that was signed.
        rehashed = {**headers, "content-digest": signatures.content_digest(tampered)}
        assert_401(await send(world, "POST", create_url(world), rehashed, tampered), world, "invalid_signature")


async def test_signed_for_another_method_or_target_is_401(world, token, payment, store) -> None:
    body = create_body(world)
    async with store.unchanged():
        other_target = signed(world.client, "POST", create_url(world) + "?x=1", body, token)
        assert_401(await send(world, "POST", create_url(world), other_target, body), world, "invalid_signature")
        other_host = signed(world.client, "POST", create_url(world).replace("127.0.0.1", "localhost"), body, token)
        assert_401(await send(world, "POST", create_url(world), other_host, body), world, "invalid_signature")
        as_get = signed(world.client, "GET", f"{payment['id']}/complete", b"", token)
        assert_401(await send(world, "POST", f"{payment['id']}/complete", as_get), world, "invalid_signature")
    assert (await state_of(world, token, payment))["completed"] is False


async def test_signed_with_the_wrong_key_is_401(world, token, store) -> None:
    other = await world.new_client("other")
    # The other client also registers a kid that our client does not have.
    (await world.operator.add_key(other.wallet_address.rsplit("/", 1)[1], public_jwk(other.private_key, "other-only"))).raise_for_status()
    stranger = Ed25519PrivateKey.generate()
    body = create_body(world)
    url = create_url(world)
    async with store.unchanged():
        # Another client's key under our kid: looked up on the token's client, it does not verify.
        assert_401(await send(world, "POST", url, signed(world.client, "POST", url, body, token, key=other.private_key), body), world, "invalid_signature")
        # A kid registered only on another client is not one of this client's keys.
        assert_401(
            await send(world, "POST", url, signed(world.client, "POST", url, body, token, key=other.private_key, keyid="other-only"), body),
            world,
            "invalid_signature",
        )
        # A kid nobody registered.
        assert_401(await send(world, "POST", url, signed(world.client, "POST", url, body, token, key=stranger, keyid="nobody"), body), world)
        # The other client using our client's token with its own, registered key.
        assert_401(await other.request("POST", url, body=body, token=token), world)


async def test_a_revoked_key_no_longer_signs(world, token, store) -> None:
    path = world.client.wallet_address.rsplit("/", 1)[1]
    revoked = await world.operator.http.delete(f"{world.server.operator_url}/wallet-addresses/{path}/keys/key-1", headers=world.operator.headers)
    assert revoked.status_code == 204, revoked.text
    async with store.unchanged():
        assert_401(await world.create_payment(token, incomingAmount=USD100), world)


@pytest.mark.parametrize("offset", [-301, -3600, 31, 3600], ids=["just-stale", "hour-old", "just-future", "far-future"])
async def test_created_outside_the_window_is_401(world, token, store, offset) -> None:
    body = create_body(world)
    headers = signed(world.client, "POST", create_url(world), body, token, created=int(time.time()) + offset)
    async with store.unchanged():
        assert_401(await send(world, "POST", create_url(world), headers, body), world, "stale_signature")


async def test_created_inside_the_window_is_accepted(world, token) -> None:
    body = create_body(world)
    headers = signed(world.client, "POST", create_url(world), body, token, created=int(time.time()) - 200)
    assert (await send(world, "POST", create_url(world), headers, body)).status_code == 201


async def test_signature_not_covering_authorization_is_401(world, token, payment, store) -> None:
    body = create_body(world)
    async with store.unchanged():
        headers = {**signed(world.client, "POST", create_url(world), body), "authorization": f"GNAP {token}"}
        assert_401(await send(world, "POST", create_url(world), headers, body), world, "invalid_signature")
        headers = {**signed(world.client, "GET", payment["id"]), "authorization": f"GNAP {token}"}
        assert_401(await send(world, "GET", payment["id"], headers), world, "invalid_signature")


async def test_content_digest_not_covered_with_a_body_is_401(world, token, store) -> None:
    body = create_body(world)
    headers = {
        **signed(world.client, "POST", create_url(world), b"", token),
        "content-type": "application/json",
        "content-digest": signatures.content_digest(body),
    }
    assert "content-digest" not in headers["signature-input"]
    async with store.unchanged():
        assert_401(await send(world, "POST", create_url(world), headers, body), world, "invalid_signature")


@pytest.mark.parametrize(
    "change",
    [
        {"signature": None},
        {"signature-input": None},
        {"signature": "sig1=:AAAA:"},
        {"signature": "garbage"},
        {"signature-input": "garbage"},
        {"signature-input": 'sig1=("@method" "@target-uri" "authorization" "content-digest" "content-length" "content-type");created=1'},
        {"label": "sig2"},
        {"alg": "rsa-pss-sha512"},
    ],
    ids=["no-signature", "no-input", "short-signature", "garbage-signature", "garbage-input", "no-keyid", "label-mismatch", "alg"],
)
async def test_malformed_signature_headers_are_401(world, token, store, change) -> None:
    body = create_body(world)
    url = create_url(world)
    if "alg" in change:
        headers = signed(world.client, "POST", url, body, token)
        # Re-sign with an alg parameter the server refuses.
        raw = headers["signature-input"][len("sig1="):] + f';alg="{change["alg"]}"'
        parsed = signatures.parse_signature_input(f"sig1={raw}")
        base = signatures.signature_base("POST", url, headers, parsed)
        headers["signature-input"] = f"sig1={raw}"
        headers["signature"] = "sig1=:" + base64.b64encode(world.client.private_key.sign(base)).decode() + ":"
    else:
        headers = signed(world.client, "POST", url, body, token)
        for name, value in change.items():
            if name == "label":
                headers["signature"] = headers["signature"].replace("sig1=", f"{value}=", 1)
            elif value is None:
                del headers[name]
            else:
                headers[name] = value
    async with store.unchanged():
        assert_401(await send(world, "POST", url, headers, body), world)


# --- tokens ---------------------------------------------------------------------------


async def test_no_token_is_401(world, payment, store) -> None:
    async with store.unchanged():
        assert_401(await world.client.request("POST", create_url(world), body=create_body(world)), world, "missing_token")
        assert_401(await world.client.request("GET", list_url(world)), world, "missing_token")
        assert_401(await world.client.request("POST", f"{payment['id']}/complete"), world, "missing_token")


@pytest.mark.parametrize("header", ["Bearer abc", "GNAP", "GNAPabc", "gnap abc", "Basic dXNlcjpwYXNz"])
async def test_an_authorization_header_that_is_not_gnap_is_401(world, store, header) -> None:
    body = create_body(world)
    headers = {**signed(world.client, "POST", create_url(world), body), "authorization": header}
    async with store.unchanged():
        assert_401(await send(world, "POST", create_url(world), headers, body), world, "invalid_token")


async def test_a_garbage_token_is_401(world, payment, store) -> None:
    async with store.unchanged():
        for garbage in ("garbage", "x" * 500, "a b c", "%00"):
            assert_401(await world.create_payment(garbage, incomingAmount=USD100), world, "invalid_token")
        assert_401(await world.client.request("GET", payment["id"], token="garbage"), world, "invalid_token")


async def test_a_revoked_token_is_401(world, store) -> None:
    grant = await world.client.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": INCOMING_ALL}])
    value, manage = grant["access_token"]["value"], grant["access_token"]["manage"]
    assert (await world.create_payment(value)).status_code == 201  # cached as active by introspection
    revoked = await world.client.request("DELETE", manage, token=value)
    assert revoked.status_code == 204, revoked.text
    async with store.unchanged():
        assert_401(await world.create_payment(value), world, "invalid_token")
        assert_401(await world.client.request("GET", list_url(world), token=value), world, "invalid_token")


async def test_a_rotated_token_is_401_and_its_successor_works(world, store) -> None:
    grant = await world.client.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": INCOMING_ALL}])
    old, manage = grant["access_token"]["value"], grant["access_token"]["manage"]
    assert (await world.create_payment(old)).status_code == 201
    rotated = await world.client.request("POST", manage, token=old)
    assert rotated.status_code == 200, rotated.text
    async with store.unchanged():
        assert_401(await world.create_payment(old), world, "invalid_token")
    assert (await world.create_payment(rotated.json()["access_token"]["value"])).status_code == 201


async def test_a_cancelled_grant_s_token_is_401(world, store) -> None:
    grant = await world.client.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": INCOMING_ALL}])
    value = grant["access_token"]["value"]
    cancelled = await world.client.request("DELETE", grant["continue"]["uri"], token=grant["continue"]["access_token"]["value"])
    assert cancelled.status_code == 204, cancelled.text
    async with store.unchanged():
        assert_401(await world.create_payment(value), world, "invalid_token")


async def test_a_token_of_the_wrong_type_is_403(world, payment, store) -> None:
    quote_token = await world.token([{"type": "quote", "actions": ["create", "read"]}])
    async with store.unchanged():
        assert_error(await world.create_payment(quote_token, incomingAmount=USD100), 403, "insufficient_grant")
        assert_error(await world.client.request("GET", payment["id"], token=quote_token), 403, "insufficient_grant")
        assert_error(await world.client.request("GET", list_url(world), token=quote_token), 403, "insufficient_grant")
        assert_error(await world.client.request("POST", f"{payment['id']}/complete", token=quote_token), 403, "insufficient_grant")


async def test_a_token_without_the_action_is_403(world, token, payment, store) -> None:
    read_only = await world.token([{"type": "incoming-payment", "actions": ["read"]}])
    create_only = await world.token([{"type": "incoming-payment", "actions": ["create"]}])
    async with store.unchanged():
        assert_error(await world.create_payment(read_only, incomingAmount=USD100), 403, "insufficient_grant")
        assert_error(await world.client.request("POST", f"{payment['id']}/complete", token=read_only), 403, "insufficient_grant")
        assert_error(await world.client.request("GET", list_url(world), token=read_only), 403, "insufficient_grant")
        assert_error(await world.client.request("GET", payment["id"], token=create_only), 403, "insufficient_grant")
    assert (await world.client.request("GET", payment["id"], token=read_only)).status_code == 200
    assert (await state_of(world, token, payment))["completed"] is False


async def test_a_token_for_another_wallet_address_sees_nothing_here(world, token, payment, store) -> None:
    elsewhere = await world.operator.wallet_address(f"bob-{uuid.uuid4().hex[:10]}", "USD", 2)
    scoped = await world.token([{"type": "incoming-payment", "actions": INCOMING_ALL, "identifier": elsewhere["id"]}])
    async with store.unchanged():
        assert_error(await world.create_payment(scoped, incomingAmount=USD100), 403, "insufficient_grant")
        assert_error(await world.client.request("GET", list_url(world), token=scoped), 403, "insufficient_grant")
        assert_error(await world.client.request("GET", payment["id"], token=scoped), 404, "not_found")
        assert_error(await world.client.request("POST", f"{payment['id']}/complete", token=scoped), 404, "not_found")
    assert (await state_of(world, token, payment))["completed"] is False
    # The same token does work on the wallet address it names.
    assert (await world.create_payment(scoped, walletAddress=elsewhere["id"])).status_code == 201


async def test_another_client_cannot_see_or_touch_our_payments(world, token, payment, store) -> None:
    other = await world.new_client("other")
    theirs = await world.token(client=other)
    async with store.unchanged():
        assert_error(await other.request("GET", payment["id"], token=theirs), 404, "not_found")
        assert_error(await other.request("POST", f"{payment['id']}/complete", token=theirs), 404, "not_found")
        listed = await other.request("GET", list_url(world), token=theirs)
        assert listed.status_code == 200, listed.text
        assert listed.json()["result"] == []
    assert (await state_of(world, token, payment))["completed"] is False


async def test_read_all_and_list_all_see_other_clients_payments_but_do_not_complete_them(world, token, payment, store) -> None:
    other = await world.new_client("auditor")
    wide = await world.consented_token(
        [{"type": "incoming-payment", "actions": ["read-all", "list-all", "complete"], "identifier": world.receiver["id"]}], client=other
    )
    fetched = await other.request("GET", payment["id"], token=wide)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["id"] == payment["id"]
    listed = await other.request("GET", list_url(world), token=wide)
    assert [p["id"] for p in listed.json()["result"]] == [payment["id"]]
    async with store.unchanged():
        assert_error(await other.request("POST", f"{payment['id']}/complete", token=wide), 404, "not_found")
    assert (await state_of(world, token, payment))["completed"] is False


async def test_the_unauthenticated_view_reveals_no_payment_details(world, payment) -> None:
    public = await world.http.get(payment["id"])
    assert public.status_code == 200, public.text
    assert public.json() == {"receivedAmount": {"value": "0", "assetCode": "USD", "assetScale": 2}, "authServer": world.receiver["authServer"]}
    assert_error(await world.http.get(f"{create_url(world)}/{uuid.uuid4()}"), 404, "not_found")


async def test_a_directed_identity_token_only_works_with_its_own_key(world, store) -> None:
    key = Ed25519PrivateKey.generate()
    holder = SignedClient(world.http, world.client.wallet_address, key, "directed")
    grant = await holder.grant(
        world.receiver["authServer"], [{"type": "incoming-payment", "actions": INCOMING_ALL}], client={"jwk": public_jwk(key, "directed")}
    )
    value = grant["access_token"]["value"]
    impostor = SignedClient(world.http, world.client.wallet_address, Ed25519PrivateKey.generate(), "directed")
    async with store.unchanged():
        assert_401(await impostor.request("POST", create_url(world), body=create_body(world), token=value), world, "invalid_signature")
        # The wallet address's registered key is not the directed identity's key either.
        assert_401(await world.client.request("POST", create_url(world), body=create_body(world), token=value), world)
    assert (await holder.request("POST", create_url(world), body=create_body(world), token=value)).status_code == 201


# --- GNAP grant requests ------------------------------------------------------------


def grant_body(world, access=None, client=None, **extra) -> dict:
    access = access if access is not None else [{"type": "incoming-payment", "actions": ["create", "read"]}]
    return {"access_token": {"access": access}, "client": client if client is not None else world.client.wallet_address, **extra}


async def test_an_unsigned_grant_request_is_401_invalid_client(world, store) -> None:
    async with store.unchanged():
        response = await world.client.request("POST", world.receiver["authServer"], json=grant_body(world), sign=False)
        assert_error(response, 401, "invalid_client")


async def test_a_grant_request_signed_with_an_unknown_key_is_401(world, store) -> None:
    other = await world.new_client("other")
    stranger = SignedClient(world.http, world.client.wallet_address, Ed25519PrivateKey.generate(), "nobody")
    wrong_key = SignedClient(world.http, world.client.wallet_address, other.private_key, world.client.keyid)
    unknown_wallet = SignedClient(world.http, f"{world.server.public_url}/nobody-{uuid.uuid4().hex}", world.client.private_key, "key-1")
    async with store.unchanged():
        for client in (stranger, wrong_key, unknown_wallet):
            response = await client.request("POST", world.receiver["authServer"], json=grant_body(world, client=client.wallet_address))
            assert_error(response, 401, "invalid_client")


async def test_a_grant_request_changed_after_signing_is_401(world, store) -> None:
    body = (
        b'{"access_token":{"access":[{"type":"incoming-payment","actions":["read"]}]},"client":"'
        + world.client.wallet_address.encode()
        + b'"}'
    )
    tampered = body.replace(b'"read"', b'"list"')
    headers = signed(world.client, "POST", world.receiver["authServer"], body)
    async with store.unchanged():
        assert_error(await send(world, "POST", world.receiver["authServer"], headers, tampered), 401, "invalid_client")


@pytest.mark.parametrize(
    "client",
    [
        "not a url",
        "",
        "ftp://example.com/alice",
        "http://:80/alice",
        "http://[::1",
        "http://127.0.0.1:99999/alice",
        "http://a\x00b/alice",
        {"walletAddress": "not a url"},
        {"walletAddress": 7},
        {"jwk": {"kty": "RSA"}},
        {"other": "x"},
        42,
    ],
    ids=["text", "empty", "ftp", "no-host", "bad-ipv6", "bad-port", "nul", "wallet-text", "wallet-not-string", "jwk-rsa", "unknown-form", "number"],
)
async def test_a_grant_request_with_a_malformed_client_is_400(world, store, client) -> None:
    async with store.unchanged():
        response = await world.client.request("POST", world.receiver["authServer"], json=grant_body(world, client=client))
        assert_error(response, 400)
        assert response.json()["error"]["code"] in ("invalid_client", "invalid_request")


@pytest.mark.parametrize(
    "access",
    [
        [{"type": "payment", "actions": ["create"]}],
        [{"type": "incoming-payment", "actions": ["delete"]}],
        [{"type": "quote", "actions": ["list"]}],
        [{"type": "incoming-payment", "actions": []}],
        [{"type": "incoming-payment"}],
        [{"type": "incoming-payment", "actions": ["read"], "extra": 1}],
        [],
        [{"type": "incoming-payment", "actions": ["read"]}] * 4,
        "incoming-payment",
    ],
    ids=["bad-type", "bad-action", "action-of-other-type", "no-actions", "actions-missing", "unknown-field", "empty", "four-items", "not-list"],
)
async def test_a_grant_request_with_bad_access_is_400(world, store, access) -> None:
    async with store.unchanged():
        response = await world.client.request("POST", world.receiver["authServer"], json=grant_body(world, access=access))
        assert_error(response, 400, "invalid_request")


async def test_outgoing_payment_access_is_400_for_now(world, store) -> None:
    access = [
        {
            "type": "outgoing-payment",
            "actions": ["create", "read"],
            "identifier": world.client.wallet_address,
            "limits": {"debitAmount": USD100},
        }
    ]
    async with store.unchanged():
        response = await world.client.request("POST", world.receiver["authServer"], json=grant_body(world, access=access))
        assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "identifier",
    ["https://elsewhere.example/alice", "{public}/nobody-{rand}", "not a url"],
    ids=["foreign", "unknown-path", "text"],
)
async def test_a_grant_for_an_identifier_not_ours_is_400(world, store, identifier) -> None:
    identifier = identifier.format(public=world.server.public_url, rand=uuid.uuid4().hex)
    access = [{"type": "incoming-payment", "actions": ["create"], "identifier": identifier}]
    async with store.unchanged():
        response = await world.client.request("POST", world.receiver["authServer"], json=grant_body(world, access=access))
        assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": ',
        b"[]",
        b"",
        b'{"client": "x"}',
    ],
    ids=["truncated", "array", "empty", "no-access-token"],
)
async def test_a_malformed_grant_request_is_400(world, store, body) -> None:
    if body == b'{"client": "x"}':
        body = f'{{"client": "{world.client.wallet_address}"}}'.encode()
    async with store.unchanged():
        response = await world.client.request("POST", world.receiver["authServer"], body=body)
        assert_error(response, 400, "invalid_request")


async def test_an_interactive_grant_request_is_pending_until_consent(world) -> None:
    body = grant_body(world, interact={"start": ["redirect"], "finish": {"method": "redirect", "uri": "http://x/y", "nonce": "n"}})
    response = await world.client.request("POST", world.receiver["authServer"], json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"interact", "continue"}, "no token before the user consents"
    assert response.json()["interact"]["redirect"].startswith(world.receiver["authServer"] + "/interact/")


async def test_grant_management_with_a_wrong_token_is_401(world, store) -> None:
    grant = await world.client.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": ["read"]}])
    manage, cont = grant["access_token"]["manage"], grant["continue"]["uri"]
    other = await world.new_client("other")
    async with store.unchanged():
        assert_error(await world.client.request("DELETE", manage, token="wrong"), 401)
        assert_error(await world.client.request("POST", manage, token="wrong"), 401)
        assert_error(await world.client.request("DELETE", cont, token="wrong"), 401)
        # The right token value, but signed by another client: still not theirs to manage.
        assert_error(await other.request("DELETE", manage, token=grant["access_token"]["value"]), 401, "invalid_client")
        assert_error(await other.request("DELETE", cont, token=grant["continue"]["access_token"]["value"]), 401, "invalid_client")
    assert (await world.client.request("GET", list_url(world), token=grant["access_token"]["value"])).status_code == 403


# --- outages --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def introspection_down(tmp_path_factory: pytest.TempPathFactory):
    dead = free_port()  # nothing listens here
    server = OpayServer(Path(tmp_path_factory.mktemp("introspection-down")), extra_env={"OPAY_INTROSPECTION_URL": f"http://127.0.0.1:{dead}/introspect"})
    server.start()
    yield server
    server.stop()


async def test_unreachable_introspection_is_503_never_401(introspection_down) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        world = await make_world(introspection_down, http)
        token = await world.token()  # the grant itself does not need introspection
        store = Store(introspection_down.redis_url)
        try:
            async with store.unchanged():
                assert_503(await world.create_payment(token, incomingAmount=USD100), "auth_unavailable")
                assert_503(await world.client.request("GET", list_url(world), token=token), "auth_unavailable")
                assert_503(await world.create_payment("garbage"), "auth_unavailable")
                # Even an unsigned request: with the authorization server away, nothing can be judged.
                assert_503(await world.client.request("POST", create_url(world), body=create_body(world), token=token, sign=False))
        finally:
            await store.redis.aclose()


def listening_pid(port: int, parent: int) -> int:
    """The child of `parent` that listens on 127.0.0.1:port, found through /proc (socket inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no child of {parent} listens on port {port}")


@pytest.fixture(scope="module")
def redis_killed_server(tmp_path_factory: pytest.TempPathFactory):
    server = OpayServer(Path(tmp_path_factory.mktemp("redis-killed")))
    server.start()
    yield server
    server.stop()


async def test_redis_down_is_503_never_401_or_500(redis_killed_server) -> None:
    server = redis_killed_server
    async with httpx.AsyncClient(timeout=60) as http:
        world = await make_world(server, http)
        token = await world.token()
        created = await world.create_payment(token, incomingAmount=USD100)
        assert created.status_code == 201, created.text
        payment = created.json()

        assert server.process is not None
        pid = listening_pid(server.redis_port, server.process.pid)
        assert b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
            assert time.monotonic() < deadline, "redis-server did not die"
            time.sleep(0.05)

        assert_503(await world.create_payment(token, incomingAmount=USD100))
        assert_503(await world.operator.credit(payment["id"], "5", "during-outage"))
        assert_503(await world.client.request("GET", payment["id"], token=token))
        assert_503(await world.client.request("GET", list_url(world), token=token))
        assert_503(await world.client.request("POST", world.receiver["authServer"], json=grant_body(world)))
        assert_503(await http.get(payment["id"]))  # the public view reads Redis too
