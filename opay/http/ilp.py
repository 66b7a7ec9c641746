"""Synchronous ILP-over-HTTP: `POST /ilp`, a Prepare in the body, a Fulfill or Reject back.

The wire of ilp-plugin-http and of Rafiki's HTTP peering: `Authorization: Bearer <token>`
with a peer's incomingToken (POST /peers on the operator API: its arrivals count to that
peer's received total, in its asset) or a token listed in OPAY_ILP_INCOMING_TOKENS
(counted to no peer, in OPAY_ILP_ASSET_*), any content type (peers send
application/ilp+octet-stream or application/octet-stream), and every ILP outcome,
rejections included, as a 200 with the encoded packet (the plugin treats any other
status as a transport failure). The logic lives in opay.ilp.receiver.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone

import redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors.messages import CreditIncomingPayment, Reply
from opay.domain.amounts import Asset
from opay.domain.incoming_payment import IncomingPayment
from opay.http.errors import ApiError
from opay.http.incoming_payments import entity_id
from opay.http.services import Services, read_body, services
from opay.ilp.packet import IlpPacketType, Reject, decode_packet
from opay.ilp.receiver import Link, ReceiverConfig, StreamReceiver, peer_label
from opay.observability import metrics
from opay.settings import Settings

PATH = "/ilp"
# An ILP packet is at most 32767 bytes of data plus its header and a 1023-byte address.
BODY_MAX_BYTES = 40 * 1024
MEDIA_TYPE = "application/octet-stream"


def incoming_tokens(settings: Settings) -> tuple[str, ...]:
    return tuple(t.strip() for t in settings.ilp_incoming_tokens.split(",") if t.strip())


def presented_token(header: str | None, tokens: tuple[str, ...]) -> str | None:
    """The configured token this Authorization header presents (constant-time compare)."""
    if not header or not tokens:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    found = None
    for token in tokens:  # no early exit: the time taken does not depend on which matched
        if hmac.compare_digest(value.encode(), token.encode()):
            found = token
    return found


def make_receiver(s: Services) -> StreamReceiver:
    async def credit(payment_uuid: str, amount: int, condition: bytes, expires_at_ms: int, timeout: float, peer: str) -> Reply:
        # The same command, entity and rules as an operator credit: one code path.
        command = CreditIncomingPayment(
            entity_id(payment_uuid), amount, "ilp", condition=condition, expires_at_ms=expires_at_ms, peer=peer
        )
        return await s.router.ask_until_known(command, deadline_seconds=timeout)

    async def lookup(payment_uuid: str) -> IncomingPayment | None:
        found = await s.queries.entity(entity_id(payment_uuid))
        return found if isinstance(found, IncomingPayment) else None

    return StreamReceiver(ReceiverConfig.from_settings(s.settings), s.mint, credit=credit, lookup=lookup)


def _receiver(request: Request, s: Services) -> StreamReceiver:
    state = request.app.state
    receiver = getattr(state, "ilp_receiver", None)
    if receiver is None:
        receiver = state.ilp_receiver = make_receiver(s)
    return receiver


async def link_of(header: str | None, s: Services) -> Link | None:
    """The link this Authorization header opens: a token of OPAY_ILP_INCOMING_TOKENS
    (constant-time compare; needs no Redis), else a peer's incomingToken (looked up by its
    digest; a RedisError propagates), else None."""
    token = presented_token(header, incoming_tokens(s.settings))
    if token is not None:
        return Link(peer_label(token))
    scheme, _, value = (header or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    peer = await s.peers.peer_for_incoming_token(value)
    if peer is None:
        return None
    return Link(peer_label(value), peer.name, Asset(peer.asset_code, peer.asset_scale), peer.max_packet_amount)


async def receive(request: Request) -> Response:
    s = services(request)
    try:
        link = await link_of(request.headers.get("authorization"), s)
    except redis.RedisError:
        # The peers cannot be read: an ILP temporary failure the peer retries, as the
        # receiver answers when a credit cannot be stored (never a Fulfill when unsure).
        reject = Reject("T00", s.settings.ilp_address, b"temporarily unable to authenticate the peer; retry")
        metrics.observe_ilp_packet("received", "T00")
        return Response(reject.encode(), status_code=200, media_type=MEDIA_TYPE)
    if link is None:
        raise ApiError(401, "unauthorized", "a valid ILP peer Bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    body = await read_body(request, BODY_MAX_BYTES)
    reply = await _receiver(request, s).handle(body, datetime.now(timezone.utc), link)
    metrics.observe_ilp_packet("received", reply_code(reply))
    return Response(reply, status_code=200, media_type=MEDIA_TYPE)


def reply_code(raw: bytes) -> str:
    """A reply's reject code, "" for a Fulfill (told by its first byte: a Fulfill's data may be large)."""
    if raw[:1] == bytes([IlpPacketType.FULFILL]):
        return ""
    packet = decode_packet(raw)
    return packet.code if isinstance(packet, Reject) else "other"


ROUTES = [Route(PATH, receive, methods=["POST"], name="ilp")]
