"""The consent page's HTML: plain, every value escaped, no script and no external asset.

What the page says about a grant (who asks, for which wallet address, to do what, within
which limits) and the few pages that answer a decision. Who may decide, and what a
decision does, is for opay/http/consent.py and opay/auth/consent.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape

from starlette.responses import HTMLResponse

from opay.auth.access import AccessItem
from opay.auth.grant_states import Grant
from opay.domain.errors import DomainError
from opay.domain.intervals import parse_interval
from opay.domain.times import format_ms
from opay.persistence.wallet_addresses import WalletAddress

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


def not_found() -> HTMLResponse:
    return _page("Not found", "<h1>No such request</h1><p>This authorization request does not exist, has expired or was cancelled.</p>", 404)


def _client_html(grant: Grant, wallet: WalletAddress | None) -> tuple[str, str]:
    """(name for the title, HTML describing the client); `wallet`: the client's, if ours."""
    url = grant.client.walletAddress or grant.client.identity
    if wallet is not None and wallet.public_name:
        return wallet.public_name, f"<strong>{escape(wallet.public_name)}</strong> (wallet address <code>{escape(url)}</code>)"
    note = "" if wallet is not None else " (a wallet address at another provider)"
    return url, f"the app with wallet address <code>{escape(url)}</code>{note}"


def _limits_html(item: AccessItem) -> str:
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


def _item_html(item: AccessItem, wallets: Mapping[str, WalletAddress | None]) -> str:
    if item.identifier is not None:
        wallet = wallets.get(item.identifier)
        name = f"{escape(wallet.public_name)} " if wallet is not None and wallet.public_name else ""
        where = f"{name}<code>{escape(item.identifier)}</code>"
    else:
        where = "any of your wallet addresses"
    texts = _ACTION_TEXT.get(item.type, {})
    actions = "".join(f"<li>{escape(texts.get(action, action))} <small>({escape(action)})</small></li>" for action in item.actions)
    limits = _limits_html(item) if item.type == "outgoing-payment" else ""
    return f"<section><h2>{escape(_TYPE_TITLE.get(item.type, item.type))}</h2><p>Wallet address: {where}</p><ul>{actions}</ul>{limits}</section>"


STATE_TEXT = {"approved": "approved", "finalized": "approved", "denied": "denied"}
PROVIDER_DECIDES = "Your provider will decide on this request: it asks you after you sign in with it."


def request_page(
    grant: Grant, client_wallet: WalletAddress | None, wallets: Mapping[str, WalletAddress | None], decide_url: str | None
) -> HTMLResponse:
    """The page of a grant: what it asks, and approve / deny forms posting to
    `decide_url`/approve and /deny (None: the provider decides elsewhere; already decided: neither)."""
    name, client = _client_html(grant, client_wallet)
    items = "".join([_item_html(item, wallets) for item in grant.access])
    if grant.state != "pending":
        decided = f"<p><strong>This request was already {STATE_TEXT[grant.state]}.</strong></p>"
        return _page(f"Authorize {name}", f"<h1>Authorize {escape(name)}</h1><p>Requested by {client}.</p>{items}{decided}")
    if decide_url is not None:
        url = escape(decide_url)
        decision = (
            f'<form method="post" action="{url}/approve"><button type="submit" name="decision" value="approve">Approve</button></form>'
            f'<form method="post" action="{url}/deny"><button type="submit" name="decision" value="deny">Deny</button></form>'
        )
    else:
        decision = f"<p><strong>{PROVIDER_DECIDES}</strong></p>"
    body = f"<h1>Authorize {escape(name)}</h1><p>{client} asks for this access:</p>{items}{decision}"
    return _page(f"Authorize {name}", body)


def not_here() -> HTMLResponse:
    """A decision from someone the page does not let decide."""
    return _page("Decided by your provider", f"<h1>Not here</h1><p>{PROVIDER_DECIDES}</p>", 403)


def already_decided(state: str) -> HTMLResponse:
    state = STATE_TEXT.get(state, state)
    return _page("Already decided", f"<h1>Already decided</h1><p>This request was already {escape(state)}; that decision stands.</p>", 409)


def decided(approve: bool) -> HTMLResponse:
    if approve:
        return _page("Approved", "<h1>Approved</h1><p>You approved the request. You can return to the app now.</p>")
    return _page("Denied", "<h1>Denied</h1><p>You denied the request. The app gets no access.</p>")
