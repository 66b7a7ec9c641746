"""The operator's webhook events: list pending and dead ones, retry a dead one, purge.

The outbox's own rules (opay/outbox/admin.py) make each change atomic with delivery: a
retried event is delivered again at least once, never twice at once by two deliverers;
a pending event is never purged (it is on its way, or dies by itself).
"""

from __future__ import annotations

from typing import get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors.registry import read_event
from opay.clock import now_ms
from opay.domain.times import format_ms
from opay.http.errors import ApiError
from opay.http.operator import _operator
from opay.http.operator_pages import page_info, parse_list_query
from opay.http.pagination import PageInfo
from opay.http.resources import canonical_uuid, json
from opay.http.routing import Prefix
from opay.outbox.admin import Status, Stored
from opay.outbox.render import render

STATUSES = get_args(Status)


class WebhookEventView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    id: str
    status: Status
    attempts: int  # counted since it was queued, or last retried
    due_at: str | None = None  # pending: when a deliverer takes it next (a running attempt's lease end)
    died_at: str | None = None
    last_error: str | None = None
    # The body as it is POSTed; null when the stored event cannot be rendered (it died of that).
    event: msgspec.Raw | None = None


class WebhookEventList(msgspec.Struct, frozen=True):
    pagination: PageInfo
    result: list[WebhookEventView]


class Purged(msgspec.Struct, frozen=True):
    purged: int


def view(stored: Stored, public_url: str) -> WebhookEventView:
    try:
        assert stored.body is not None
        body: msgspec.Raw | None = msgspec.Raw(render(*read_event(stored.body), public_url))
    except Exception:  # a poison event: the deliverer buried it for this very reason
        body = None
    at = format_ms(stored.at_ms)
    return WebhookEventView(
        id=stored.id,
        status=stored.status,
        attempts=stored.attempts,
        due_at=at if stored.status == "pending" else None,
        died_at=at if stored.status == "dead" else None,
        last_error=stored.last_error,
        event=body,
    )


def _status(request: Request) -> Status:
    status = request.query_params.get("status")
    if status not in STATUSES:
        raise ApiError(400, "invalid_request", f"status is required: one of {', '.join(STATUSES)}")
    return status  # type: ignore[return-value]


def _event_id(request: Request) -> str:
    found = canonical_uuid(request.path_params["event_id"])
    if found is None:
        raise ApiError(404, "not_found", "no such webhook event")
    return found


def _not_dead() -> ApiError:
    return ApiError(409, "not_dead", "the event is pending: it is delivered, or dies, by itself; only dead events are retried or purged")


async def list_events(request: Request) -> Response:
    s = _operator(request)
    status = _status(request)
    query = parse_list_query(request, s.settings.list_page_default)
    page = await s.webhook_events.listed(status, query.cursor, query.direction, query.count)
    return json(200, WebhookEventList(page_info(page), [view(event, s.settings.public_url) for event in page.items]))


async def purge_dead(request: Request) -> Response:
    """DELETE /webhook-events?status=dead: every dead event (the status is required, so a
    bare DELETE of the collection removes nothing)."""
    s = _operator(request)
    if request.query_params.get("status") != "dead":
        raise ApiError(400, "invalid_request", "a purge takes status=dead: only dead events are purged")
    return json(200, Purged(await s.webhook_events.purge_dead()))


async def get_event(request: Request) -> Response:
    s = _operator(request)
    stored = await s.webhook_events.get(_event_id(request))
    if stored is None:
        raise ApiError(404, "not_found", "no such webhook event")
    return json(200, view(stored, s.settings.public_url))


async def retry_event(request: Request) -> Response:
    """A dead event back in the queue at once, its attempts from zero: 200 with it as queued."""
    s = _operator(request)
    event_id = _event_id(request)
    stored = await s.webhook_events.get(event_id)
    if stored is None:
        raise ApiError(404, "not_found", "no such webhook event")
    if stored.status != "dead":
        raise _not_dead()
    now = now_ms()
    outcome = await s.webhook_events.retry(event_id, now)
    if outcome == "pending":
        raise _not_dead()
    if outcome == "absent":  # purged, or a late attempt delivered it, since it was read
        raise ApiError(404, "not_found", "no such webhook event")
    return json(200, view(msgspec.structs.replace(stored, status="pending", at_ms=now, attempts=0), s.settings.public_url))


async def purge_event(request: Request) -> Response:
    s = _operator(request)
    outcome = await s.webhook_events.purge(_event_id(request))
    if outcome == "pending":
        raise _not_dead()
    if outcome == "absent":
        raise ApiError(404, "not_found", "no such webhook event")
    return Response(status_code=204)


ROUTES = [
    Route("/webhook-events", list_events, methods=["GET"], name="webhook-events"),
    Route("/webhook-events", purge_dead, methods=["DELETE"], name="purge-webhook-events"),
    Prefix(
        "/webhook-events",
        name="webhook-event",
        routes=[
            Route("/{event_id}", get_event, methods=["GET"], name="get"),
            Route("/{event_id}", purge_event, methods=["DELETE"], name="purge"),
            Route("/{event_id}/retry", retry_event, methods=["POST"], name="retry"),
        ],
    ),
]
