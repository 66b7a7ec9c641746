"""Resource server: quotes (create, get)."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors import ids
from opay.actors.messages import OpenQuote, State
from opay.clock import now_ms
from opay.domain import incoming_payment as incoming
from opay.domain import quote as rules
from opay.domain.amounts import require_asset
from opay.domain.quote import Quote
from opay.http import routing, wire  # noqa: F401  (routing registers the path convertors of ROUTES)
from opay.http.errors import ApiError
from opay.http.resources import create_request, json, local_incoming_payment, readable
from opay.http.services import Services, services
from opay.persistence.wallet_addresses import WalletAddress
from opay.pricing import RatesUnavailable

PATH = "/quotes"


async def sender_wallet(s: Services, url: str) -> WalletAddress:
    wallet = await s.wallet_by_url(url)
    if wallet is None:
        raise ApiError(400, "unknown_wallet_address", "walletAddress is not a wallet address of this server")
    return wallet


async def price_quote(
    s: Services,
    *,
    sender: WalletAddress,
    receiver_url: str,
    debit: wire.Amount | None,
    receive: wire.Amount | None,
) -> tuple[incoming.IncomingPayment, rules.Price]:
    """The price of paying `receiver_url` from `sender`: shared by quotes and quote-less payments."""
    receiver = await local_incoming_payment(s, receiver_url)
    if receiver.completed or incoming.is_expired(receiver, now_ms()):
        raise ApiError(400, "invalid_receiver", "the receiver no longer accepts payments")
    debit_value = receive_value = None
    if debit is not None:
        debit_value, asset = debit.parse("debitAmount")
        require_asset(asset, sender.asset, "debitAmount")
    if receive is not None:
        receive_value, asset = receive.parse("receiveAmount")
        require_asset(asset, receiver.asset, "receiveAmount")
    try:
        rate = await s.pricing.rate(sender.asset.code, receiver.asset.code)
    except RatesUnavailable:
        raise ApiError.of("unavailable", "rates_unavailable", "exchange rates are unavailable; retry shortly") from None
    remaining = None if receiver.incoming_amount is None else receiver.incoming_amount - receiver.received
    priced = rules.price(
        debit=debit_value,
        receive=receive_value,
        rate=rate,
        sender=sender.asset,
        receiver=receiver.asset,
        fees=await s.pricing.fees(sender.asset.code),
        remaining=remaining,
    )
    return receiver, priced


async def create(request: Request) -> Response:
    asked = await create_request(request, "quote", wire.CreateQuoteBody)
    s, parsed, principal = asked.s, asked.body, asked.principal
    if parsed.method != "ilp":
        raise ApiError(400, "invalid_request", "method must be ilp")
    if parsed.debitAmount is not None and parsed.receiveAmount is not None:
        raise ApiError(400, "invalid_request", "give debitAmount or receiveAmount, not both")
    sender = await sender_wallet(s, parsed.walletAddress)
    receiver, priced = await price_quote(
        s, sender=sender, receiver_url=parsed.receiver, debit=parsed.debitAmount, receive=parsed.receiveAmount
    )
    now = now_ms()
    quote = Quote(
        id=str(uuid.uuid4()),
        wallet_address=parsed.walletAddress,
        client=principal.client.identity,
        receiver=parsed.receiver,
        debit_asset=sender.asset,
        receive_asset=receiver.asset,
        debit=priced.debit,
        receive=priced.receive,
        fee=priced.fee,
        # Binding long enough to consent, short enough to bound the rate risk, and never
        # past the moment the receiver stops accepting money.
        expires_at_ms=min(now + s.settings.quote_validity_seconds * 1000, receiver.expires_at_ms),
        created_at_ms=now,
    )
    await s.ask(OpenQuote(ids.QUOTE(quote.id), quote), expect=State)
    return json(201, wire.quote(quote, s.settings.public_url))


async def get(request: Request) -> Response:
    s = services(request)
    quote = await readable(request, s, "quote", "quote", ids.QUOTE, Quote)
    return json(200, wire.quote(quote, s.settings.public_url))


ROUTES = [
    Route(PATH, create, methods=["POST"], name="quotes"),
    # An id of ours takes the first route of each pair; any other, slashes and newlines included,
    # the second, to the same handler: authentication is judged before the id.
    Route(PATH + "/{resource_id:canonical_uuid}", get, methods=["GET"], name="quote"),
    Route(PATH + "/{resource_id:any}", get, methods=["GET"], name="quote-any"),
]
