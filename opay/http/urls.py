"""Every public URL opay hands out, built in one place from OPAY_PUBLIC_URL.

Never from the request's Host: a resource id, a continue URI or a wallet address URL is
what clients store and compare, so it is the configured public URL, whichever front end
or proxy the request came through. `public_url` has no trailing slash, nor has any URL
built here (the SDK joins strings). The route paths are declared here too, so a route
and the URLs naming it cannot drift apart.
"""

from __future__ import annotations

INCOMING_PAYMENTS = "/incoming-payments"
QUOTES = "/quotes"
OUTGOING_PAYMENTS = "/outgoing-payments"
OUTGOING_PAYMENT_GRANT = "/outgoing-payment-grant"
AUTH = "/auth"
CONTINUE = "/continue"
TOKEN = "/token"
INTERACT = "/interact"
ILP = "/ilp"


def resource_server(public_url: str) -> str:
    return public_url


def auth_server(public_url: str) -> str:
    return public_url + AUTH


def resource(public_url: str, collection: str, resource_id: str) -> str:
    """`collection`: INCOMING_PAYMENTS, QUOTES or OUTGOING_PAYMENTS."""
    return f"{resource_server(public_url)}{collection}/{resource_id}"


def incoming_payment(public_url: str, payment_id: str) -> str:
    return resource(public_url, INCOMING_PAYMENTS, payment_id)


def quote(public_url: str, quote_id: str) -> str:
    return resource(public_url, QUOTES, quote_id)


def outgoing_payment(public_url: str, payment_id: str) -> str:
    return resource(public_url, OUTGOING_PAYMENTS, payment_id)


def resource_id(public_url: str, url: str, collection: str) -> str | None:
    """What follows `{resourceServer}{collection}/` in `url`, or None for any other URL."""
    prefix = f"{resource_server(public_url)}{collection}/"
    return url[len(prefix) :] if url.startswith(prefix) else None


def continue_uri(public_url: str, grant_id: str) -> str:
    return f"{auth_server(public_url)}{CONTINUE}/{grant_id}"


def token_manage(public_url: str, token_id: str) -> str:
    return f"{auth_server(public_url)}{TOKEN}/{token_id}"


def consent_page(public_url: str, grant_id: str, nonce: str) -> str:
    return f"{auth_server(public_url)}{INTERACT}/{grant_id}/{nonce}"


def wallet_address(public_url: str, path: str) -> str:
    return f"{public_url}/{path}"


def wallet_path(public_url: str, url: str) -> str | None:
    """The path of the wallet address `url` names on this server, or None."""
    prefix = public_url + "/"
    return url[len(prefix) :] if url.startswith(prefix) and len(url) > len(prefix) else None
