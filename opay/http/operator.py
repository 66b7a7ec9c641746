"""The operator API (the ASE's side): wallet addresses, keys, credits, token introspection.

Served on its own port and guarded by `Authorization: Bearer <OPAY_OPERATOR_TOKEN>`.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors.messages import CreditIncomingPayment, Credited
from opay.clock import now_ms
from opay.domain.amounts import Asset, parse_uint64
from opay.http import wire
from opay.http.errors import ApiError
from opay.http.incoming_payments import PATH as INCOMING_PAYMENTS, entity_id, json
from opay.http.services import Services, read_body, services
from opay.http.wallet_addresses import document
from opay.persistence.wallet_addresses import Jwk, WalletAddress

# Lowercase segments; the first may not shadow a route of the public server.
_PATH = re.compile(r"[a-z0-9][a-z0-9._~-]{0,63}(/[a-z0-9][a-z0-9._~-]{0,63}){0,7}")
_RESERVED = {"incoming-payments", "outgoing-payments", "quotes", "outgoing-payment-grant", "auth", "ilp", ".well-known"}
_RESERVED_LAST = {"jwks.json", "did.json"}
IDEMPOTENCY_KEY_MAX = 256
LIST_MAX = 1000


class WalletAddressBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    assetCode: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    assetScale: Annotated[int, msgspec.Meta(ge=0, le=255)]
    publicName: str | None = None


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


class IntrospectBody(msgspec.Struct, frozen=True):
    access_token: str
    access: list | None = None


def _operator(request: Request) -> Services:
    s = services(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not secrets.compare_digest(token.strip().encode(), s.settings.operator_token.encode()):
        raise ApiError(401, "unauthorized", "the operator API needs Authorization: Bearer <operator token>")
    return s


async def create_wallet_address(request: Request) -> Response:
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), WalletAddressBody)
    segments = body.path.split("/")
    if _PATH.fullmatch(body.path) is None or segments[0] in _RESERVED or segments[-1] in _RESERVED_LAST:
        raise ApiError(400, "invalid_path", "path must be lowercase segments of [a-z0-9._~-] and not a reserved name")
    wallet = WalletAddress(path=body.path, asset=Asset(body.assetCode, body.assetScale), public_name=body.publicName, created_at_ms=now_ms())
    if not await s.wallets.create(wallet):
        raise ApiError(409, "exists", f"wallet address {body.path} exists")
    return json(201, document(s, wallet))


async def list_wallet_addresses(request: Request) -> Response:
    s = _operator(request)
    return json(200, {"result": [document(s, wallet) for wallet in await s.wallets.list(LIST_MAX)]})


async def add_key(request: Request) -> Response:
    s = _operator(request)
    path = request.path_params["path"]
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), KeyBody)
    if (body.kty, body.crv, body.alg) != ("OKP", "Ed25519", "EdDSA") or body.use not in (None, "sig"):
        raise ApiError(400, "invalid_key", "the key must be an Ed25519 public JWK (kty OKP, crv Ed25519, alg EdDSA)")
    try:
        raw = base64.urlsafe_b64decode(body.x + "=" * (-len(body.x) % 4))
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
    return json(201, msgspec.to_builtins(jwk))


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
    prefix = f"{s.settings.resource_server_url}{INCOMING_PAYMENTS}/"
    payment_uuid = body.incomingPayment[len(prefix) :] if body.incomingPayment.startswith(prefix) else ""
    if not re.fullmatch(r"[0-9a-f-]{36}", payment_uuid):
        raise ApiError(400, "invalid_incoming_payment", "incomingPayment must be the URL of an incoming payment of this server")
    amount = parse_uint64(body.amount, "amount")
    reply = await s.ask(CreditIncomingPayment(entity_id(payment_uuid), amount, body.idempotencyKey))
    assert isinstance(reply, Credited)
    outcome = reply.outcome
    view = {
        "incomingPayment": body.incomingPayment,
        "amount": wire.amount(outcome.amount, reply.asset),
        "receivedAmount": wire.amount(outcome.received, reply.asset),
        "completed": outcome.completed,
    }
    if not outcome.accepted:
        raise ApiError(409, outcome.refused_code, f"the credit was refused: {outcome.refused_code}", view)
    return json(200, view)


async def introspect(request: Request) -> Response:
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), IntrospectBody)
    answer = await s.grants.introspect(body.access_token, now_ms())
    return Response(msgspec.json.encode(answer), media_type="application/json")


async def health(request: Request) -> Response:
    _operator(request)
    return json(200, {"status": "ok"})


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/wallet-addresses", create_wallet_address, methods=["POST"]),
    Route("/wallet-addresses", list_wallet_addresses, methods=["GET"]),
    Route("/wallet-addresses/{path:path}/keys/{kid}", revoke_key, methods=["DELETE"]),
    Route("/wallet-addresses/{path:path}/keys", add_key, methods=["POST"]),
    Route("/credits", credit, methods=["POST"]),
    Route("/introspect", introspect, methods=["POST"]),
]
