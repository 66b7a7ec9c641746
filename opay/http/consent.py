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
Plain HTML, every value escaped, no script and no external asset.
"""

from __future__ import annotations

import re
from html import escape
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from opay.auth.access import AccessItem
from opay.auth.consent import may_decide
from opay.auth.grant_states import Decided, Grant, finish_redirect, with_query
from opay.clock import now_ms
from opay.domain.errors import DomainError
from opay.domain.intervals import parse_interval
from opay.domain.times import format_ms
from opay.http.errors import ApiError
from opay.http.services import Services, services

PREFIX = "/auth/interact"

_TYPE_TITLE = {"outgoing-payment": "Send payments", "incoming-payment": "Receive payments", "quote": "Get quotes"}
_ACTION_TEXT = {
    "outgoing-payment": {
        "create": "send payments from this wallet address",
        "read": "see the payments it sent",
        "read-all": "see every payment sent from this wallet address, also by other apps",
        "list": "list the payments it sent",
        "list-all": "list every payment sent from this wallet address, also by other apps",
    },
    "incoming-payment": {
        "create": "request payments into this wallet address",
        "complete": "close the payment requests it made",
        "read": "see the payment requests it made",
        "read-all": "see every payment request of this wallet address, also other apps'",
        "list": "list the payment requests it made",
        "list-all": "list every payment request of this wallet address, also other apps'",
    },
    "quote": {
        "create": "ask for quotes (prices of payments) for this wallet address",
        "read": "see the quotes it asked for",
        "read-all": "see every quote of this wallet address, also other apps'",
    },
}
_DURATION_PART = re.compile(r"(\d+)([YMWDHS])")
_UNIT = {"Y": "year", "M": "month", "W": "week", "D": "day", "H": "hour", "m": "minute", "S": "second"}

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the URL holds the nonce
    "X-Frame-Options": "DENY",  # no clickjacking of the approve button
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}"
    "code{word-break:break-all;background:#f4f4f4;padding:0 .2em}section{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}"
    "dt{font-weight:600}dd{margin:0 0 .5rem 0}.warn{color:#a40000;font-weight:600}"
    "form{display:inline-block;margin-right:1rem}button{font-size:1rem;padding:.5rem 1.5rem}"
)


def page_url(s: Services, grant: Grant) -> str:
    assert grant.interaction is not None
    return f"{s.settings.auth_server_url}/interact/{grant.id}/{grant.interaction.nonce}"


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


def format_amount(value: str, asset_code: str, asset_scale: int) -> str:
    """An amount in the asset's units: "1234" with scale 2 is "12.34 USD"."""
    number = int(value)
    if asset_scale == 0:
        return f"{number:,} {asset_code}"
    whole, fraction = divmod(number, 10**asset_scale)
    return f"{whole:,}.{fraction:0{asset_scale}d} {asset_code}"


def _period_text(duration: str) -> str:
    date, _, time = duration.removeprefix("P").partition("T")
    words = []
    for part, is_time in ((date, False), (time, True)):
        for count, unit in _DURATION_PART.findall(part):
            name = _UNIT["m" if (is_time and unit == "M") else unit]
            words.append(f"{int(count)} {name}{'' if int(count) == 1 else 's'}")
    return ", ".join(words) or duration


def _interval_text(raw: str) -> str:
    try:
        interval = parse_interval(raw)
    except DomainError:
        return raw
    times = "without end" if interval.repetitions is None else f"{interval.repetitions} time{'' if interval.repetitions == 1 else 's'}"
    return f"each period of {_period_text(raw.split('/')[2])}, from {format_ms(interval.start_ms)}, {times}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _not_found() -> HTMLResponse:
    return _page("Not found", "<h1>No such request</h1><p>This authorization request does not exist, has expired or was cancelled.</p>", 404)


async def _client_html(s: Services, grant: Grant) -> tuple[str, str]:
    """(name for the title, HTML describing the client)."""
    url = grant.client.walletAddress or grant.client.identity
    wallet = await s.wallet_by_url(url) if grant.client.walletAddress else None
    if wallet is not None and wallet.public_name:
        return wallet.public_name, f"<strong>{escape(wallet.public_name)}</strong> (wallet address <code>{escape(url)}</code>)"
    note = "" if wallet is not None else " (a wallet address at another provider)"
    return url, f"the app with wallet address <code>{escape(url)}</code>{note}"


async def _limits_html(s: Services, item: AccessItem) -> str:
    limits = item.limits or {}
    rows = []
    per = " in each period" if limits.get("interval") else " in total"
    for field, label in (("debitAmount", "Sent at most"), ("receiveAmount", "Received by the payees at most")):
        amount = limits.get(field)
        if amount:
            text = format_amount(amount["value"], amount["assetCode"], amount["assetScale"])
            rows.append(f"<dt>{label}{per}</dt><dd>{escape(text)}</dd>")
    if not (limits.get("debitAmount") or limits.get("receiveAmount")):
        rows.append('<dt>Amount</dt><dd class="warn">No amount limit: the app may send any amount</dd>')
    if limits.get("receiver"):
        rows.append(f"<dt>Only to</dt><dd><code>{escape(limits['receiver'])}</code></dd>")
    else:
        rows.append("<dt>Payees</dt><dd>anyone</dd>")
    if limits.get("interval"):
        raw = limits["interval"]
        rows.append(f"<dt>Period</dt><dd>{escape(_interval_text(raw))} (<code>{escape(raw)}</code>)</dd>")
    return "<dl>" + "".join(rows) + "</dl>"


async def _item_html(s: Services, item: AccessItem) -> str:
    if item.identifier is not None:
        wallet = await s.wallet_by_url(item.identifier)
        name = f"{escape(wallet.public_name)} " if wallet is not None and wallet.public_name else ""
        where = f"{name}<code>{escape(item.identifier)}</code>"
    else:
        where = "any of your wallet addresses"
    texts = _ACTION_TEXT.get(item.type, {})
    actions = "".join(f"<li>{escape(texts.get(action, action))} <small>({escape(action)})</small></li>" for action in item.actions)
    limits = await _limits_html(s, item) if item.type == "outgoing-payment" else ""
    return f"<section><h2>{escape(_TYPE_TITLE.get(item.type, item.type))}</h2><p>Wallet address: {where}</p><ul>{actions}</ul>{limits}</section>"


_STATE_TEXT = {"approved": "approved", "finalized": "approved", "denied": "denied"}
_PROVIDER_DECIDES = "Your provider will decide on this request: it asks you after you sign in with it."


async def show(request: Request) -> Response:
    s = services(request)
    grant = await s.grants.interactive(request.path_params["grant_id"], request.path_params["nonce"])
    if grant is None:
        return _not_found()
    name, client = await _client_html(s, grant)
    items = "".join([await _item_html(s, item) for item in grant.access])
    if grant.state != "pending":
        decided = f"<p><strong>This request was already {_STATE_TEXT[grant.state]}.</strong></p>"
        return _page(f"Authorize {name}", f"<h1>Authorize {escape(name)}</h1><p>Requested by {client}.</p>{items}{decided}")
    if await _page_decides(request, s, grant):
        url = escape(page_url(s, grant))
        decision = (
            f'<form method="post" action="{url}/approve"><button type="submit" name="decision" value="approve">Approve</button></form>'
            f'<form method="post" action="{url}/deny"><button type="submit" name="decision" value="deny">Deny</button></form>'
        )
    else:
        decision = f"<p><strong>{_PROVIDER_DECIDES}</strong></p>"
    body = f"<h1>Authorize {escape(name)}</h1><p>{client} asks for this access:</p>{items}{decision}"
    return _page(f"Authorize {name}", body)


async def _decide(request: Request, approve: bool) -> Response:
    s = services(request)
    grant = await s.grants.interactive(request.path_params["grant_id"], request.path_params["nonce"])
    if grant is None:
        return _not_found()
    if _cross_site(request, s) or not await _page_decides(request, s, grant):
        # Whoever holds the link (the client included) is not thereby the wallet's owner.
        return _page("Decided by your provider", f"<h1>Not here</h1><p>{_PROVIDER_DECIDES}</p>", 403)
    decided = await s.grants.decide(request.path_params["grant_id"], approve, now_ms(), nonce=request.path_params["nonce"])
    if decided is None:
        return _not_found()
    grant = decided.grant
    if not decided.changed:
        state = _STATE_TEXT.get(grant.state, grant.state)
        return _page("Already decided", f"<h1>Already decided</h1><p>This request was already {escape(state)}; that decision stands.</p>", 409)
    redirect = finish_redirect(grant, s.settings.auth_server_url)
    if redirect is not None:
        return RedirectResponse(redirect, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    if approve:
        return _page("Approved", "<h1>Approved</h1><p>You approved the request. You can return to the app now.</p>")
    return _page("Denied", "<h1>Denied</h1><p>You denied the request. The app gets no access.</p>")


async def approve(request: Request) -> Response:
    return await _decide(request, approve=True)


async def deny(request: Request) -> Response:
    return await _decide(request, approve=False)


async def operator_decision(s: Services, grant_id: str, approve: bool) -> dict:
    """The operator API's approve / deny: the JSON view, 404 for no interactive grant,
    409 when the other decision was made first. The same decision again is a no-op."""
    decided: Decided | None = await s.grants.decide(grant_id, approve, now_ms())
    if decided is None or decided.grant.interaction is None:
        raise ApiError(404, "not_found", "no such interactive grant (unknown, expired or cancelled)")
    grant = decided.grant
    if (grant.state == "denied") == approve:
        raise ApiError(409, "grant_decided", f"the grant was already {_STATE_TEXT.get(grant.state, grant.state)}", {"state": grant.state})
    view: dict = {"id": grant.id, "state": grant.state}
    if grant.interaction.interact_ref is not None:
        view["interactRef"] = grant.interaction.interact_ref
    redirect = finish_redirect(grant, s.settings.auth_server_url)
    if redirect is not None:
        # Where the ASE's own consent UI sends the user back to the client.
        view["finishRedirect"] = redirect
    return view


ROUTES = [
    Route(PREFIX + "/{grant_id}/{nonce}", show, methods=["GET"]),
    Route(PREFIX + "/{grant_id}/{nonce}/approve", approve, methods=["POST"]),
    Route(PREFIX + "/{grant_id}/{nonce}/deny", deny, methods=["POST"]),
]
