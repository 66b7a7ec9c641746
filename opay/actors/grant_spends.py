"""How a grant's spend ledger answers: reservations are serial, so limits always hold.

Each payment's reservation is journaled under its id, so a retried reservation (the
same quote after a lost reply) counts once, and a release gives back exactly its share.

A reservation is tentative until its payment confirms it (ConfirmSpend, told by the
payment entity once opened). The front end reserves and then opens; if it dies or
gives up in between, nobody would ever give the share back. So the ledger has a due
time while anything is unconfirmed: when it fires, the grant asks each overdue payment
entity (CheckReservation). The payment entity is serial, so its answer is final: either
the payment was opened under this grant (confirm), or the id is now a tombstone (or
another grant's payment) and no open can ever succeed on it (release the share).
"""

from __future__ import annotations

from opay.actors import ids
from opay.actors.entity import EntityKind, Step
from opay.actors.messages import (
    Answered,
    Checked,
    CheckReservation,
    ConfirmSpend,
    Nothing,
    ReadSpend,
    ReleaseSpend,
    ReserveSpend,
    ResumeGrantSpend,
    Spent,
    tag_of,
)
from opay.actors.replies import failed, not_found
from opay.domain import grant_spend as rules
from opay.domain.errors import DomainError
from opay.persistence import codec

# How long a reservation may wait for its payment before the grant asks. A create takes
# milliseconds between the two steps; this is long enough that only a create that was
# cut off (or stalled far beyond any client's timeout) is ever asked about.
CONFIRM_AFTER_MS = 10_000
# Ask again after this long if no answer came (a lost Tell, an unavailable shard).
RETRY_MS = 5_000
# At most this many questions per timer firing, so one grant's backlog never floods the
# router (its Tell budget is bounded too); the rest stay due and go on the next firing.
CHECKS_PER_FIRE = 200
_CHECK = tag_of(CheckReservation("", ""))


def _ledger(command, state: rules.GrantSpend | None) -> rules.GrantSpend:
    return state if state is not None else rules.GrantSpend(id=command.entity_id)


def _schedule(ledger: rules.GrantSpend, step: Step) -> None:
    """The grant is due exactly while some reservation waits for its payment."""
    step.state = ledger
    at = rules.next_check(ledger)
    if at is None:
        step.not_due()
    else:
        step.due(at)


def reserve(command: ReserveSpend, state: rules.GrantSpend | None, step: Step) -> None:
    held = step.journal_entry(command.payment_id)
    prior = None if held is None else codec.decode(held, rules.Reservation)
    try:
        after, reservation = rules.reserve_once(
            _ledger(command, state),
            command.limits,
            command.payment_id,
            prior,
            debit=command.debit,
            debit_asset=command.debit_asset,
            receive=command.receive,
            receive_asset=command.receive_asset,
            receiver=command.receiver,
            now_ms=step.now_ms,
            check_at_ms=step.now_ms + CONFIRM_AFTER_MS,
        )
    except DomainError as error:
        step.reply = failed(error)
        return
    if reservation is not None:
        step.record(command.payment_id, codec.encode(reservation))
        _schedule(after, step)
    step.reply = Spent(after.spent_debit, after.spent_receive)


def _give_back(ledger: rules.GrantSpend, payment_id: str, step: Step, kept_debit: int = 0, kept_receive: int = 0) -> rules.GrantSpend:
    held = step.journal_entry(payment_id)
    if held is not None:
        ledger, reservation = rules.release(ledger, codec.decode(held, rules.Reservation), kept_debit, kept_receive)
        step.record(payment_id, codec.encode(reservation))
    return rules.resolved(ledger, payment_id)


def release(command: ReleaseSpend, state: rules.GrantSpend | None, step: Step) -> None:
    if state is None or step.journal_entry(command.payment_id) is None:
        step.reply = Nothing()  # nothing was reserved: nothing to give back
        return
    after = _give_back(state, command.payment_id, step, command.kept_debit, command.kept_receive)
    _schedule(after, step)
    step.reply = Spent(after.spent_debit, after.spent_receive)


def confirm(command: ConfirmSpend, state: rules.GrantSpend | None, step: Step) -> None:
    step.reply = Nothing()
    if state is None or command.payment_id not in state.unconfirmed:
        return  # already confirmed, settled by asking, or never reserved here: nothing to write
    _schedule(rules.resolved(state, command.payment_id), step)


def resume(command: ResumeGrantSpend, state: rules.GrantSpend | None, step: Step) -> None:
    if state is None:
        step.reply = not_found("grant")  # the timer drops the due entry
        return
    grant_id = ids.GRANT_SPEND.key(command.entity_id)
    asking = rules.overdue(state, step.now_ms, CHECKS_PER_FIRE)
    for payment_id in asking:
        step.tell(CheckReservation(ids.OUTGOING_PAYMENT(payment_id), grant_id))
    _schedule(rules.asked(state, asking, step.now_ms + RETRY_MS), step)
    step.reply = Nothing()


def answered(command: Answered, state: rules.GrantSpend | None, step: Step) -> None:
    """A payment entity's answer about a reservation; anything but Checked is retried later."""
    step.reply = Nothing()
    answer = command.answer
    if state is None or command.question != _CHECK or not isinstance(answer, Checked):
        return
    if answer.payment_id not in state.unconfirmed:
        return  # settled already (a duplicate answer, or the payment confirmed meanwhile)
    if answer.exists:
        _schedule(rules.resolved(state, answer.payment_id), step)
    else:
        _schedule(_give_back(state, answer.payment_id, step), step)


def read(command: ReadSpend, state: rules.GrantSpend | None, step: Step) -> None:
    try:
        ledger = rules.spent_now(_ledger(command, state), command.limits, step.now_ms)
    except DomainError:
        ledger = rules.GrantSpend(id=command.entity_id)  # outside its interval: nothing spent now
    step.reply = Spent(ledger.spent_debit, ledger.spent_receive)


def _payment(command) -> tuple[str, ...]:
    return (command.payment_id,)


def answer_keys(command: Answered) -> tuple[str, ...]:
    answer = command.answer
    return (answer.payment_id,) if isinstance(answer, Checked) else ()


# The journal entry each command reads: its payment's reservation (see EntityHost).
JOURNAL_KEYS = {ReserveSpend: _payment, ReleaseSpend: _payment}

HANDLERS = {
    ReserveSpend: reserve,
    ReleaseSpend: release,
    ReadSpend: read,
    ConfirmSpend: confirm,
    ResumeGrantSpend: resume,
}

# A grant is due while a reservation waits for its payment to confirm it.
KIND = EntityKind(
    ids=ids.GRANT_SPEND,
    states=(rules.GrantSpend,),
    handlers=HANDLERS,
    journal_keys=JOURNAL_KEYS,
    timer=ResumeGrantSpend,
    answered=answered,
    answer_keys=answer_keys,
)
