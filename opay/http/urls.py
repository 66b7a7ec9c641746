"""Every public URL opay hands out, built in one place from OPAY_PUBLIC_URL.

Never from the request's Host: a resource id, a continue URI or a wallet address URL is
what clients store and compare, so it is the configured public URL, whichever front end
or proxy the request came through. `public_url` has no trailing slash, nor has any URL
built here (the SDK joins strings). The paths are the public app's named routes
(`url_path_for`), so a route and the URLs naming it cannot drift apart: a route's path
is written once, in its ROUTES list.
"""

from __future__ import annotations

from functools import cache

from starlette.routing import Router

# The route names URLs are built from. Collections name their list (or create) route.
INCOMING_PAYMENTS = "incoming-payments"
QUOTES = "quotes"
OUTGOING_PAYMENTS = "outgoing-payments"


@cache
def _public_router() -> Router:
    # The routes' modules import this one: their table is read on first use, not at import.
    from opay.http.app import PUBLIC_ROUTES

    return Router(routes=PUBLIC_ROUTES)


def path(name: str, **params: str) -> str:
    """The path of the public route `name` (a mounted one as "mount:route") with `params`."""
    return str(_public_router().url_path_for(name, **params))


def resource_server(public_url: str) -> str:
    return public_url


def auth_server(public_url: str) -> str:
    return public_url + path("grant-request")


def incoming_payment(public_url: str, payment_id: str) -> str:
    return resource_server(public_url) + path("incoming-payment", resource_id=payment_id)


def quote(public_url: str, quote_id: str) -> str:
    return resource_server(public_url) + path("quote", resource_id=quote_id)


def outgoing_payment(public_url: str, payment_id: str) -> str:
    return resource_server(public_url) + path("outgoing-payment", resource_id=payment_id)


def resource_id(public_url: str, url: str, collection: str) -> str | None:
    """What follows `{resourceServer}{collection's path}/` in `url`, or None for any other URL.
    `collection`: INCOMING_PAYMENTS, QUOTES or OUTGOING_PAYMENTS."""
    prefix = f"{resource_server(public_url)}{path(collection)}/"
    return url[len(prefix) :] if url.startswith(prefix) else None


def continue_uri(public_url: str, grant_id: str) -> str:
    return public_url + path("auth:continue", grant_id=grant_id)


def token_manage(public_url: str, token_id: str) -> str:
    return public_url + path("auth:token", token_id=token_id)


def consent_page(public_url: str, grant_id: str, nonce: str) -> str:
    return public_url + path("auth:consent-page", grant_id=grant_id, nonce=nonce)


def wallet_address(public_url: str, wallet_path: str) -> str:
    return public_url + path("wallet-address", path=wallet_path)


def wallet_path(public_url: str, url: str) -> str | None:
    """The path of the wallet address `url` names on this server, or None."""
    prefix = public_url + "/"
    return url[len(prefix) :] if url.startswith(prefix) and len(url) > len(prefix) else None
