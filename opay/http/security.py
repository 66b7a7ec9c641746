"""Who is calling and what they may do: HTTP signature, GNAP token, access rights.

Order matters: the token is introspected first (it names the client), the request's
signature is checked against that client's key, and only then are rights matched.
An outage anywhere on that path is 503, never 401.
"""

from __future__ import annotations

import time
from typing import Callable

import msgspec
import redis
from starlette.requests import Request

from opay.auth.access import AccessItem, Permit, permit
from opay.auth.client_keys import ClientKeys, ClientUnusable, KeysUnavailable
from opay.auth.grant_states import ClientRef
from opay.auth.introspection import IntrospectionUnavailable, Introspector
from opay.http import signatures
from opay.http.errors import ApiError
from opay.http.middleware import identify
from opay.persistence.wallet_addresses import Jwk
from opay.settings import Settings


class Principal(msgspec.Struct, frozen=True):
    client: ClientRef
    permit: Permit

    @property
    def scope_client(self) -> str | None:
        """The client whose resources this request may touch; None for all clients."""
        return None if self.permit.all_clients else self.client.identity


class Authenticated(msgspec.Struct, frozen=True):
    client: ClientRef
    access: list[AccessItem]
    grant: str

    def require(self, resource_type: str, action: str, wallet_address: str | None) -> Principal:
        granted = permit(self.access, resource_type, action, wallet_address)
        if granted is None:
            scope = f" for {wallet_address}" if wallet_address else ""
            raise ApiError(403, "insufficient_grant", f"the access token does not grant {resource_type} {action}{scope}")
        return Principal(self.client, granted)


def unauthorized(settings: Settings, code: str, description: str) -> ApiError:
    return ApiError(401, code, description, headers={"WWW-Authenticate": f"GNAP as_uri={settings.auth_server_url}"})


def target_uri(request: Request, public_url: str) -> str:
    """@target-uri as the client signed it: our public origin plus the raw request target."""
    origin = public_url.split("/", 3)
    base = "/".join(origin[:3])
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return base + raw_path.decode("latin-1") + (("?" + query.decode("latin-1")) if query else "")


def bearer_token(request: Request, settings: Settings) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme != "GNAP" or not value.strip():
        raise unauthorized(settings, "invalid_token", "Authorization must be 'GNAP <access token>'")
    return value.strip()


async def verify_request_signature(
    request: Request, body: bytes, settings: Settings, key: Jwk, parsed: signatures.SignatureInput | None = None
) -> None:
    """`parsed`: the request's Signature-Input, when the caller has already parsed it."""
    try:
        signatures.verify(
            method=request.method,
            target_uri=target_uri(request, settings.public_url),
            headers=request.headers,
            body=body,
            public_key_x=key.x,
            signature_input=parsed or signatures.parse_signature_input(request.headers.get("signature-input")),
            now_s=int(time.time()),
            max_age_s=settings.signature_max_age_seconds,
            max_skew_s=settings.signature_max_skew_seconds,
        )
    except signatures.SignatureError as error:
        raise unauthorized(settings, error.code, error.description) from None


async def client_key(
    client: ClientRef, keyid: str, client_keys: ClientKeys, *, unusable: Callable[[], ApiError] | None = None
) -> Jwk | None:
    """The client's key `keyid`. A client whose wallet address cannot give keys is 400
    invalid_client (the authorization server's answer; the error `unusable` makes replaces
    it, keeping the reason: made only then, not on every request); an outage on the way is 503."""
    if client.jwk is not None:
        return client.jwk if client.jwk.kid == keyid else None
    assert client.walletAddress is not None
    try:
        return await client_keys.key(client.walletAddress, keyid)
    except KeysUnavailable:
        raise ApiError.of("unavailable", "keys_unavailable", "the client's keys could not be fetched; retry shortly") from None
    except ClientUnusable as error:
        instead = None if unusable is None else unusable()
        status, code, headers = (400, "invalid_client", None) if instead is None else (instead.status, instead.code, instead.headers)
        raise ApiError(
            status,
            code,
            f"the client's wallet address gives no usable keys: {error.reason}",
            details={"walletAddress": error.wallet_address, "reason": error.reason},
            headers=headers,
        ) from None
    except redis.RedisError:
        raise ApiError.of("unavailable", "unavailable", "storage is unavailable; retry shortly") from None


async def authenticate(
    request: Request,
    body: bytes,
    *,
    settings: Settings,
    introspector: Introspector,
    client_keys: ClientKeys,
    token: str,
) -> Authenticated:
    """The client behind a valid token whose holder signed this request."""
    try:
        answer = await introspector.introspect(token)
    except IntrospectionUnavailable:
        raise ApiError.of("unavailable", "auth_unavailable", "the authorization server is unavailable; retry shortly") from None
    if not answer.active or answer.client is None:
        raise unauthorized(settings, "invalid_token", "the access token is not active")
    try:
        parsed = signatures.parse_signature_input(request.headers.get("signature-input"))
        keyid = parsed.keyid
    except signatures.SignatureError as error:
        raise unauthorized(settings, error.code, error.description) from None
    # The token's client no longer gives usable keys: it cannot prove it holds the token.
    key = await client_key(answer.client, keyid, client_keys, unusable=lambda: unauthorized(settings, "invalid_client", ""))
    if key is None:
        raise unauthorized(settings, "invalid_signature", f"the client has no key {keyid}")
    await verify_request_signature(request, body, settings, key, parsed)
    identify(request, answer.client.identity, keyid)
    assert answer.grant is not None
    return Authenticated(answer.client, answer.access, answer.grant)
