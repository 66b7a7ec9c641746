"""The GNAP authorization server's routes: grant requests, continuation, token management.

Every request is signed by the client; the key comes from the client's wallet address
(by keyid) or, for directed identity, from the request itself. Management requests must
be signed by the same client the grant was issued to.
"""

from __future__ import annotations

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.clock import now_ms
from opay.auth.access import AccessItem, invalid_actions
from opay.auth.grants import ClientRef, Token
from opay.http import signatures, wire
from opay.http.errors import ApiError
from opay.http.security import client_key, verify_request_signature
from opay.http.services import Services, read_body, services
from opay.persistence.wallet_addresses import Jwk

PREFIX = "/auth"
MAX_ACCESS_ITEMS = 3


class AccessTokenRequest(msgspec.Struct, frozen=True):
    access: list[AccessItem]


class GrantRequest(msgspec.Struct, frozen=True):
    client: str | dict
    access_token: AccessTokenRequest | None = None
    interact: dict | None = None
    subject: dict | None = None




def _wallet_address(raw: str) -> ClientRef:
    # Not a URL we could fetch keys from is bad input (400), not an outage (503).
    try:
        url = httpx.URL(raw)
        usable = url.scheme in ("http", "https") and bool(url.host) and (url.port is None or 0 < url.port < 65536)
    except httpx.InvalidURL:
        usable = False
    if not usable:
        raise ApiError(400, "invalid_client", "the client's wallet address must be an http(s) URL")
    return ClientRef(walletAddress=raw)


def _client(raw: str | dict) -> ClientRef:
    if isinstance(raw, str):
        return _wallet_address(raw)
    if set(raw) == {"walletAddress"} and isinstance(raw["walletAddress"], str):
        return _wallet_address(raw["walletAddress"])
    if set(raw) == {"jwk"}:
        try:
            jwk = msgspec.convert(raw["jwk"], Jwk)
        except msgspec.ValidationError as error:
            raise ApiError(400, "invalid_client", f"client.jwk is not a valid key: {error}") from None
        if (jwk.kty, jwk.crv, jwk.alg) != ("OKP", "Ed25519", "EdDSA"):
            raise ApiError(400, "invalid_client", "client.jwk must be an Ed25519 (EdDSA) key")
        return ClientRef(jwk=jwk)
    raise ApiError(400, "invalid_client", "client must be a wallet address URL, {walletAddress} or {jwk}")


async def _signed_by(request: Request, s: Services, body: bytes, client: ClientRef) -> None:
    try:
        keyid = signatures.parse_signature_input(request.headers.get("signature-input")).keyid
    except signatures.SignatureError as error:
        raise ApiError(401, "invalid_client", error.description) from None
    key = await client_key(client, keyid, s.client_keys)
    if key is None:
        raise ApiError(401, "invalid_client", f"the client has no key {keyid}")
    try:
        await verify_request_signature(request, body, s.settings, key)
    except ApiError as error:
        raise ApiError(401, "invalid_client", error.description) from None


async def _check_access(s: Services, access: list[AccessItem]) -> None:
    if not access or len(access) > MAX_ACCESS_ITEMS:
        raise ApiError(400, "invalid_request", f"access must hold 1 to {MAX_ACCESS_ITEMS} items")
    for item in access:
        wrong = invalid_actions(item)
        if wrong or not item.actions:
            raise ApiError(400, "invalid_request", f"invalid actions for {item.type}: {wrong or 'none given'}")
        if item.type == "outgoing-payment":
            raise ApiError(
                400, "invalid_request", "outgoing-payment access needs an interactive grant, which this server does not offer yet"
            )
        if item.identifier is not None and await s.wallet_by_url(item.identifier) is None:
            raise ApiError(400, "invalid_request", f"identifier {item.identifier} is not a wallet address of this server")


def _token_view(s: Services, value: str, token: Token) -> dict:
    return {
        "value": value,
        "manage": f"{s.settings.auth_server_url}/token/{token.id}",
        "expires_in": max(0, (token.expires_at_ms - now_ms()) // 1000),
        "access": msgspec.to_builtins(token.access),
    }


def _gnap_token(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme != "GNAP" or not value.strip():
        raise ApiError(401, "invalid_client", "Authorization must be 'GNAP <token>'")
    return value.strip()


async def request_grant(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    try:
        grant_request = wire.decode_body(body, GrantRequest)
    except ApiError as error:
        raise ApiError(400, "invalid_request", error.description) from None
    client = _client(grant_request.client)
    await _signed_by(request, s, body, client)
    if grant_request.access_token is None:
        raise ApiError(400, "invalid_request", "access_token is required: subject-only grants are not offered")
    if grant_request.interact is not None:
        raise ApiError(400, "invalid_request", "interactive grants are not offered yet")
    access = grant_request.access_token.access
    await _check_access(s, access)
    grant, value, token, continue_token = await s.grants.issue(client, access, now_ms())
    return Response(
        wire.encode(
            {
                "access_token": _token_view(s, value, token),
                "continue": {
                    "access_token": {"value": continue_token},
                    "uri": f"{s.settings.auth_server_url}/continue/{grant.id}",
                },
            }
        ),
        media_type="application/json",
    )


async def continue_grant(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    grant = await s.grants.grant(request.path_params["grant_id"], _gnap_token(request))
    if grant is None:
        raise ApiError(401, "invalid_continuation", "unknown grant or continuation token")
    await _signed_by(request, s, body, grant.client)
    raise ApiError(400, "invalid_request", "the grant is already finalized: there is nothing to continue")


async def cancel_grant(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    grant = await s.grants.grant(request.path_params["grant_id"], _gnap_token(request))
    if grant is None:
        raise ApiError(401, "invalid_continuation", "unknown grant or continuation token")
    await _signed_by(request, s, body, grant.client)
    await s.grants.cancel(grant)
    return Response(status_code=204)


async def _managed_token(request: Request, s: Services, body: bytes) -> tuple[Token, str]:
    value = _gnap_token(request)
    token = await s.grants.token(request.path_params["token_id"], value)
    if token is None:
        raise ApiError(401, "invalid_rotation", "unknown token or token value")
    await _signed_by(request, s, body, token.client)
    return token, value


async def rotate_token(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    token, value = await _managed_token(request, s, body)
    new_value, new_token = await s.grants.rotate(token, value, now_ms())
    return Response(wire.encode({"access_token": _token_view(s, new_value, new_token)}), media_type="application/json")


async def revoke_token(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    token, value = await _managed_token(request, s, body)
    await s.grants.revoke(token, value)
    return Response(status_code=204)


ROUTES = [
    Route(PREFIX, request_grant, methods=["POST"]),
    Route(PREFIX + "/continue/{grant_id}", continue_grant, methods=["POST"]),
    Route(PREFIX + "/continue/{grant_id}", cancel_grant, methods=["DELETE"]),
    Route(PREFIX + "/token/{token_id}", rotate_token, methods=["POST"]),
    Route(PREFIX + "/token/{token_id}", revoke_token, methods=["DELETE"]),
]
