"""An ILP packet is answered by what happened (issue 8, item 6).

A real `opay serve` with a short shard deadline, and a recording proxy (tests/ilp_support)
between the sender and opay: it keeps every Prepare and answer, and can lose an answer on
the way back. The sender is opay's own STREAM codec building real Prepares with the
payment's shared secret (tests/ilp_support.Connection); the Node senders' side of the same
rules is in test_ilp_interop.py. Every check that money did or did not arrive reads
receivedAmount through the Open Payments API; the dedupe entries are read from Redis.

  a lost Fulfill, then an exact resend   the same fulfillment; credited once
  a reconnect restarting sequences at 1  every new packet credited
  a Prepare expired, or expiring while the shard is stopped   never fulfilled, nothing credited
  the shard stopped past the deadline    asked again: fulfilled once it answers; if T00
                                         was answered, the resend is fulfilled, one credit
  many Prepares that expired             their entries are pruned; a full bucket is T05
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from opay.actors.incoming_payments import journal_key
from opay.persistence.keys import shard_of
from opay.domain import packet_dedupe
from opay.ilp.packet import Fulfill
from opay.persistence import codec, keys
from tests.ilp_support import Connection, RecordingProxy, b64url_decode, ilp_env, ilp_method, received
from tests.support import OpayServer, session_members

pytestmark = pytest.mark.anyio

DEADLINE_SECONDS = 1.5  # the server's shard deadline: a stopped shard is "unknown" after it
USD = {"assetCode": "USD", "assetScale": 2}


def usd(value: int) -> dict:
    return {"value": str(value), **USD}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(
        Path(tmp_path_factory.mktemp("ilp-outcomes")), extra_env=ilp_env(OPAY_SHARD_CALL_TIMEOUT_SECONDS=str(DEADLINE_SECONDS))
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxy(server):
    recording = RecordingProxy(f"{server.public_url}/ilp").start()
    yield recording
    recording.stop()


@pytest.fixture
async def token(world) -> str:
    return await world.token()


async def new_payment(world, token: str, **body) -> dict:
    created = await world.create_payment(token, **body)
    assert created.status_code == 201, created.text
    return created.json()


def via(proxy: RecordingProxy, world, payment: dict, **kw) -> Connection:
    method = ilp_method(payment)
    return Connection(world.http, proxy.url, method["ilpAddress"], b64url_decode(method["sharedSecret"]), **kw)


def shard_pids(server: OpayServer) -> list[int]:
    assert server.process is not None
    found = []
    for pid in session_members(server.process.pid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::Shard"):
                found.append(pid)
        except OSError:
            pass
    assert found, "no shard worker found"
    return found


@contextmanager
def shards_stopped(server: OpayServer):
    """SIGSTOP every shard worker of this server; SIGCONT on the way out, whatever happens."""
    pids = shard_pids(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def journal_of(payment: dict) -> str:
    """The payment's journal key on the server (OpayServer runs OPAY_SHARDS=2)."""
    entity_id = f"ip:{payment['id'].rsplit('/', 1)[1]}"
    return keys.journal(entity_id, shard_of(entity_id, 2))


def dedupe_entries(server: OpayServer, payment: dict) -> dict[str, packet_dedupe.Bucket]:
    """The payment's ILP dedupe buckets as Redis holds them."""
    stored = redis.Redis.from_url(server.redis_url).hgetall(journal_of(payment))
    prefix = journal_key("ilp", "")
    return {
        name.decode(): codec.decode(value, packet_dedupe.Bucket) for name, value in stored.items() if name.decode().startswith(prefix)
    }


def journal_bytes(server: OpayServer, payment: dict) -> int:
    client = redis.Redis.from_url(server.redis_url)
    key = journal_of(payment)
    return sum(client.hstrlen(key, name) for name in client.hkeys(key))


# ---------------------------------------------------------------- (a) a lost Fulfill


async def test_a_resend_after_a_lost_fulfill_gets_the_same_fulfill_and_credits_once(server, proxy, world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = via(proxy, world, payment)
    assert (await conn.send(100)).code == "fulfill"
    sent = conn.build(120)
    proxy.lose(1)
    lost = await conn.post(sent.raw)
    assert lost.status_code == 502  # the sender never saw the answer...
    [exchange] = [e for e in proxy.exchanges_to(conn.destination) if e.request == sent.raw]
    assert exchange.lost and isinstance(exchange.reply, Fulfill)  # ...which was a Fulfill: it landed
    assert await received(world, payment, token) == (220, False)
    for _ in range(2):  # the sender resends the identical Prepare (and once more)
        again = await conn.deliver(sent)  # checks sha256(fulfillment) == executionCondition
        assert again.code == "fulfill" and again.packet.fulfillment == exchange.reply.fulfillment
        assert again.max_money().total_received == 220
    assert await received(world, payment, token) == (220, False)


# ---------------------------------------------------------------- (b) reused sequences


async def test_a_reconnect_on_the_same_credentials_restarting_sequences_is_credited(server, proxy, world, token) -> None:
    payment = await new_payment(world, token)
    method = ilp_method(payment)
    total = 0
    for attempt in range(3):  # as Rafiki: every quote and every retry numbers from 1 again
        conn = Connection(world.http, proxy.url, method["ilpAddress"], b64url_decode(method["sharedSecret"]), next_sequence=1)
        for amount in (10, 20, 30):
            answer = await conn.send(amount + attempt)
            assert answer.code == "fulfill", (attempt, amount, answer.packet)
            total += amount + attempt
        assert [s.sequence for s in conn.sent] == [1, 2, 3]
    assert await received(world, payment, token) == (total, False)
    fulfilled = [e for e in proxy.exchanges_to(method["ilpAddress"]) if isinstance(e.reply, Fulfill)]
    assert sum(e.prepare.amount for e in fulfilled) == total


# ---------------------------------------------------------------- (c) expiry


async def test_an_expired_prepare_is_r00_and_credits_nothing(server, proxy, world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = via(proxy, world, payment)
    assert (await conn.send(10)).code == "fulfill"  # the receiver knows this payment
    for expires_in in (-1.0, 0.0):
        assert (await conn.send(40, expires_in=expires_in)).code == "R00"
    # Expiring while the shard is stopped: it must not be credited when the shard wakes up.
    sent = conn.build(50, expires_in=1.0)
    with shards_stopped(server):
        pending = asyncio.create_task(conn.deliver(sent))
        await asyncio.sleep(2.5)
    answer = await pending
    assert answer.code in ("T00", "R00"), answer.packet
    await asyncio.sleep(1.0)  # the stopped shard's queued batches are applied by now
    assert await received(world, payment, token) == (10, False)
    assert (await conn.deliver(sent)).code == "R00"  # and its resend is too late
    assert await received(world, payment, token) == (10, False)


# ---------------------------------------------------------------- (d) unknown outcome


async def test_an_unknown_outcome_is_asked_again_before_t00(server, proxy, world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = via(proxy, world, payment)
    assert (await conn.send(10)).code == "fulfill"
    # The shard is stopped past the first ask's deadline, then answers: the second ask finds
    # the credit that landed, and the packet is fulfilled, not T00.
    sent = conn.build(120)
    with shards_stopped(server):
        pending = asyncio.create_task(conn.deliver(sent))
        await asyncio.sleep(DEADLINE_SECONDS + 0.5)
    answer = await pending
    assert answer.code == "fulfill", answer.packet
    assert answer.max_money().total_received == 130
    assert await received(world, payment, token) == (130, False)

    # Stopped past both asks: T00. The credit lands when the shard wakes; the resend is fulfilled
    # and credits nothing more.
    sent = conn.build(80)
    started = time.monotonic()
    with shards_stopped(server):
        answer = await conn.deliver(sent)
        assert answer.code == "T00", answer.packet
        assert time.monotonic() - started < 3 * DEADLINE_SECONDS + 1  # asked twice, then answered
    again = await conn.deliver(sent)
    assert again.code == "fulfill", again.packet
    assert await received(world, payment, token) == (210, False)


# ---------------------------------------------------------------- (e) bounded


async def test_dedupe_entries_expire_with_their_prepares(server, proxy, world, token) -> None:
    payment = await new_payment(world, token)
    conn = via(proxy, world, payment)
    short = []
    expires = time.time() + 10.0  # all at once: none has expired when they are counted
    for _ in range(10):  # each group built just before it is sent
        group = [conn.build(1, expires_in=expires - time.time()) for _ in range(30)]
        answers = await asyncio.gather(*(conn.deliver(s) for s in group))
        assert {a.code for a in answers} == {"fulfill"}
        short += group
    stored = dedupe_entries(server, payment)
    assert time.time() < expires, "sending took too long for this test"
    assert sum(len(b.seen) for b in stored.values()) == 300
    assert len(stored) <= packet_dedupe.BUCKETS
    before = journal_bytes(server, payment)

    deadline = max(s.prepare.expires_at for s in short).timestamp()
    await asyncio.sleep(max(0.0, deadline - time.time()) + 0.2)
    # New packets, one into each bucket that holds expired entries: each write prunes its bucket.
    for name in stored:
        while True:
            sent = conn.build(1)
            if journal_key("ilp", packet_dedupe.bucket_name(sent.prepare.execution_condition)) == name:
                break
        assert (await conn.deliver(sent)).code == "fulfill"
    after = dedupe_entries(server, payment)
    assert set(after) == set(stored)
    assert all(len(bucket.seen) == 1 for bucket in after.values()), {n: len(b.seen) for n, b in after.items()}
    assert journal_bytes(server, payment) < before / 3
    assert await received(world, payment, token) == (300 + len(stored), False)
    # Resends of the expired ones are too late (R00), never credited again.
    assert (await conn.deliver(short[0])).code == "R00"
    assert await received(world, payment, token) == (300 + len(stored), False)


async def test_a_full_dedupe_bucket_is_t05_and_credits_nothing(server, proxy, world, token) -> None:
    payment = await new_payment(world, token)
    conn = via(proxy, world, payment)
    target = None
    packets = []
    while len(packets) < packet_dedupe.BUCKET_MAX + 1:
        sent = conn.build(1, expires_in=60)
        name = packet_dedupe.bucket_name(sent.prepare.execution_condition)
        target = target or name
        if name == target:
            packets.append(sent)
    for n in range(0, packet_dedupe.BUCKET_MAX, 32):
        answers = await asyncio.gather(*(conn.deliver(s) for s in packets[n : min(n + 32, packet_dedupe.BUCKET_MAX)]))
        assert {a.code for a in answers} == {"fulfill"}
    full = await conn.deliver(packets[-1])
    assert full.code == "T05", full.packet
    assert await received(world, payment, token) == (packet_dedupe.BUCKET_MAX, False)
    # Other buckets still take packets, and resends of remembered ones are still fulfilled.
    while packet_dedupe.bucket_name((other := conn.build(1)).prepare.execution_condition) == target:
        pass
    assert (await conn.deliver(other)).code == "fulfill"
    assert (await conn.deliver(packets[0])).code == "fulfill"
    assert await received(world, payment, token) == (packet_dedupe.BUCKET_MAX + 1, False)
    stored = dedupe_entries(server, payment)
    assert len(stored[journal_key("ilp", target)].seen) == packet_dedupe.BUCKET_MAX


async def test_an_operator_credit_of_unknown_outcome_is_asked_again_before_503(server, world, token) -> None:
    """Not ILP, but the same rule on the same short-deadline server: the shard is stopped
    past the first ask's share of the deadline (half), then answers within the second's;
    the second ask finds the credit landed. Both fit in one deadline."""
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    with shards_stopped(server):
        pending = asyncio.create_task(world.operator.credit(payment["id"], "70", "unknown-then-landed"))
        await asyncio.sleep(DEADLINE_SECONDS * 0.75)
    answer = await pending
    assert answer.status_code == 200, answer.text
    assert await received(world, payment, token) == (70, False)
