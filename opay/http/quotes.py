"""Resource server: quotes (create, get)."""

from __future__ import annotations

import uuid
from fractions import Fraction

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors import ids
from opay.actors.messages import OpenQuote, State
from opay.clock import now_ms
from opay.domain import incoming_payment as incoming
from opay.domain import quote as rules
from opay.domain.amounts import Asset, require_asset
from opay.domain.exchange import FeeSchedule
from opay.domain.quote import Quote
from opay.http import routing, wire  # noqa: F401  (routing registers the path convertors of ROUTES)
from opay.http.errors import ApiError
from opay.http.resources import create_request, is_local_url, json, local_incoming_payment, readable
from opay.http.services import Services, services
from opay.http.wallet_state import active_wallet
from opay.persistence.wallet_addresses import WalletAddress
from opay.pricing import RatesUnavailable
from opay.remote.probe import INSUFFICIENT, UNREACHABLE
from opay.remote.receivers import RemoteIncomingPayment

PATH = "/quotes"


class Receiver(msgspec.Struct, frozen=True, kw_only=True):
    """What pricing takes of a receiver, on this server or another: one view of both."""

    url: str
    asset: Asset
    remaining: int | None  # what it still accepts; None: no incomingAmount, no limit
    expires_at_ms: int | None  # None: it does not expire
    remote: RemoteIncomingPayment | None = None  # on another server: as its server answered


class Priced(msgspec.Struct, frozen=True, kw_only=True):
    debit: int
    receive: int
    fee: int
    remote: rules.Remote | None = None  # a receiver on another server: how to deliver


async def receiver_of(s: Services, url: str, *, remote: bool) -> Receiver:
    """The receiver `url` names: under OPAY_PUBLIC_URL, one of this server's (read here);
    any other, when `remote`, resolved on its server (ReceiverError: 503
    receiver_unavailable, 400 invalid_receiver, 400 receiver_without_ilp)."""
    if not remote or is_local_url(s, url) or s.remote_receivers is None:
        payment = await local_incoming_payment(s, url)
        if payment.completed or incoming.is_expired(payment, now_ms()):
            raise ApiError(400, "invalid_receiver", "the receiver no longer accepts payments")
        remaining = None if payment.incoming_amount is None else payment.incoming_amount - payment.received
        return Receiver(url=url, asset=payment.asset, remaining=remaining, expires_at_ms=payment.expires_at_ms)
    found = await s.remote_receivers.resolve(url)
    return Receiver(url=url, asset=found.asset, remaining=found.remaining, expires_at_ms=found.expires_at_ms, remote=found)


async def _rate(s: Services, base: str, quote: str) -> Fraction:
    try:
        return await s.pricing.rate(base, quote)
    except RatesUnavailable:
        raise ApiError.of("unavailable", "rates_unavailable", "exchange rates are unavailable; retry shortly") from None


async def price_quote(
    s: Services,
    *,
    sender: WalletAddress,
    receiver_url: str,
    debit: wire.Amount | None,
    receive: wire.Amount | None,
    remote: bool = False,
) -> tuple[Receiver, Priced]:
    """The price of paying `receiver_url` from `sender`: shared by quotes and quote-less
    payments. A receiver on another server is priced only when the caller asks (`remote`),
    i.e. when what it makes of the price can deliver there; otherwise 400
    unsupported_receiver, as before."""
    receiver = await receiver_of(s, receiver_url, remote=remote)
    debit_value = receive_value = None
    if debit is not None:
        debit_value, asset = debit.parse("debitAmount")
        require_asset(asset, sender.asset, "debitAmount")
    if receive is not None:
        receive_value, asset = receive.parse("receiveAmount")
        require_asset(asset, receiver.asset, "receiveAmount")
    fees = await s.pricing.fees(sender.asset.code)
    if receiver.remote is None:
        rate = await _rate(s, sender.asset.code, receiver.asset.code)
        local = rules.price(
            debit=debit_value, receive=receive_value, rate=rate, sender=sender.asset, receiver=receiver.asset, fees=fees, remaining=receiver.remaining
        )
        return receiver, Priced(debit=local.debit, receive=local.receive, fee=local.fee)
    return receiver, await _price_remote(s, sender, receiver, receiver.remote, debit_value, receive_value, fees)


async def _price_remote(
    s: Services,
    sender: WalletAddress,
    receiver: Receiver,
    found: RemoteIncomingPayment,
    debit: int | None,
    receive: int | None,
    fees: FeeSchedule,
) -> Priced:
    """A receiver on another server: the peer that routes its ILP address, the local rate of
    the sender's asset to that peer link's, and the path's rate from a STREAM rate probe
    through the peer, less OPAY_SLIPPAGE (domain/quote.py remote_rates); then the same
    `price` as for a local receiver."""
    peer = await s.peers.route(found.ilp_address)
    if peer is None:
        raise ApiError(
            400,
            UNREACHABLE,
            "no ILP peer of this server routes the receiver's ILP address",
            {"ilpAddress": found.ilp_address},
        )
    if s.prober is None:
        raise ApiError(400, "unsupported_receiver", "this server does not probe paths to other servers")
    link = Asset(peer.asset_code, peer.asset_scale)
    local = await _rate(s, sender.asset.code, link.code)
    probed = await s.prober.probe(peer, found.ilp_address, found.shared_secret)
    rate, min_rate = rules.remote_rates(
        local=local, sender=sender.asset, link=link, receiver=receiver.asset, probed_low=probed.low, slippage=Fraction(s.settings.slippage)
    )
    if rate <= 0:
        raise ApiError(400, INSUFFICIENT, "the path to the receiver delivers nothing at this slippage", {"peer": peer.name})
    priced = rules.price(debit=debit, receive=receive, rate=rate, sender=sender.asset, receiver=receiver.asset, fees=fees, remaining=receiver.remaining)
    terms = rules.Remote(
        peer=peer.name,
        link_asset=link,
        min_rate=rules.Rate.of(min_rate),
        rate_low=rules.Rate.of(probed.low),
        rate_high=rules.Rate.of(probed.high),
        max_source=rules.max_source(priced.debit - priced.fee, local=local, sender=sender.asset, link=link),
    )
    return Priced(debit=priced.debit, receive=priced.receive, fee=priced.fee, remote=terms)


async def create(request: Request) -> Response:
    asked = await create_request(request, "quote", wire.CreateQuoteBody)
    s, parsed, principal = asked.s, asked.body, asked.principal
    if parsed.method != "ilp":
        raise ApiError(400, "invalid_request", "method must be ilp")
    if parsed.debitAmount is not None and parsed.receiveAmount is not None:
        raise ApiError(400, "invalid_request", "give debitAmount or receiveAmount, not both")
    sender = await active_wallet(s, parsed.walletAddress)
    receiver, priced = await price_quote(
        s, sender=sender, receiver_url=parsed.receiver, debit=parsed.debitAmount, receive=parsed.receiveAmount, remote=True
    )
    now = now_ms()
    # Binding long enough to consent, short enough to bound the rate risk, and never past
    # the moment the receiver stops accepting money (when it has one).
    expires_at_ms = now + s.settings.quote_validity_seconds * 1000
    if receiver.expires_at_ms is not None:
        expires_at_ms = min(expires_at_ms, receiver.expires_at_ms)
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
        expires_at_ms=expires_at_ms,
        created_at_ms=now,
        remote=priced.remote,
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
