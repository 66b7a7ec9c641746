"""How an outgoing payment entity answers, and how it settles.

Settlement runs here, not in a polling loop: funding makes the payment ask the
receiver's entity for a credit (keyed by the payment id in the settlement namespace of
the receiver's journal, so it lands once); the answer completes or fails it; a failure
gives the grant its share back. Whatever the payment still waits on is in its committed
state with a due time, so after any crash its timer asks again.

The grant reserved this payment's share before the open; the open confirms it. A grant
that heard nothing asks (CheckReservation), and the answer here is final because this
entity is serial: an id never opened becomes a tombstone (`Abandoned`) that refuses any
later open, so a share is only given back when no payment can ever spend it.

An open that finds its id taken answers a retry of the same create with the payment as it
is (no write), and anything else with why not (`rules.retried`). A payment from a quote
opens only before the quote's expiresAt by this entity's clock, and an open that reserved
nothing (`reserved=False`) only ever answers an existing payment.
"""

from __future__ import annotations

import logging

import msgspec

from opay.actors import ids
from opay.actors.entity import EntityKind, Step
from opay.actors.messages import (
    Answered,
    CancelOutgoingPayment,
    Checked,
    CheckReservation,
    ConfirmSpend,
    Credited,
    CreditIncomingPayment,
    Failed,
    FundOutgoingPayment,
    LinkReplies,
    Nothing,
    OpenOutgoingPayment,
    ReleaseSpend,
    ResumeOutgoingPayment,
    SendPackets,
    State,
)
from opay.actors.replies import failed, not_found
from opay.domain import outgoing_payment as rules
from opay.domain.errors import DomainError
from opay.ilp import sender as stream
from opay.ilp.packet import Fulfill, Prepare, Reject, decode_packet
from opay.ilp.peers import record_sent
from opay.persistence import keys
from opay.persistence.snapshots import SideEffect

log = logging.getLogger("opay.outgoing_payments")

RETRY_MS = 5_000
# A remote payment's packets unanswered this long are sent again, byte for byte (the
# receiver answers an exact resend with its first answer and credits nothing), until they
# expire; then they are abandoned and the receiver's room is read again before going on.
RESEND_MS = 5_000

_stream_encoder = msgspec.msgpack.Encoder()
_stream_decoder = msgspec.msgpack.Decoder(stream.SenderState)


def _pursue(payment: rules.OutgoingPayment, step: Step) -> None:
    """Ask for whatever the payment still waits on, and come back later if unanswered."""
    step.state = payment
    if payment.phase == "sending" and payment.remote is not None:
        _drive(payment, _stream_decoder.decode(payment.remote.stream), step)
    elif payment.phase == "sending":
        step.tell(CreditIncomingPayment(ids.incoming_payment_of_url(payment.receiver), payment.receive, "settlement", payment.id))
        step.due(step.now_ms + RETRY_MS)
    elif payment.phase == "failed" and not payment.grant_released:
        # A remote payment that failed part-way keeps what it sent; the rest goes back.
        kept_debit, kept_receive = payment.sent, payment.delivered
        if payment.remote is not None and payment.remote.unsure_source:
            kept_debit += _debit_of(payment, payment.remote.unsure_source)  # maybe spent: kept
            kept_receive += payment.remote.unsure_dest
        step.tell(ReleaseSpend(ids.GRANT_SPEND(payment.grant_id), payment.id, kept_debit, kept_receive))
        step.due(step.now_ms + RETRY_MS)
    else:
        step.not_due()


# ---------------------------------------------------------------- remote receivers (STREAM)


def _condition(raw: bytes) -> bytes:
    prepare = decode_packet(raw)
    assert isinstance(prepare, Prepare)
    return prepare.execution_condition


def _debit_of(payment: rules.OutgoingPayment, link_units: int, max_source: int | None = None) -> int:
    """Debit units of `link_units` the connection spent: as is when the link's asset is the
    debit's, else the principal's share (rounded down) of the whole budget in link units
    (the sender's max source, plus what abandoned packets took off it)."""
    remote = payment.remote
    assert remote is not None
    principal = payment.debit - payment.fee
    if remote.debit_units:
        return min(link_units, principal)
    if max_source is None:
        max_source = _stream_decoder.decode(remote.stream).max_source
    budget = max_source + remote.unsure_source
    return 0 if budget == 0 else min(principal, principal * link_units // budget)


def _sent(payment: rules.OutgoingPayment, state: stream.SenderState) -> int:
    """sentAmount (debit units) of what the connection sent (link units)."""
    return _debit_of(payment, state.sent, state.max_source)


def _drive(payment: rules.OutgoingPayment, state: stream.SenderState, step: Step, *, resend: bool = False) -> None:
    """The connection's next move, from its state as accounted so far: settle the payment
    once the sender has an outcome and nothing is in flight; else put the next Prepares on
    the wire (state persisted with them in flight before they leave: a Tell leaves only
    once this step is committed), or read the receiver's room first when it may be stale.
    `resend`: the packets in flight are sent again (a resume: their replies may be lost)."""
    remote = payment.remote
    assert remote is not None
    now = step.now_ms
    live = {p.condition for p in state.in_flight if p.kind != "close"}
    wire = tuple(raw for raw in remote.wire if _condition(raw) in live)
    if state.outcome is not None and not live:
        after = rules.remote_progress(payment, msgspec.structs.replace(remote, stream=_stream_encoder.encode(state), wire=()), _sent(payment, state), state.delivered)
        if state.outcome.status == "completed":
            after = rules.remote_completed(after)
            step.emit("outgoing_payment.completed", after)
        else:
            detail = f": {state.outcome.detail}" if state.outcome.detail else ""
            after = rules.undeliverable(after, f"{state.outcome.reason}{detail}")
            step.emit("outgoing_payment.failed", after)
        _pursue(after, step)
        return
    fresh: list[bytes] = []
    if state.outcome is None and remote.cap_fresh and not resend:
        state, prepares = stream.next_prepares(state, now)
        fresh = [p.encode() for p in prepares]
        if state.outcome is not None and not any(p.kind != "close" for p in state.in_flight):
            _drive(payment, state, step)  # decided without a packet (no room, a rate too low)
            return
    wire += tuple(fresh)
    remote = msgspec.structs.replace(remote, stream=_stream_encoder.encode(state), wire=wire)
    step.state = rules.remote_progress(payment, remote, _sent(payment, state), state.delivered)
    out = list(wire) if resend else fresh
    if out:
        step.tell(SendPackets(step.entity_id, remote.peer, out, receiver=payment.receiver))
    elif not remote.cap_fresh and not wire:
        step.tell(SendPackets(step.entity_id, remote.peer, [], receiver=payment.receiver, refresh=True))
    wake = stream.wake_at(state)
    if not wire and remote.cap_fresh and wake is not None and wake > now:
        step.due(wake)  # a backoff: nothing in flight until then
    else:
        step.due(now + RESEND_MS)


def _resume_remote(payment: rules.OutgoingPayment, step: Step) -> None:
    """The timer: drop packets past their expiry (never counted; the receiver's room is
    then read again), resend the others exactly, or go on."""
    assert payment.remote is not None
    state = _stream_decoder.decode(payment.remote.stream)
    before = len(state.in_flight)
    lost = [p for p in state.in_flight if p.expires_at_ms <= step.now_ms and p.kind == "money"]
    state = stream.abandon_expired(state, step.now_ms)
    remote = payment.remote
    if len(state.in_flight) < before:
        remote = msgspec.structs.replace(remote, cap_fresh=False)
    if lost:
        # Maybe credited: reserved as spent (the budget shrinks by them) and as delivered
        # (the cap read next leaves room for them), never counted.
        source, dest = sum(p.amount for p in lost), sum(p.max_dest for p in lost)
        state = msgspec.structs.replace(state, max_source=state.max_source - source)
        remote = msgspec.structs.replace(remote, unsure_source=remote.unsure_source + source, unsure_dest=remote.unsure_dest + dest)
    payment = msgspec.structs.replace(payment, remote=remote)
    if lost or state.in_flight:
        log.warning(
            "outgoing payment %s: %d packets unanswered, resent; %d expired, abandoned", payment.id, len(state.in_flight), before - len(state.in_flight)
        )
    _drive(payment, state, step, resend=bool(state.in_flight))


def _link_answer(state_payment: rules.OutgoingPayment, answer: LinkReplies, step: Step) -> None:
    """Replies from the link: each one accounted (Fulfills only count, and only with the
    right fulfillment), what was delivered counted to the peer in this same write."""
    payment = state_payment
    remote = payment.remote
    assert remote is not None
    state = _stream_decoder.decode(remote.stream)
    sent_before = state.sent
    by_condition = {}
    for raw in remote.wire:
        prepare = decode_packet(raw)
        assert isinstance(prepare, Prepare)
        by_condition[prepare.execution_condition] = prepare
    for condition, raw in zip(answer.conditions, answer.replies):
        prepare = by_condition.get(condition)
        if prepare is None:
            continue  # a late or repeated answer: accounted already
        try:
            reply = decode_packet(raw)
        except ValueError:
            continue
        if isinstance(reply, (Fulfill, Reject)):
            state = stream.on_reply(state, prepare, reply, step.now_ms)
    record_sent(step, answer.peer, state.sent - sent_before)
    if answer.refreshed:
        room = answer.remaining
        if state.mode == stream.FIXED_DELIVERY and remote.unsure_dest:
            left = max(0, state.target - state.delivered - remote.unsure_dest)
            room = left if room is None else min(room, left)
        if room is not None:
            state = stream.set_cap(state, room)
        remote = msgspec.structs.replace(remote, cap_fresh=True)
    _drive(msgspec.structs.replace(payment, remote=remote), state, step)


def open_payment(command: OpenOutgoingPayment, state: rules.OutgoingPayment | rules.Abandoned | None, step: Step) -> None:
    attempt = rules.attempt_of(command.payment, command.quote_expires_at_ms)
    if state is not None:
        # A retry of the create that made it gets it (unchanged: nothing to write); anything
        # else is told why not. A tombstone: the grant gave this payment's share back after
        # it asked and found nothing here, so opening it now would spend outside the grant's
        # limits; the client never got a 201 for it and is told to create it again.
        try:
            step.reply = State(rules.retried(state, attempt, step.now_ms))
        except DomainError as error:
            step.reply = failed(error)
        return
    if command.quote_expires_at_ms is not None and step.now_ms >= command.quote_expires_at_ms:
        # Decided here, serially, so a retry and its first attempt agree: the first attempt
        # opened the payment before expiresAt (answered above), or no attempt ever will.
        step.reply = Failed("conflict", "quote_expired", "the quote has expired")
        return
    if not command.reserved:
        step.reply = not_found("outgoing payment")
        return
    payment = command.payment
    step.effects.append(SideEffect("zadd", keys.index(ids.OUTGOING_PAYMENT.prefix, step.shard, payment.wallet_address), payment.created_at_ms, command.entity_id))
    if payment.client is not None:
        step.effects.append(
            SideEffect("zadd", keys.index(ids.OUTGOING_PAYMENT.prefix, step.shard, payment.wallet_address, payment.client), payment.created_at_ms, command.entity_id)
        )
    step.emit("outgoing_payment.created", payment)
    if command.fund_at_once:
        payment = rules.fund(payment)
    _pursue(payment, step)
    # The reservation is no longer tentative. Unanswered on purpose: if this is lost, the
    # grant asks later (CheckReservation) and learns the same.
    step.tell(ConfirmSpend(ids.GRANT_SPEND(payment.grant_id), payment.id), answer_me=False)
    step.reply = State(payment)


def check(command: CheckReservation, state: rules.OutgoingPayment | rules.Abandoned | None, step: Step) -> None:
    """A grant asks whether its reservation for this id became a payment under it."""
    payment_id = ids.OUTGOING_PAYMENT.key(command.entity_id)
    if state is None:
        # Never opened: close the id for good, atomically with this answer, so the grant can
        # give the share back knowing that no create still in flight can open it.
        step.state = rules.Abandoned(id=payment_id, grant_id=command.grant_id, abandoned_at_ms=step.now_ms)
        exists = False
    elif isinstance(state, rules.Abandoned):
        exists = False
    else:
        # Another grant's payment took this id (a quote tried under two grants): this grant's
        # reservation will never back a payment either.
        exists = state.grant_id == command.grant_id
    step.reply = Checked(payment_id, exists)


def _change(command, state: rules.OutgoingPayment | rules.Abandoned | None, step: Step, change) -> None:
    if not isinstance(state, rules.OutgoingPayment):
        step.reply = not_found("outgoing payment")
        return
    try:
        after = change(state)
    except DomainError as error:
        step.reply = failed(error)
        return
    if after is not state:
        if after.failed:
            step.emit("outgoing_payment.failed", after)
        _pursue(after, step)
    step.reply = State(after)


def fund(command: FundOutgoingPayment, state: rules.OutgoingPayment | None, step: Step) -> None:
    _change(command, state, step, rules.fund)


def cancel(command: CancelOutgoingPayment, state: rules.OutgoingPayment | None, step: Step) -> None:
    _change(command, state, step, lambda payment: rules.cancel(payment, command.reason))


def resume(command: ResumeOutgoingPayment, state: rules.OutgoingPayment | rules.Abandoned | None, step: Step) -> None:
    if not isinstance(state, rules.OutgoingPayment):
        step.reply = not_found("outgoing payment")
        return
    if state.phase == "sending" and state.remote is not None:
        _resume_remote(state, step)
    else:
        if state.phase == "sending" or (state.failed and not state.grant_released):
            # Its due time came with the answer still missing: what it asked, it asks again.
            asked = "its receiver's credit" if state.phase == "sending" else "its grant's release"
            log.warning("outgoing payment %s: %s unanswered; asking again", state.id, asked)
        _pursue(state, step)
    step.reply = Nothing()


def answered(command: Answered, state, step: Step) -> None:
    step.reply = Nothing()
    if not isinstance(state, rules.OutgoingPayment):
        return
    answer = command.answer
    if command.question == "link.send":
        if state.phase == "sending" and state.remote is not None and isinstance(answer, LinkReplies):
            _link_answer(state, answer, step)
        return  # anything else (the link unavailable): the due time resends
    if command.question == "ip.credit" and state.phase == "sending":
        if isinstance(answer, Credited) and answer.outcome.accepted:
            after = rules.delivered(state)
            step.emit("outgoing_payment.completed", after)
        elif isinstance(answer, Credited):
            after = rules.undeliverable(state, f"receiver refused: {answer.outcome.refused_code}")
            step.emit("outgoing_payment.failed", after)
        elif isinstance(answer, Failed) and answer.kind != "unavailable":
            after = rules.undeliverable(state, f"receiver refused: {answer.code}")
            step.emit("outgoing_payment.failed", after)
        else:
            return  # unavailable: the due time brings the payment back to ask again
        _pursue(after, step)
    elif command.question == "grant.release" and state.failed and not state.grant_released:
        if isinstance(answer, Failed):
            return
        _pursue(rules.grant_share_released(state), step)


HANDLERS = {
    OpenOutgoingPayment: open_payment,
    FundOutgoingPayment: fund,
    CancelOutgoingPayment: cancel,
    ResumeOutgoingPayment: resume,
    CheckReservation: check,
}

KIND = EntityKind(
    ids=ids.OUTGOING_PAYMENT,
    # Abandoned: the tombstone an id keeps when its create never completed.
    states=(rules.OutgoingPayment, rules.Abandoned),
    handlers=HANDLERS,
    schema=2,
    upgrades={1: rules.upgrade_from_schema_1},
    timer=ResumeOutgoingPayment,
    answered=answered,
)
