"""How a grant's spend ledger answers: reservations are serial, so limits always hold.

Each payment's reservation is journaled under its id, so a retried reservation (the
same quote after a lost reply) counts once, and a release gives back exactly its share.
"""

from __future__ import annotations

from opay.actors.entity import Step
from opay.actors.messages import Nothing, ReadSpend, ReleaseSpend, ReserveSpend, Spent
from opay.actors.replies import failed
from opay.domain import grant_spend as rules
from opay.domain.errors import DomainError
from opay.persistence import codec


def _ledger(command, state: rules.GrantSpend | None) -> rules.GrantSpend:
    return state if state is not None else rules.GrantSpend(id=command.entity_id)


def reserve(command: ReserveSpend, state: rules.GrantSpend | None, step: Step) -> None:
    ledger = _ledger(command, state)
    if step.journal_entry(command.payment_id) is not None:
        ledger = rules.spent_now(ledger, command.limits, step.now_ms) if state is not None else ledger
        step.reply = Spent(ledger.spent_debit, ledger.spent_receive)
        return
    try:
        after, reservation = rules.reserve(
            ledger,
            command.limits,
            debit=command.debit,
            debit_asset=command.debit_asset,
            receive=command.receive,
            receive_asset=command.receive_asset,
            receiver=command.receiver,
            now_ms=step.now_ms,
        )
    except DomainError as error:
        step.reply = failed(error)
        return
    step.state = after
    step.record(command.payment_id, codec.encode(reservation))
    step.reply = Spent(after.spent_debit, after.spent_receive)


def release(command: ReleaseSpend, state: rules.GrantSpend | None, step: Step) -> None:
    held = step.journal_entry(command.payment_id)
    if state is None or held is None:
        step.reply = Nothing()  # nothing was reserved: nothing to give back
        return
    after, reservation = rules.release(state, codec.decode(held, rules.Reservation))
    step.state = after
    step.record(command.payment_id, codec.encode(reservation))
    step.reply = Spent(after.spent_debit, after.spent_receive)


def read(command: ReadSpend, state: rules.GrantSpend | None, step: Step) -> None:
    try:
        ledger = rules.spent_now(_ledger(command, state), command.limits, step.now_ms)
    except DomainError:
        ledger = rules.GrantSpend(id=command.entity_id)  # outside its interval: nothing spent now
    step.reply = Spent(ledger.spent_debit, ledger.spent_receive)


HANDLERS = {ReserveSpend: reserve, ReleaseSpend: release, ReadSpend: read}
