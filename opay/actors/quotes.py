"""How a quote entity answers: it is opened once and backs at most one outgoing payment."""

from __future__ import annotations

from opay.actors import ids
from opay.actors.entity import EntityKind, Step
from opay.actors.messages import BindQuote, Failed, OpenQuote, State, UnbindQuote
from opay.actors.replies import failed, not_found
from opay.domain import quote as rules
from opay.domain.errors import DomainError


def open_quote(command: OpenQuote, state: rules.Quote | None, step: Step) -> None:
    if state is not None:
        step.reply = Failed("conflict", "exists", "a quote with this id exists")
        return
    step.state = command.quote
    step.reply = State(command.quote)


# Whether an outgoing payment may be made from a quote for a receiver on another server.
# Not yet: the outgoing payment entity does not drive the STREAM sender (opay/ilp/sender.py)
# yet, so such a payment would be acknowledged (201) and never settled. Its binding is
# refused (nothing is reserved, the quote stays unused) until that wiring lands with it:
# the commit that makes http/outgoing_payments.py deliver remote quotes sets this True.
REMOTE_PAYMENTS = False


def bind(command: BindQuote, state: rules.Quote | None, step: Step) -> None:
    if state is None:
        step.reply = not_found("quote")
        return
    if state.wallet_address != command.wallet_address:
        step.reply = Failed("invalid", "invalid_quote", "the quote belongs to another wallet address")
        return
    if state.remote is not None and not REMOTE_PAYMENTS:
        step.reply = Failed(
            "invalid",
            "unsupported_receiver",
            "paying an incoming payment on another server is not supported yet: the quote stands, but no payment is made from it",
        )
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
