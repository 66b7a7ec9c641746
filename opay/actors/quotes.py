"""How a quote entity answers: it is opened once and backs at most one outgoing payment."""

from __future__ import annotations

from opay.actors import ids
from opay.actors.entity import EntityKind, Step
from opay.actors.messages import BindQuote, Failed, OpenQuote, State, UnbindQuote
from opay.actors.replies import failed, not_found
from opay.domain import quote as rules
from opay.domain.errors import DomainError
from opay.persistence import keys
from opay.persistence.snapshots import SideEffect


def open_quote(command: OpenQuote, state: rules.Quote | None, step: Step) -> None:
    if state is not None:
        step.reply = Failed("conflict", "exists", "a quote with this id exists")
        return
    step.state = command.quote
    # Listed per wallet address for the operator (quotes have no client list route).
    step.effects.append(SideEffect("zadd", keys.index(ids.QUOTE.prefix, step.shard, command.quote.wallet_address), command.quote.created_at_ms, command.entity_id))
    step.reply = State(command.quote)



def bind(command: BindQuote, state: rules.Quote | None, step: Step) -> None:
    if state is None:
        step.reply = not_found("quote")
        return
    if state.wallet_address != command.wallet_address:
        step.reply = Failed("invalid", "invalid_quote", "the quote belongs to another wallet address")
        return
    try:
        step.state = rules.use(state, command.payment_id, step.now_ms)
    except DomainError as error:
        step.reply = failed(error)
        return
    step.reply = State(step.state)


def unbind(command: UnbindQuote, state: rules.Quote | None, step: Step) -> None:
    if state is None:
        step.reply = not_found("quote")
        return
    step.state = rules.unuse(state, command.payment_id)
    step.reply = State(step.state)


HANDLERS = {OpenQuote: open_quote, BindQuote: bind, UnbindQuote: unbind}

KIND = EntityKind(
    ids=ids.QUOTE, states=(rules.Quote,), handlers=HANDLERS, schema=3,
    upgrades={1: rules.upgrade_from_schema_1, 2: rules.upgrade_from_schema_2},
)
