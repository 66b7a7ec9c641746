"""The consent page of an interactive grant, and the user's approve / deny.

`GET {auth}/interact/{grant_id}/{nonce}` shows who asks (the client's wallet address,
and its public name when it is a wallet address of ours), for which wallet address, to
do what, within which limits. The first decision stands. After it the user goes back to
the client's `interact.finish.uri` with `hash` and `interact_ref` (approved) or
`result=grant_rejected` (denied); without a finish URI the page says what happened and
the client learns it by polling.

The client gets this URL too, so holding it decides nothing (see opay/auth/consent.py):
the page offers approve / deny, and they count, only for the user the ASE's login proxy
names in OPAY_CONSENT_USER_HEADER when that user owns the wallet addresses the grant
names. Otherwise the page only shows the request and its POSTs answer 403; the ASE
decides through the operator API, or its own consent app (OPAY_CONSENT_URL) does.
The HTML itself is opay/http/consent_page.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from opay.actors import ids
from opay.auth.consent import may_decide
from opay.auth.grant_states import Decided, Grant, finish_redirect, with_query
from opay.clock import now_ms
from opay.domain.incoming_payment import IncomingPayment
from opay.http import consent_page as page
from opay.http import urls
from opay.http.errors import ApiError
from opay.http.resources import is_local_url, uuid_in_url
from opay.http.services import Services, services
from opay.http.wallet_state import INACTIVE, deactivated_in


def page_url(s: Services, grant: Grant) -> str:
    assert grant.interaction is not None
    return urls.consent_page(s.settings.public_url, grant.id, grant.interaction.nonce)


def consent_app_url(consent_url: str, grant_id: str, nonce: str) -> str:
    """The ASE's consent app for this grant: its URL with grantId and nonce added to any query it has."""
    return with_query(consent_url, {"grantId": grant_id, "nonce": nonce})


def interact_redirect(s: Services, grant: Grant) -> str:
    """Where the client sends its user: the ASE's consent app if configured, else this page."""
    assert grant.interaction is not None
    if s.settings.consent_url:
        return consent_app_url(s.settings.consent_url, grant.id, grant.interaction.nonce)
    return page_url(s, grant)


def _user(request: Request, header: str) -> bytes | None:
    """The login proxy's user, as bytes sent; None if absent, empty or repeated (ambiguous)."""
    values = request.headers.getlist(header)
    return values[0].encode("latin-1") if len(values) == 1 and values[0] else None


def _cross_site(request: Request, s: Services) -> bool:
    """A browser's POST from another site (a form the client planted): the login's cookie
    rides along, so refuse it. Browsers send Origin with every cross-origin POST."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    public = urlsplit(s.settings.public_url)
    return origin != f"{public.scheme}://{public.netloc}"


async def _page_decides(request: Request, s: Services, grant: Grant) -> bool:
    """Whether this request's user may decide `grant` here. Owners are read from Redis,
    not the wallet cache: the operator may have just changed one."""
    if s.settings.consent_url or not s.settings.consent_user_header:
        return False
    user = _user(request, s.settings.consent_user_header)
    if user is None:
        return False
    owners: list[str | None] = []
    for item in grant.access:
        if item.identifier is not None:
            path = s.wallet_path(item.identifier)
            wallet = None if path is None else await s.wallets.get(path)
            owners.append(None if wallet is None else wallet.owner)
    return may_decide(user, owners)


async def _payee(s: Services, receiver: str) -> page.Party:
    """A receiver (an incoming payment's URL) by its wallet address, when both are ours.
    Another server's is shown by its host: showing a page fetches nothing a client named."""
    host = page.party(receiver, None).name
    if not is_local_url(s, receiver):
        return page.Party(host, "a payment request at another provider", receiver)
    payment_uuid = uuid_in_url(s, receiver, urls.INCOMING_PAYMENTS)
    payment = None if payment_uuid is None else await s.queries.entity(ids.INCOMING_PAYMENT(payment_uuid))
    if not isinstance(payment, IncomingPayment):
        return page.Party(host, "a payment request unknown here", receiver)
    wallet = page.party(payment.wallet_address, await s.wallet_by_url(payment.wallet_address))
    return page.Party(wallet.name, f"a payment request of {wallet.address}", receiver)


async def _parties(s: Services, grant: Grant) -> dict[str, page.Party]:
    """Whom the grant names, by URL: the client, the wallet addresses, the payees."""
    named = [grant.client.walletAddress] + [item.identifier for item in grant.access]
    parties = {url: page.party(url, await s.wallet_by_url(url)) for url in dict.fromkeys(named) if url is not None}
    for item in grant.access:
        receiver = (item.limits or {}).get("receiver")
        if isinstance(receiver, str) and receiver not in parties:
            parties[receiver] = await _payee(s, receiver)
    return parties


async def show(request: Request) -> Response:
    s = services(request)
    grant = await s.grants.interactive(request.path_params["grant_id"], request.path_params["nonce"])
    if grant is None:
        return page.not_found(s.settings)
    decides = grant.state == "pending" and await _page_decides(request, s, grant)
    return page.request_page(s.settings, grant, await _parties(s, grant), page_url(s, grant) if decides else None)


async def _decide(request: Request, approve: bool) -> Response:
    s = services(request)
    grant = await s.grants.interactive(request.path_params["grant_id"], request.path_params["nonce"])
    if grant is None:
        return page.not_found(s.settings)
    if _cross_site(request, s) or not await _page_decides(request, s, grant):
        # Whoever holds the link (the client included) is not thereby the wallet's owner.
        return page.not_here(s.settings)
    inactive = await deactivated_in(s, grant) if approve else None
    if inactive is not None:
        return page.wallet_inactive(s.settings, inactive)
    decided = await s.grants.decide(request.path_params["grant_id"], approve, now_ms(), nonce=request.path_params["nonce"])
    if decided is None:
        return page.not_found(s.settings)
    grant = decided.grant
    if not decided.changed:
        return page.already_decided(s.settings, grant.state)
    redirect = finish_redirect(grant, s.settings.auth_server_url)
    if redirect is not None:
        return RedirectResponse(redirect, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    return page.decided(s.settings, grant, await _parties(s, grant))


async def approve(request: Request) -> Response:
    return await _decide(request, approve=True)


async def deny(request: Request) -> Response:
    return await _decide(request, approve=False)


class GrantDecision(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    id: str
    state: str
    interact_ref: str | None = None
    finish_redirect: str | None = None


async def operator_decision(s: Services, grant_id: str, approve: bool) -> GrantDecision:
    """The operator API's approve / deny: the JSON view, 404 for no interactive grant,
    409 when the other decision was made first. The same decision again is a no-op."""
    if approve:
        pending = await s.grants.get(grant_id)
        inactive = None if pending is None or pending.interaction is None else await deactivated_in(s, pending)
        if inactive is not None:
            raise ApiError(409, INACTIVE, f"{inactive} is deactivated: the grant cannot be approved", {"walletAddress": inactive})
    decided: Decided | None = await s.grants.decide(grant_id, approve, now_ms())
    if decided is None or decided.grant.interaction is None:
        raise ApiError(404, "not_found", "no such interactive grant (unknown, expired or cancelled)")
    grant = decided.grant
    if (grant.state == "denied") == approve:
        raise ApiError(409, "grant_decided", f"the grant was already {page.STATE_TEXT.get(grant.state, grant.state)}", {"state": grant.state})
    # finishRedirect: where the ASE's own consent UI sends the user back to the client.
    return GrantDecision(
        id=grant.id,
        state=grant.state,
        interact_ref=grant.interaction.interact_ref,
        finish_redirect=finish_redirect(grant, s.settings.auth_server_url),
    )


# Mounted under /auth by opay/http/gnap.py: named there "auth:consent-page" and so on.
ROUTES = [
    Route("/interact/{grant_id}/{nonce}", show, methods=["GET"], name="consent-page"),
    Route("/interact/{grant_id}/{nonce}/approve", approve, methods=["POST"], name="consent-approve"),
    Route("/interact/{grant_id}/{nonce}/deny", deny, methods=["POST"], name="consent-deny"),
]
