"""A write that landed is known to have landed (issue 8, item 4), against a real redis-server.

The compare-and-set carries a write id, so a write sent again after it landed (redis-py
resends a pipeline whose reply timed out) is reported as landed, not as a conflict, and
outcomes are per entity: one failing write never discards the others' results.
"""

from __future__ import annotations

import threading
import time

from opay.actors import incoming_payments
from opay.actors.entity import EntityHost
from opay.actors.messages import CONFLICT_RETRY, UNAVAILABLE, CreditIncomingPayment, Credited
from opay.persistence import clients, keys
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.persistence.snapshots import CONFLICT, LANDED, UNKNOWN, EntityWrite, SideEffect, SnapshotStore
from tests.test_entity_host import client_for, credit, handle, open_on


def _store(embedded: EmbeddedRedis) -> SnapshotStore:
    return SnapshotStore(client_for(embedded))


def test_a_write_sent_again_after_it_landed_reports_landed(embedded: EmbeddedRedis) -> None:
    store = _store(embedded)
    write = EntityWrite("ip:resent", 0, b"snapshot-1", [])
    assert store.write_many([write]) == [LANDED]
    assert store.write_many([write]) == [LANDED]  # the resend: same id, version one ahead
    assert store.load_many(["ip:resent"])["ip:resent"].version == 1


def test_another_write_from_the_same_version_is_a_conflict(embedded: EmbeddedRedis) -> None:
    store = _store(embedded)
    assert store.write_many([EntityWrite("ip:raced", 0, b"a", [])]) == [LANDED]
    assert store.write_many([EntityWrite("ip:raced", 0, b"b", [])]) == [CONFLICT]
    assert store.load_many(["ip:raced"])["ip:raced"].snapshot == b"a"


def test_one_failing_write_leaves_the_others_results(embedded: EmbeddedRedis) -> None:
    store = _store(embedded)
    bad = EntityWrite("ip:bad", 0, b"x", [SideEffect("bogus", keys.due(0), "1", "ip:bad")])
    outcomes = store.write_many([EntityWrite("ip:good-1", 0, b"1", []), bad, EntityWrite("ip:good-2", 0, b"2", [])])
    assert outcomes == [LANDED, UNKNOWN, LANDED]
    loaded = store.load_many(["ip:good-1", "ip:good-2"])
    assert loaded["ip:good-1"].version == 1 and loaded["ip:good-2"].version == 1


def test_a_batch_mate_s_failed_write_does_not_fail_this_entity(embedded: EmbeddedRedis) -> None:
    def unwritable_for_one(command, state, step) -> None:
        incoming_payments.credit(command, state, step)
        if command.idempotency_key == "poison":
            step.effects.append(SideEffect("bogus", keys.due(0), "1", command.entity_id))

    host = EntityHost(_store(embedded), {**incoming_payments.HANDLERS, CreditIncomingPayment: unwritable_for_one}, 1000)
    healthy, doomed = open_on(host, incoming_amount=None), open_on(host, incoming_amount=None)
    replies = handle(
        host,
        [
            CreditIncomingPayment(healthy, 5, source="operator", idempotency_key="ok"),
            CreditIncomingPayment(doomed, 5, source="operator", idempotency_key="poison"),
        ],
    )
    assert isinstance(replies[0], Credited) and replies[0].outcome.received == 5
    assert replies[1] == UNAVAILABLE


def test_a_pipeline_resent_by_redis_py_after_a_timeout_is_not_a_conflict(embedded: EmbeddedRedis) -> None:
    """Redis is busy past the client's socket timeout; redis-py resends the pipeline once
    (clients.blocking, as a shard uses it). Whichever copy runs first lands the write; the
    other must not turn the answer into a conflict."""
    host = EntityHost(SnapshotStore(clients.blocking(embedded.url, 0.5)), incoming_payments.HANDLERS, 1000)
    raw = client_for(embedded, timeout=10)
    entity_id = open_on(host, incoming_amount=None)
    busy = "local t = redis.call('TIME'); local stop = t[1] * 1e6 + t[2] + ARGV[1]; " \
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop; return 1"
    stall = threading.Thread(target=lambda: raw.eval(busy, 0, 800_000))
    stall.start()
    time.sleep(0.1)
    reply = credit(host, entity_id, 7, "resent")
    stall.join()
    assert reply != CONFLICT_RETRY
    assert isinstance(reply, Credited) and reply.outcome.received == 7, reply
    assert credit(host, entity_id, 7, "resent").outcome.received == 7  # the same key answers the same
