"""Receivers on another Open Payments server, read as an Open Payments client (issue 10, item 1).

Two real opay servers, A and B, each with its own redis-server and Ray, on loopback (both
with OPAY_ALLOW_INSECURE_FETCH and OPAY_FETCH_ALLOW=127.0.0.1, so B can fetch A's jwks.json
to verify A's client key). A's resolver runs in the test process with A's configuration
(settings read from A's environment, A's Redis, hence A's client identity and key): what A's
front end runs once quotes take remote receivers. Incoming payments are created on B by a
client of B, through B's API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from opay import base64url
from opay.domain.amounts import Asset
from opay.domain.times import format_ms, parse_date_time
from opay.ilp.credentials import CredentialMint
from opay.net.fetch import Fetcher, FetchPolicy
from opay.persistence import clients, keys
from opay.persistence.wallet_addresses import WalletAddressStore
from opay.remote.identity import ensure_client_identity
from opay.remote.receivers import ReceiverError, RemoteReceivers
from opay.settings import Settings, from_environment
from tests.conftest import World, make_world
from tests.support import OpayServer, free_port, two_servers

pytestmark = pytest.mark.anyio



@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    with two_servers(Path(tmp_path_factory.mktemp("remote")), peered=False) as pair:
        yield pair


class Resolver:
    """A's resolver, as A's front end builds it, from A's environment (plus `overrides`)."""

    def __init__(self, server: OpayServer, **overrides: str) -> None:
        self.settings: Settings = from_environment({**server.env(), **overrides})
        self.redis = clients.asynchronous(server.redis_url, 5.0)
        self.fetcher = Fetcher(FetchPolicy.from_settings(self.settings))
        self.receivers: RemoteReceivers | None = None

    async def __aenter__(self) -> RemoteReceivers:
        signer = await ensure_client_identity(self.settings, self.redis, WalletAddressStore(self.redis))
        self.receivers = RemoteReceivers(self.settings, self.fetcher, signer)
        return self.receivers

    async def __aexit__(self, *_: object) -> None:
        await self.fetcher.aclose()
        await self.redis.aclose()


async def refused(resolving, code: str) -> ReceiverError:
    with pytest.raises(ReceiverError) as caught:
        await resolving
    assert caught.value.code == code, caught.value.description
    assert caught.value.status == (503 if code == "receiver_unavailable" else 400)
    return caught.value


async def incoming(world: World, **body) -> dict:
    created = await world.create_payment(await world.token(), **body)
    assert created.status_code == 201, created.text
    return created.json()


async def grants_at(server: OpayServer) -> int:
    """How many grants B's authorization server has issued: its Redis grant records."""
    redis = clients.asynchronous(server.redis_url, 5.0)
    try:
        return len([key async for key in redis.scan_iter(match=keys.grant("*")) if not key.endswith(b":tokens")])
    finally:
        await redis.aclose()


@pytest.fixture
async def at_b(servers):
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(servers[1], http)


async def test_a_resolves_an_incoming_payment_on_b_with_its_ilp_method(servers, at_b: World) -> None:
    a, b = servers
    payment = await incoming(at_b, incomingAmount={"value": "500", "assetCode": "USD", "assetScale": 2})
    credited = await at_b.operator.credit(payment["id"], "120", f"credit-{uuid.uuid4()}")
    assert credited.status_code in (200, 201), credited.text
    async with Resolver(a) as receivers:
        found = await receivers.resolve(payment["id"])
    assert found.id == payment["id"] and found.wallet_address == at_b.receiver["id"]
    assert found.asset == Asset("USD", 2)
    assert (found.incoming_amount, found.received_amount, found.remaining) == (500, 120, 380)
    assert found.completed is False and found.expires_at_ms is not None and found.expires_at_ms > time.time() * 1000
    assert found.auth_server == f"{b.public_url}/auth"
    # Credentials B's own STREAM receiver accepts for this very payment (B mints fresh ones
    # on every read): opened with B's STREAM secret, they name the payment and its secret.
    assert found.ilp_address.startswith("test.b.") and len(found.shared_secret) == 32
    redis_b = clients.asynchronous(b.redis_url, 5.0)
    try:
        mint = CredentialMint(await redis_b.get(keys.STREAM_SECRET), "test.b")
    finally:
        await redis_b.aclose()
    opened = mint.open(found.ilp_address)
    assert opened is not None and opened[0] == payment["id"].rsplit("/", 1)[1]
    assert mint.shared_secret_for(opened[1]) == found.shared_secret


async def test_the_grant_is_reused_and_asked_again_once_revoked(servers, at_b: World) -> None:
    a, b = servers
    payments = [await incoming(at_b) for _ in range(3)]
    before = await grants_at(b)
    async with Resolver(a) as receivers:
        for payment in payments:
            assert (await receivers.resolve(payment["id"])).id == payment["id"]
        # Concurrent resolutions with the token cached, and again after it is dropped: one
        # grant request in flight per authorization server, however many wait for it.
        await asyncio.gather(*(receivers.resolve(p["id"]) for p in payments * 3))
        assert await grants_at(b) - before == 1 and receivers.grant_requests == 1
        auth_server = f"{b.public_url}/auth"
        token, manage = receivers.cached_grant(auth_server)
        assert manage is not None

        # B's authorization server revokes the token (here at its client's request: the
        # token's manage URL, signed with A's key). The next read gets 401, drops it, asks
        # for one new grant and reads again.
        body, headers = receivers._signer.prepare("DELETE", manage, token=token)
        async with httpx.AsyncClient() as http:
            revoked = await http.request("DELETE", manage, content=body, headers=headers)
        assert revoked.status_code == 204, revoked.text
        found = await receivers.resolve(payments[0]["id"])
        assert found.id == payments[0]["id"]
        assert await grants_at(b) - before == 2 and receivers.grant_requests == 2
        assert receivers.cached_grant(auth_server)[0] != token

        # Many resolutions at once on an empty cache still ask once.
        receivers._grants.clear()
        await asyncio.gather(*(receivers.resolve(p["id"]) for p in payments * 3))
        assert await grants_at(b) - before == 3 and receivers.grant_requests == 3


async def test_completed_expired_and_spent_receivers_are_invalid(servers, at_b: World) -> None:
    a, _ = servers
    token = await at_b.token()
    completed = await incoming(at_b)
    done = await at_b.client.request("POST", completed["id"] + "/complete", token=token)
    assert done.status_code == 200, done.text
    soon = await incoming(at_b, expiresAt=format_ms(int(time.time() * 1000) + 1500))
    full = await incoming(at_b, incomingAmount={"value": "100", "assetCode": "USD", "assetScale": 2})
    assert (await at_b.operator.credit(full["id"], "100", f"credit-{uuid.uuid4()}")).status_code in (200, 201)
    async with Resolver(a) as receivers:
        assert "completed" in (await refused(receivers.resolve(completed["id"]), "invalid_receiver")).description
        while time.time() * 1000 < parse_date_time(soon["expiresAt"], "expiresAt") + 50:
            await asyncio.sleep(0.1)
        error = await refused(receivers.resolve(soon["id"]), "invalid_receiver")
        assert "expired" in error.description
        # Fully paid: B completes it on its own, or at least nothing is left to receive.
        await refused(receivers.resolve(full["id"]), "invalid_receiver")


async def test_what_is_not_an_incoming_payment_is_invalid(servers, at_b: World) -> None:
    a, b = servers
    payment = await incoming(at_b)
    sender = await at_b.operator.wallet_address(f"sender-{uuid.uuid4().hex[:8]}", "USD", 2)
    quote_token = await at_b.token([{"type": "quote", "actions": ["create", "read"]}])
    quote = await at_b.client.request(
        "POST",
        f"{b.public_url}/quotes",
        json={"walletAddress": sender["id"], "receiver": payment["id"], "method": "ilp", "debitAmount": {"value": "10", "assetCode": "USD", "assetScale": 2}},
        token=quote_token,
    )
    assert quote.status_code == 201, quote.text
    quote_uuid = quote.json()["id"].rsplit("/", 1)[1]
    async with Resolver(a) as receivers:
        for url in (
            quote.json()["id"],  # B's quote
            at_b.receiver["id"],  # a wallet address
            at_b.receiver["id"] + "/jwks.json",
            f"{b.public_url}/incoming-payments/{quote_uuid}",  # shaped like one, but none
            f"{b.public_url}/incoming-payments/{uuid.uuid4()}",
            payment["id"] + "?x=1",
            payment["id"] + "/complete",
            "ftp://127.0.0.1/incoming-payments/x",
            "not a url",
        ):
            await refused(receivers.resolve(url), "invalid_receiver")
        assert receivers.grant_requests <= 1  # only the shaped ones got as far as a grant


async def test_a_receiver_without_an_ilp_method_is_refused(servers, at_b: World) -> None:
    a, _ = servers
    # B's ILP link is in USD: an EUR incoming payment has no usable ilp credentials.
    euro = await at_b.operator.wallet_address(f"euro-{uuid.uuid4().hex[:8]}", "EUR", 2)
    created = await at_b.client.request(
        "POST", f"{at_b.server.public_url}/incoming-payments", json={"walletAddress": euro["id"]}, token=await at_b.token()
    )
    assert created.status_code == 201 and created.json()["methods"] == [], created.text
    async with Resolver(a) as receivers:
        error = await refused(receivers.resolve(created.json()["id"]), "receiver_without_ilp")
    assert "ilp" in error.description


async def test_the_fetch_policy_refuses_http_and_loopback_unless_allowed(servers, at_b: World) -> None:
    a, _ = servers
    payment = await incoming(at_b)
    async with Resolver(a, OPAY_ALLOW_INSECURE_FETCH="", OPAY_FETCH_ALLOW="") as receivers:
        error = await refused(receivers.resolve(payment["id"]), "invalid_receiver")
        assert "OPAY_ALLOW_INSECURE_FETCH" in error.description
    async with Resolver(a, OPAY_FETCH_ALLOW="") as receivers:
        error = await refused(receivers.resolve(payment["id"]), "invalid_receiver")
        assert "loopback" in error.description and "OPAY_FETCH_ALLOW" in error.description
    async with Resolver(a) as receivers:  # allowed: resolves
        assert (await receivers.resolve(payment["id"])).id == payment["id"]


async def test_a_server_that_does_not_answer_is_unavailable(servers) -> None:
    a, _ = servers
    async with Resolver(a) as receivers:
        error = await refused(receivers.resolve(f"http://127.0.0.1:{free_port()}/incoming-payments/{uuid.uuid4()}"), "receiver_unavailable")
    assert error.headers["Retry-After"] == "5" and error.retryable


async def test_a_publishes_the_ase_key_and_keeps_it_across_restarts(servers) -> None:
    a, _ = servers
    async with Resolver(a) as receivers:
        signer = receivers._signer
    assert signer.wallet_address == f"{a.public_url}/ase"
    async with httpx.AsyncClient() as http:
        wallet = (await http.get(signer.wallet_address)).json()
        jwks = (await http.get(signer.wallet_address + "/jwks.json")).json()
    assert wallet["id"] == signer.wallet_address and wallet["authServer"] == f"{a.public_url}/auth"
    published = {key["kid"]: key for key in jwks["keys"]}
    assert published[signer.keyid]["x"] == base64url.encode(signer.private_key.public_key().public_bytes_raw())
    assert published[signer.keyid]["crv"] == "Ed25519" and len(published) == 1

    a.stop()
    a.start()
    async with Resolver(a) as receivers:
        assert receivers._signer.keyid == signer.keyid
        assert receivers._signer.private_key.private_bytes_raw() == signer.private_key.private_bytes_raw()
    async with httpx.AsyncClient() as http:
        again = (await http.get(signer.wallet_address + "/jwks.json")).json()
    assert again == jwks


async def test_b_stopped_is_receiver_unavailable_with_retry_after(servers, at_b: World) -> None:
    a, b = servers
    payment = await incoming(at_b)
    async with Resolver(a) as receivers:
        assert (await receivers.resolve(payment["id"])).id == payment["id"]
        b.stop()
        try:
            error = await refused(receivers.resolve(payment["id"]), "receiver_unavailable")
            assert error.headers == {"Retry-After": "5"} and "unavailable" in error.description
        finally:
            b.start()
        # Back: the same token still reads it.
        assert (await receivers.resolve(payment["id"])).id == payment["id"]
        assert receivers.grant_requests == 1
