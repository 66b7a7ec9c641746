"""Stored shapes outlive the code that wrote them: an incoming payment stored under schema 1
(its fields under their Python names) is read, credited and written back under schema 2 (one
letter each), and a webhook event holds its state as a snapshot, so it is read the same way."""

from __future__ import annotations

import msgspec
import redis

from opay.actors import incoming_payments, registry
from opay.actors.entity import EntityHost
from opay.actors.messages import CreditIncomingPayment, Credited
from opay.clock import now_ms
from opay.domain import incoming_payment as rules
from opay.domain.amounts import Asset
from opay.outbox.events import Event
from opay.outbox.render import render
from opay.persistence import codec, keys
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.persistence.snapshots import SnapshotStore
from tests.test_entity_host import new_payment

snapshots = registry.codec  # the registry's: every kind's states and schemas


def schema_1(payment: rules.IncomingPayment) -> dict:
    """The payment as schema 1 stored it: every field under its Python name, defaults too."""
    return {"type": "ip"} | {name: getattr(payment, name) for name in payment.__struct_fields__}


def test_schema_1_reads_back_as_the_same_payment_in_an_envelope_and_bare() -> None:
    _, payment = new_payment()
    payment = msgspec.structs.replace(payment, metadata=b'{"order":"7"}', received=40)
    for stored in (msgspec.msgpack.encode((1, schema_1(payment))), msgspec.msgpack.encode(schema_1(payment))):
        assert snapshots.decode_state(stored) == payment


def test_schema_2_names_each_field_by_one_letter_and_omits_defaults() -> None:
    _, payment = new_payment()
    current = snapshots.encode_state(payment)
    schema, fields = msgspec.msgpack.decode(current)
    assert schema == 2
    assert set(fields) == {"type", "i", "w", "c", "a", "n", "x", "t"}, "one letter each; metadata, received and the flags at their defaults left out"
    assert len(current) < len(msgspec.msgpack.encode((1, schema_1(payment)))) - 90
    credited = msgspec.structs.replace(payment, received=100, completed=True)
    assert snapshots.decode_state(snapshots.encode_state(credited)) == credited


def test_a_schema_1_snapshot_in_redis_is_credited_and_written_back_as_schema_2(embedded: EmbeddedRedis) -> None:
    raw = redis.Redis.from_url(embedded.url)
    entity_id, payment = new_payment(incoming_amount=100)
    raw.hset(keys.entity(entity_id, 0), mapping={"v": 1, "s": msgspec.msgpack.encode((1, schema_1(payment))), "w": b"x"})
    host = EntityHost(SnapshotStore(raw), incoming_payments.HANDLERS, 10)
    [reply] = host.handle([CreditIncomingPayment(entity_id, 60, "operator", "k1")], now_ms()).replies
    assert isinstance(reply, Credited) and reply.outcome.accepted and reply.outcome.received == 60
    version, snapshot = raw.hmget(keys.entity(entity_id, 0), "v", "s")
    assert int(version) == 2 and msgspec.msgpack.decode(snapshot)[0] == 2
    assert snapshots.decode_state(snapshot) == msgspec.structs.replace(payment, received=60)


def test_an_event_holds_its_state_as_a_snapshot_and_an_older_schema_renders_the_same() -> None:
    _, payment = new_payment()
    payment = msgspec.structs.replace(payment, asset=Asset("EUR", 2), received=5)
    bodies = []
    for snapshot in (snapshots.encode_state(payment), msgspec.msgpack.encode((1, schema_1(payment)))):
        event, state = registry.read_event(codec.encode(Event("ev-1", "incoming_payment.created", 1_700_000_000_000, snapshot)))
        assert state == payment
        bodies.append(render(event, state, "https://ase.example"))
    assert bodies[0] == bodies[1]
    view = msgspec.json.decode(bodies[0])
    assert view["data"]["receivedAmount"] == {"value": "5", "assetCode": "EUR", "assetScale": 2}
    assert view["data"]["walletAddress"] == payment.wallet_address
