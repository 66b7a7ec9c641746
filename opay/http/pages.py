"""The pages a person sees: one stylesheet, the ASE's brand, every value escaped, no script.

The consent page (opay/http/consent_page.py) and the HTML forms of a wallet address and
of an error, for a browser that asks for HTML. Clients that ask for JSON (the Open
Payments SDK sends `Accept: application/json`), send `*/*` or no Accept at all get the
JSON they always got: `prefers_html` is one substring test on their path.
"""

from __future__ import annotations

from html import escape
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

from opay.domain.times import to_datetime
from opay.settings import Settings

if TYPE_CHECKING:  # wire imports errors, which imports this module
    from opay.http.wire import WalletAddressView

# Answers whose form depends on Accept say so, for every cache on the way.
VARY = {"Vary": "Accept"}
# Past this many media ranges the rest of an Accept header is not read.
ACCEPT_RANGES_MAX = 32

_HEADERS = {
    # A consent page's URL holds its nonce: no other site sees it. Not "no-referrer": under
    # it a browser sends `Origin: null` with the page's own POSTs, which the page refuses.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # no clickjacking of the approve button
    # No script, no external asset but the ASE's https logo. No form-action: browsers apply
    # it to the redirect after a decision too, and that goes to the client's finish URI.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src https:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}

STYLE = (
    "*{box-sizing:border-box}"
    "body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d2430;background:#f2f4f7}"
    ".brand{background:#fff;border-bottom:1px solid #dfe3e8}"
    ".brand div{max-width:42rem;margin:0 auto;padding:.8rem 1rem;display:flex;align-items:center;gap:.6rem;font-weight:700;font-size:1.1rem}"
    ".brand img{height:2rem;width:auto}"
    "main{max-width:42rem;margin:1.5rem auto;padding:1.25rem 1.5rem;background:#fff;border:1px solid #dfe3e8;border-radius:10px}"
    "h1{font-size:1.45rem;line-height:1.25;margin:0 0 .6rem}h2{font-size:1.05rem;margin:0 0 .3rem}"
    "p{margin:.5rem 0}ul{margin:.3rem 0;padding-left:1.2rem}"
    "section{border-top:1px solid #e6e9ee;padding:.9rem 0 .4rem}"
    ".muted,small{color:#5b6573}.addr{color:#5b6573;font-size:.88rem;overflow-wrap:anywhere}"
    "dl{display:grid;grid-template-columns:minmax(7rem,max-content) 1fr;gap:.25rem 1rem;margin:.5rem 0}"
    "dt{color:#5b6573}dd{margin:0;min-width:0;overflow-wrap:anywhere}"
    ".warn{color:#a40000;font-weight:600}.note{background:#f6f8fa;border-radius:8px;padding:.6rem .9rem;font-size:.94rem}"
    ".actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:1.25rem}.actions form{margin:0}"
    "button{font:inherit;font-weight:600;padding:.6rem 1.8rem;border-radius:8px;cursor:pointer;border:1px solid #1f5fbf}"
    ".primary{background:#1f5fbf;color:#fff}.secondary{background:#fff;color:#1f5fbf}"
    "code{background:#f2f4f7;padding:0 .25em;border-radius:4px;overflow-wrap:anywhere}"
    # A phone: the card is the screen's width, not a box squeezed inside it.
    "@media (max-width:36rem){main{margin:0;border-width:0 0 1px;border-radius:0;padding:1rem}.brand div{padding:.7rem 1rem}}"
)

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")


def logo_url(settings: Settings) -> str | None:
    """OPAY_BRAND_LOGO_URL if it is an https URL with a host; anything else shows no logo."""
    url = settings.brand_logo_url
    parts = urlsplit(url)
    return url if parts.scheme == "https" and parts.hostname else None


def page(settings: Settings, title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """A whole page: `body` is HTML its caller escaped; the brand bar is added here."""
    logo = logo_url(settings)
    image = f'<img src="{escape(logo)}" alt="">' if logo else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} · {escape(settings.brand_name)}</title><style>{STYLE}</style></head>"
        f'<body><header class="brand"><div>{image}<span>{escape(settings.brand_name)}</span></div></header>'
        f"<main>{body}</main></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers={**_HEADERS, **(headers or {})})


def date_text(instant_ms: int) -> str:
    """An instant in words, to the minute: "1 December 2026, 14:05 UTC"."""
    moment = to_datetime(instant_ms)
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}, {moment:%H:%M} UTC"


def amount_text(value: str, asset_code: str, asset_scale: int) -> str:
    """An amount in major units, exactly (integers only): "1234" at scale 2 is "12.34 USD"."""
    whole, fraction = divmod(int(value), 10**asset_scale)
    return f"{whole:,}.{fraction:0{asset_scale}d} {asset_code}" if asset_scale else f"{whole:,} {asset_code}"


def address_text(url: str) -> str:
    """A URL as a person reads an address: without its scheme."""
    return url.split("://", 1)[1] if "://" in url else url


def _quality(ranges: list[tuple[str, float]], media_type: str) -> float:
    """The q of the most specific range matching `media_type` (RFC 9110 12.5.1); 0: none."""
    family = media_type.split("/", 1)[0] + "/*"
    best, rank = 0.0, -1
    for media, q in ranges:
        found = 2 if media == media_type else 1 if media == family else 0 if media == "*/*" else -1
        if found > rank:
            best, rank = q, found
    return best


def prefers_html(accept: str | None) -> bool:
    """Whether Accept names text/html and ranks it above application/json, as a browser's
    does. A tie, `*/*`, no Accept or a JSON one: JSON, what the API always answered."""
    if accept is None or "text/html" not in accept:  # every JSON client's path: one substring test
        return False
    ranges: list[tuple[str, float]] = []
    for part in accept.lower().split(",", ACCEPT_RANGES_MAX)[:ACCEPT_RANGES_MAX]:
        media, *params = part.split(";")
        q = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((media.strip(), q))
    html = _quality(ranges, "text/html")
    return html > 0 and html > _quality(ranges, "application/json")


def _scale_text(scale: int) -> str:
    return "whole units" if scale == 0 else f"{scale} decimal place{'' if scale == 1 else 's'}"


def wallet_address_page(settings: Settings, view: WalletAddressView) -> HTMLResponse:
    """What a wallet address's URL shows a person: whose it is and what it is for."""
    name = view.public_name or address_text(view.id)
    body = (
        f"<h1>{escape(name)}</h1>"
        f'<p class="addr">{escape(address_text(view.id))}</p>'
        f"<p>An Open Payments wallet address at {escape(settings.brand_name)}. Give it to someone who wants to pay you;"
        " apps use it to send money from it, or to request payments into it.</p>"
        f"<dl><dt>Address</dt><dd><code>{escape(view.id)}</code></dd>"
        f"<dt>Currency</dt><dd>{escape(view.asset_code)} ({_scale_text(view.asset_scale)})</dd>"
        f"<dt>Authorization</dt><dd><code>{escape(view.auth_server)}</code></dd></dl>"
        '<p class="muted">Apps asking for JSON (<code>Accept: application/json</code>) get this wallet address as JSON.</p>'
    )
    return page(settings, name, body, headers=VARY)


def error_page(settings: Settings, status: int, code: str, description: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    """An error as a person reads it: what went wrong, and its status and code for support."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    sentence = description[:1].upper() + description[1:]
    sentence += "" if sentence.endswith((".", "?", "!")) else "."
    body = f'<h1>{escape(title)}</h1><p>{escape(sentence)}</p><p class="muted">Error {status} · <code>{escape(code)}</code></p>'
    return page(settings, title, body, status, {"Cache-Control": "no-store", **(headers or {}), **VARY})
