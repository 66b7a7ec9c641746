"""How an incoming-payment entity answers each command: domain rules plus the writes they imply."""

from __future__ import annotations

from typing import get_args

from opay.actors import ids
from opay.actors.entity import EntityKind, Step
from opay.actors.messages import (
    CompleteIncomingPayment,
    CreditIncomingPayment,
    Credited,
    CreditSource,
    ExpireIncomingPayment,
    Failed,
    Nothing,
    OpenIncomingPayment,
    State,
)
from opay.actors.replies import failed
from opay.domain import incoming_payment as rules
from opay.domain.errors import DomainError
from opay.domain import packet_dedupe
from opay.ilp import peers
from opay.persistence import codec, keys
from opay.persistence.snapshots import SideEffect

NOT_FOUND = Failed("not_found", "not_found", "no such incoming payment")


def open_payment(command: OpenIncomingPayment, state: rules.IncomingPayment | None, step: Step) -> None:
    if state is not None:
        step.reply = Failed("conflict", "exists", "an incoming payment with this id exists")
        return
    payment = command.payment
    step.state = payment
    step.effects.append(SideEffect("zadd", keys.index(ids.INCOMING_PAYMENT.prefix, step.shard, payment.wallet_address), payment.created_at_ms, command.entity_id))
    step.due(payment.expires_at_ms)
    step.emit("incoming_payment.created", payment)
    if payment.client is not None:
        step.effects.append(
            SideEffect("zadd", keys.index(ids.INCOMING_PAYMENT.prefix, step.shard, payment.wallet_address, payment.client), payment.created_at_ms, command.entity_id)
        )
    step.reply = State(payment)


SOURCES = frozenset(get_args(CreditSource))


def journal_key(source: str, key: str) -> str:
    """The one place a credit's journal entry is named: `<source>:<key>`. The sources'
    prefixes differ and none is a prefix of another, so an operator's idempotency key
    (whatever it says) never names a settlement's entry or an ILP packet's."""
    if source not in SOURCES:
        raise ValueError(f"unknown credit source {source!r}")
    return f"{source}:{key}"


def credit(command: CreditIncomingPayment, state: rules.IncomingPayment | None, step: Step) -> None:
    if state is None:
        step.reply = NOT_FOUND
        return
    if command.source == "ilp":
        _credit_packet(command, state, step)
        return
    if not command.idempotency_key or command.condition:
        step.reply = Failed("invalid", "invalid_request", "a credit needs an idempotency key")
        return
    key = journal_key(command.source, command.idempotency_key)
    first = step.journal_entry(key)
    if first is not None:
        outcome = codec.decode(first, rules.CreditOutcome)
        if outcome.amount != command.amount:
            step.reply = Failed(
                "conflict",
                "idempotency_key_reused",
                "this idempotency key was used for a different amount",
                {"amount": str(outcome.amount)},
            )
        else:
            step.reply = Credited(outcome, state.asset, True, state.received, state.incoming_amount)
        return
    outcome = _apply(command, state, step)
    if outcome is not None:
        step.record(key, codec.encode(outcome))


PREPARE_EXPIRED = Failed("invalid", "prepare_expired", "the ILP Prepare has expired; nothing was credited")
PACKETS_IN_FLIGHT = Failed(
    "unavailable", "too_many_packets", "too many unexpired ILP packets for this payment are remembered; retry shortly"
)


def _credit_packet(command: CreditIncomingPayment, state: rules.IncomingPayment, step: Step) -> None:
    """An ILP packet, named by its executionCondition (packet_dedupe). A condition that
    already credited is an exact resend: it credits nothing and answers as the first did
    (accepted, so the receiver fulfils it again). A packet is never credited at or after
    its Prepare's expiry. Only accepted packets are remembered, so a refused one may come
    again."""
    if len(command.condition) != 32 or command.expires_at_ms <= 0 or command.idempotency_key:
        step.reply = Failed("invalid", "invalid_request", "an ILP credit needs its condition and expiry")
        return
    if step.now_ms >= command.expires_at_ms:
        step.reply = PREPARE_EXPIRED
        return
    key = journal_key("ilp", packet_dedupe.bucket_name(command.condition))
    raw = step.journal_entry(key)
    bucket = packet_dedupe.Bucket() if raw is None else codec.decode(raw, packet_dedupe.Bucket)
    seen = packet_dedupe.find(bucket, command.condition, step.now_ms)
    if seen is not None:
        if seen.amount != command.amount:
            step.reply = Failed(
                "conflict", "condition_reused", "this packet's condition credited another amount", {"amount": str(seen.amount)}
            )
            return
        again = rules.CreditOutcome(amount=seen.amount, accepted=True, received=state.received, completed=state.completed)
        step.reply = Credited(again, state.asset, True, state.received, state.incoming_amount)
        return
    added = packet_dedupe.add(bucket, packet_dedupe.Seen(command.condition, command.amount, command.expires_at_ms), step.now_ms)
    if added is None:
        step.reply = PACKETS_IN_FLIGHT
        return
    outcome = _apply(command, state, step)
    if outcome is not None and outcome.accepted:
        step.record(key, codec.encode(added))
        peers.record_received(step, command.peer, outcome.amount)


def credit_journal_keys(command: CreditIncomingPayment) -> tuple[str, ...]:
    """The journal entry a credit will read (for a host that prefetches journal keys)."""
    if command.source == "ilp":
        return (journal_key("ilp", packet_dedupe.bucket_name(command.condition)),) if command.condition else ()
    return (journal_key(command.source, command.idempotency_key),) if command.idempotency_key else ()


def _apply(command: CreditIncomingPayment, state: rules.IncomingPayment, step: Step) -> rules.CreditOutcome | None:
    try:
        after, outcome = rules.credit(state, command.amount, step.now_ms)
    except DomainError as error:
        step.reply = failed(error)
        return None
    step.state = after
    if after.completed and not state.completed:
        step.not_due()
        step.emit("incoming_payment.completed", after)
    step.reply = Credited(outcome, state.asset, False, after.received, after.incoming_amount)
    return outcome


def complete(command: CompleteIncomingPayment, state: rules.IncomingPayment | None, step: Step) -> None:
    if state is None or not _in_scope(state, command):
        step.reply = NOT_FOUND
        return
    try:
        after = rules.complete(state, step.now_ms)
    except DomainError as error:
        step.reply = failed(error)
        return
    if after is not state:
        step.state = after
        step.not_due()
        step.emit("incoming_payment.completed", after)
    step.reply = State(after)


def expire(command: ExpireIncomingPayment, state: rules.IncomingPayment | None, step: Step) -> None:
    if state is None:
        step.reply = NOT_FOUND
        return
    after = rules.expire(state, step.now_ms)
    if after is not None:
        step.state = after
        step.not_due()
        step.emit("incoming_payment.expired", after)
    elif state.completed or state.expired:
        # Nothing left to do, but the due entry must go or the timer would keep firing.
        step.state = state
        step.not_due()
    step.reply = Nothing()


def _in_scope(state: rules.IncomingPayment, command: CompleteIncomingPayment) -> bool:
    if command.wallet_address is not None and state.wallet_address != command.wallet_address:
        return False
    return command.client is None or state.client == command.client


HANDLERS = {
    OpenIncomingPayment: open_payment,
    CreditIncomingPayment: credit,
    CompleteIncomingPayment: complete,
    ExpireIncomingPayment: expire,
}

JOURNAL_KEYS = {CreditIncomingPayment: credit_journal_keys}

KIND = EntityKind(
    ids=ids.INCOMING_PAYMENT,
    states=(rules.IncomingPayment,),
    handlers=HANDLERS,
    journal_keys=JOURNAL_KEYS,
    timer=ExpireIncomingPayment,
    schema=2,
    upgrades={1: rules.upgrade_from_schema_1},
)
