"""What a resident entity holds: values many entities hold alike are one object per host,
and holding them so changes nothing the entity says or stores (real redis-server, no Ray)."""

from __future__ import annotations

import redis

from opay.actors import registry
from opay.actors.entity import NO_JOURNAL, SHARED_MAX, Active, EntityHost, Shared
from opay.actors.messages import CreditIncomingPayment, Credited, ExpireIncomingPayment, Nothing, OpenIncomingPayment, State
from opay.actors.registry import codec
from opay.clock import now_ms
from opay.persistence import keys
from opay.persistence.snapshots import SnapshotStore
from tests.test_entity_host import client_for, host_for, new_payment


def test_activated_entities_share_equal_values_and_state_what_redis_holds(embedded) -> None:
    opener = host_for(embedded)
    opened = [new_payment() for _ in range(3)]
    replies = opener.handle([OpenIncomingPayment(e, p) for e, p in opened], now_ms()).replies
    assert all(isinstance(r, State) for r in replies)

    host = host_for(embedded)  # a fresh host: every state is decoded from Redis, each with its own strings
    assert all(isinstance(r, Nothing) for r in host.handle([ExpireIncomingPayment(e) for e, _ in opened], now_ms()).replies)
    states = [host._active[e].state for e, _ in opened]
    assert states == [p for _, p in opened]
    for name in ("wallet_address", "client", "asset"):
        assert len({id(getattr(s, name)) for s in states}) == 1, name
    assert len({id(s.id) for s in states}) == 3  # a value of its own stays its own

    # A credit on a shared state writes the same snapshot an unshared one would.
    entity_id, payment = opened[0]
    reply = host.handle([CreditIncomingPayment(entity_id, 5, "operator", "k1")], now_ms()).replies[0]
    assert isinstance(reply, Credited) and reply.received_now == 5
    stored = codec.decode_state(client_for(embedded).hget(keys.entity(entity_id, 0), "s"))
    assert stored == host._active[entity_id].state and stored.wallet_address == payment.wallet_address and stored.received == 5


def test_the_table_is_bounded_and_skips_what_cannot_be_shared() -> None:
    shared = Shared()
    _, base = new_payment()
    for n in range(SHARED_MAX + 10):
        _, payment = new_payment()
        shared.share(type(payment)(**{**{f: getattr(payment, f) for f in payment.__struct_fields__}, "wallet_address": f"w{n}"}))
    assert len(shared._values) <= SHARED_MAX
    no_client = type(base)(**{**{f: getattr(base, f) for f in base.__struct_fields__}, "client": None})
    shared.share(no_client)  # None is left as it is
    assert no_client.client is None


def test_an_entity_without_journal_entries_holds_none_and_still_records_its_next(embedded) -> None:
    host = host_for(embedded)
    entity_id, payment = new_payment()
    assert isinstance(host.handle([OpenIncomingPayment(entity_id, payment)], now_ms()).replies[0], State)
    assert host._active[entity_id].journal is NO_JOURNAL and host.held_journal(entity_id) == 0
    for _ in range(2):  # the first records the key, the second is answered from it
        reply = host.handle([CreditIncomingPayment(entity_id, 7, "operator", "k")], now_ms()).replies[0]
        assert isinstance(reply, Credited) and reply.received_now == 7
    # The entry (the replay read it) and the hash it had before: a hash stays once held.
    assert host.held_journal(entity_id) == 2 and set(host._active[entity_id].journal) == {"operator:k"}
    assert client_for(embedded).hget(keys.journal(entity_id, 0), "operator:k") is not None


def hmgets(raw: redis.Redis) -> int:
    """HMGETs Redis has served: how journal entries are read, with a batch or on demand."""
    return int(raw.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_a_whole_journal_holds_its_keys_hashes_and_reads_an_entry_only_for_a_replay(embedded) -> None:
    raw = client_for(embedded)
    # As a shard builds it: its commands name the journal keys they will read.
    host = EntityHost(SnapshotStore(raw), registry.HANDLERS, 100, journal_keys=registry.JOURNAL_KEYS)
    entity_id, payment = new_payment(incoming_amount=None)
    host.handle([OpenIncomingPayment(entity_id, payment)], now_ms())
    first = [host.handle([CreditIncomingPayment(entity_id, 2, "operator", f"k{n}")], now_ms()).replies[0] for n in range(3)]
    active = host._active[entity_id]
    # Between batches: no entry, no key, only a hash per key Redis has.
    assert active.whole and active.journal is NO_JOURNAL
    assert sorted(active.present) == sorted(hash(f"operator:k{n}") for n in range(3))

    # A fresh key is known absent without a read.
    reads = hmgets(raw)
    [fresh] = host.handle([CreditIncomingPayment(entity_id, 5, "operator", "k3")], now_ms()).replies
    assert isinstance(fresh, Credited) and fresh.outcome.accepted and not fresh.replayed and fresh.received_now == 11
    assert hmgets(raw) == reads

    # A replay reads its entry (with its batch: the credit names its key) and answers the first outcome.
    [replay] = host.handle([CreditIncomingPayment(entity_id, 2, "operator", "k1")], now_ms()).replies
    assert isinstance(replay, Credited) and replay.replayed and replay.outcome == first[1].outcome and replay.received_now == 11
    assert hmgets(raw) == reads + 1 and host.journal_reads == 0
    # What a batch read stays held for the next (a working set: an ILP dedupe bucket, a reservation).
    assert host._active[entity_id].journal == {"operator:k1": raw.hget(keys.journal(entity_id, 0), "operator:k1")}
    [again] = host.handle([CreditIncomingPayment(entity_id, 2, "operator", "k1")], now_ms()).replies
    assert again.replayed and again.outcome == first[1].outcome and hmgets(raw) == reads + 1
    [reused] = host.handle([CreditIncomingPayment(entity_id, 3, "operator", "k0")], now_ms()).replies
    assert reused.code == "idempotency_key_reused"
    # Read once, held from then on: k1 stays held through a batch that does not read it.
    assert set(host._active[entity_id].journal) == {"operator:k0", "operator:k1"}

    # A hash held for a key Redis does not have (two keys of one hash): read, found absent, applied once.
    reads = hmgets(raw)
    host._active[entity_id].present += (hash("operator:k4"),)
    [other] = host.handle([CreditIncomingPayment(entity_id, 1, "operator", "k4")], now_ms()).replies
    assert isinstance(other, Credited) and other.outcome.accepted and not other.replayed and other.received_now == 12
    assert hmgets(raw) == reads + 1
    assert codec.decode_state(raw.hget(keys.entity(entity_id, 0), "s")).received == 12
    assert raw.hlen(keys.journal(entity_id, 0)) == 5


class Colliding(str):
    """A key of the one hash every Colliding has: two keys of one hash, made on purpose."""

    def __hash__(self) -> int:
        return 7


def test_a_hash_held_for_two_keys_stays_when_one_of_them_is_read_and_held() -> None:
    a, b = Colliding("operator:a"), Colliding("operator:b")
    _, payment = new_payment()
    # Redis holds a and b; neither was read, so the journal holds their one hash.
    active = Active(2, payment, {}, True, (7,))
    active.journal = {a: b"first outcome of a"}  # a's entry, read by a replay this batch
    active.idle({a})
    assert active.journal == {a: b"first outcome of a"}
    assert active.may_hold(b), "b's entry is in Redis: b must be read, not taken as absent"
    assert not active.may_hold("operator:c") or hash("operator:c") == 7
