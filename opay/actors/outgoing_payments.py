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
    Nothing,
    OpenOutgoingPayment,
    ReleaseSpend,
    ResumeOutgoingPayment,
    State,
)
from opay.actors.replies import failed, not_found
from opay.domain import outgoing_payment as rules
from opay.domain.errors import DomainError
from opay.persistence import keys
from opay.persistence.snapshots import SideEffect

RETRY_MS = 5_000


def _pursue(payment: rules.OutgoingPayment, step: Step) -> None:
    """Ask for whatever the payment still waits on, and come back later if unanswered."""
    step.state = payment
    if payment.phase == "sending":
        step.tell(CreditIncomingPayment(ids.incoming_payment_of_url(payment.receiver), payment.receive, "settlement", payment.id))
        step.due(step.now_ms + RETRY_MS)
    elif payment.phase == "failed" and not payment.grant_released:
        step.tell(ReleaseSpend(ids.GRANT_SPEND(payment.grant_id), payment.id))
        step.due(step.now_ms + RETRY_MS)
    else:
        step.not_due()


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
    step.effects.append(SideEffect("zadd", keys.index(ids.OUTGOING_PAYMENT.prefix, payment.wallet_address), payment.created_at_ms, command.entity_id))
    if payment.client is not None:
        step.effects.append(
            SideEffect("zadd", keys.index(ids.OUTGOING_PAYMENT.prefix, payment.wallet_address, payment.client), payment.created_at_ms, command.entity_id)
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
    _pursue(state, step)
    step.reply = Nothing()


def answered(command: Answered, state, step: Step) -> None:
    step.reply = Nothing()
    if not isinstance(state, rules.OutgoingPayment):
        return
    answer = command.answer
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
