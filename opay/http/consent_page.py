"""The consent page's HTML: what a grant asks, in words a person reads, and the pages that
answer a decision. Every value is escaped; the page has no script (opay/http/pages.py).

Who asks (the client), for which wallet address, to do what, within which limits, until
when, and how to take it back later. Parties are named, not shown as URLs: a wallet
address of ours by its public name, anything else by its host. Who may decide, and what
a decision does, is for opay/http/consent.py and opay/auth/consent.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from urllib.parse import urlsplit

import msgspec
from starlette.responses import HTMLResponse

from opay.auth.access import AccessItem
from opay.auth.grant_states import Grant
from opay.domain.errors import DomainError
from opay.domain.intervals import RepeatingInterval, parse_interval, repetition_start
from opay.http.pages import address_text, amount_text, date_text, page
from opay.persistence.wallet_addresses import WalletAddress
from opay.settings import Settings

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
# A decision's answer holds the nonce in its URL too.
_NO_STORE = {"Cache-Control": "no-store"}

STATE_TEXT = {"approved": "approved", "finalized": "approved", "denied": "denied"}
PROVIDER_DECIDES = "Your provider will decide on this request: it asks you after you sign in with it."


class Party(msgspec.Struct, frozen=True):
    """Someone the page names: `name` to read, `address` in small print beside it, and the
    exact `url` when the pointer rests on the name."""

    name: str
    address: str
    url: str = ""


def party(url: str, wallet: WalletAddress | None) -> Party:
    """A wallet address of ours (`wallet`) by its public name; any other URL by its host."""
    if wallet is not None:
        return Party(wallet.public_name or wallet.path, address_text(url), url)
    return Party(urlsplit(url).netloc or url, address_text(url), url)


def _party_html(who: Party) -> str:
    address = "" if who.address == who.name else f' <span class="addr">({escape(who.address)})</span>'
    title = f' title="{escape(who.url)}"' if who.url else ""
    return f"<strong{title}>{escape(who.name)}</strong>{address}"


def _client(grant: Grant, parties: Mapping[str, Party]) -> Party:
    url = grant.client.walletAddress
    if url is None:  # directed identity: the client is only its key
        return Party("An app without a wallet address", f"key {grant.client.identity}")
    return parties.get(url) or party(url, None)


def _named(url: str, parties: Mapping[str, Party]) -> str:
    return _party_html(parties.get(url) or party(url, None))


def _period_text(duration: str) -> str:
    """"P1M" is "month", "P2W" "2 weeks", "P1DT12H" "1 day and 12 hours"."""
    date, _, time = duration.removeprefix("P").partition("T")
    parts = []
    for text, is_time in ((date, False), (time, True)):
        for count, unit in _DURATION_PART.findall(text):
            parts.append((int(count), _UNIT["m" if (is_time and unit == "M") else unit]))
    if len(parts) == 1 and parts[0][0] == 1:
        return parts[0][1]
    words = [f"{count} {name}{'' if count == 1 else 's'}" for count, name in parts]
    return " and ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " and " + words[-1]


def _interval(raw: str) -> RepeatingInterval | None:
    try:
        return parse_interval(raw)
    except DomainError:  # the grant request was validated: never expected
        return None


def _last_end(interval: RepeatingInterval) -> int | None:
    """When the last of Rn's n periods ends; None for R (no end) and for an end past the
    calendar's year 9999 (a grant may ask R99999/.../P1Y)."""
    if interval.repetitions is None:
        return None
    try:
        end = repetition_start(interval, interval.repetitions)
        date_text(end)
    except (ValueError, OverflowError):
        return None
    return end


def interval_text(raw: str) -> str:
    """"R/2026-12-01T00:00:00Z/P1M" is "every month from 1 December 2026, 00:00 UTC, without end"."""
    interval = _interval(raw)
    if interval is None:
        return raw
    every = f"every {_period_text(raw.split('/')[2])} from {date_text(interval.start_ms)}"
    if interval.repetitions is None:
        return every + ", without end"
    count = interval.repetitions
    end = _last_end(interval)
    return f"{every}, {'once' if count == 1 else f'{count} times'}" + ("" if end is None else f" (until {date_text(end)})")


def _sends_until(grant: Grant) -> int | None:
    """When sending ends by itself: the end of the last period, if every outgoing-payment
    item has a bounded interval (Rn: n periods); None if any may send until revoked."""
    ends = []
    for item in grant.access:
        if item.type != "outgoing-payment":
            continue
        interval = _interval((item.limits or {}).get("interval") or "")
        end = None if interval is None else _last_end(interval)
        if end is None:
            return None
        ends.append(end)
    return max(ends) if ends else None


def _limits_html(item: AccessItem, parties: Mapping[str, Party]) -> str:
    limits = item.limits or {}
    rows = []
    per = " in each period" if limits.get("interval") else " in total"
    for field, label in (("debitAmount", "Sent at most"), ("receiveAmount", "Payees receive at most")):
        amount = limits.get(field)
        if amount:
            rows.append(f"<dt>{label}</dt><dd>{escape(amount_text(amount['value'], amount['assetCode'], amount['assetScale']))}{per}</dd>")
    if not (limits.get("debitAmount") or limits.get("receiveAmount")):
        rows.append('<dt>Amount</dt><dd class="warn">No amount limit: the app may send any amount</dd>')
    receiver = limits.get("receiver")
    rows.append(f"<dt>Only to</dt><dd>{_named(receiver, parties)}</dd>" if receiver else "<dt>Payees</dt><dd>anyone</dd>")
    if limits.get("interval"):
        raw = limits["interval"]
        rows.append(f'<dt>Period</dt><dd title="{escape(raw)}">{escape(interval_text(raw))}</dd>')
    return "<dl>" + "".join(rows) + "</dl>"


def _item_html(item: AccessItem, parties: Mapping[str, Party]) -> str:
    where = _named(item.identifier, parties) if item.identifier is not None else "any of your wallet addresses"
    texts = _ACTION_TEXT.get(item.type, {})
    actions = "".join(f"<li>{escape(texts.get(action, action))}</li>" for action in item.actions)
    limits = _limits_html(item, parties) if item.type == "outgoing-payment" else ""
    title = escape(_TYPE_TITLE.get(item.type, item.type))
    return f"<section><h2>{title}</h2><p>Wallet address: {where}</p><p>The app may:</p><ul>{actions}</ul>{limits}</section>"


def _lasting_html(settings: Settings, grant: Grant, client: Party) -> str:
    """Until when the access lasts, and how to take it back."""
    until = _sends_until(grant)
    ends = "" if until is None else f" Sending payments ends by itself on {date_text(until)}, with the last period."
    revoke = (
        f"To take this access back later, revoke it in {settings.brand_name}'s app, or ask {settings.brand_name} to."
        f" {client.name} can also end it itself at any time."
    )
    return f'<section><h2>How long</h2><p>{escape("Until you take it back." + ends)}</p><p class="note">{escape(revoke)}</p></section>'


def _title(grant: Grant, parties: Mapping[str, Party], client: Party) -> str:
    wallets = {item.identifier for item in grant.access if item.identifier is not None}
    target = (parties.get(next(iter(wallets))) or party(next(iter(wallets)), None)).name if len(wallets) == 1 else "your wallet address"
    return f"Allow {client.name} to use {target}?"


def request_page(settings: Settings, grant: Grant, parties: Mapping[str, Party], decide_url: str | None) -> HTMLResponse:
    """The page of a grant: what it asks, and approve / deny forms posting to
    `decide_url`/approve and /deny (None: the provider decides elsewhere; already decided: neither).
    `parties`: who the URLs the grant names are (see `party`); an absent one is shown by its host."""
    client = _client(grant, parties)
    title = _title(grant, parties, client)
    items = "".join([_item_html(item, parties) for item in grant.access])
    head = f"<h1>{escape(title)}</h1><p>{_party_html(client)} asks {escape(settings.brand_name)} for this access:</p>"
    lasting = _lasting_html(settings, grant, client)
    if grant.state != "pending":
        decided = f"<p><strong>This request was already {STATE_TEXT[grant.state]}.</strong></p>"
        return page(settings, title, head + items + lasting + decided, headers=_NO_STORE)
    if decide_url is not None:
        url = escape(decide_url)
        expires = "" if grant.interaction is None else f'<p class="muted">Decide before {escape(date_text(grant.interaction.expires_at_ms))}: the request lapses then.</p>'
        decision = (
            f'{expires}<div class="actions">'
            f'<form method="post" action="{url}/approve"><button class="primary" type="submit" name="decision" value="approve">Approve</button></form>'
            f'<form method="post" action="{url}/deny"><button class="secondary" type="submit" name="decision" value="deny">Deny</button></form>'
            "</div>"
        )
    else:
        decision = f"<p><strong>{PROVIDER_DECIDES}</strong></p>"
    return page(settings, title, head + items + lasting + decision, headers=_NO_STORE)


def not_found(settings: Settings) -> HTMLResponse:
    body = "<h1>No such request</h1><p>This authorization request does not exist, has expired or was cancelled.</p>"
    return page(settings, "Not found", body, 404, _NO_STORE)


def not_here(settings: Settings) -> HTMLResponse:
    """A decision from someone the page does not let decide."""
    return page(settings, "Decided by your provider", f"<h1>Not here</h1><p>{PROVIDER_DECIDES}</p>", 403, _NO_STORE)


def wallet_inactive(settings: Settings, url: str) -> HTMLResponse:
    """An approval of a request naming a wallet address deactivated since it was made."""
    body = f"<h1>Cannot be approved</h1><p>The wallet address {escape(url)} is deactivated: it takes no new access.</p>"
    return page(settings, "Cannot be approved", body, 409, _NO_STORE)


def already_decided(settings: Settings, state: str) -> HTMLResponse:
    state = STATE_TEXT.get(state, state)
    body = f"<h1>Already decided</h1><p>This request was already {escape(state)}; that decision stands.</p>"
    return page(settings, "Already decided", body, 409, _NO_STORE)


def decided(settings: Settings, grant: Grant, parties: Mapping[str, Party]) -> HTMLResponse:
    """The end of a decision when the client named no page to return to: what happened."""
    client = _client(grant, parties)
    name = escape(client.name)
    back = f"<p>You can close this page and go back to {name}.</p>"
    if grant.state == "denied":
        body = f"<h1>Denied</h1><p>You denied the request of {_party_html(client)}. {name} gets no access, and nothing was paid.</p>{back}"
        return page(settings, "Denied", body, headers=_NO_STORE)
    items = "".join([_item_html(item, parties) for item in grant.access])
    body = f"<h1>Approved</h1><p>You approved the request of {_party_html(client)}. {name} now has this access:</p>{items}"
    return page(settings, "Approved", body + _lasting_html(settings, grant, client) + back, headers=_NO_STORE)
