"""Outgoing payments to receivers on another server (issue 10, item 3): the payment entity
drives one STREAM connection over the peer link, the front end's router carrying its packets.

Two real opay servers, A (test.a) and B (test.b), each with its own redis-server and Ray,
peered both ways through POST /peers. The incoming payments are on B, made by a client of
B through B's API. The outgoing payment is opened at A's entity level (its state written
in A's Redis with a due time, as the payment entity holds it once opened from a remote
quote, which is not in A's API yet): A's resolver (A's client identity, as A's front end
resolves) reads B's incoming payment for its ILP address and shared secret, the sender
state is made from them, and A's timer brings the payment up. From there on everything is
A's and B's: A's shard computes the Prepares, A's router sends them to B's POST /ilp, B's
receiver credits, A's entity accounts the Fulfills. Every amount is read back through the
APIs: B's receivedAmount, A's payment (its snapshot), GET /peers on A and B.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from opay.actors import ids
from opay.actors.registry import codec
from opay.persistence.keys import shard_of
from opay.domain.amounts import Asset
from opay.domain.outgoing_payment import OutgoingPayment, RemoteDelivery
from opay.ilp import sender as stream
from opay.persistence import clients, keys
from opay.persistence.snapshots import EntityWrite, SideEffect, SnapshotStore
from tests.conftest import World, make_world
from tests.ilp_support import received
from tests.support import OpayServer, two_servers
from tests.test_remote_receivers import Resolver

pytestmark = pytest.mark.anyio

USD = Asset("USD", 2)
SHARDS = 2  # tests/support.py OpayServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    with two_servers(Path(tmp_path_factory.mktemp("remote-pay")), max_packet="50") as pair:
        yield pair


@pytest.fixture
async def at_b(servers):
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(servers[1], http)


def totals(server: OpayServer, name: str) -> tuple[int, int]:
    listed = httpx.get(f"{server.operator_url}/peers", headers=server.operator_headers, timeout=10)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    peers = body["result"] if isinstance(body, dict) and "result" in body else body
    (peer,) = [p for p in peers if p["name"] == name]
    return int(peer["sentAmount"]["value"]), int(peer["receivedAmount"]["value"])


async def incoming_at_b(world: World, amount: int) -> dict:
    created = await world.create_payment(await world.token(), incomingAmount={"value": str(amount), "assetCode": "USD", "assetScale": 2})
    assert created.status_code == 201, created.text
    return created.json()


async def open_remote_payment(
    a: OpayServer, receiver_url: str, *, receive: int | None = None, debit: int | None = None, in_flight: int = 20, expiry_ms: int = 30_000
) -> str:
    """An outgoing payment at A to B's incoming payment, as the payment entity holds it once
    opened and funded: fixed delivery of `receive` (at most `debit`), or a fixed send of
    `debit`. Returns its entity id."""
    async with Resolver(a) as receivers:
        found = await receivers.resolve(receiver_url)
    config = stream.SenderConfig(packets_in_flight=in_flight, packet_expiry_ms=expiry_ms)
    min_rate = stream.min_rate_for(Fraction(1), Fraction(1, 100))
    if receive is not None:
        debit = debit if debit is not None else receive
        state = stream.fixed_delivery(found.ilp_address, found.shared_secret, receive, min_rate, max_source=debit, config=config)
    else:
        assert debit is not None
        state = stream.fixed_send(found.ilp_address, found.shared_secret, debit, min_rate, config=config)
        receive = 0
    if found.remaining is not None:
        state = stream.set_cap(state, found.remaining)
    payment_id = str(uuid.uuid4())
    entity_id = ids.OUTGOING_PAYMENT(payment_id)
    payment = OutgoingPayment(
        id=payment_id, wallet_address=f"{a.public_url}/sender", client=None, grant_id=f"test-grant-{payment_id}", by_quote=False,
        receiver=receiver_url, debit_asset=USD, receive_asset=USD, debit=debit, receive=receive, fee=0,
        created_at_ms=int(time.time() * 1000), phase="sending",
        remote=RemoteDelivery(peer="b", stream=msgspec_encode(state)),
    )
    shard = shard_of(entity_id, SHARDS)
    client = clients.blocking(a.redis_url, 5.0, keys.shard_tag(shard))
    try:
        due = SideEffect("zadd", keys.due(shard), int(time.time() * 1000), entity_id)
        assert SnapshotStore(client, shard).write_many([EntityWrite(entity_id, 0, codec.encode_state(payment), [due])]) == ["landed"]
    finally:
        client.close()
    return entity_id


def msgspec_encode(state: stream.SenderState) -> bytes:
    import msgspec

    return msgspec.msgpack.encode(state)


def payment_at(a: OpayServer, entity_id: str) -> OutgoingPayment:
    shard = shard_of(entity_id, SHARDS)
    client = clients.blocking(a.redis_url, 5.0, keys.shard_tag(shard))
    try:
        raw = client.hget(keys.entity(entity_id, shard), "s")
    finally:
        client.close()
    assert raw is not None
    state = codec.decode_state(raw)
    assert isinstance(state, OutgoingPayment)
    return state


async def settled(a: OpayServer, entity_id: str, seconds: float = 90) -> OutgoingPayment:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        payment = payment_at(a, entity_id)
        if payment.settled:
            return payment
        await asyncio.sleep(0.1)
    raise AssertionError(f"not settled: {payment}")


async def part_way(a: OpayServer, entity_id: str, least: int, seconds: float = 30) -> OutgoingPayment:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        payment = payment_at(a, entity_id)
        if payment.delivered >= least or payment.settled:
            return payment
        await asyncio.sleep(0.01)
    raise AssertionError("no progress")


async def test_a_pays_b_exactly_the_receive_amount(servers, at_b: World) -> None:
    a, b = servers
    before_a, before_b = totals(a, "b"), totals(b, "a")
    incoming = await incoming_at_b(at_b, 1234)
    entity_id = await open_remote_payment(a, incoming["id"], receive=1234)
    payment = await settled(a, entity_id)
    assert payment.phase == "completed", payment.failure
    assert (payment.sent, payment.delivered) == (1234, 1234)
    assert await received(at_b, incoming, await at_b.token()) == (1234, True)
    sent_a, _ = totals(a, "b")
    _, received_b = totals(b, "a")
    assert sent_a - before_a[0] == 1234 == received_b - before_b[1]
    state = msgspec_decode(payment.remote.stream)
    assert state.packets_fulfilled >= 1234 // 50 and not payment.remote.wire


def msgspec_decode(raw: bytes) -> stream.SenderState:
    import msgspec

    return msgspec.msgpack.decode(raw, type=stream.SenderState)


async def test_a_fixed_send_spends_exactly_the_debit(servers, at_b: World) -> None:
    a, b = servers
    created = await at_b.create_payment(await at_b.token())  # no incomingAmount: Web Monetization
    assert created.status_code == 201, created.text
    incoming = created.json()
    entity_id = await open_remote_payment(a, incoming["id"], debit=777)
    payment = await settled(a, entity_id)
    assert payment.phase == "completed", payment.failure
    assert payment.sent == 777 == payment.delivered
    assert (await received(at_b, incoming, await at_b.token()))[0] == 777


async def test_delivery_stops_exactly_at_the_receivers_cap(servers, at_b: World) -> None:
    a, b = servers
    incoming = await incoming_at_b(at_b, 1000)
    credited = await at_b.operator.credit(incoming["id"], "700", f"credit-{uuid.uuid4()}")
    assert credited.status_code in (200, 201), credited.text
    entity_id = await open_remote_payment(a, incoming["id"], receive=500)  # only 300 fit
    payment = await settled(a, entity_id)
    assert payment.phase == "failed" and "receiver_limit_reached" in (payment.failure or "")
    assert (payment.sent, payment.delivered) == (300, 300)
    assert await received(at_b, incoming, await at_b.token()) == (1000, True)


async def test_b_stopped_mid_payment_then_restarted(servers, at_b: World) -> None:
    a, b = servers
    before_a, before_b = totals(a, "b"), totals(b, "a")
    incoming = await incoming_at_b(at_b, 6000)
    token = await at_b.token()
    entity_id = await open_remote_payment(a, incoming["id"], receive=6000, in_flight=1)
    first = await part_way(a, entity_id, 100)
    assert not first.settled
    b.stop()
    await asyncio.sleep(2)
    stalled = payment_at(a, entity_id)
    assert not stalled.settled
    b.start()
    payment = await settled(a, entity_id)
    assert payment.phase == "completed", payment.failure
    assert (payment.sent, payment.delivered) == (6000, 6000)
    assert await received(at_b, incoming, token) == (6000, True)
    assert totals(a, "b")[0] - before_a[0] == 6000 == totals(b, "a")[1] - before_b[1]


async def test_a_killed_mid_payment_then_restarted(servers, at_b: World) -> None:
    a, b = servers
    before_a, before_b = totals(a, "b"), totals(b, "a")
    incoming = await incoming_at_b(at_b, 6000)
    token = await at_b.token()
    entity_id = await open_remote_payment(a, incoming["id"], receive=6000, in_flight=2)
    first = await part_way(a, entity_id, 100)
    assert not first.settled
    a.kill9()
    a.start()
    payment = await settled(a, entity_id)
    assert payment.phase == "completed", payment.failure
    assert await received(at_b, incoming, token) == (6000, True)
    assert (payment.sent, payment.delivered) == (6000, 6000)
    assert totals(a, "b")[0] - before_a[0] == 6000 == totals(b, "a")[1] - before_b[1]


async def test_a_down_past_the_packets_expiry_never_delivers_past_the_receive_amount(servers, at_b: World) -> None:
    """Killed with packets in flight, back only after they expired: those packets are
    abandoned (never counted) but reserved as if delivered, so whatever B credited of them,
    B never gets more than the receive amount from this payment, and A's budget shrinks by
    them (never more than the debit on the link)."""
    a, b = servers
    before_a, before_b = totals(a, "b"), totals(b, "a")
    incoming = await incoming_at_b(at_b, 6000)
    token = await at_b.token()
    entity_id = await open_remote_payment(a, incoming["id"], receive=6000, in_flight=4, expiry_ms=2_000)
    first = await part_way(a, entity_id, 100)
    assert not first.settled
    a.kill9()
    await asyncio.sleep(3)  # every packet in flight has expired
    a.start()
    payment = await settled(a, entity_id)
    got, _ = await received(at_b, incoming, token)
    remote = payment.remote
    assert got <= 6000
    assert payment.delivered <= got <= payment.delivered + remote.unsure_dest
    assert payment.sent + remote.unsure_source <= 6000
    if remote.unsure_dest == 0:
        assert payment.phase == "completed" and got == 6000
    else:
        assert payment.phase == "failed" and payment.delivered + remote.unsure_dest <= 6000
    # A counts only what was fulfilled to it; B counts what it credited.
    assert totals(a, "b")[0] - before_a[0] == payment.sent
    assert totals(b, "a")[1] - before_b[1] == got
    print(f"\nabandoned {remote.unsure_dest} in flight; A delivered {payment.delivered}, B received {got}: {payment.phase} ({payment.failure})")


def test_a_failed_remote_payment_gives_back_only_what_it_did_not_spend() -> None:
    from opay.domain.grant_spend import GrantSpend, Reservation, release

    ledger = GrantSpend(id="g", spent_debit=1000, spent_receive=900)
    share = Reservation(debit=600, receive=500, window=-1)
    after, released = release(ledger, share, kept_debit=250, kept_receive=200)
    assert (after.spent_debit, after.spent_receive) == (1000 - 350, 900 - 300) and released.released
    assert release(after, released, 0, 0)[0] == after  # once only
    whole, _ = release(ledger, share)  # a local failure: all of it
    assert (whole.spent_debit, whole.spent_receive) == (400, 400)
    clamped, _ = release(ledger, share, kept_debit=10**9, kept_receive=-5)  # never more than the share, never less than 0
    assert (clamped.spent_debit, clamped.spent_receive) == (1000, 400)


class _FakePeer:
    """A real HTTP peer (a thread of the test process) that answers every Prepare with what
    `reply()` gives, or, when it gives None, never answers (holds the request until closed)."""

    def __init__(self, reply) -> None:
        import http.server
        import threading

        self.prepares = 0
        self.closing = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.prepares += 1
                body = reply()
                if body is None:
                    outer.closing.wait(120)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ilp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def _lying_peer() -> _FakePeer:
    """Every Prepare answered with a Fulfill whose fulfillment does not hash to the condition."""
    import os

    from opay.ilp.packet import Fulfill

    return _FakePeer(lambda: Fulfill(os.urandom(32)).encode())


def add_peer(a: OpayServer, url: str) -> str:
    """A peer of A at `url`, routing test.<its name>; returns the name."""
    name = f"peer-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name, "url": url, "outgoingToken": f"out-{name}", "incomingToken": f"in-{name}-secret",
        "assetCode": "USD", "assetScale": 2, "routes": [f"test.{name}"],
    }
    created = httpx.post(f"{a.operator_url}/peers", json=body, headers=a.operator_headers, timeout=10)
    assert created.status_code == 201, created.text
    return name


def open_stream_payment(a: OpayServer, state: stream.SenderState, peer: str, amount: int) -> str:
    """An outgoing payment at A of `amount` (debit and receive) delivered by `state` through
    `peer`, as the entity holds it once opened; due now. Returns its entity id."""
    import msgspec

    payment_id = str(uuid.uuid4())
    entity_id = ids.OUTGOING_PAYMENT(payment_id)
    payment = OutgoingPayment(
        id=payment_id, wallet_address=f"{a.public_url}/sender", client=None, grant_id=f"test-grant-{payment_id}", by_quote=False,
        receiver=f"{a.public_url}/incoming-payments/{uuid.uuid4()}", debit_asset=USD, receive_asset=USD, debit=amount, receive=amount, fee=0,
        created_at_ms=int(time.time() * 1000), phase="sending", remote=RemoteDelivery(peer=peer, stream=msgspec.msgpack.encode(state)),
    )
    shard = shard_of(entity_id, SHARDS)
    client = clients.blocking(a.redis_url, 5.0, keys.shard_tag(shard))
    try:
        due = SideEffect("zadd", keys.due(shard), int(time.time() * 1000), entity_id)
        assert SnapshotStore(client, shard).write_many([EntityWrite(entity_id, 0, codec.encode_state(payment), [due])]) == ["landed"]
    finally:
        client.close()
    return entity_id


async def test_a_peer_answering_a_wrong_fulfillment_is_never_counted(servers, at_b: World) -> None:
    import os

    a, _ = servers
    liar = _lying_peer()
    try:
        name = add_peer(a, liar.url)
        before = totals(a, name)
        state = stream.fixed_delivery(
            f"test.{name}.bob", os.urandom(32), 500, Fraction(99, 100), max_source=500, rate_bounds=(Fraction(1), Fraction(101, 100))
        )
        done = await settled(a, open_stream_payment(a, state, name, 500), 30)
        assert done.phase == "failed" and "invalid_fulfillment" in (done.failure or ""), done.failure
        assert (done.sent, done.delivered) == (0, 0) and liar.prepares >= 1
        assert totals(a, name) == before  # nothing counted as sent to the liar
    finally:
        liar.close()


async def test_a_peer_that_never_answers_is_retried_a_bounded_number_of_times(servers) -> None:
    """Every Prepare to the peer times out at its expiry (a local T00, never counted): the
    sender retries with backoff, and after max_failures packets in a row without progress
    the payment fails with the reason; nothing is sent, nothing is counted for the peer."""
    import os

    a, _ = servers
    silent = _FakePeer(lambda: None)
    try:
        name = add_peer(a, silent.url)
        before = totals(a, name)
        config = stream.SenderConfig(packets_in_flight=1, packet_expiry_ms=1_000, backoff_base_ms=100, backoff_max_ms=400, max_failures=4)
        state = stream.fixed_delivery(
            f"test.{name}.bob", os.urandom(32), 300, Fraction(99, 100), max_source=300, rate_bounds=(Fraction(1), Fraction(101, 100)), config=config
        )
        started = time.monotonic()
        done = await settled(a, open_stream_payment(a, state, name, 300), 60)
        took = time.monotonic() - started
        assert done.phase == "failed" and "too_many_failures" in (done.failure or ""), done.failure
        assert "T00" in (done.failure or "") or "R00" in (done.failure or ""), done.failure
        assert (done.sent, done.delivered) == (0, 0)
        assert 4 <= silent.prepares <= 8, silent.prepares  # retried, and bounded: max_failures, not forever
        assert took < 30, took
        assert totals(a, name) == before  # nothing counted as sent to the silent peer
        tried = silent.prepares
        await asyncio.sleep(2)
        assert silent.prepares == tried, "a failed payment sends nothing more"
        print(f"\n{tried} Prepares to a silent peer in {took:.1f} s, then: {done.failure}")
    finally:
        silent.close()


async def test_an_unroutable_destination_fails_f02_and_spends_nothing(servers) -> None:
    import os

    a, _ = servers
    state = stream.fixed_delivery("test.nowhere.bob", os.urandom(32), 100, Fraction(99, 100), max_source=100, rate_bounds=(Fraction(1), Fraction(101, 100)))
    entity_id = open_stream_payment(a, state, "", 100)
    done = await settled(a, entity_id, 30)
    assert done.phase == "failed" and "connector_error" in (done.failure or "") and "F02" in (done.failure or ""), done.failure
    assert (done.sent, done.delivered) == (0, 0)
