"""The operator API's read side of payments and quotes: a wallet address's, page by page
and filtered by state, or one by id.

The operator sees what a client with read access sees (an incoming payment read by id
with its ILP credentials, as the resource server's GET gives them), and what only the ASE
should: its state as the domain defines it and the client that made it (null: an invoice
of the operator's); an outgoing payment's failure reason and grant too. Pages are the
public lists' (http/pagination.py), over each wallet address's index of all its clients.
"""

from __future__ import annotations

from typing import Callable, get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors import ids
from opay.actors.ids import EntityIds
from opay.clock import now_ms
from opay.domain import incoming_payment as incoming
from opay.domain import quote as quotes
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment, Phase
from opay.domain.quote import Quote
from opay.http import routing, wire  # noqa: F401  (routing registers the path convertors of ROUTES)
from opay.http.errors import ApiError
from opay.http.incoming_payments import with_methods
from opay.http.operator import _operator
from opay.http.pagination import page_response, parse_page_query
from opay.http.resources import json, path_uuid
from opay.http.services import Services
from opay.persistence import keys


class OperatorIncomingPayment(wire.IncomingPaymentView, frozen=True, kw_only=True):
    state: incoming.Status
    client: str | None  # the client that made it; null: the operator's invoice


class OperatorOutgoingPayment(wire.OutgoingPaymentView, frozen=True, kw_only=True):
    state: Phase
    failure: str | None  # why it failed, when it did
    client: str | None
    grant_id: str


class OperatorQuote(wire.QuoteView, frozen=True, kw_only=True):
    state: quotes.Status
    client: str | None


def incoming_payment_view(s: Services, payment: IncomingPayment, now: int, one: bool) -> OperatorIncomingPayment:
    """`one`: read or made by itself, with its ILP credentials (a list item has none)."""
    view = with_methods(s, payment) if one else wire.incoming_payment(payment, s.settings.public_url)
    return OperatorIncomingPayment(**msgspec.structs.asdict(view), state=incoming.status(payment, now), client=payment.client)


def _outgoing_payment_view(s: Services, payment: OutgoingPayment, now: int, one: bool) -> OperatorOutgoingPayment:
    view = wire.outgoing_payment(payment, s.settings.public_url)
    return OperatorOutgoingPayment(
        **msgspec.structs.asdict(view), state=payment.phase, failure=payment.failure, client=payment.client, grant_id=payment.grant_id
    )


def _quote_view(s: Services, quote: Quote, now: int, one: bool) -> OperatorQuote:
    return OperatorQuote(**msgspec.structs.asdict(wire.quote(quote, s.settings.public_url)), state=quotes.status(quote, now), client=quote.client)


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    """One kind the operator reads: its entities, its states, its view."""

    what: str  # as errors name it
    ids: EntityIds  # its entity ids; the prefix is also its index's kind
    state_type: type
    states: tuple[str, ...]
    state_of: Callable[[object, int], str]  # (state, now ms) -> one of `states`
    # (services, state, now ms, read by itself rather than listed) -> the operator's view
    view: Callable[[Services, object, int, bool], msgspec.Struct]


INCOMING = Resource(
    what="incoming payment",
    ids=ids.INCOMING_PAYMENT,
    state_type=IncomingPayment,
    states=incoming.STATUSES,
    state_of=incoming.status,  # type: ignore[arg-type]
    view=incoming_payment_view,  # type: ignore[arg-type]
)
OUTGOING = Resource(
    what="outgoing payment",
    ids=ids.OUTGOING_PAYMENT,
    state_type=OutgoingPayment,
    states=get_args(Phase),
    state_of=lambda payment, now: payment.phase,  # type: ignore[attr-defined]
    view=_outgoing_payment_view,  # type: ignore[arg-type]
)
QUOTES = Resource(
    what="quote", ids=ids.QUOTE, state_type=Quote, states=quotes.STATUSES, state_of=quotes.status, view=_quote_view  # type: ignore[arg-type]
)


def _state(request: Request, resource: Resource) -> str | None:
    wanted = request.query_params.get("state")
    if wanted is not None and wanted not in resource.states:
        raise ApiError(
            400,
            "invalid_state",
            f"state must be one of {', '.join(resource.states)}",
            {"field": "state", "allowed": list(resource.states)},
        )
    return wanted


async def _list(request: Request, resource: Resource) -> Response:
    """?wallet-address=<URL>[&first=|&last=][&cursor=][&state=]: as the public lists, of every client."""
    s = _operator(request)
    query = parse_page_query(request, s.settings.list_page_default)
    wanted = _state(request, resource)
    path = s.wallet_path(query.wallet_address)
    if path is None or await s.wallets.get(path) is None:
        raise ApiError(404, "unknown_wallet_address", "wallet-address is not a wallet address of this server")
    now = now_ms()
    keep = None
    if wanted is not None:
        keep = lambda item: isinstance(item, resource.state_type) and resource.state_of(item, now) == wanted  # noqa: E731
    page = await page_response(
        s.queries,
        lambda shard: keys.index(resource.ids.prefix, shard, query.wallet_address),
        query,
        resource.ids.prefix,
        lambda item: resource.view(s, item, now, False),
        keep,
    )
    return json(200, page)


async def _get(request: Request, resource: Resource) -> Response:
    s = _operator(request)
    found = await s.queries.entity(resource.ids(path_uuid(request, resource.what)))
    if not isinstance(found, resource.state_type):
        raise ApiError(404, "not_found", f"no such {resource.what}")
    return json(200, resource.view(s, found, now_ms(), True))


def _routes(path: str, name: str, resource: Resource) -> list[Route]:
    async def list_them(request: Request) -> Response:
        return await _list(request, resource)

    async def get_one(request: Request) -> Response:
        return await _get(request, resource)

    return [
        Route(path, list_them, methods=["GET"], name=f"list-{name}s"),
        # An id of ours takes the first route, any other segment the second (the token is
        # judged before the id); deeper paths stay the operator's other routes' (fund, cancel).
        Route(path + "/{resource_id:canonical_uuid}", get_one, methods=["GET"], name=f"get-{name}"),
        Route(path + "/{resource_id}", get_one, methods=["GET"], name=f"get-{name}-any"),
    ]


ROUTES = [
    *_routes("/incoming-payments", "incoming-payment", INCOMING),
    *_routes("/outgoing-payments", "outgoing-payment", OUTGOING),
    *_routes("/quotes", "quote", QUOTES),
]
