"""The GNAP authorization server's routes: grant requests, continuation, token management.

Every request is signed by the client; the key comes from the client's wallet address
(by keyid) or, for directed identity, from the request itself. Management requests must
be signed by the same client the grant was issued to.

A request with `interact` (required for outgoing-payment access) gets a pending grant
and a consent page URL (opay/http/consent.py); the client continues with the
interact_ref from the finish redirect, or polls no faster than `wait`.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.clock import now_ms
from opay.auth.access import AccessItem, check_access
from opay.auth.grant_states import ClientRef, ContinuationRefused, Finish, Grant, Token
from opay.domain.amounts import Asset
from opay.http import consent, signatures, urls, wire
from opay.http.errors import ApiError
from opay.http.resources import canonical_uuid
from opay.http.routing import Prefix
from opay.http.middleware import identify
from opay.http.security import client_key, verify_request_signature
from opay.http.services import Services, read_body, services
from opay.http.wallet_state import INACTIVE, local_wallet
from opay.persistence.wallet_addresses import Jwk


class AccessTokenRequest(msgspec.Struct, frozen=True):
    access: list[AccessItem]


class FinishRequest(msgspec.Struct, frozen=True):
    method: Literal["redirect"]
    uri: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    nonce: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class InteractRequest(msgspec.Struct, frozen=True):
    start: list[str]
    finish: FinishRequest | None = None


class GrantRequest(msgspec.Struct, frozen=True):
    client: str | dict
    access_token: AccessTokenRequest | None = None
    interact: InteractRequest | None = None
    subject: dict | None = None


class ContinueRequest(msgspec.Struct, frozen=True):
    interact_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


class TokenValue(msgspec.Struct, frozen=True):
    value: str


class ContinueView(msgspec.Struct, frozen=True, omit_defaults=True):
    access_token: TokenValue
    uri: str
    wait: int | msgspec.UnsetType = msgspec.UNSET


class AccessTokenView(msgspec.Struct, frozen=True):
    value: str
    manage: str
    expires_in: int
    access: list[AccessItem]


class InteractView(msgspec.Struct, frozen=True):
    redirect: str
    finish: str


class PendingGrantResponse(msgspec.Struct, frozen=True):
    interact: InteractView
    continue_: ContinueView = msgspec.field(name="continue")


class GrantResponse(msgspec.Struct, frozen=True):
    access_token: AccessTokenView
    continue_: ContinueView = msgspec.field(name="continue")


class ContinuePendingResponse(msgspec.Struct, frozen=True):
    continue_: ContinueView = msgspec.field(name="continue")


class RotatedResponse(msgspec.Struct, frozen=True):
    access_token: AccessTokenView


# Continuation refusals: GNAP's codes, with the statuses the spec gives them.
_CONTINUATION_STATUS = {"too_fast": 400, "invalid_continuation": 401, "request_denied": 401}
# A finish URI may be a web page or an app's own scheme, never one that runs or embeds content.
_UNSAFE_SCHEMES = {"javascript", "data", "vbscript", "file", "blob", "about"}

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
    identify(request, client.identity, keyid)


async def _wallet_asset(s: Services, url: str) -> Asset | None:
    """An access item's identifier: the asset of this server's wallet address it names,
    None for any other URL; a deactivated one is refused (400 invalid_request, the only
    400 code the spec gives a grant request for what it asks)."""
    wallet = await local_wallet(s, url)
    if wallet is not None and not wallet.active:
        raise ApiError(
            400, "invalid_request", f"identifier {url} is a deactivated wallet address", {"identifier": url, "reason": INACTIVE}
        )
    return None if wallet is None else wallet.asset


async def _refuse_inactive_client(s: Services, client: ClientRef) -> None:
    """A client named by a deactivated wallet address of this server is not allowed to ask
    (400 invalid_client, GNAP's code for a client the server will not serve), whatever its
    keys: read from Redis here, as the key cache may not know of the deactivation yet."""
    wallet = None if client.walletAddress is None else await local_wallet(s, client.walletAddress)
    if wallet is not None and not wallet.active:
        raise ApiError(
            400,
            "invalid_client",
            "the client's wallet address is deactivated",
            {"walletAddress": client.walletAddress, "reason": INACTIVE},
        )


def _finish(interact: InteractRequest) -> Finish | None:
    if "redirect" not in interact.start:
        raise ApiError(400, "invalid_request", 'interact.start must offer "redirect", the only interaction this server starts')
    if interact.finish is None:
        return None
    uri = interact.finish.uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or parts.scheme.lower() in _UNSAFE_SCHEMES or not (parts.netloc or parts.path):
        raise ApiError(400, "invalid_request", "interact.finish.uri must be an absolute URI the user can be redirected to")
    if any(ord(c) < 0x21 or c in "<>\"\\^`{|}" for c in uri):
        raise ApiError(400, "invalid_request", "interact.finish.uri holds characters a URI may not hold")
    return Finish(method=interact.finish.method, uri=uri, nonce=interact.finish.nonce)


def _continue_view(s: Services, grant: Grant, continue_token: str, wait: bool) -> ContinueView:
    uri = urls.continue_uri(s.settings.public_url, grant.id)
    if wait and grant.interaction is not None:
        return ContinueView(TokenValue(continue_token), uri, grant.interaction.wait_seconds)
    return ContinueView(TokenValue(continue_token), uri)


def _token_view(s: Services, value: str, token: Token) -> AccessTokenView:
    return AccessTokenView(
        value, urls.token_manage(s.settings.public_url, token.id), max(0, (token.expires_at_ms - now_ms()) // 1000), token.access
    )


def _json(body: msgspec.Struct) -> Response:
    return Response(wire.encode(body), media_type="application/json")


def _gnap_token(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme != "GNAP" or not value.strip():
        raise ApiError(401, "invalid_client", "Authorization must be 'GNAP <token>'")
    return value.strip()


async def _grant(s: Services, request: Request, continue_token: str) -> Grant | None:
    # Only an id this server could have issued is looked up: a path names no other key.
    grant_id = canonical_uuid(request.path_params["grant_id"])
    return None if grant_id is None else await s.grants.grant(grant_id, continue_token)


async def request_grant(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    try:
        grant_request = wire.decode_body(body, GrantRequest)
    except ApiError as error:
        raise ApiError(400, "invalid_request", error.description) from None
    client = _client(grant_request.client)
    await _refuse_inactive_client(s, client)
    await _signed_by(request, s, body, client)
    if grant_request.access_token is None:
        raise ApiError(400, "invalid_request", "access_token is required: subject-only grants are not offered")
    interact = grant_request.interact
    if interact is not None and client.jwk is not None:
        raise ApiError(400, "invalid_client", "directed identity (client.jwk) is for non-interactive grants only")
    finish = None if interact is None else _finish(interact)
    access = grant_request.access_token.access
    await check_access(access, interactive=interact is not None, wallet_asset=lambda url: _wallet_asset(s, url))
    if interact is not None:
        pending, continue_token = await s.grants.start(client, access, finish, now_ms())
        assert pending.interaction is not None
        interaction = InteractView(consent.interact_redirect(s, pending), pending.interaction.finish_nonce)
        return _json(PendingGrantResponse(interaction, _continue_view(s, pending, continue_token, wait=True)))
    grant, value, token, continue_token = await s.grants.issue(client, access, now_ms())
    return _json(GrantResponse(_token_view(s, value, token), _continue_view(s, grant, continue_token, wait=False)))


async def continue_grant(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    continue_token = _gnap_token(request)
    grant = await _grant(s, request, continue_token)
    if grant is None:
        raise ApiError(401, "invalid_continuation", "unknown grant or continuation token")
    await _signed_by(request, s, body, grant.client)
    try:
        parsed = wire.decode_body(body, ContinueRequest, allow_empty=True)
    except ApiError as error:
        raise ApiError(400, "invalid_request", error.description) from None
    try:
        outcome = await s.grants.continue_grant(grant.id, continue_token, parsed.interact_ref, now_ms())
    except ContinuationRefused as refused:
        raise ApiError(_CONTINUATION_STATUS[refused.code], refused.code, refused.description) from None
    if outcome.token is None:
        # Still pending: the same continuation token, and how long to wait before the next poll.
        return _json(ContinuePendingResponse(_continue_view(s, outcome.grant, continue_token, wait=True)))
    assert outcome.token_value is not None and outcome.continue_token is not None
    return _json(
        GrantResponse(_token_view(s, outcome.token_value, outcome.token), _continue_view(s, outcome.grant, outcome.continue_token, wait=False))
    )


async def cancel_grant(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    grant = await _grant(s, request, _gnap_token(request))
    if grant is None:
        raise ApiError(401, "invalid_continuation", "unknown grant or continuation token")
    await _signed_by(request, s, body, grant.client)
    if not await s.grants.cancel(grant, _gnap_token(request)):
        # Cancelled or finalized by a concurrent request since it was read.
        raise ApiError(401, "invalid_continuation", "unknown grant or continuation token")
    return Response(status_code=204)


async def _managed_token(request: Request, s: Services, body: bytes) -> tuple[Token, str]:
    value = _gnap_token(request)
    token_id = canonical_uuid(request.path_params["token_id"])
    token = None if token_id is None else await s.grants.token(token_id, value)
    if token is None:
        raise _unknown_token()
    await _signed_by(request, s, body, token.client)
    return token, value


def _unknown_token() -> ApiError:
    # The spec gives /token/{id} one 401 code, invalid_client: the token presented does
    # not authenticate anyone (Rafiki answers the same); invalid_rotation is its 400/404.
    return ApiError(401, "invalid_client", "unknown token or token value")


async def rotate_token(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    token, value = await _managed_token(request, s, body)
    rotated = await s.grants.rotate(token, value, now_ms())
    if rotated is None:
        # A concurrent rotate, revoke or cancel got there first: the chain never forks.
        raise _unknown_token()
    new_value, new_token = rotated
    return _json(RotatedResponse(_token_view(s, new_value, new_token)))


async def revoke_token(request: Request) -> Response:
    s = services(request)
    body = await read_body(request, s.settings.body_max_bytes)
    token, value = await _managed_token(request, s, body)
    if not await s.grants.revoke(token, value):
        raise _unknown_token()
    return Response(status_code=204)


ROUTES = [
    # The authorization server's URL is the grant request's (a Mount does not match its bare prefix).
    Route("/auth", request_grant, methods=["POST"], name="grant-request"),
    Prefix(
        "/auth",
        name="auth",
        routes=[
            # An id of ours takes the first route of each pair; any other, slashes and newlines
            # included, the second, to the same handler, which answers with the spec's codes.
            Route("/continue/{grant_id:canonical_uuid}", continue_grant, methods=["POST"], name="continue"),
            Route("/continue/{grant_id:canonical_uuid}", cancel_grant, methods=["DELETE"], name="cancel"),
            Route("/continue/{grant_id:any}", continue_grant, methods=["POST"], name="continue-any"),
            Route("/continue/{grant_id:any}", cancel_grant, methods=["DELETE"], name="cancel-any"),
            Route("/token/{token_id:canonical_uuid}", rotate_token, methods=["POST"], name="token"),
            Route("/token/{token_id:canonical_uuid}", revoke_token, methods=["DELETE"], name="revoke-token"),
            Route("/token/{token_id:any}", rotate_token, methods=["POST"], name="token-any"),
            Route("/token/{token_id:any}", revoke_token, methods=["DELETE"], name="revoke-token-any"),
            *consent.ROUTES,
        ],
    ),
]
