"""The operator API's ILP peers: POST /peers, GET /peers, GET /peers/{name}, DELETE /peers/{name}.

A peer's `url` is vetted at POST time by the fetch policy that governs every URL opay
contacts (opay/net/fetch.py: https, no private or loopback targets unless allowed, never
one of this server's own listeners); the sender vets it again when it sends, since a
name may resolve elsewhere later. Neither token is ever shown back. Each peer's view
carries the exact totals sent to and received from it (opay/ilp/peers.py): what the ASE
settles with that peer outside opay.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.clock import now_ms
from opay.domain.amounts import Asset
from opay.domain.times import format_ms
from opay.http import operator, wire
from opay.http.errors import ApiError
from opay.http.ilp import incoming_tokens
from opay.http.resources import json
from opay.http.services import read_body
from opay.ilp.peers import NAME, InvalidPeer, Peer, Totals, parse_peer, token_digest
from opay.net.fetch import FetchPolicy, FetchRefused, FetchUnavailable


def view(peer: Peer, totals: Totals) -> dict:
    asset = Asset(peer.asset_code, peer.asset_scale)
    body: dict = {
        "name": peer.name,
        "url": peer.url,
        "assetCode": peer.asset_code,
        "assetScale": peer.asset_scale,
        "routes": list(peer.routes),
    }
    if peer.max_packet_amount is not None:
        body["maxPacketAmount"] = str(peer.max_packet_amount)
    body["createdAt"] = format_ms(peer.created_at_ms)
    # Totals are exact decimal strings of any size (a total of uint64 amounts may pass 2^64).
    body["sentAmount"] = msgspec.to_builtins(wire.amount(totals.sent, asset))
    body["receivedAmount"] = msgspec.to_builtins(wire.amount(totals.received, asset))
    return body


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_peer", message, {"field": field})


async def create_peer(request: Request) -> Response:
    s = operator._operator(request)
    raw = await read_body(request, s.settings.body_max_bytes)
    if not raw.strip():
        raise ApiError(400, "invalid_request", "a JSON body is required")
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    try:
        peer, incoming_token = parse_peer(body, now_ms=now_ms())
    except InvalidPeer as error:
        raise _invalid(error.field, error.message) from None
    try:
        await FetchPolicy.from_settings(s.settings).vet(peer.url)  # rare: built per request
    except FetchRefused as error:
        raise _invalid("url", f"opay would not send to this url: {error.reason}") from None
    except FetchUnavailable as error:
        raise ApiError(503, "peer_url_unverifiable", f"the url could not be checked now: {error.reason}", headers={"Retry-After": "1"}) from None
    configured = {token_digest(token) for token in incoming_tokens(s.settings)}
    if peer.incoming_token_digest in configured:
        raise ApiError(409, "exists", "incomingToken is one of OPAY_ILP_INCOMING_TOKENS", {"field": "incomingToken"})
    if incoming_token == peer.outgoing_token:
        raise _invalid("incomingToken", "incomingToken and outgoingToken must differ")
    outcome = await s.peers.create(peer)
    if outcome == "name":
        raise ApiError(409, "exists", f"peer {peer.name} exists", {"field": "name"})
    if outcome == "token":
        raise ApiError(409, "exists", "another peer has this incomingToken", {"field": "incomingToken"})
    if outcome != "ok":
        raise ApiError(409, "too_many_peers", "the number of peers is at its limit; delete one first")
    totals = (await s.peers.totals([peer.name]))[peer.name]
    return json(201, view(peer, totals))


async def list_peers(request: Request) -> Response:
    s = operator._operator(request)
    peers = await s.peers.load()
    totals = await s.peers.totals([peer.name for peer in peers])
    return json(200, {"result": [view(peer, totals[peer.name]) for peer in peers]})


def _name(request: Request) -> str:
    name = request.path_params["name"]
    if NAME.fullmatch(name) is None:
        raise ApiError(404, "not_found", "no such peer")
    return name


async def get_peer(request: Request) -> Response:
    s = operator._operator(request)
    peer = await s.peers.get(_name(request))
    if peer is None:
        raise ApiError(404, "not_found", "no such peer")
    return json(200, view(peer, (await s.peers.totals([peer.name]))[peer.name]))


async def delete_peer(request: Request) -> Response:
    """Gone at once on every front end (its token is refused from the 204 on); its totals stay."""
    s = operator._operator(request)
    if not await s.peers.delete(_name(request)):
        raise ApiError(404, "not_found", "no such peer")
    return Response(status_code=204)


ROUTES = [
    Route("/peers", create_peer, methods=["POST"], name="peers.create"),
    Route("/peers", list_peers, methods=["GET"], name="peers.list"),
    Route("/peers/{name}", get_peer, methods=["GET"], name="peers.get"),
    Route("/peers/{name}", delete_peer, methods=["DELETE"], name="peers.delete"),
]
