"""The two Starlette apps: the public server (Open Payments, GNAP, wallet addresses) and the operator API."""

from __future__ import annotations

import redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from opay.domain.errors import DomainError
from opay.http import errors, gnap, ilp, incoming_payments, operator, outgoing_payments, peers, quotes, wallet_addresses
from opay.http import metrics
from opay.http import operator_invoices, operator_resources
from opay.http import operator_grants, operator_openapi, operator_webhooks
from opay.http import health
from opay.http.middleware import RequestLog
from opay.http.services import Services
from opay.persistence.queries import Unreadable


def _exception_handlers() -> dict:
    return {
        errors.ApiError: errors.handle_api_error,
        DomainError: errors.handle_domain_error,
        # Any Redis failure, a ResponseError such as OOM included, is an outage: 503.
        redis.RedisError: errors.handle_unavailable,
        Unreadable: errors.handle_unreadable,
        HTTPException: errors.handle_not_found,
        Exception: errors.handle_unexpected,
    }


# Every route is named: URLs are built from these tables (http/urls.py). Wallet addresses
# come last: their catch-all path must not shadow the API routes.
PUBLIC_ROUTES = [*incoming_payments.ROUTES, *quotes.ROUTES, *outgoing_payments.ROUTES, *gnap.ROUTES, *ilp.ROUTES, *wallet_addresses.ROUTES]
OPERATOR_ROUTES = [*health.ROUTES, *operator.ROUTES, *peers.ROUTES, *operator_resources.ROUTES, *operator_invoices.ROUTES, *metrics.ROUTES, *operator_grants.ROUTES, *operator_webhooks.ROUTES, *operator_openapi.ROUTES]


def public_app(services: Services) -> ASGIApp:
    app = Starlette(routes=PUBLIC_ROUTES, exception_handlers=_exception_handlers())
    app.state.services = services
    return RequestLog(app, server="public", routes=PUBLIC_ROUTES)


def operator_app(services: Services) -> ASGIApp:
    app = Starlette(routes=OPERATOR_ROUTES, exception_handlers=_exception_handlers())
    app.state.services = services
    return RequestLog(app, server="operator", routes=OPERATOR_ROUTES)
