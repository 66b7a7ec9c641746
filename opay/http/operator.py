"""The operator API (the ASE's side): wallet addresses, keys, credits, rates and fees,
token introspection. Payments and quotes: operator_resources.py and operator_invoices.py.

Served on its own port and guarded by `Authorization: Bearer <OPAY_OPERATOR_TOKEN>`.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay import base64url
from opay.actors import ids
from opay.actors.messages import CancelOutgoingPayment, CreditIncomingPayment, Credited, FundOutgoingPayment, State
from opay.clock import now_ms
from opay.domain.amounts import Asset, parse_uint64
from opay.domain.exchange import BASIS_POINTS, FeeSchedule, parse_rate
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.times import format_ms
from opay.http import consent, wire
from opay.http.errors import ApiError
from opay.http.middleware import identify
from opay.http.incoming_payments import entity_id
from opay.http.resources import canonical_uuid, json, uuid_in_url
from opay.http.routing import Prefix
from opay.http.services import Services, expected, read_body, services
from opay.http.wallet_addresses import Jwks
from opay.persistence.wallet_addresses import Jwk, WalletAddress

# Lowercase segments; the first may not shadow a route of the public server.
_PATH = re.compile(r"[a-z0-9][a-z0-9._~-]{0,63}(/[a-z0-9][a-z0-9._~-]{0,63}){0,7}")
_RESERVED = {"incoming-payments", "outgoing-payments", "quotes", "outgoing-payment-grant", "auth", "ilp", ".well-known"}
_RESERVED_LAST = {"jwks.json", "did.json"}
IDEMPOTENCY_KEY_MAX = 256
LIST_MAX = 1000


# The login proxy's user name, as its header carries it: no control characters, no
# surrounding space (HTTP strips it, so such an owner could never match).
Owner = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$")]


class WalletAddressBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    assetCode: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    assetScale: Annotated[int, msgspec.Meta(ge=0, le=255)]
    publicName: str | None = None
    owner: Owner | None = None


class WalletAddressPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Absent: unchanged; null: cleared (`active` is never null). The asset never changes."""

    publicName: str | None | msgspec.UnsetType = msgspec.UNSET
    owner: Owner | None | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class KeyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kid: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    x: str
    kty: str
    crv: str
    alg: str = "EdDSA"
    use: str | None = None


class CreditBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    incomingPayment: str
    amount: str
    idempotencyKey: Annotated[str, msgspec.Meta(min_length=1, max_length=IDEMPOTENCY_KEY_MAX)]


class FeesBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fixed: str = "0"
    basisPoints: Annotated[int, msgspec.Meta(ge=0, le=BASIS_POINTS)] = 0


class CancelBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] = "cancelled by the account servicing entity"


_ASSET_CODE = re.compile(r"[A-Za-z0-9]{1,32}")


class IntrospectBody(msgspec.Struct, frozen=True):
    access_token: str
    access: list | None = None


# The operator API's answers (besides the resources' own views, wire.py).


class OperatorWalletAddressView(wire.WalletAddressView, frozen=True, kw_only=True):
    """The public document, and what only the operator sees: the owner (in the parent
    view), whether it is active, and when it was created."""

    active: bool
    created_at: str


class WalletAddressList(msgspec.Struct, frozen=True):
    result: list[OperatorWalletAddressView]


class CreditView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    incoming_payment: str
    amount: wire.Amount
    received_amount: wire.Amount
    completed: bool


class RatesView(msgspec.Struct, frozen=True):
    base: str
    rates: dict[str, str]


class RatesList(msgspec.Struct, frozen=True):
    result: list[RatesView]


class FeesView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    asset_code: str
    fixed: str
    basis_points: int


class FeesList(msgspec.Struct, frozen=True):
    result: list[FeesView]


class Health(msgspec.Struct, frozen=True):
    status: str


HEALTHY = Health("ok")


def _operator(request: Request) -> Services:
    s = services(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not secrets.compare_digest(token.strip().encode(), s.settings.operator_token.encode()):
        raise ApiError(401, "unauthorized", "the operator API needs Authorization: Bearer <operator token>")
    identify(request, "operator")
    return s


async def create_wallet_address(request: Request) -> Response:
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), WalletAddressBody)
    segments = body.path.split("/")
    if _PATH.fullmatch(body.path) is None or segments[0] in _RESERVED or segments[-1] in _RESERVED_LAST:
        raise ApiError(400, "invalid_path", "path must be lowercase segments of [a-z0-9._~-] and not a reserved name")
    wallet = WalletAddress(
        path=body.path, asset=Asset(body.assetCode, body.assetScale), public_name=body.publicName, owner=body.owner, created_at_ms=now_ms()
    )
    if not await s.wallets.create(wallet):
        raise ApiError(409, "exists", f"wallet address {body.path} exists")
    return json(201, _operator_view(s, wallet))


def _operator_view(s: Services, wallet: WalletAddress) -> OperatorWalletAddressView:
    public = wire.wallet_address(wallet, s.settings.public_url, with_owner=True)
    return OperatorWalletAddressView(**msgspec.structs.asdict(public), active=wallet.active, created_at=format_ms(wallet.created_at_ms))


async def _wallet(s: Services, path: str) -> WalletAddress:
    """The wallet address as Redis holds it now (never a cache: the operator sees its edits)."""
    wallet = await s.wallets.get(path)
    if wallet is None:
        raise ApiError(404, "not_found", "no such wallet address")
    return wallet


async def list_wallet_addresses(request: Request) -> Response:
    s = _operator(request)
    return json(200, WalletAddressList([_operator_view(s, wallet) for wallet in await s.wallets.list(LIST_MAX)]))


async def get_wallet_address(request: Request) -> Response:
    s = _operator(request)
    return json(200, _operator_view(s, await _wallet(s, request.path_params["path"])))


async def list_keys(request: Request) -> Response:
    """Its keys, also while it is deactivated (when its public jwks.json is a 404)."""
    s = _operator(request)
    wallet = await _wallet(s, request.path_params["path"])
    return json(200, Jwks(await s.wallets.keys_of(wallet.path)))


async def patch_wallet_address(request: Request) -> Response:
    """Change the public name, the owner (who may decide consent on the built-in page), or
    whether it is active (wallet_state.py: what a deactivated one refuses)."""
    s = _operator(request)
    path = request.path_params["path"]
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), WalletAddressPatch)
    if body.active is False and path == s.settings.client_wallet_address:
        raise ApiError(
            409,
            "client_identity",
            "this wallet address is the server's own client identity (OPAY_CLIENT_WALLET_ADDRESS): other servers verify its signatures by its keys",
        )
    changes = {
        field: value
        for field, value in (("public_name", body.publicName), ("owner", body.owner), ("active", body.active))
        if value is not msgspec.UNSET
    }
    wallet = await s.wallets.update(path, changes)
    if wallet is None:
        raise ApiError(404, "not_found", "no such wallet address")
    # This front end sees the edit at once; every decision on `active` reads Redis anyway.
    s.forget_wallet(path)
    s.client_keys.forget(s.wallet_url(path))
    return json(200, _operator_view(s, wallet))


async def add_key(request: Request) -> Response:
    s = _operator(request)
    path = request.path_params["path"]
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), KeyBody)
    if (body.kty, body.crv, body.alg) != ("OKP", "Ed25519", "EdDSA") or body.use not in (None, "sig"):
        raise ApiError(400, "invalid_key", "the key must be an Ed25519 public JWK (kty OKP, crv Ed25519, alg EdDSA)")
    try:
        raw = base64url.decode(body.x)
    except ValueError:
        raw = b""
    if len(raw) != 32 or "=" in body.x:
        raise ApiError(400, "invalid_key", "x must be the 32-byte public key, base64url without padding")
    if await s.wallet(path) is None:
        raise ApiError(404, "not_found", "no such wallet address")
    jwk = Jwk(kid=body.kid, alg=body.alg, kty=body.kty, crv=body.crv, x=body.x, use=body.use)
    if not await s.wallets.add_key(path, jwk):
        raise ApiError(409, "exists", f"key {body.kid} exists for this wallet address")
    s.client_keys.forget(s.wallet_url(path))
    return json(201, jwk)


async def revoke_key(request: Request) -> Response:
    s = _operator(request)
    path = request.path_params["path"]
    if not await s.wallets.revoke_key(path, request.path_params["kid"]):
        raise ApiError(404, "not_found", "no such key")
    s.client_keys.forget(s.wallet_url(path))
    return Response(status_code=204)


async def credit(request: Request) -> Response:
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), CreditBody)
    payment_uuid = uuid_in_url(s, body.incomingPayment, "incoming-payments")
    if payment_uuid is None:
        raise ApiError(400, "invalid_incoming_payment", "incomingPayment must be the URL of an incoming payment of this server")
    amount = parse_uint64(body.amount, "amount")
    reply = await s.ask(
        CreditIncomingPayment(entity_id(payment_uuid), amount, "operator", body.idempotencyKey), expect=Credited, idempotent=True
    )
    outcome = reply.outcome
    view = CreditView(
        incoming_payment=body.incomingPayment,
        amount=wire.amount(outcome.amount, reply.asset),
        received_amount=wire.amount(outcome.received, reply.asset),
        completed=outcome.completed,
    )
    if not outcome.accepted:
        raise ApiError(409, outcome.refused_code, f"the credit was refused: {outcome.refused_code}", msgspec.to_builtins(view))
    return json(200, view)


def _asset_code(request: Request, name: str) -> str:
    code = request.path_params[name]
    if _ASSET_CODE.fullmatch(code) is None:
        raise ApiError(400, "invalid_asset", "an asset code is 1 to 32 letters or digits")
    return code


async def put_rates(request: Request) -> Response:
    """Replace the rate table from one base asset: {"EUR": "0.92", ...} as decimal strings."""
    s = _operator(request)
    base = _asset_code(request, "base")
    table = wire.decode_body(await read_body(request, s.settings.body_max_bytes), dict[str, str])
    rates = {code: parse_rate(text) for code, text in table.items() if _ASSET_CODE.fullmatch(code)}
    if len(rates) != len(table):
        raise ApiError(400, "invalid_asset", "rate keys must be asset codes")
    await s.pricing.set_rates(base, rates, table)
    return json(200, RatesView(base, table))


async def get_rates(request: Request) -> Response:
    """The operator-set table from one base, as written (with OPAY_RATES_URL set, quotes
    use that service instead); 404 when there is none."""
    s = _operator(request)
    base = _asset_code(request, "base")
    table = await s.pricing.table(base)
    if not table:
        raise ApiError(404, "not_found", f"no rates table from {base}")
    return json(200, RatesView(base, table))


async def list_rates(request: Request) -> Response:
    s = _operator(request)
    tables = await s.pricing.tables(LIST_MAX)
    return json(200, RatesList([RatesView(base, table) for base, table in tables.items()]))


def _fees_view(code: str, schedule: FeeSchedule) -> FeesView:
    return FeesView(asset_code=code, fixed=str(schedule.fixed), basis_points=schedule.basis_points)


async def get_fees(request: Request) -> Response:
    """The fees quotes from this asset charge: none (zeros) until some are PUT."""
    s = _operator(request)
    code = _asset_code(request, "asset_code")
    return json(200, _fees_view(code, await s.pricing.fees(code)))


async def list_fees(request: Request) -> Response:
    s = _operator(request)
    return json(200, FeesList([_fees_view(code, schedule) for code, schedule in (await s.pricing.all_fees(LIST_MAX)).items()]))


async def put_fees(request: Request) -> Response:
    """Sending fees for one asset: {"fixed": "<uint64 smallest units>", "basisPoints": 0..10000}."""
    s = _operator(request)
    code = _asset_code(request, "asset_code")
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), FeesBody)
    schedule = FeeSchedule(fixed=parse_uint64(body.fixed, "fixed"), basis_points=body.basisPoints)
    await s.pricing.set_fees(code, schedule)
    return json(200, _fees_view(code, schedule))


def _outgoing_payment_id(request: Request) -> str:
    found = canonical_uuid(request.path_params["payment_id"])
    if found is None:
        raise ApiError(404, "not_found", "no such outgoing payment")
    return ids.OUTGOING_PAYMENT(found)


async def fund_outgoing_payment(request: Request) -> Response:
    """The ASE has debited the sender: settlement may start."""
    s = _operator(request)
    return await _outgoing_payment_after(s, FundOutgoingPayment(_outgoing_payment_id(request)))


async def cancel_outgoing_payment(request: Request) -> Response:
    """The ASE will not fund it: it fails with the reason and gives its grant share back."""
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), CancelBody, allow_empty=True)
    return await _outgoing_payment_after(s, CancelOutgoingPayment(_outgoing_payment_id(request), body.reason))


async def _outgoing_payment_after(s: Services, command: FundOutgoingPayment | CancelOutgoingPayment) -> Response:
    """The payment's view once its entity has taken the operator's command."""
    reply = await s.ask(command, expect=State)
    return json(200, wire.outgoing_payment(expected(command, reply.state, OutgoingPayment), s.settings.public_url))


async def introspect(request: Request) -> Response:
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), IntrospectBody)
    return json(200, await s.grants.introspect(body.access_token, now_ms()))


async def approve_grant(request: Request) -> Response:
    """The ASE approves a pending interactive grant (its own consent UI, or a policy)."""
    s = _operator(request)
    return json(200, await consent.operator_decision(s, request.path_params["grant_id"], approve=True))


async def deny_grant(request: Request) -> Response:
    s = _operator(request)
    return json(200, await consent.operator_decision(s, request.path_params["grant_id"], approve=False))


async def health(request: Request) -> Response:
    _operator(request)
    return json(200, HEALTHY)


# Each group is a Prefix (a Mount that takes only what its routes take, see http/routing.py),
# in the place of its first route: the answers are those of the flat list, 307s to a
# path with or without its trailing slash included.
ROUTES = [
    Route("/health", health, methods=["GET"], name="health"),
    Route("/wallet-addresses", create_wallet_address, methods=["POST"], name="create-wallet-address"),
    Route("/wallet-addresses", list_wallet_addresses, methods=["GET"], name="wallet-addresses"),
    Prefix(
        "/wallet-addresses",
        name="wallet-address",
        routes=[
            Route("/{path:path}/keys/{kid}", revoke_key, methods=["DELETE"], name="key"),
            Route("/{path:path}/keys", add_key, methods=["POST"], name="keys"),
            Route("/{path:path}/keys", list_keys, methods=["GET"], name="list-keys"),
            Route("/{path:path}", patch_wallet_address, methods=["PATCH"], name="update"),
            Route("/{path:path}", get_wallet_address, methods=["GET"], name="get"),
        ],
    ),
    Route("/credits", credit, methods=["POST"], name="credits"),
    Route("/rates", list_rates, methods=["GET"], name="rates-tables"),
    Route("/rates/{base}", put_rates, methods=["PUT"], name="rates"),
    Route("/rates/{base}", get_rates, methods=["GET"], name="get-rates"),
    Route("/fees", list_fees, methods=["GET"], name="all-fees"),
    Route("/fees/{asset_code}", put_fees, methods=["PUT"], name="fees"),
    Route("/fees/{asset_code}", get_fees, methods=["GET"], name="get-fees"),
    Prefix(
        "/outgoing-payments",
        name="outgoing-payment",
        routes=[
            # An id of ours takes the first route of each pair, any other the second: the
            # operator token is judged before the id.
            Route("/{payment_id:canonical_uuid}/fund", fund_outgoing_payment, methods=["POST"], name="fund"),
            Route("/{payment_id}/fund", fund_outgoing_payment, methods=["POST"], name="fund-any"),
            Route("/{payment_id:canonical_uuid}/cancel", cancel_outgoing_payment, methods=["POST"], name="cancel"),
            Route("/{payment_id}/cancel", cancel_outgoing_payment, methods=["POST"], name="cancel-any"),
        ],
    ),
    Route("/introspect", introspect, methods=["POST"], name="introspect"),
    Prefix(
        "/grants",
        name="grant",
        routes=[
            Route("/{grant_id}/approve", approve_grant, methods=["POST"], name="approve"),
            Route("/{grant_id}/deny", deny_grant, methods=["POST"], name="deny"),
        ],
    ),
]
