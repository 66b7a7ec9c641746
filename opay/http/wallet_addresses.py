"""Wallet address server: GET {wa}, {wa}/jwks.json and {wa}/did.json. No authentication.

Its routes come last in the public app, and end with the answer to every request no
route takes: a JSON 405 (with Allow) where the path has routes for other methods, else
a JSON 404.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.http import pages, wire
from opay.http.errors import ApiError
from opay.http.resources import json
from opay.http.routing import allowed_methods
from opay.http.services import Services, services
from opay.persistence.wallet_addresses import Jwk, WalletAddress


class Jwks(msgspec.Struct, frozen=True):
    keys: list[Jwk]


class PublicKeyJwk(msgspec.Struct, frozen=True):
    kid: str
    kty: str
    crv: str
    x: str


class VerificationMethod(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    type: str
    controller: str
    public_key_jwk: PublicKeyJwk


DID_CONTEXT = ("https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1")


class DidDocument(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    context: list[str] = msgspec.field(default_factory=lambda: list(DID_CONTEXT), name="@context")
    id: str
    verification_method: list[VerificationMethod]
    authentication: list[str]
    assertion_method: list[str]


async def _known(request: Request) -> tuple[Services, WalletAddress]:
    s = services(request)
    wallet = await s.wallet(request.path_params["path"])
    # A deactivated one is gone for the public, as Rafiki answers (the spec gives GET only
    # 200 and 404): no document, no keys to verify its signatures by.
    if wallet is None or not wallet.active:
        raise ApiError(404, "not_found", "no such wallet address")
    return s, wallet


async def get_wallet_address(request: Request) -> Response:
    s, wallet = await _known(request)
    view = wire.wallet_address(wallet, s.settings.public_url)
    if pages.prefers_html(request.headers.get("accept")):  # opened in a browser
        return pages.wallet_address_page(s.settings, view)
    return Response(wire.encode(view), media_type="application/json", headers=pages.VARY)


async def get_jwks(request: Request) -> Response:
    s, wallet = await _known(request)
    return json(200, Jwks(await s.wallets.keys_of(wallet.path)))


def did_web(wallet_url: str) -> str:
    """The did:web DID whose document is served at {wallet_url}/did.json (W3C did:web:
    the port's colon percent-encoded, path segments joined by colons)."""
    parts = urlsplit(wallet_url)
    segments = [quote(parts.netloc, safe="")] + [quote(segment, safe="") for segment in parts.path.strip("/").split("/") if segment]
    return "did:web:" + ":".join(segments)


async def get_did_document(request: Request) -> Response:
    # The wallet address's keys as the verification methods of its did:web DID.
    s, wallet = await _known(request)
    did = did_web(s.wallet_url(wallet.path))
    methods = [
        VerificationMethod(
            id=f"{did}#{quote(key.kid, safe='')}",
            type="JsonWebKey2020",
            controller=did,
            public_key_jwk=PublicKeyJwk(kid=key.kid, kty=key.kty, crv=key.crv, x=key.x),
        )
        for key in await s.wallets.keys_of(wallet.path)
    ]
    ids = [method.id for method in methods]
    return json(200, DidDocument(id=did, verification_method=methods, authentication=ids, assertion_method=ids))


async def unmatched(request: Request) -> Response:
    """No route takes this method on this path (or no route this path)."""
    allowed = allowed_methods(request.app.router.routes, request.scope, skip=(unmatched, get_wallet_address))
    wallet = None if allowed else await services(request).wallet(request.path_params["path"])
    if wallet is not None and wallet.active:
        allowed = {"GET", "HEAD"}
    if allowed:
        raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here", headers={"Allow": ", ".join(sorted(allowed))})
    raise ApiError(404, "not_found", "no such resource")


ROUTES = [
    Route("/{path:any}/jwks.json", get_jwks, methods=["GET"], name="jwks"),
    Route("/{path:any}/did.json", get_did_document, methods=["GET"], name="did-document"),
    Route("/{path:any}", get_wallet_address, methods=["GET"], name="wallet-address"),
    # Starlette would make a function route GET-only: name every method.
    Route("/{path:any}", unmatched, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"], name="unmatched"),
]
