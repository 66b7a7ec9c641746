"""EntityHost + SnapshotStore against a real redis-server (no Ray): compare-and-set writes,
outages, journal replay and passivation."""

from __future__ import annotations

import threading
import time
import uuid

import redis

from opay.actors import incoming_payments
from opay.actors.entity import INTERNAL, EntityHost
from opay.actors.messages import (
    CONFLICT_RETRY,
    UNAVAILABLE,
    CreditIncomingPayment,
    Credited,
    ExpireIncomingPayment,
    Failed,
    Nothing,
    OpenIncomingPayment,
    State,
)
from opay.clock import now_ms
from opay.domain import incoming_payment as rules
from opay.domain.amounts import Asset
from opay.actors.registry import codec
from opay.persistence import keys
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.persistence.snapshots import SnapshotStore

USD = Asset("USD", 2)
HOUR_MS = 3_600_000


def client_for(server: EmbeddedRedis, timeout: float = 1.0) -> redis.Redis:
    # The way a shard builds its client (opay/actors/shard.py), with a shorter timeout.
    return redis.Redis.from_url(server.url, socket_timeout=timeout, socket_connect_timeout=timeout)


def host_for(server: EmbeddedRedis, max_active: int = 1000, timeout: float = 1.0) -> EntityHost:
    return EntityHost(SnapshotStore(client_for(server, timeout)), incoming_payments.HANDLERS, max_active)


def new_payment(incoming_amount: int | None = 100, expires_in_ms: int = HOUR_MS) -> tuple[str, rules.IncomingPayment]:
    payment_id = str(uuid.uuid4())
    now = now_ms()
    payment = rules.open_payment(
        payment_id=payment_id,
        wallet_address="http://127.0.0.1/alice",
        client="http://127.0.0.1/app",
        asset=USD,
        incoming_amount=incoming_amount,
        expires_at_ms=now + expires_in_ms,
        metadata=None,
        now_ms=now,
        expiry=rules.ExpiryPolicy(HOUR_MS, 24 * HOUR_MS),
    )
    return f"ip:{payment_id}", payment


def handle(host: EntityHost, commands: list) -> list:
    """The replies of one batch (EntityHost.handle returns them with any Tells)."""
    return host.handle(commands, now_ms()).replies


def open_on(host: EntityHost, incoming_amount: int | None = 100, expires_in_ms: int = HOUR_MS) -> str:
    entity_id, payment = new_payment(incoming_amount, expires_in_ms)
    [reply] = handle(host, [OpenIncomingPayment(entity_id, payment)])
    assert isinstance(reply, State), reply
    return entity_id


def credit(host: EntityHost, entity_id: str, amount: int, key: str):
    [reply] = handle(host, [CreditIncomingPayment(entity_id, amount, "operator", key)])
    return reply


def operator_key(key: str) -> bytes:
    """The journal field of an operator credit's idempotency key."""
    return incoming_payments.journal_key("operator", key).encode()


def stored(raw: redis.Redis, entity_id: str) -> tuple[int, rules.IncomingPayment, dict[bytes, bytes]]:
    version, snapshot = raw.hmget(keys.entity(entity_id, 0), "v", "s")
    return int(version), codec.decode_state(snapshot), raw.hgetall(keys.journal(entity_id, 0))


def test_a_stale_activation_cannot_overwrite_a_newer_version(embedded: EmbeddedRedis) -> None:
    raw = client_for(embedded)
    a, b = host_for(embedded), host_for(embedded)
    entity_id = open_on(a)  # a holds version 1
    other_id = open_on(a)

    # b activates the same entity (say, after a failover) and moves it to version 2.
    reply = credit(b, entity_id, 10, "b-1")
    assert isinstance(reply, Credited) and reply.outcome.accepted and reply.outcome.received == 10
    assert stored(raw, entity_id)[0] == 2

    # a still believes version 1. Its write, batched with a write to an entity it holds
    # correctly, must lose alone: the newer state stays and nothing of a's lands.
    assert a.active_count == 2
    replies = handle(a, [CreditIncomingPayment(entity_id, 5, "operator", "a-1"), CreditIncomingPayment(other_id, 7, "operator", "a-2")])
    assert replies[0] == CONFLICT_RETRY
    assert isinstance(replies[1], Credited) and replies[1].outcome.received == 7
    version, state, journal = stored(raw, entity_id)
    assert version == 2 and state.received == 10 and set(journal) == {operator_key("b-1")}
    assert a.active_count == 1  # the stale copy was evicted, the good one kept

    # A refusal is also a write (its journal entry), so a stale host cannot answer one either.
    reply = credit(b, entity_id, 90, "b-2")
    assert isinstance(reply, Credited) and reply.outcome.completed and stored(raw, entity_id)[0] == 3
    [stale] = handle(b, [CreditIncomingPayment(other_id, 1000, "operator", "b-3")])  # b loads other at v2
    assert isinstance(stale, Credited) and stale.outcome.refused_code == "cap_exceeded"
    assert stored(raw, other_id)[0] == 3  # the refusal's journal entry moved the version
    assert credit(a, other_id, 1, "a-3") == CONFLICT_RETRY  # a's copy (v2) is stale now
    assert credit(a, other_id, 1, "a-3").outcome.received == 8  # re-read, applied: v4
    assert credit(b, other_id, 5, "b-4") == CONFLICT_RETRY  # b's copy of other is stale now
    assert stored(raw, other_id)[1].received == 8

    # The retry re-reads Redis and is applied on the newest state.
    retried = credit(a, entity_id, 5, "a-1")
    assert isinstance(retried, Credited) and retried.outcome.refused_code == "completed"
    version, state, journal = stored(raw, entity_id)
    assert version == 4 and state.received == 100 and state.completed
    assert codec.decode(journal[operator_key("a-1")], rules.CreditOutcome) == retried.outcome


def test_redis_down_replies_unavailable_and_evicts(embedded: EmbeddedRedis) -> None:
    host = host_for(embedded, timeout=0.5)
    entity_id = open_on(host, incoming_amount=None)
    assert credit(host, entity_id, 3, "k-1").outcome.received == 3
    assert host.active_count == 1

    embedded.stop()
    # The entity is in memory, so this goes straight to the write, which fails.
    assert credit(host, entity_id, 4, "k-2") == UNAVAILABLE
    assert host.active_count == 0, "an entity whose write failed must be forgotten"
    # Activation fails the same way.
    assert credit(host, entity_id, 4, "k-2") == UNAVAILABLE
    assert host.active_count == 0

    embedded.start()  # same dir and port: the AOF is replayed
    raw = client_for(embedded)
    version, state, journal = stored(raw, entity_id)
    assert (version, state.received, set(journal)) == (2, 3, {operator_key("k-1")})
    assert credit(host, entity_id, 3, "k-1").outcome.received == 3  # first outcome, not re-applied
    assert credit(host, entity_id, 4, "k-2").outcome.received == 7
    assert stored(raw, entity_id)[:2] == (3, rules.IncomingPayment(**{**_fields(state), "received": 7}))


def _fields(state: rules.IncomingPayment) -> dict:
    return {name: getattr(state, name) for name in state.__struct_fields__}


def test_a_write_whose_answer_is_lost_is_applied_once(embedded: EmbeddedRedis) -> None:
    """Redis stalls (a long script) past the host's socket timeout: the host cannot know
    whether its write landed. Whatever it answers, Redis holds the credit at most once,
    and the retry with the same key answers the first outcome."""
    host = host_for(embedded, timeout=0.2)
    raw = client_for(embedded, timeout=10)
    entity_id = open_on(host, incoming_amount=None)
    assert credit(host, entity_id, 1, "before").outcome.received == 1

    busy = "local t = redis.call('TIME'); local stop = t[1] * 1e6 + t[2] + ARGV[1]; " \
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop; return 1"
    stall = threading.Thread(target=lambda: raw.eval(busy, 0, 1_200_000))
    stall.start()
    time.sleep(0.1)
    reply = credit(host, entity_id, 5, "during")
    stall.join()

    if isinstance(reply, Failed):
        assert reply.kind == "unavailable", reply
        assert host.active_count == 0
    else:
        assert isinstance(reply, Credited) and reply.outcome.received == 6
    version, state, journal = stored(raw, entity_id)
    assert state.received in (1, 6) and version == (3 if state.received == 6 else 2)

    retried = credit(host, entity_id, 5, "during")
    assert isinstance(retried, Credited) and retried.outcome.accepted and retried.outcome.received == 6
    version, state, journal = stored(raw, entity_id)
    assert state.received == 6 and version == 3 and set(journal) == {operator_key("before"), operator_key("during")}


def test_journal_replays_after_reactivation(embedded: EmbeddedRedis) -> None:
    raw = client_for(embedded)
    first = host_for(embedded)
    entity_id = open_on(first, incoming_amount=10)
    # Duplicates inside one batch: the second sees the first's pending journal entry.
    replies = handle(
        first,
        [
            CreditIncomingPayment(entity_id, 6, "operator", "k-1"),
            CreditIncomingPayment(entity_id, 6, "operator", "k-1"),
            CreditIncomingPayment(entity_id, 5, "operator", "k-2"),
            CreditIncomingPayment(entity_id, 4, "operator", "k-3"),
        ],
    )
    outcomes = [reply.outcome for reply in replies]
    assert outcomes[0] == outcomes[1] and outcomes[0].accepted and outcomes[0].received == 6
    assert not outcomes[2].accepted and outcomes[2].refused_code == "cap_exceeded"
    assert outcomes[3].accepted and outcomes[3].completed and outcomes[3].received == 10
    version_before = stored(raw, entity_id)[0]
    assert version_before == 2, "one batch is one write"

    second = host_for(embedded)  # a fresh activation reads snapshot and journal from Redis
    again = handle(second, [CreditIncomingPayment(entity_id, amount, "operator", key) for amount, key in ((6, "k-1"), (5, "k-2"), (4, "k-3"))])
    assert [reply.outcome for reply in again] == [outcomes[0], outcomes[2], outcomes[3]]
    reused = credit(second, entity_id, 7, "k-1")
    assert isinstance(reused, Failed) and reused.code == "idempotency_key_reused" and reused.kind == "conflict"
    new = credit(second, entity_id, 1, "k-4")
    assert new.outcome.refused_code == "completed" and new.outcome.received == 10
    version, state, journal = stored(raw, entity_id)
    assert state.received == 10 and version == version_before + 1  # only k-4's refusal was written
    assert set(journal) == {operator_key(f"k-{n}") for n in range(1, 5)}


def test_expiry_leaves_the_due_set_with_the_write(embedded: EmbeddedRedis) -> None:
    raw = client_for(embedded)
    host = host_for(embedded)
    entity_id = open_on(host, expires_in_ms=50)
    assert raw.zscore(keys.due(0), entity_id) is not None
    time.sleep(0.1)
    [reply] = handle(host, [ExpireIncomingPayment(entity_id)])
    assert reply == Nothing()
    assert raw.zscore(keys.due(0), entity_id) is None and stored(raw, entity_id)[1].expired
    assert credit(host_for(embedded), entity_id, 1, "late").outcome.refused_code == "expired"


def test_lru_passivation_keeps_at_most_max_active(embedded: EmbeddedRedis) -> None:
    raw = client_for(embedded)
    host = host_for(embedded, max_active=3)
    ids = [open_on(host, incoming_amount=None) for _ in range(5)]
    assert host.active_count == 3

    # One batch touching more entities than fit: every command still applies and commits.
    replies = handle(host, [CreditIncomingPayment(entity_id, 1, "operator", f"{entity_id}-1") for entity_id in ids])
    assert all(isinstance(reply, Credited) and reply.outcome.received == 1 for reply in replies)
    assert host.active_count == 3

    # A passivated entity changed elsewhere is re-read, not overwritten from a stale copy.
    other = host_for(embedded)
    assert credit(other, ids[0], 10, "elsewhere").outcome.received == 11
    assert credit(host, ids[0], 1, "back").outcome.received == 12
    for n, entity_id in enumerate(ids):
        reply = credit(host, entity_id, 1, f"{entity_id}-2")
        assert isinstance(reply, Credited), reply
        assert host.active_count <= 3
    assert [stored(raw, entity_id)[1].received for entity_id in ids] == [13, 2, 2, 2, 2]


def test_a_command_that_fails_in_its_rules_does_not_take_its_batch_mates_down(embedded: EmbeddedRedis) -> None:
    """One entity raising fails only its own commands; the others in the batch commit."""
    good, bad = open_on(host_for(embedded), None), open_on(host_for(embedded), None)
    correct = incoming_payments.HANDLERS[CreditIncomingPayment]

    def buggy_for_one(command, state, step):  # a rule with a bug that only `bad` hits
        if command.entity_id == bad:
            raise RuntimeError("a bug in the rules")
        correct(command, state, step)

    host = EntityHost(SnapshotStore(client_for(embedded)), {**incoming_payments.HANDLERS, CreditIncomingPayment: buggy_for_one}, 1000)
    replies = handle(host, [CreditIncomingPayment(good, 5, "operator", "a"), CreditIncomingPayment(bad, 5, "operator", "b"), CreditIncomingPayment(good, 7, "operator", "c")])
    assert replies[1] == INTERNAL
    assert [reply.outcome.received for reply in (replies[0], replies[2])] == [5, 12]
    raw = client_for(embedded)
    assert stored(raw, good)[1].received == 12
    assert stored(raw, bad)[1].received == 0
