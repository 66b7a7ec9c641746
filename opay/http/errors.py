"""Every error leaves as {"error": {"code", "description", "details"?}} with the right status."""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from opay.domain.errors import DomainError
from opay.http import pages

log = logging.getLogger("opay.http")

STATUS_OF_KIND = {
    "invalid": 400,
    "conflict": 409,
    "unprocessable": 422,
    "not_found": 404,
    "forbidden": 403,
    "unauthorized": 401,
    "unavailable": 503,
    "internal": 500,  # e.g. a quarantined entity: the server's own data needs the operator
}


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    description: str
    details: dict | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str, details: dict | None = None, headers: dict | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.details = details or {}
        self.headers = headers or {}

    @classmethod
    def of(cls, kind: str, code: str, description: str, details: dict | None = None) -> "ApiError":
        headers = {"Retry-After": "1"} if kind == "unavailable" else None
        return cls(STATUS_OF_KIND[kind], code, description, details, headers)

    @classmethod
    def from_domain(cls, error: DomainError) -> "ApiError":
        return cls.of(error.kind, error.code, error.description, error.details)


def error_response(
    request: Request, status: int, code: str, description: str, details: dict | None = None, headers: dict | None = None
) -> Response:
    """The JSON error every client gets, or for a browser (Accept prefers text/html) its page."""
    if pages.prefers_html(request.headers.get("accept")):
        return pages.error_page(request.app.state.services.settings, status, code, description, headers)
    body = ErrorBody(ErrorDetail(code, description, details or None))
    headers = {**headers, **pages.VARY} if headers else pages.VARY
    return Response(_encoder.encode(body), status_code=status, media_type="application/json", headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.code, exc.description, exc.details, exc.headers)


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return error_response(request, STATUS_OF_KIND[exc.kind], exc.code, exc.description, exc.details)


async def handle_unavailable(request: Request, exc: Exception) -> Response:
    # Redis or a dependency is down: say so, never pretend the input was bad.
    return error_response(request, 503, "unavailable", "a backing service is unavailable; retry shortly", headers={"Retry-After": "1"})


async def handle_not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return error_response(request, 405, "method_not_allowed", "method not allowed for this resource")
    return error_response(request, 404, "not_found", "no such resource")


async def handle_unreadable(request: Request, exc: Exception) -> Response:
    log.error("500 quarantined: %s", exc, exc_info=exc)
    return error_response(request, 500, "quarantined", "a stored resource cannot be read; it is set aside for the operator")


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The line carries the request id (opay/observability/logs.py) and the traceback.
    log.error("500 internal_error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return error_response(request, 500, "internal_error", "an unexpected error occurred; nothing was acknowledged")
