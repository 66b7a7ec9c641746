"""What one entity may hold in memory is bounded (issue 8, item 8), against a real
redis-server through an EntityHost (no Ray): a grant whose payments have all settled keeps
a snapshot of a few dozen bytes and holds a bounded part of its journal, yet answers a
retried reservation exactly and still refuses a payment past its limit; an incoming
payment with 10,000 operator credits activates without loading them, and a replay of its
oldest key gets the first outcome; a snapshot or journal entry past its bound is refused."""

from __future__ import annotations

import uuid

import pytest
import redis

from opay.actors import entity
from opay.actors.entity import INTERNAL, JOURNAL_HELD_MAX, EntityHost
from opay.actors.messages import (
    Answered,
    CancelOutgoingPayment,
    Credited,
    CreditIncomingPayment,
    Failed,
    OpenIncomingPayment,
    OpenOutgoingPayment,
    ReserveSpend,
    Spent,
    State,
    Tell,
    tag_of,
)
from opay.actors.registry import HANDLERS, JOURNAL_KEYS
from opay.clock import now_ms
from opay.domain import incoming_payment as ip_rules
from opay.domain.amounts import Asset
from opay.domain.grant_spend import GrantSpend, Limits, Reservation
from opay.domain.outgoing_payment import OutgoingPayment
from opay.actors.registry import codec
from opay.persistence import keys
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.persistence.snapshots import JOURNAL_WHOLE_MAX, SnapshotStore

USD = Asset("USD", 2)
HOUR_MS = 3_600_000
WALLET = "http://127.0.0.1/alice"


def host_for(server: EmbeddedRedis) -> EntityHost:
    """A host over shard 0 (SnapshotStore's default): the keys read back below are shard 0's."""
    client = redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=2)
    return EntityHost(SnapshotStore(client), HANDLERS, 10_000, journal_keys=JOURNAL_KEYS)


def run(host: EntityHost, commands: list) -> list:
    """One batch, then every Tell it caused, a round of Tells per batch, the way the router
    delivers them (answers go back to whoever asked). The first batch's replies."""
    now = now_ms()
    result = host.handle(commands, now)
    queue = list(result.tells)
    for _ in range(20):
        if not queue:
            return result.replies
        told = host.handle([tell.command for tell in queue], now)
        following = list(told.tells)
        for tell, reply in zip(queue, told.replies):
            if tell.reply_to is not None:
                following.append(Tell(Answered(tell.reply_to, tag_of(tell.command), reply)))
        queue = following
    raise AssertionError("tells kept coming")


def open_receiver(host: EntityHost) -> tuple[str, str]:
    """An incoming payment without an incomingAmount: its URL and its entity id."""
    payment_id, now = str(uuid.uuid4()), now_ms()
    payment = ip_rules.open_payment(
        payment_id=payment_id,
        wallet_address="http://127.0.0.1/bob",
        client=None,
        asset=USD,
        incoming_amount=None,
        expires_at_ms=now + HOUR_MS,
        metadata=None,
        now_ms=now,
        expiry=ip_rules.ExpiryPolicy(HOUR_MS, 24 * HOUR_MS),
    )
    [reply] = run(host, [OpenIncomingPayment(f"ip:{payment_id}", payment)])
    assert isinstance(reply, State), reply
    return f"http://127.0.0.1/incoming-payments/{payment_id}", f"ip:{payment_id}"


def opening(grant_id: str, payment_id: str, receiver: str, limits: Limits, debit: int, fund: bool) -> OpenOutgoingPayment:
    payment = OutgoingPayment(
        id=payment_id,
        wallet_address=WALLET,
        client="http://127.0.0.1/app",
        grant_id=grant_id,
        by_quote=True,
        receiver=receiver,
        debit_asset=USD,
        receive_asset=USD,
        debit=debit,
        receive=debit,
        fee=0,
        created_at_ms=now_ms(),
    )
    return OpenOutgoingPayment(f"op:{payment_id}", payment, fund)


def test_a_grant_with_2000_settled_payments_holds_little_and_still_refuses_past_its_limit(embedded: EmbeddedRedis) -> None:
    raw = redis.Redis.from_url(embedded.url)
    host = host_for(embedded)
    receiver, receiver_entity = open_receiver(host)
    grant_id = str(uuid.uuid4())
    grant = f"grant:{grant_id}"
    limits = Limits(debit=1_000 * 10 + 5, debit_asset=USD)

    def reserve(payment_id: str, debit: int = 10):
        [reply] = run(host, [ReserveSpend(grant, payment_id, limits, debit, USD, debit, USD, receiver)])
        return reply

    failed_ids: list[str] = []
    completed_ids: list[str] = []
    for _ in range(10):
        # 100 payments that fail (cancelled: their shares go back), then 100 that complete.
        failing = [str(uuid.uuid4()) for _ in range(100)]
        completing = [str(uuid.uuid4()) for _ in range(100)]
        for ids, fund in ((failing, False), (completing, True)):
            replies = run(host, [ReserveSpend(grant, p, limits, 10, USD, 10, USD, receiver) for p in ids])
            assert all(isinstance(reply, Spent) for reply in replies), replies[-1]
            replies = run(host, [opening(grant_id, p, receiver, limits, 10, fund) for p in ids])
            assert all(isinstance(reply, State) for reply in replies), replies[-1]
            if not fund:
                replies = run(host, [CancelOutgoingPayment(f"op:{p}", "test") for p in ids])
                assert all(isinstance(reply, State) and reply.state.failed for reply in replies)
        failed_ids += failing
        completed_ids += completing
        assert host.held_journal(grant) <= JOURNAL_HELD_MAX
        assert host.held_journal(receiver_entity) <= JOURNAL_HELD_MAX

    for payment_id in (failed_ids[0], completed_ids[0], completed_ids[-1]):
        state = codec.decode_state(raw.hget(keys.entity(f"op:{payment_id}", 0), "s"))
        assert state.phase == ("failed" if payment_id in failed_ids else "completed") and (state.phase != "failed" or state.grant_released)

    # The ledger's snapshot: the totals and nothing per payment.
    snapshot = raw.hget(keys.entity(grant, 0), "s")
    ledger = codec.decode_state(snapshot)
    assert isinstance(ledger, GrantSpend)
    assert (ledger.spent_debit, ledger.unconfirmed) == (10_000, {})
    assert len(snapshot) < 128, len(snapshot)
    # Each payment id's reservation stays in Redis, where it answers retries; memory holds
    # a bounded part of it (it held all 2,000 before).
    assert raw.hlen(keys.journal(grant, 0)) == 2_000
    assert host.held_journal(grant) <= JOURNAL_HELD_MAX < 2_000

    # Retries of reservations long out of memory: counted once, or refused once given back.
    reads = host.journal_reads
    assert reserve(completed_ids[0]) == Spent(10_000, 10_000)
    again = reserve(failed_ids[0])
    assert isinstance(again, Failed) and (again.kind, again.code) == ("conflict", "quote_used"), again
    assert host.journal_reads == reads, "named in advance: read with the batch, not on demand"
    assert reserve(str(uuid.uuid4())).code == "grant_limit_exceeded"

    # After a restart: activation reads the snapshot and the entries its batch names, no more.
    host = host_for(embedded)
    refused = reserve(str(uuid.uuid4()))
    assert isinstance(refused, Failed) and refused.code == "grant_limit_exceeded" and refused.details["spent"] == "10000"
    assert host.held_journal(grant) == 1
    last = str(uuid.uuid4())
    assert reserve(last, 5) == Spent(10_005, 10_005)
    assert reserve(completed_ids[-1]) == Spent(10_005, 10_005), "a retry after the restart is not counted again"
    assert reserve(last, 5) == Spent(10_005, 10_005)
    assert host.held_journal(grant) == 3 and host.journal_reads == 0
    assert codec.decode(raw.hget(keys.journal(grant, 0), completed_ids[0]), Reservation) == Reservation(debit=10, receive=10, window=-1)


def test_an_incoming_payment_with_10000_credits_activates_without_loading_them(embedded: EmbeddedRedis) -> None:
    raw = redis.Redis.from_url(embedded.url)
    host = host_for(embedded)
    _, payment = open_receiver(host)
    first: dict[str, Credited] = {}
    for batch in range(10):
        credits = [CreditIncomingPayment(payment, 1 + n % 7, "operator", f"k-{batch}-{n}") for n in range(1_000)]
        replies = run(host, credits)
        assert all(isinstance(reply, Credited) and reply.outcome.accepted for reply in replies)
        first.update({credit.idempotency_key: reply for credit, reply in zip(credits, replies)})
        assert host.held_journal(payment) <= JOURNAL_HELD_MAX
    assert raw.hlen(keys.journal(payment, 0)) == 10_000
    received = sum(1 + n % 7 for n in range(1_000)) * 10

    # A replay on the host that wrote them, of a key it no longer holds.
    [replay] = run(host, [CreditIncomingPayment(payment, 1, "operator", "k-0-0")])
    assert replay.outcome == first["k-0-0"].outcome and replay.replayed and replay.received_now == received

    # A fresh activation holds the snapshot and only the entries asked about.
    host = host_for(embedded)
    [replay] = run(host, [CreditIncomingPayment(payment, 1, "operator", "k-0-0")])
    assert isinstance(replay, Credited) and replay.replayed
    assert replay.outcome == first["k-0-0"].outcome and replay.received_now == received
    assert host.held_journal(payment) == 1 and host.journal_reads == 0, "named in advance: read with the snapshot"
    reused = run(host, [CreditIncomingPayment(payment, 2, "operator", "k-9-999")])[0]
    assert isinstance(reused, Failed) and reused.code == "idempotency_key_reused"
    [fresh] = run(host, [CreditIncomingPayment(payment, 3, "operator", "new")])
    assert fresh.outcome.accepted and not fresh.replayed and fresh.outcome.received == received + 3
    assert host.held_journal(payment) == 3
    assert raw.hlen(keys.journal(payment, 0)) == 10_001

    # Beside it, a payment with a small journal is held whole: a fresh key is known absent
    # without reading anything, as before.
    _, small = open_receiver(host)
    run(host, [CreditIncomingPayment(small, 1, "operator", f"k-{n}") for n in range(JOURNAL_WHOLE_MAX - 1)])
    host = host_for(embedded)
    reply, _ = run(host, [CreditIncomingPayment(small, 1, "operator", "k-0"), CreditIncomingPayment(payment, 1, "operator", "k-0-0")])
    assert reply.replayed and host.held_journal(small) == JOURNAL_WHOLE_MAX - 1 and host.held_journal(payment) == 1
    [reply] = run(host, [CreditIncomingPayment(small, 1, "operator", "fresh")])
    assert reply.outcome.accepted and not reply.replayed
    assert host.journal_reads == 0


def test_a_write_past_the_size_bounds_is_refused_and_nothing_is_stored(embedded: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = redis.Redis.from_url(embedded.url)
    host = host_for(embedded)
    _, payment = open_receiver(host)
    version = raw.hget(keys.entity(payment, 0), "v")
    monkeypatch.setattr(entity, "JOURNAL_ENTRY_MAX_BYTES", 8)
    assert run(host, [CreditIncomingPayment(payment, 1, "operator", "a")]) == [INTERNAL]
    monkeypatch.setattr(entity, "JOURNAL_ENTRY_MAX_BYTES", 1 << 16)
    monkeypatch.setattr(entity, "SNAPSHOT_MAX_BYTES", 16)
    assert run(host, [CreditIncomingPayment(payment, 1, "operator", "b")]) == [INTERNAL]
    assert raw.hget(keys.entity(payment, 0), "v") == version and raw.hlen(keys.journal(payment, 0)) == 0
    monkeypatch.setattr(entity, "SNAPSHOT_MAX_BYTES", 1 << 20)
    [reply] = run(host, [CreditIncomingPayment(payment, 1, "operator", "a")])
    assert reply.outcome.accepted and reply.outcome.received == 1
