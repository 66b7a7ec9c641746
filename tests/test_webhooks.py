"""Webhooks end to end: a real server delivering to a receiver in this process.

The receiver decides per wallet address how to answer, so each test picks its own
behaviour (healthy, failing N times, slow, always failing) without restarting anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Awaitable, Callable

import anyio
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from opay.actors import registry
from opay.actors.ids import INCOMING_PAYMENT
from opay.persistence.keys import shard_of
from opay.domain.amounts import Asset
from opay.domain.outgoing_payment import OutgoingPayment
from opay.outbox import delivery as deliverer, render as rendering, signing, store as outbox_store
from opay.outbox.events import Event
from opay.persistence import codec, keys
from opay.settings import Settings
from tests.support import OpayServer

pytestmark = pytest.mark.anyio

SECRET = "test-webhook-secret"
SHARDS = 2  # the server's: an event is in the outbox of its entity's shard, one of these
OUTBOXES = [keys.Outbox(n) for n in range(SHARDS)]
MAX_ATTEMPTS = 3
TIMEOUT_SECONDS = 1.0
BACKOFF_BASE = 0.3
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
USD = {"assetCode": "USD", "assetScale": 2}


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes
    event: dict
    status: int = 0  # 0: the receiver never answered in time


# An answer: a status, or (seconds to stall, status).
Policy = Callable[[int], "int | tuple[float, int]"]


@dataclass
class Receiver:
    """A webhook endpoint: records every request; answers per the policy of the event's wallet address."""

    deliveries: list[Delivery] = field(default_factory=list)
    policies: dict[str, Policy] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[float, int, Delivery]:
        event = json.loads(body)
        with self.lock:
            attempt = 1 + sum(1 for d in self.deliveries if d.event["id"] == event["id"])
            delivery = Delivery(time.monotonic(), headers, body, event)
            self.deliveries.append(delivery)
        policy = self.policies.get(event["data"]["walletAddress"], lambda attempt: 200)
        outcome = policy(attempt)
        stall, status = outcome if isinstance(outcome, tuple) else (0.0, outcome)
        return stall, status, delivery

    def of(self, payment_id: str, event_type: str | None = None) -> list[Delivery]:
        with self.lock:
            return [
                d
                for d in self.deliveries
                if d.event["data"]["id"] == payment_id and (event_type is None or d.event["type"] == event_type)
            ]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for webhooks"
            await anyio.sleep(0.05)


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            stall, status, delivery = receiver.answer({k.lower(): v for k, v in self.headers.items()}, body)
            time.sleep(stall)
            delivery.status = status if stall < TIMEOUT_SECONDS else 0
            try:
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # opay gave up waiting

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default 5 drops bursts of concurrent deliveries

    httpd = Server(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return receiver, httpd


@pytest.fixture(scope="module")
def receiver_and_httpd():
    receiver, httpd = start_receiver()
    yield receiver, httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def receiver(receiver_and_httpd) -> Receiver:
    return receiver_and_httpd[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver_and_httpd):
    """Overrides the session server: this module's one has webhooks on, with short timings."""
    receiver = receiver_and_httpd[0]
    process = OpayServer(
        Path(tmp_path_factory.mktemp("opay-webhooks")),
        extra_env={
            "OPAY_SHARDS": str(SHARDS),
            "OPAY_WEBHOOK_URL": receiver.url,
            "OPAY_WEBHOOK_SECRET": SECRET,
            "OPAY_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "OPAY_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            "OPAY_WEBHOOK_BACKOFF_BASE_SECONDS": str(BACKOFF_BASE),
            "OPAY_WEBHOOK_BACKOFF_MAX_SECONDS": "1",
            "OPAY_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
            "OPAY_WEBHOOK_CONCURRENCY": "16",
        },
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def store(server):
    client = aioredis.Redis.from_url(server.redis_url)
    yield client
    await client.aclose()


def assert_signed(delivery: Delivery) -> None:
    """Checked from the documented format, independently of opay's own helper."""
    header = delivery.headers["opay-signature"]
    match = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header)
    assert match, header
    timestamp, mac = int(match[1]), match[2]
    assert abs(time.time() - timestamp) < 60
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, expected)
    assert signing.verify(SECRET, header, delivery.body)
    assert not signing.verify("another secret", header, delivery.body)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["opay-event-id"] == delivery.event["id"]


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await anyio.sleep(0.05)


async def forgotten(store: aioredis.Redis, event_id: str) -> bool:
    """Gone from every shard's outbox entirely, as a 2xx leaves it."""
    async with store.pipeline(transaction=False) as pipe:
        for outbox in OUTBOXES:
            pipe.hexists(outbox.events, event_id).zscore(outbox.due, event_id)
            pipe.hexists(outbox.attempts, event_id).zscore(outbox.dead, event_id)
            pipe.hexists(outbox.errors, event_id)
        return await pipe.execute() == [False, None, False, None, False] * SHARDS


async def outbox_of(store: aioredis.Redis, event_id: str) -> keys.Outbox:
    """The one shard's outbox holding the event (its body is in no other)."""
    holding = [outbox for outbox in OUTBOXES if await store.hexists(outbox.events, event_id)]
    assert len(holding) == 1, f"{event_id} is in the outboxes of shards {[outbox.shard for outbox in holding]}"
    return holding[0]


def shard_of_payment(payment_url: str) -> int:
    """The shard hosting an incoming payment: the one whose outbox its events go to."""
    return shard_of(INCOMING_PAYMENT(payment_url.rsplit("/", 1)[1]), SHARDS)


def without_methods(view: dict) -> dict:
    return {k: v for k, v in view.items() if k != "methods"}


async def test_created_and_completed_arrive_signed_with_the_resource(world, receiver, store) -> None:
    token = await world.token()
    created = await world.create_payment(token, incomingAmount={"value": "100", **USD}, metadata={"order": "w-1"})
    assert created.status_code == 201, created.text
    payment = created.json()
    assert (await world.operator.credit(payment["id"], "60", "wh-1")).status_code == 200
    assert (await world.operator.credit(payment["id"], "40", "wh-2")).json()["completed"] is True
    final = (await world.client.request("GET", payment["id"], token=token)).json()

    await receiver.wait_for(lambda: receiver.of(payment["id"], "incoming_payment.completed"))
    [first] = receiver.of(payment["id"], "incoming_payment.created")
    [done] = receiver.of(payment["id"], "incoming_payment.completed")
    for delivery in (first, done):
        assert_signed(delivery)
        assert set(delivery.event) == {"id", "type", "createdAt", "data"}
        assert str(uuid.UUID(delivery.event["id"])) == delivery.event["id"]
        assert RFC3339_MS.fullmatch(delivery.event["createdAt"])
        assert delivery.headers["opay-event-type"] == delivery.event["type"]
    assert first.event["data"] == without_methods(payment)
    assert first.event["data"]["receivedAmount"]["value"] == "0"
    assert done.event["data"] == without_methods(final)
    assert done.event["data"]["receivedAmount"]["value"] == "100" and done.event["data"]["completed"] is True
    assert first.event["id"] != done.event["id"]

    # A 2xx removes the event from the outbox.
    for delivery in (first, done):
        await eventually(lambda: forgotten(store, delivery.event["id"]))


async def test_a_failing_then_slow_receiver_gets_the_event_after_retries(world, receiver, store) -> None:
    # Attempt 1: a 500; attempt 2: no answer within the timeout; attempt 3: accepted.
    receiver.policies[world.receiver["id"]] = lambda attempt: {1: 500, 2: (TIMEOUT_SECONDS + 0.5, 200)}.get(attempt, 204)
    token = await world.token()
    created = await world.create_payment(token, incomingAmount={"value": "5", **USD})
    assert created.status_code == 201
    payment_id = created.json()["id"]

    await receiver.wait_for(lambda: any(d.status == 204 for d in receiver.of(payment_id)))
    attempts = receiver.of(payment_id, "incoming_payment.created")
    assert [d.status for d in attempts] == [500, 0, 204]
    assert [d.headers["opay-delivery-attempt"] for d in attempts] == ["1", "2", "3"]
    assert len({d.event["id"] for d in attempts}) == 1  # one event id: receivers dedupe on it
    assert all(d.body == attempts[0].body for d in attempts)
    for delivery in attempts:
        assert_signed(delivery)
    # Exponential backoff between attempts (the second wait also includes the 1 s timeout).
    assert attempts[1].at - attempts[0].at >= BACKOFF_BASE * 0.9
    assert attempts[2].at - attempts[1].at >= TIMEOUT_SECONDS + 2 * BACKOFF_BASE * 0.9
    event_id = attempts[0].event["id"]
    await eventually(lambda: forgotten(store, event_id))
    for outbox in OUTBOXES:
        assert await store.zscore(outbox.dead, event_id) is None


async def test_a_dead_receiver_never_blocks_payments_or_other_events(world, server, receiver, store) -> None:
    # Every event of this wallet stalls past the timeout, every attempt.
    receiver.policies[world.receiver["id"]] = lambda attempt: (TIMEOUT_SECONDS + 0.5, 200)
    token = await world.token()
    started = time.monotonic()
    payment_ids = []
    for _ in range(20):
        began = time.monotonic()
        created = await world.create_payment(token, incomingAmount={"value": "5", **USD})
        assert created.status_code == 201
        assert time.monotonic() - began < 1.0
        payment_ids.append(created.json()["id"])
    assert time.monotonic() - started < 8.0

    # Meanwhile a healthy wallet's events still flow.
    healthy = await world.operator.wallet_address(f"bob-{uuid.uuid4().hex[:10]}", "USD", 2)
    grant = await world.client.grant(healthy["authServer"], [{"type": "incoming-payment", "actions": ["create"]}])
    other = await world.client.request(
        "POST",
        f"{server.public_url}/incoming-payments",
        json={"walletAddress": healthy["id"], "incomingAmount": {"value": "7", **USD}},
        token=grant["access_token"]["value"],
    )
    assert other.status_code == 201, other.text
    await receiver.wait_for(lambda: any(d.status == 200 for d in receiver.of(other.json()["id"])), timeout=6.0)

    # Each stalled event is tried exactly MAX_ATTEMPTS times, then lands in the dead set.
    event_ids = set()

    def all_dead_attempts_made() -> bool:
        return all(len(receiver.of(payment_id)) == MAX_ATTEMPTS for payment_id in payment_ids)

    await receiver.wait_for(all_dead_attempts_made, timeout=20.0)
    shard_of_event = {}
    for payment_id in payment_ids:
        [event_id] = {d.event["id"] for d in receiver.of(payment_id)}
        event_ids.add(event_id)
        shard_of_event[event_id] = shard_of_payment(payment_id)
    assert len(event_ids) == len(payment_ids)
    assert set(shard_of_event.values()) == set(range(SHARDS))  # 20 payments: every shard's outbox delivered from

    async def buried() -> bool:
        return all([await store.zscore(OUTBOXES[shard_of_event[event_id]].dead, event_id) is not None for event_id in event_ids])

    await eventually(buried)
    for event_id in event_ids:
        outbox = await outbox_of(store, event_id)
        assert outbox.shard == shard_of_event[event_id]
        for elsewhere in OUTBOXES:
            assert await store.zscore(elsewhere.due, event_id) is None
            if elsewhere is not outbox:
                assert await store.zscore(elsewhere.dead, event_id) is None
        assert int(await store.hget(outbox.attempts, event_id)) == MAX_ATTEMPTS
        assert b"no answer within" in await store.hget(outbox.errors, event_id)
        kept = codec.decode(await store.hget(outbox.events, event_id), Event)  # the body stays for operators
        assert kept.type == "incoming_payment.created"
    await anyio.sleep(3 * BACKOFF_BASE)
    assert all_dead_attempts_made()  # and is never tried again


async def test_expired_arrives_after_a_short_expires_at(world, receiver) -> None:
    token = await world.token()
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    wire_expires = expires_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires_at.microsecond // 1000:03d}Z"
    created = await world.create_payment(token, incomingAmount={"value": "5", **USD}, expiresAt=wire_expires)
    assert created.status_code == 201, created.text
    payment_id = created.json()["id"]

    await receiver.wait_for(lambda: receiver.of(payment_id, "incoming_payment.expired"), timeout=8.0)
    [expired] = receiver.of(payment_id, "incoming_payment.expired")
    assert_signed(expired)
    assert expired.event["data"]["expiresAt"] == wire_expires
    assert expired.event["data"]["completed"] is False
    assert expired.event["createdAt"] >= wire_expires


async def test_claims_are_exclusive_and_bounded(server, store) -> None:
    """Two deliverers (two front ends) claiming at once never get the same attempt."""
    # A shard's outbox of its own: a shard number the server has not, so its deliverer never claims from it.
    names = keys.Outbox(SHARDS + 1 + uuid.uuid4().int % 1_000_000)
    other_client = aioredis.Redis.from_url(server.redis_url)  # another front end's connection
    try:
        first, second = outbox_store.Outbox(store, names), outbox_store.Outbox(other_client, names)
        now = int(time.time() * 1000)
        ids = [f"e{n}" for n in range(300)]
        await store.hset(names.events, mapping={event_id: b"body-" + event_id.encode() for event_id in ids})
        await store.zadd(names.due, {event_id: now - 1 for event_id in ids})
        got: list[str] = []

        async def drain(outbox: outbox_store.Outbox) -> None:
            while batch := await outbox.claim(now, 7, now + 60_000, 3):
                assert all(c.attempt == 1 and c.body == b"body-" + c.id.encode() for c in batch)
                got.extend(c.id for c in batch)

        async with anyio.create_task_group() as group:
            for outbox in (first, second, first, second):
                group.start_soon(drain, outbox)
        assert sorted(got) == sorted(ids)  # each exactly once

        # Leased: nothing is due again before the lease runs out.
        assert await first.claim(now + 59_999, 10, now + 120_000, 3) == []

        # A claim whose deliverer died comes back after its lease, attempt counted; a stale
        # settlement from the dead deliverer is ignored; after the last attempt it is buried.
        await store.zrem(names.due, *ids[1:])
        [claimed] = await first.claim(now + 60_000, 1, now + 60_001, 3)
        assert claimed.attempt == 2
        [again] = await second.claim(now + 60_001, 1, now + 60_002, 3)
        assert again.id == claimed.id and again.attempt == 3
        assert await first.failed(claimed, "late", now, now) is False
        assert await second.claim(now + 60_002, 1, now + 60_003, 3) == []  # attempt 4 > 3: buried, not sent
        assert await store.zscore(names.dead, claimed.id) is not None
        assert await store.zscore(names.due, claimed.id) is None

        # A settled success forgets the event everywhere.
        await first.delivered(claimed.id)
        assert await store.zscore(names.dead, claimed.id) is None
        assert not await store.hexists(names.events, claimed.id)
    finally:
        await store.delete(*names.all())
        await other_client.aclose()


class FakeOutbox:
    """A shard's outbox in memory, for the deliverer alone: hands out its events in order;
    `stalled`: its Redis never answers; `failing`: it refuses every claim."""

    claiming = 0  # events asked for by claims on their way, over every FakeOutbox
    most_claiming = 0

    def __init__(self, shard: int, events: int = 0, *, stalled: bool = False, failing: bool = False) -> None:
        self.shard = shard
        self.queue = [f"s{shard}-e{n}" for n in range(events)]
        self.queue_ids = list(self.queue)
        self.stalled, self.failing = stalled, failing
        self.asked: list[int] = []  # each claim's limit
        self.settled: list[str] = []

    async def claim(self, now: int, limit: int, lease_until: int, max_attempts: int) -> list[outbox_store.Claimed]:
        assert limit > 0 and lease_until > now
        self.asked.append(limit)
        FakeOutbox.claiming += limit
        FakeOutbox.most_claiming = max(FakeOutbox.most_claiming, FakeOutbox.claiming)
        try:
            if self.stalled:
                await anyio.sleep_forever()
            if self.failing:
                raise redis.ConnectionError("refused")
            await anyio.sleep(0.001)
            taken, self.queue = self.queue[:limit], self.queue[limit:]
            return [outbox_store.Claimed(event_id, 1, b"") for event_id in taken]
        finally:
            FakeOutbox.claiming -= limit


class RecordingDeliverer(deliverer.Deliverer):
    """Delivers nothing: records which shard's event starts when, and how many run at once."""

    def __init__(self, outboxes: list[FakeOutbox], settings: Settings) -> None:
        super().__init__(outboxes, None, settings)  # type: ignore[arg-type]
        self.started: list[str] = []
        self.running = self.most_running = 0

    async def deliver(self, outbox, claimed: outbox_store.Claimed) -> None:  # type: ignore[override]
        assert claimed.id.startswith(f"s{outbox.shard}-")  # settled in the outbox it came from
        self.started.append(claimed.id)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await anyio.sleep(0.005)
        finally:
            self.running -= 1
        outbox.settled.append(claimed.id)


async def test_one_deliverer_serves_every_shard_fairly_within_shared_limits() -> None:
    """Concurrency and batch limits hold over all shards together; busy shards share the
    slots; a shard whose Redis hangs or refuses holds up no other."""
    settings = Settings(webhook_url="http://127.0.0.1:9/hooks", webhook_concurrency=4, webhook_batch_max=3, webhook_poll_interval_seconds=0.05)
    busy = [FakeOutbox(0, 60), FakeOutbox(1, 60)]
    stalled, failing, idle = FakeOutbox(2, 5, stalled=True), FakeOutbox(3, 5, failing=True), FakeOutbox(4)
    FakeOutbox.claiming = FakeOutbox.most_claiming = 0
    delivery = RecordingDeliverer([*busy, stalled, failing, idle], settings)
    began = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(delivery.run)
        with anyio.fail_after(10):
            while sum(len(outbox.settled) for outbox in busy) < 120:
                await anyio.sleep(0.01)
        elapsed = time.monotonic() - began
        await anyio.sleep(0.2)  # more polls: the stalled and failing shards still give nothing
        group.cancel_scope.cancel()

    assert [sorted(outbox.settled) for outbox in busy] == [sorted(outbox.queue_ids) for outbox in busy]
    assert delivery.most_running <= settings.webhook_concurrency and delivery.most_running >= 2
    assert FakeOutbox.most_claiming <= settings.webhook_batch_max
    # Fair: while both busy shards have events, neither gets ahead by more than a few slots.
    drained = min(max(delivery.started.index(event_id) for event_id in outbox.queue_ids) for outbox in busy)
    ahead = [sum(1 for event_id in delivery.started[: n + 1] if event_id.startswith("s0-")) * 2 - (n + 1) for n in range(drained)]
    assert max(abs(lead) for lead in ahead) <= settings.webhook_concurrency + settings.webhook_batch_max, ahead
    assert stalled.settled == [] and failing.settled == [] and len(stalled.asked) == 1
    # A refusing shard is asked for one event at a time, once a poll interval.
    assert failing.asked[1:] and set(failing.asked[1:]) == {1}
    assert len(failing.asked) <= (elapsed + 0.2) / settings.webhook_poll_interval_seconds + 2
    assert len(idle.asked) >= 2  # an empty shard is still looked at every interval
    assert delivery.running == 0  # shut down: nothing left running


async def test_a_deliverer_fault_other_than_redis_is_raised() -> None:
    class Broken(FakeOutbox):
        async def claim(self, *args) -> list[outbox_store.Claimed]:
            raise ValueError("a bug")

    settings = Settings(webhook_url="http://127.0.0.1:9/hooks", webhook_poll_interval_seconds=0.05)
    with anyio.fail_after(5), pytest.raises(ValueError, match="a bug"):
        await RecordingDeliverer([FakeOutbox(0, 3), Broken(1)], settings).run()


def test_signature_helpers_and_backoff() -> None:
    body = b'{"id":"x"}'
    header = signing.sign("s3cret", body, 1_700_000_000)
    assert header == "t=1700000000,v1=" + hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signing.verify("s3cret", header, body, now=1_700_000_100)
    assert not signing.verify("s3cret", header, body + b" ", now=1_700_000_100)  # the raw body, byte for byte
    assert not signing.verify("s3cret", header, body, now=1_700_000_301)  # too old: a replay
    assert signing.verify("s3cret", header + ",v1=00", body, now=1_700_000_000)  # several v1: secret rotation
    assert not signing.verify("s3cret", "v1=abc", body)

    waits = [deliverer.backoff_seconds(n, 1.0, 600.0, jitter=lambda: 0.0) for n in range(1, 13)]
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and waits[-1] == 600.0
    assert deliverer.backoff_seconds(1, 1.0, 600.0, jitter=lambda: 1.0) == pytest.approx(1.1)
    assert deliverer.backoff_seconds(10_000, 1.0, 600.0, jitter=lambda: 0.0) == 600.0


def test_outgoing_payment_events_render_the_resource_view() -> None:
    asset = Asset("USD", 2)
    payment = OutgoingPayment(
        id="4c0d3e1a-0000-4000-8000-000000000001",
        wallet_address="https://ase.example/alice",
        client=None,
        grant_id="g",
        by_quote=True,
        receiver="https://other.example/incoming-payments/1",
        debit_asset=asset,
        receive_asset=asset,
        debit=110,
        receive=100,
        fee=10,
        created_at_ms=1_700_000_000_123,
        phase="completed",
        sent=110,
    )
    event = Event("ev-1", "outgoing_payment.completed", 1_700_000_001_000, registry.codec.encode_state(payment))
    body = rendering.render(*registry.read_event(codec.encode(event)), "https://ase.example")
    decoded = msgspec.json.decode(body)
    assert decoded["id"] == "ev-1" and decoded["type"] == "outgoing_payment.completed"
    assert decoded["createdAt"] == "2023-11-14T22:13:21.000Z"
    assert decoded["data"]["id"] == "https://ase.example/outgoing-payments/4c0d3e1a-0000-4000-8000-000000000001"
    assert decoded["data"]["sentAmount"] == {"value": "110", "assetCode": "USD", "assetScale": 2}
    assert decoded["data"]["failed"] is False
