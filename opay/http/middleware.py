"""Around each of the two apps: a request id, one log line and the metrics per request.

A pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream per
request). It sits outside the Starlette app, so a 500 from the app's error handler passes
through it like any other answer. The route is the matched route's full template
(`/incoming-payments/{resource_id}`), never the raw path: paths hold ids and anything a
client sends, templates are few. Authentication leaves who called in the request's state
(`identify`), so the line can say it.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opay.observability import metrics
from opay.observability.logs import REQUEST_ID

log = logging.getLogger("opay.http")

HEADER = b"x-request-id"
# An incoming id is kept when it is 1..128 visible ASCII characters, else replaced.
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
UNMATCHED = "unmatched"  # the route of a request no route took (a 404 of the router)
_CONVERTOR = re.compile(r"\{([^}:]+):[^}]*\}")


def identify(request: Request, client: str, key_id: str | None = None) -> None:
    """Who this request is from, once authenticated: a client's identity (its wallet
    address, or jwk:<thumbprint>) and the key it signed with, or "operator"."""
    request.state.client = client
    if key_id is not None:
        request.state.key_id = key_id


def templates(routes: list[BaseRoute], prefix: str = "") -> dict[int, str]:
    """id(route) -> its full path template, mounted routes included, convertors dropped
    (the canonical-id route and its `{id:any}` fallback are one route to a reader)."""
    found: dict[int, str] = {}
    for route in routes:
        if isinstance(route, Mount):
            found.update(templates(route.routes, prefix + route.path))
        elif isinstance(route, Route):
            found[id(route)] = _CONVERTOR.sub(r"{\1}", prefix + route.path)
    return found


class RequestLog:
    def __init__(self, app: ASGIApp, *, server: str, routes: list[BaseRoute]) -> None:
        self.app = app
        self.server = server
        self._templates = templates(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_id(scope) or os.urandom(16).hex()  # uuid4().hex's shape, at a third of its cost
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        header = (HEADER, request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette re-raises what its error handler answered (logged there, with its
            # traceback): once answered, it is not raised again for the server to log twice.
            if not status:
                status = 500
                raise
        finally:
            seconds = time.perf_counter() - started
            route = self._templates.get(id(scope.get("route")), UNMATCHED)
            method = scope["method"]
            fields = {
                "server": self.server,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "client": state.get("client"),
            }
            if "key_id" in state:
                fields["key_id"] = state["key_id"]
            if log.isEnabledFor(logging.INFO):
                # The record made here rather than by log.info, which walks the stack for a
                # caller (findCaller) and runs Ray's record factory: a third of the line's cost.
                record = logging.LogRecord(log.name, logging.INFO, __file__, 0, "request", None, None)
                record.fields = fields
                log.handle(record)
            metrics.observe_request(self.server, method, route, status, seconds)
            REQUEST_ID.reset(token)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return value.decode() if _SANE_ID.fullmatch(value) else None
    return None
