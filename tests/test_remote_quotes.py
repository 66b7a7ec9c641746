"""Quotes for receivers on another Open Payments server (issue 10, items 1 and 4).

Two real opay servers, A and B (each its own redis-server and Ray, ILP addresses test.a and
test.b), peered both ways through POST /peers: A's peer `b` routes test.b to B's /ilp with
the token B takes from A, and B's peer `a` the other way. A client of A quotes, at A, an
incoming payment created on B by a client of B. A resolves it on B (a read grant at B's
authorization server), probes the path's rate with unfulfillable STREAM packets through
peer `b` to B's receiver (B answers F99 with what arrived: the rate is exactly 1 here, so
the probe's low bound is 1), and prices with the same `price` as a local quote at that rate
less OPAY_SLIPPAGE (0.01), after the local rate of the sender's asset to the link's.
"""

from __future__ import annotations

import time
import uuid
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from opay.actors import ids, registry
from opay.domain import exchange, quote as rules
from opay.domain.amounts import Asset
from opay.domain.times import format_ms
from opay.persistence.clients import ShardClients
from opay.persistence.queries import Queries
from tests.conftest import World, make_world
from tests.support import A_TO_B, B_TO_A, OpayServer, peer_body, two_servers

pytestmark = pytest.mark.anyio

QUOTE_ACCESS = [{"type": "quote", "actions": ["create", "read"]}]
SLIPPAGE = Fraction(1, 100)
USD = Asset("USD", 2)


def usd(value: int) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    with two_servers(Path(tmp_path_factory.mktemp("remote-quotes"))) as pair:
        yield pair


@pytest.fixture
async def worlds(servers):
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(servers[0], http), await make_world(servers[1], http)


async def on_b(at_b: World, **body) -> dict:
    created = await at_b.create_payment(await at_b.token(), **body)
    assert created.status_code == 201, created.text
    return created.json()


async def quote_at_a(at_a: World, token: str, **body) -> httpx.Response:
    return await at_a.client.request("POST", f"{at_a.server.public_url}/quotes", json={"method": "ilp", **body}, token=token)


async def stored_quote(server: OpayServer, quote_url: str) -> rules.Quote:
    shards = ShardClients(server.redis_url, 5.0, 2)  # two_servers runs each with OPAY_SHARDS=2
    try:
        found = await Queries(shards, registry.codec).entity(ids.QUOTE(quote_url.rsplit("/", 1)[1]))
    finally:
        await shards.aclose()
    assert isinstance(found, rules.Quote)
    return found


def expected(*, debit=None, receive=None, local=Fraction(1), sender=USD, fees=exchange.FeeSchedule(), remaining=None) -> rules.Price:
    rate, _ = rules.remote_rates(local=local, sender=sender, link=USD, receiver=USD, probed_low=Fraction(1), slippage=SLIPPAGE)
    return rules.price(debit=debit, receive=receive, rate=rate, sender=sender, receiver=USD, fees=fees, remaining=remaining)


async def test_same_asset_fixed_receive_fixed_debit_and_remainder(servers, worlds) -> None:
    at_a, at_b = worlds
    payment = await on_b(at_b, incomingAmount=usd(2000))
    credited = await at_b.operator.credit(payment["id"], "120", f"credit-{uuid.uuid4()}")
    assert credited.status_code == 200, credited.text
    token = await at_a.token(QUOTE_ACCESS)
    sender = at_a.receiver["id"]  # a USD wallet of A

    started = time.monotonic()
    fixed_receive = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], receiveAmount=usd(500))
    first_ms = (time.monotonic() - started) * 1000
    assert fixed_receive.status_code == 201, fixed_receive.text
    body = fixed_receive.json()
    # 500 at 1 x 0.99 takes ceil(500 / 0.99) = 506: the receiver gets what was asked, the
    # sender pays the least whole amount that delivers it at the minimum rate.
    assert body["receiveAmount"] == usd(500) and body["debitAmount"] == usd(506)
    assert expected(receive=500).debit == 506
    assert body["receiver"] == payment["id"] and body["walletAddress"] == sender
    assert body["id"].startswith(f"{at_a.server.public_url}/quotes/")

    started = time.monotonic()
    fixed_debit = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], debitAmount=usd(1000))
    warm_ms = (time.monotonic() - started) * 1000
    assert fixed_debit.status_code == 201, fixed_debit.text
    # floor(1000 x 0.99) = 990: never promised more than the path delivers at the minimum rate.
    assert fixed_debit.json()["debitAmount"] == usd(1000) and fixed_debit.json()["receiveAmount"] == usd(990)

    remainder = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"])
    assert remainder.status_code == 201, remainder.text
    # B's remaining 2000 - 120 = 1880, priced ceil(1880 / 0.99) = 1899.
    assert remainder.json()["receiveAmount"] == usd(1880) and remainder.json()["debitAmount"] == usd(1899)
    assert expected(remaining=1880).debit == 1899

    too_much = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], receiveAmount=usd(1881))
    assert too_much.status_code == 400 and too_much.json()["error"]["code"] == "invalid_amount", too_much.text

    # What the sender needs later is in the stored quote: remote, the peer, the rates exact.
    stored = await stored_quote(at_a.server, body["id"])
    assert stored.remote is not None
    assert stored.remote.peer == "b" and stored.remote.link_asset == USD
    assert stored.remote.min_rate.value == Fraction(99, 100)
    assert stored.remote.rate_low.value == 1 and 1 < stored.remote.rate_high.value <= 1 + Fraction(1, 10**3)
    assert stored.remote.max_source == 506  # the principal in link units (the same asset: 1 to 1)
    # Its expiry: the quote window (B's payment expires in a day by default).
    assert stored.expires_at_ms - stored.created_at_ms == 300_000
    # A GET at A answers it as created.
    fetched = await at_a.client.request("GET", body["id"], token=token)
    assert fetched.status_code == 200 and fetched.json() == body
    # Latency of a quote through the probe (the grant at B kept): resolution at B, the probe
    # through peer b to B's receiver, pricing, the quote entity's write.
    times = []
    for _ in range(20):
        started = time.monotonic()
        again = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], debitAmount=usd(1000))
        times.append((time.monotonic() - started) * 1000)
        assert again.status_code == 201 and again.json()["receiveAmount"] == usd(990)
    times.sort()
    print(
        f"\nremote quote latency: first {first_ms:.0f} ms (grant at B + probe), second {warm_ms:.0f} ms;"
        f" 20 more: p50 {times[10]:.0f} ms, max {times[-1]:.0f} ms"
    )


async def test_cross_currency_with_fees_is_exact(servers, worlds) -> None:
    at_a, at_b = worlds
    code = f"E{uuid.uuid4().hex[:5].upper()}"  # a EUR-like sender asset of this test's own
    sender = await at_a.operator.wallet_address(f"payer-{uuid.uuid4().hex[:8]}", code, 2)
    ops = at_a.server
    assert (await at_a.http.put(f"{ops.operator_url}/rates/{code}", json={"USD": "1.0837"}, headers=ops.operator_headers)).status_code == 200
    fees = await at_a.http.put(f"{ops.operator_url}/fees/{code}", json={"fixed": "3", "basisPoints": 25}, headers=ops.operator_headers)
    assert fees.status_code == 200, fees.text
    schedule = exchange.FeeSchedule(fixed=3, basis_points=25)
    local, source = Fraction(10837, 10000), Asset(code, 2)
    payment = await on_b(at_b)  # no incomingAmount: no limit of its own
    token = await at_a.token(QUOTE_ACCESS)

    receive = await quote_at_a(at_a, token, walletAddress=sender["id"], receiver=payment["id"], receiveAmount=usd(12_345))
    assert receive.status_code == 201, receive.text
    want = expected(receive=12_345, local=local, sender=source, fees=schedule)
    # By hand: rate 1.0837 x 0.99 = 1.072863; principal ceil(12345 / 1.072863) = 11507;
    # fee 3 + ceil(11507 x 0.0025) = 32; debit 11539.
    assert (want.debit, want.fee) == (11_539, 32)
    assert receive.json()["receiveAmount"] == usd(12_345)
    assert receive.json()["debitAmount"] == {"value": "11539", "assetCode": code, "assetScale": 2}
    stored = await stored_quote(at_a.server, receive.json()["id"])
    assert stored.remote is not None and stored.remote.max_source == (11_539 - 32) * 10837 // 10000
    assert stored.expires_at_ms - stored.created_at_ms == 300_000  # no expiresAt at B: the window alone

    debit = await quote_at_a(at_a, token, walletAddress=sender["id"], receiver=payment["id"], debitAmount={"value": "10000", "assetCode": code, "assetScale": 2})
    assert debit.status_code == 201, debit.text
    want = expected(debit=10_000, local=local, sender=source, fees=schedule)
    assert debit.json()["receiveAmount"] == usd(want.receive)
    assert want.receive == (10_000 - want.fee) * 1072863 // 1000000

    nothing = await quote_at_a(at_a, token, walletAddress=sender["id"], receiver=payment["id"])
    assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "invalid_request", nothing.text


async def test_quote_expiry_is_bounded_by_the_remote_receivers_expiry(servers, worlds) -> None:
    at_a, at_b = worlds
    soon_ms = int(time.time() * 1000) + 60_000
    payment = await on_b(at_b, expiresAt=format_ms(soon_ms))
    answer = await quote_at_a(at_a, await at_a.token(QUOTE_ACCESS), walletAddress=at_a.receiver["id"], receiver=payment["id"], debitAmount=usd(100))
    assert answer.status_code == 201, answer.text
    assert answer.json()["expiresAt"] == payment["expiresAt"]



async def test_invalid_and_unroutable_receivers(servers, worlds) -> None:
    at_a, at_b = worlds
    a, b = servers
    token = await at_a.token(QUOTE_ACCESS)
    sender = at_a.receiver["id"]

    completed = await on_b(at_b)
    done = await at_b.client.request("POST", completed["id"] + "/complete", token=await at_b.token())
    assert done.status_code == 200, done.text
    answer = await quote_at_a(at_a, token, walletAddress=sender, receiver=completed["id"], debitAmount=usd(10))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_receiver", answer.text

    missing = f"{b.public_url}/incoming-payments/{uuid.uuid4()}"
    answer = await quote_at_a(at_a, token, walletAddress=sender, receiver=missing, debitAmount=usd(10))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_receiver", answer.text

    # No peer of A routes test.b (the peer is gone): 400 receiver_unreachable, said at once.
    payment = await on_b(at_b)
    assert (await at_a.http.delete(f"{a.operator_url}/peers/b", headers=a.operator_headers)).status_code == 204
    try:
        answer = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], debitAmount=usd(10))
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "receiver_unreachable", answer.text
        assert answer.json()["error"]["details"]["ilpAddress"].startswith("test.b.")
        # A peer routes it, but its link does not reach B (nothing listens there): the probe
        # gets no answer within OPAY_QUOTE_PROBE_SECONDS, 503 with Retry-After, bounded.
        dead = peer_body("b", "http://127.0.0.1:9/ilp", A_TO_B, B_TO_A, ["test.b"])
        assert (await at_a.http.post(f"{a.operator_url}/peers", json=dead, headers=a.operator_headers)).status_code == 201
        started = time.monotonic()
        answer = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], debitAmount=usd(10))
        took = time.monotonic() - started
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "rate_probe_failed", answer.text
        assert answer.headers["retry-after"]
        assert took < 5 + 3, took
        print(f"\nprobe through a dead link answered 503 in {took * 1000:.0f} ms (OPAY_QUOTE_PROBE_SECONDS=5)")
        assert (await at_a.http.delete(f"{a.operator_url}/peers/b", headers=a.operator_headers)).status_code == 204
    finally:
        again = peer_body("b", f"{b.public_url}/ilp", A_TO_B, B_TO_A, ["test.b"])
        await at_a.http.post(f"{a.operator_url}/peers", json=again, headers=a.operator_headers)
    answer = await quote_at_a(at_a, token, walletAddress=sender, receiver=payment["id"], debitAmount=usd(10))
    assert answer.status_code == 201, answer.text


async def test_local_receivers_stay_local(servers, worlds) -> None:
    at_a, _ = worlds
    payment = await on_b(at_a, incomingAmount=usd(100))  # on A itself
    answer = await quote_at_a(at_a, await at_a.token(QUOTE_ACCESS), walletAddress=at_a.receiver["id"], receiver=payment["id"], receiveAmount=usd(100))
    assert answer.status_code == 201 and answer.json()["debitAmount"] == usd(100), answer.text  # no slippage, no probe
    assert (await stored_quote(at_a.server, answer.json()["id"])).remote is None


async def test_a_stopped_receiver_server_is_unavailable(servers, worlds) -> None:
    """Last: it stops B."""
    at_a, at_b = worlds
    _, b = servers
    payment = await on_b(at_b)
    b.stop()
    answer = await quote_at_a(at_a, await at_a.token(QUOTE_ACCESS), walletAddress=at_a.receiver["id"], receiver=payment["id"], debitAmount=usd(10))
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "receiver_unavailable", answer.text
    assert answer.headers["retry-after"] == "5"
