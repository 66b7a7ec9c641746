"""Resource server: incoming payments (create, get, list, complete)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.clock import now_ms
from opay.actors import ids
from opay.actors.messages import CompleteIncomingPayment, OpenIncomingPayment, State
from opay.domain import incoming_payment as rules
from opay.domain.amounts import Asset, require_asset
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.times import parse_date_time
from opay.http import routing, wire  # noqa: F401  (routing registers the path convertors of ROUTES)
from opay.http.errors import ApiError
from opay.http.pagination import list_resources
from opay.http.resources import authenticated, create_request, json, path_uuid, random_uuid, readable
from opay.http.services import Services, expected, read_body, services
from opay.http.wallet_state import active_wallet

KIND = "ip"
PATH = "/incoming-payments"


entity_id = ids.INCOMING_PAYMENT



def with_methods(s: Services, payment: IncomingPayment) -> wire.IncomingPaymentView:
    link = Asset(s.settings.ilp_asset_code, s.settings.ilp_asset_scale)
    if payment.completed or rules.is_expired(payment, now_ms()) or payment.asset != link:
        # Nothing can be paid into it any more, or not over our ILP link: it credits one
        # to one in the link's asset, so another asset has no usable credentials.
        methods = []
    else:
        credentials = s.mint.issue(payment.id)
        methods = [wire.IlpMethod(ilp_address=credentials.ilp_address, shared_secret=credentials.shared_secret_b64url)]
    return wire.incoming_payment(payment, s.settings.public_url, methods)


async def create(request: Request) -> Response:
    asked = await create_request(request, "incoming-payment", wire.CreateIncomingPaymentBody)
    payment = await open_incoming_payment(asked.s, asked.body, asked.metadata, client=asked.principal.client.identity)
    return json(201, with_methods(asked.s, payment))


async def open_incoming_payment(
    s: Services, parsed: wire.CreateIncomingPaymentBody, metadata: bytes | None, *, client: str | None
) -> IncomingPayment:
    """The one create of an incoming payment, a client's or the operator's (`client` None:
    an invoice of the ASE's): the body checked against its wallet address and the domain's
    rules, then opened by its entity."""
    wallet = await active_wallet(s, parsed.walletAddress)
    incoming_amount = None
    if parsed.incomingAmount is not None:
        incoming_amount, asset = parsed.incomingAmount.parse("incomingAmount")
        require_asset(asset, wallet.asset, "incomingAmount")
    expires_at = None if parsed.expiresAt is None else parse_date_time(parsed.expiresAt, "expiresAt")
    payment = rules.open_payment(
        payment_id=random_uuid(),
        wallet_address=parsed.walletAddress,
        client=client,
        asset=wallet.asset,
        incoming_amount=incoming_amount,
        expires_at_ms=expires_at,
        metadata=metadata,
        now_ms=now_ms(),
        expiry=rules.ExpiryPolicy(
            s.settings.incoming_payment_default_expiry_seconds * 1000, s.settings.incoming_payment_max_expiry_seconds * 1000
        ),
    )
    command = OpenIncomingPayment(entity_id(payment.id), payment)
    return expected(command, (await s.ask(command, expect=State)).state, IncomingPayment)


async def get(request: Request) -> Response:
    s = services(request)
    if "authorization" not in request.headers:
        # The public view: enough for a payer to find the authorization server.
        payment = await s.queries.entity(entity_id(path_uuid(request, "incoming payment")))
        if payment is None:
            raise ApiError(404, "not_found", "no such incoming payment")
        return json(200, wire.public_incoming_payment(payment, s.settings.public_url))
    return json(200, with_methods(s, await readable(request, s, "incoming-payment", "incoming payment", entity_id, IncomingPayment)))


async def complete(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    caller = await authenticated(request, s, body)
    principal = caller.require("incoming-payment", "complete", None)
    payment_uuid = path_uuid(request, "incoming payment")
    reply = await s.ask(
        CompleteIncomingPayment(entity_id(payment_uuid), wallet_address=principal.permit.item.identifier, client=principal.scope_client),
        expect=State,
    )
    return json(200, wire.incoming_payment(reply.state, s.settings.public_url))


async def list_payments(request: Request) -> Response:
    return json(200, await list_resources(request, "incoming-payment", KIND, wire.incoming_payment))


ROUTES = [
    Route(PATH, create, methods=["POST"], name="create-incoming-payment"),
    Route(PATH, list_payments, methods=["GET"], name="incoming-payments"),
    # An id of ours takes the first route of each pair; any other, slashes and newlines included,
    # the second, to the same handler: authentication is judged before the id.
    Route(PATH + "/{resource_id:canonical_uuid}/complete", complete, methods=["POST"], name="complete-incoming-payment"),
    Route(PATH + "/{resource_id:any}/complete", complete, methods=["POST"], name="complete-incoming-payment-any"),
    Route(PATH + "/{resource_id:canonical_uuid}", get, methods=["GET"], name="incoming-payment"),
    Route(PATH + "/{resource_id:any}", get, methods=["GET"], name="incoming-payment-any"),
]
