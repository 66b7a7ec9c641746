"""The pages a person sees (issue 11, item 7): the consent page in words, and a wallet
address or an error opened in a browser as a small page, while every client asking for
JSON gets the same bytes as before. Pages are read with html.parser, as text a person
sees (attributes apart), against the session's real server.
"""

from __future__ import annotations

import uuid
from html.parser import HTMLParser

import httpx
import pytest

from opay.client import SignedClient
from opay.http.consent_page import interval_text
from opay.http.pages import amount_text, date_text, page, prefers_html
from opay.settings import Settings
from tests.test_interactive_grants import named_client

pytestmark = pytest.mark.anyio

# What Chromium sends when a person opens a URL.
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
JSON_ACCEPTS = [None, "application/json", "*/*", "application/json, text/plain, */*", "text/html, application/json"]
INTERVAL = "R/2026-12-01T00:00:00Z/P1M"
REMOTE_RECEIVER = "https://elsewhere.example/bob/incoming-payments/48884225-b393-4872-90de-1b737e2491c2"


class Page(HTMLParser):
    """A page as a person reads it: its visible text, and its elements with their attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self._hidden = 0
        self.feed(html)
        self.text = " ".join(" ".join(self.chunks).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._hidden += tag in ("style", "title")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("style", "title")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.chunks.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


def headers(accept: str | None) -> dict[str, str]:
    return {} if accept is None else {"accept": accept}


# --- pure: negotiation and words ----------------------------------------------------------


@pytest.mark.parametrize(
    "accept, html",
    [
        (BROWSER, True),
        ("text/html", True),
        ("application/json;q=0.5, text/html", True),
        ("text/html;q=0.9, application/*;q=0.2", True),
        ("text/*", False),  # only a named text/html, as every browser sends it, turns to HTML
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("text/html, application/json", False),  # a tie: the API's own form
        ("text/html;q=0, */*", False),
        ("text/html;q=0.5, application/*", False),
        ("text/html;q=bogus", False),
    ],
)
def test_which_accept_gets_html(accept, html) -> None:
    assert prefers_html(accept) is html


def test_amounts_are_exact_in_major_units() -> None:
    assert amount_text("1234", "USD", 2) == "12.34 USD"
    assert amount_text("5", "USD", 2) == "0.05 USD"
    assert amount_text("7", "JPY", 0) == "7 JPY"
    assert amount_text("18446744073709551615", "XRP", 9) == "18,446,744,073.709551615 XRP"  # no float on the way


def test_dates_and_intervals_are_in_words() -> None:
    assert date_text(1_796_133_900_000) == "1 December 2026, 14:05 UTC"
    assert interval_text(INTERVAL) == "every month from 1 December 2026, 00:00 UTC, without end"
    assert interval_text("R12/2019-08-24T14:15:22Z/P1M") == "every month from 24 August 2019, 14:15 UTC, 12 times (until 24 August 2020, 14:15 UTC)"
    assert interval_text("R1/2026-12-01T00:00:00Z/P1DT12H").startswith("every 1 day and 12 hours from 1 December 2026, 00:00 UTC, once")
    assert interval_text("R/2026-01-01T00:00:00Z/P1Y2M3D").startswith("every 1 year, 2 months and 3 days from")
    # An end past year 9999 is no date to print (nor a reason for a 500).
    assert interval_text("R99999/2026-01-01T00:00:00Z/P1Y") == "every year from 1 January 2026, 00:00 UTC, 99999 times"
    assert interval_text("R999999999999/2026-01-01T00:00:00Z/PT1S").endswith(", 999999999999 times")


def test_the_brand_is_escaped_and_the_logo_shown_only_from_https() -> None:
    brand = Settings(brand_name="Bank <b>&</b>", brand_logo_url='https://cdn.example/logo.svg?a="x"><script>')
    shown = Page(page(brand, "t", "<p>body</p>").body.decode())
    assert "Bank <b>&</b>" in shown.text and not shown.all("b") and not shown.all("script")
    assert [img["src"] for img in shown.all("img")] == ['https://cdn.example/logo.svg?a="x"><script>']
    for url in ("http://cdn.example/logo.svg", "javascript:alert(1)", "data:image/png;base64,AAAA", "https://", ""):
        assert not Page(page(Settings(brand_logo_url=url), "t", "").body.decode()).all("img"), url


# --- a wallet address and errors, both ways -----------------------------------------------


async def test_a_wallet_address_opened_in_a_browser_is_a_page_and_json_stays_json(world) -> None:
    url = world.receiver["id"]
    plain = await world.http.get(url)
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    assert plain.json() == {k: world.receiver[k] for k in ("id", "publicName", "assetCode", "assetScale", "authServer", "resourceServer")}
    for accept in JSON_ACCEPTS:
        answer = await world.http.get(url, headers=headers(accept))
        assert answer.content == plain.content, accept  # byte for byte
        assert answer.headers["content-type"] == "application/json" and answer.headers["vary"] == "Accept"

    html = await world.http.get(url, headers={"accept": BROWSER})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.headers["vary"] == "Accept" and "script-src" not in html.headers["content-security-policy"]
    shown = Page(html.text)
    assert "Alice" in shown.text and world.receiver["assetCode"] in shown.text and "2 decimal places" in shown.text
    assert url in shown.text and "opay" in shown.text  # its address to copy, and the ASE's name
    assert not shown.all("script")
    # jwks.json is no page for people: always JSON.
    assert (await world.http.get(url + "/jwks.json", headers={"accept": BROWSER})).headers["content-type"] == "application/json"


async def error_both_ways(http: httpx.AsyncClient, method: str, url: str, status: int, code: str, **kwargs) -> Page:
    plain = await http.request(method, url, **kwargs)
    assert plain.status_code == status and plain.json()["error"]["code"] == code, plain.text
    for accept in JSON_ACCEPTS:
        answer = await http.request(method, url, headers={**kwargs.get("headers", {}), **headers(accept)})
        assert (answer.status_code, answer.content) == (status, plain.content), accept
        assert answer.headers["content-type"] == "application/json" and answer.headers["vary"] == "Accept"
    html = await http.request(method, url, headers={**kwargs.get("headers", {}), "accept": BROWSER})
    assert html.status_code == status and html.headers["content-type"].startswith("text/html"), html.text
    assert html.headers["vary"] == "Accept"
    shown = Page(html.text)
    assert f"Error {status}" in shown.text and code in shown.text
    assert plain.json()["error"]["description"][1:] in shown.text  # said in words, first letter capitalised
    return shown


async def test_error_pages_404_401_405_in_html_and_the_same_json_otherwise(world) -> None:
    missing = await error_both_ways(world.http, "GET", f"{world.server.public_url}/nobody-{uuid.uuid4().hex}", 404, "not_found")
    assert "Not Found" in missing.text

    unauthorized = await error_both_ways(world.http, "GET", f"{world.server.public_url}/incoming-payments", 401, "missing_token")
    assert "Unauthorized" in unauthorized.text
    browser = await world.http.get(f"{world.server.public_url}/incoming-payments", headers={"accept": BROWSER})
    assert browser.headers["www-authenticate"].startswith("GNAP")  # what a 401 must carry, either way

    not_allowed = await error_both_ways(world.http, "DELETE", world.receiver["id"], 405, "method_not_allowed")
    assert "Method Not Allowed" in not_allowed.text
    browser = await world.http.delete(world.receiver["id"], headers={"accept": BROWSER})
    assert browser.headers["allow"] == "GET, HEAD"

    # The operator port answers the same way (a person may open it in a browser too).
    await error_both_ways(world.http, "GET", f"{world.server.operator_url}/wallet-addresses", 401, "unauthorized")


async def test_a_public_name_with_markup_is_shown_escaped(world) -> None:
    name = "<script>alert(1)</script> & Co"
    wallet = await world.operator.wallet_address(f"x-{uuid.uuid4().hex[:10]}", "USD", 2, name)
    html = (await world.http.get(wallet["id"], headers={"accept": BROWSER})).text
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert name in Page(html).text
    # And as the client on the consent page.
    client = await named_client(world, name)
    pending = await start(world, client, [outgoing_item(world.receiver)])
    html = (await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).text
    assert "<script" not in html and f"Allow {name} to use Alice?" in Page(html).text


# --- the consent page ---------------------------------------------------------------------


def outgoing_item(wallet: dict, limits: dict | None = None) -> dict:
    item = {"type": "outgoing-payment", "actions": ["create", "read"], "identifier": wallet["id"]}
    return {**item, "limits": limits} if limits else item


async def start(world, client: SignedClient, access: list[dict]) -> dict:
    body = {"access_token": {"access": access}, "client": client.wallet_address, "interact": {"start": ["redirect"]}}
    pending = await client.request("POST", world.receiver["authServer"], json=body)
    assert pending.status_code == 200, pending.text
    return pending.json()


async def bobs_invoice(world) -> str:
    """An incoming payment of another of our wallet addresses, the payee of a grant."""
    bob = await world.operator.wallet_address(f"bob-{uuid.uuid4().hex[:10]}", "USD", 2, "Bob's Café")
    token = await world.token()
    created = await world.client.request("POST", f"{world.server.public_url}/incoming-payments", json={"walletAddress": bob["id"]}, token=token)
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def test_the_consent_page_says_what_the_grant_allows_in_words(world) -> None:
    shop = await named_client(world, "Shop App")
    invoice = await bobs_invoice(world)
    limits = {"debitAmount": {"value": "1234", "assetCode": "USD", "assetScale": 2}, "receiver": invoice, "interval": INTERVAL}
    remote = {"receiveAmount": {"value": "500", "assetCode": "EUR", "assetScale": 2}, "receiver": REMOTE_RECEIVER}
    pending = await start(world, shop, [outgoing_item(world.receiver, limits), outgoing_item(world.receiver, remote)])
    answer = await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    # Under "no-referrer" a browser posts the page's own forms with `Origin: null`, which the
    # page refuses as cross-site (seen in Chromium: make browser-test); form-action would
    # block the redirect to the client's finish URI.
    assert answer.headers["referrer-policy"] == "same-origin" and "form-action" not in answer.headers["content-security-policy"]
    shown = Page(answer.text)
    text = shown.text

    assert "opay" in shown.text.split("Allow")[0]  # the ASE's name in the bar above
    assert "Allow Shop App to use Alice? Shop App (" in text and ") asks opay for this access" in text
    # Payees and wallet addresses by name, the remote one by its host: no raw URL to read.
    assert "Only to Bob's Café (a payment request of " in text and "Alice" in text
    assert "Only to elsewhere.example (a payment request at another provider)" in text
    assert "http://" not in text and "https://" not in text, text
    # ...while the exact URL is there for the pointer.
    assert {invoice, REMOTE_RECEIVER, world.receiver["id"], shop.wallet_address} <= {a.get("title") for a in shown.all("strong")}
    assert "12.34 USD in each period" in text and "5.00 EUR in total" in text
    assert "every month from 1 December 2026, 00:00 UTC, without end" in text
    assert "send payments from this wallet address" in text and "see the payments it sent" in text
    assert "Until you take it back." in text and "revoke it in opay's app" in text and "Shop App can also end it itself" in text
    assert "Decide before " in text and " UTC: the request lapses then." in text

    buttons = shown.all("button")
    assert [(b["value"], b["class"]) for b in buttons] == [("approve", "primary"), ("deny", "secondary")]
    assert [f["action"] for f in shown.all("form")] == [pending["interact"]["redirect"] + "/approve", pending["interact"]["redirect"] + "/deny"]
    assert not shown.all("script") and not shown.all("img")  # no logo configured, no script ever


async def test_a_bounded_interval_says_when_sending_ends(world) -> None:
    limits = {"debitAmount": {"value": "100", "assetCode": "USD", "assetScale": 2}, "interval": "R3/2026-12-01T00:00:00Z/P1W"}
    pending = await start(world, world.client, [outgoing_item(world.receiver, limits)])
    text = Page((await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).text).text
    assert "every week from 1 December 2026, 00:00 UTC, 3 times (until 22 December 2026, 00:00 UTC)" in text
    assert "Sending payments ends by itself on 22 December 2026, 00:00 UTC" in text
    assert "Payees anyone" in text


async def test_a_deny_without_a_finish_uri_ends_on_a_page_that_says_so(world) -> None:
    shop = await named_client(world, "Shop App")
    pending = await start(world, shop, [outgoing_item(world.receiver)])
    denied = await world.http.post(pending["interact"]["redirect"] + "/deny", headers=world.owner_headers, follow_redirects=False)
    assert denied.status_code == 200 and denied.headers["content-type"].startswith("text/html")
    text = Page(denied.text).text
    assert text.startswith("opay Denied You denied the request of Shop App"), text
    assert "Shop App gets no access, and nothing was paid." in text and "go back to Shop App" in text
    # The page of the grant now says it was decided, and offers no buttons.
    again = Page((await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).text)
    assert "already denied" in again.text and not again.all("button")


async def test_an_approve_without_a_finish_uri_says_what_was_allowed(world) -> None:
    shop = await named_client(world, "Shop App")
    pending = await start(world, shop, [outgoing_item(world.receiver)])
    approved = await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers, follow_redirects=False)
    assert approved.status_code == 200, approved.text
    text = Page(approved.text).text
    assert "You approved the request of Shop App" in text and "send payments from this wallet address" in text
    assert "No amount limit" in text and "revoke it in opay's app" in text
