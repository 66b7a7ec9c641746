"""Resource server: outgoing payments (create, get, list) and the grant's spent amounts.

Creating one touches three entities, each serial on its own: the quote (bound to this
payment, once), the grant's spend ledger (reserved within the consented limits), then
the payment itself. A payment made from a quote takes the quote's id, so a retry after a
lost reply finds its binding and reservation again instead of spending twice, and a
second payment from the same quote is refused by the payment entity itself. A
reservation stays tentative until its payment confirms it; if the payment never opens
(a crash between the steps), the grant's timer asks the payment's entity, which answers
"absent" by becoming a tombstone that no late create can open, and only then is the
share given back.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors.messages import BindQuote, OpenOutgoingPayment, ReadSpend, ReserveSpend, Spent, State, UnbindQuote
from opay.actors.outgoing_payments import grant_entity
from opay.auth.access import parse_limits
from opay.clock import now_ms
from opay.domain.errors import DomainError
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.quote import Quote
from opay.http import wire
from opay.http.errors import ApiError
from opay.http.pagination import list_resources
from opay.http.quotes import price_quote, sender_wallet
from opay.http.resources import authenticated, json, path_uuid, uuid_in_url, visible
from opay.http.services import read_body, services

KIND = "op"
PATH = "/outgoing-payments"


async def create(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    caller = await authenticated(request, s, body)
    parsed = wire.decode_body(body, wire.CreateOutgoingPaymentBody)
    metadata = wire.metadata_json(parsed.metadata, s.settings.metadata_max_bytes)
    principal = caller.require("outgoing-payment", "create", parsed.walletAddress)
    by_quote = parsed.quoteId is not None
    if by_quote == (parsed.incomingPayment is not None or parsed.debitAmount is not None) or (
        not by_quote and (parsed.incomingPayment is None or parsed.debitAmount is None)
    ):
        raise ApiError(400, "invalid_request", "give quoteId, or incomingPayment with debitAmount")
    limits = parse_limits(principal.permit.item.limits)
    sender = await sender_wallet(s, parsed.walletAddress)
    now = now_ms()
    if by_quote:
        assert parsed.quoteId is not None
        quote_uuid = uuid_in_url(s, parsed.quoteId, "quotes")
        quote = None if quote_uuid is None else await s.queries.entity(f"quote:{quote_uuid}")
        if not isinstance(quote, Quote):
            raise ApiError(404, "unknown_quote", "no such quote")
        if quote.wallet_address != parsed.walletAddress:
            raise ApiError(400, "invalid_quote", "the quote belongs to another wallet address")
        payment_id = quote.id
        await s.ask(BindQuote(f"quote:{quote.id}", payment_id, parsed.walletAddress))
        terms = (quote.receiver, quote.receive_asset, quote.debit, quote.receive, quote.fee)
    else:
        assert parsed.incomingPayment is not None
        receiver, priced = await price_quote(
            s, sender=sender, receiver_url=parsed.incomingPayment, debit=parsed.debitAmount, receive=None
        )
        payment_id = str(uuid.uuid4())
        terms = (parsed.incomingPayment, receiver.asset, priced.debit, priced.receive, priced.fee)
    receiver_url, receive_asset, debit, receive, fee = terms
    try:
        spent = await s.ask(
            ReserveSpend(grant_entity(caller.grant), payment_id, limits, debit, sender.asset, receive, receive_asset, receiver_url)
        )
    except (ApiError, DomainError):
        if by_quote:
            # The quote may still serve under a grant that allows it.
            await s.router.ask(UnbindQuote(f"quote:{payment_id}", payment_id))
        raise
    assert isinstance(spent, Spent)
    payment = OutgoingPayment(
        id=payment_id,
        wallet_address=parsed.walletAddress,
        client=principal.client.identity,
        grant_id=caller.grant,
        quote_id=payment_id if by_quote else None,
        receiver=receiver_url,
        debit_asset=sender.asset,
        receive_asset=receive_asset,
        debit=debit,
        receive=receive,
        fee=fee,
        metadata=metadata,
        created_at_ms=now,
    )
    reply = await s.ask(OpenOutgoingPayment(f"{KIND}:{payment_id}", payment, limits, s.settings.auto_fund))
    assert isinstance(reply, State)
    view = wire.outgoing_payment(reply.state, s.settings.resource_server_url)  # type: ignore[arg-type]
    view["grantSpentDebitAmount"] = wire.amount(spent.debit, sender.asset)
    view["grantSpentReceiveAmount"] = wire.amount(spent.receive, receive_asset)
    return json(201, view)


async def get(request: Request) -> Response:
    s = services(request)
    caller = await authenticated(request, s, b"")
    caller.require("outgoing-payment", "read", None)
    payment_uuid = path_uuid(request, "outgoing payment")
    payment = await s.queries.entity(f"{KIND}:{payment_uuid}")
    if not isinstance(payment, OutgoingPayment) or not visible(
        caller, "outgoing-payment", "read", payment.wallet_address, payment.client
    ):
        raise ApiError(404, "not_found", "no such outgoing payment")
    return json(200, wire.outgoing_payment(payment, s.settings.resource_server_url))


async def list_payments(request: Request) -> Response:
    return json(200, await list_resources(request, "outgoing-payment", KIND, wire.outgoing_payment))


async def grant_spent(request: Request) -> Response:
    s = services(request)
    caller = await authenticated(request, s, b"")
    principal = caller.require("outgoing-payment", "create", None)
    limits = parse_limits(principal.permit.item.limits)
    spent = await s.ask(ReadSpend(grant_entity(caller.grant), limits))
    assert isinstance(spent, Spent)
    return json(
        200,
        {
            "spentReceiveAmount": None if limits.receive_asset is None else wire.amount(spent.receive, limits.receive_asset),
            "spentDebitAmount": None if limits.debit_asset is None else wire.amount(spent.debit, limits.debit_asset),
        },
    )


ROUTES = [
    Route(PATH, create, methods=["POST"]),
    Route(PATH, list_payments, methods=["GET"]),
    Route(PATH + "/{resource_id:any}", get, methods=["GET"]),
    Route("/outgoing-payment-grant", grant_spent, methods=["GET"]),
]
