"""What every resource-server route shares: authentication, ids in paths, visibility."""

from __future__ import annotations

import os
import re
from typing import Callable, Generic, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from opay.actors import ids
from opay.domain.incoming_payment import IncomingPayment
from opay.http import urls, wire
from opay.http.errors import ApiError
from opay.http.routing import CanonicalUuid
from opay.http.security import Authenticated, Principal, authenticate, bearer_token, unauthorized
from opay.http.services import Services, read_body, services

T = TypeVar("T")
B = TypeVar("B")


def json(status: int, body: object) -> Response:
    return Response(wire.encode(body), status_code=status, media_type="application/json")


async def authenticated(request: Request, s: Services, body: bytes) -> Authenticated:
    token = bearer_token(request, s.settings)
    if token is None:
        raise unauthorized(s.settings, "missing_token", "an access token is required")
    return await authenticate(
        request, body, settings=s.settings, introspector=s.introspector, client_keys=s.client_keys, token=token
    )


_CANONICAL_UUID = re.compile(CanonicalUuid.regex)


def canonical_uuid(raw: str) -> str | None:
    """`raw` if it is a UUID as this server writes them (what str(uuid.UUID(raw)) == raw
    decides, without building one)."""
    return raw if _CANONICAL_UUID.fullmatch(raw) else None


def random_uuid() -> str:
    """A new random (version 4) UUID, canonical: str(uuid.uuid4()) at half its cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def path_uuid(request: Request, what: str) -> str:
    found = canonical_uuid(request.path_params["resource_id"])
    if found is None:
        raise ApiError(404, "not_found", f"no such {what}")
    return found


def uuid_in_url(s: Services, url: str, collection: str) -> str | None:
    """The id of one of this server's resources from its URL, or None for any other URL.
    `collection`: the route name of its collection, "incoming-payments" or "quotes"."""
    found = urls.resource_id(s.settings.public_url, url, collection)
    return None if found is None else canonical_uuid(found)


def visible(authenticated: Authenticated, resource_type: str, action: str, wallet_address: str, client: str | None) -> bool:
    """Another wallet address's or another client's resource is as good as absent."""
    try:
        principal = authenticated.require(resource_type, action, wallet_address)
    except ApiError:
        return False
    return principal.scope_client is None or principal.scope_client == client


def is_local_url(s: Services, url: str) -> bool:
    """Whether `url` is under this server's OPAY_PUBLIC_URL (else: another server's)."""
    return url.startswith(urls.resource_server(s.settings.public_url) + "/")


async def local_incoming_payment(s: Services, url: str) -> IncomingPayment:
    """A receiver on this server; any other URL is refused (`unsupported_receiver`): a
    caller that takes receivers on other servers resolves those (opay/remote/receivers.py)."""
    if not url.startswith(("http://", "https://")) or "/incoming-payments/" not in url:
        raise ApiError(400, "invalid_receiver", "the receiver must be an incoming payment URL")
    if not is_local_url(s, url):
        raise ApiError(400, "unsupported_receiver", "paying incoming payments on other servers is not supported here")
    payment_uuid = uuid_in_url(s, url, "incoming-payments")
    payment = None if payment_uuid is None else await s.queries.entity(ids.INCOMING_PAYMENT(payment_uuid))
    if not isinstance(payment, IncomingPayment):
        raise ApiError(400, "invalid_receiver", "no such incoming payment")
    return payment


class CreateRequest(msgspec.Struct, Generic[B], frozen=True):
    """A create, checked in the order every create checks it: the body's size, the
    signature and token, the body's shape, its metadata, then the token's access."""

    s: Services
    caller: Authenticated
    body: B
    principal: Principal
    metadata: bytes | None


async def create_request(request: Request, resource_type: str, body_type: type[B]) -> CreateRequest[B]:
    s = services(request)
    raw = await read_body(request, s.settings.body_max_bytes)
    caller = await authenticated(request, s, raw)
    body = wire.decode_body(raw, body_type)
    sent = getattr(body, "metadata", None)
    metadata = None if sent is None else wire.metadata_json(sent, s.settings.metadata_max_bytes)
    principal = caller.require(resource_type, "create", body.walletAddress)  # type: ignore[attr-defined]
    return CreateRequest(s, caller, body, principal, metadata)


async def readable(request: Request, s: Services, resource_type: str, what: str, entity_id: Callable[[str], str], state_type: type[T]) -> T:
    """The resource a GET names, if the caller may read it; else 404 `no such {what}`,
    the same whether it is absent or someone else's."""
    caller = await authenticated(request, s, b"")
    caller.require(resource_type, "read", None)
    found = await s.queries.entity(entity_id(path_uuid(request, what)))
    if not isinstance(found, state_type) or not visible(caller, resource_type, "read", found.wallet_address, found.client):  # type: ignore[attr-defined]
        raise ApiError(404, "not_found", f"no such {what}")
    return found
