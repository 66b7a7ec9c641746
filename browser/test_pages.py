"""The pages a person sees, in a real headless Chromium against a real opay server
(issue 11, item 7). Run by `make browser-test` only: it needs Debian's chromium, which
that target installs; `make test` never collects this folder.

The browser goes through what a person does: the consent page behind the ASE's login
proxy (its header set by the browser, as the proxy would add it), a click on Approve
and back to the app's finish page, a Deny that ends on opay's own page, a wallet address
and a missing page. Every page is saved as a screenshot under var/screenshots/.
"""

from __future__ import annotations

import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from chromium import Chromium

from tests.conftest import World, make_world
from tests.support import CONSENT_USER_HEADER, OpayServer, free_port
from tests.test_interactive_grants import expected_hash, named_client
from tests.test_pages import bobs_invoice, outgoing_item

pytestmark = pytest.mark.anyio

SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
LOGO_URL = "https://bank.example/logo.svg"  # no such host here: the browser test answers it
BRAND = {"OPAY_BRAND_NAME": "Example Bank", "OPAY_BRAND_LOGO_URL": LOGO_URL}
LOGO = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
    b'<rect width="64" height="64" rx="14" fill="#1f5fbf"/>'
    b'<text x="32" y="42" font-family="sans-serif" font-size="28" font-weight="700" fill="#fff" text-anchor="middle">EB</text></svg>'
)
LIMITS = {"debitAmount": {"value": "2500", "assetCode": "USD", "assetScale": 2}, "interval": "R/2026-12-01T00:00:00Z/P1M"}
DESKTOP, PHONE = (1000, 800), (390, 800)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpayServer]:
    process = OpayServer(Path(tmp_path_factory.mktemp("opay")), extra_env=BRAND)
    process.start()
    yield process
    process.stop()


class _AppPage(BaseHTTPRequestHandler):
    """The client app's finish page: where the user lands after approving."""

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        said = "".join(f"<dt>{escape(k)}</dt><dd><code>{escape(v[0])}</code></dd>" for k, v in sorted(query.items()))
        body = f"<!doctype html><meta charset=utf-8><title>Shop App</title><h1>Back at Shop App</h1><dl>{said}</dl>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def client_app() -> Iterator[str]:
    app = ThreadingHTTPServer(("127.0.0.1", free_port()), _AppPage)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{app.server_address[1]}"
    app.shutdown()
    app.server_close()


@pytest.fixture
async def world(server: OpayServer):
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(server, http)


@pytest.fixture
async def browser(tmp_path: Path, world: World):
    """A fresh Chromium logged in as the receiver's owner (the login proxy's header), with the logo host answered."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with Chromium(tmp_path / "profile", tmp_path / "chromium.log") as page:
        await page.viewport(*DESKTOP)
        await page.extra_headers({CONSENT_USER_HEADER: world.receiver["owner"]})
        await page.serve(LOGO_URL, "image/svg+xml", LOGO)
        yield page


async def text_of(page: Chromium) -> str:
    """The page's text as rendered, one line per block."""
    return "\n".join(line for line in (await page.evaluate("document.body.innerText")).splitlines() if line.strip())


async def start(world: World, client, access: list[dict], finish: dict | None = None) -> dict:
    interact: dict = {"start": ["redirect"], **({"finish": finish} if finish else {})}
    body = {"access_token": {"access": access}, "client": client.wallet_address, "interact": interact}
    pending = await client.request("POST", world.receiver["authServer"], json=body)
    assert pending.status_code == 200, pending.text
    return pending.json()


async def test_approve_in_the_browser_and_back_to_the_app(world, browser, client_app) -> None:
    shop = await named_client(world, "Shop App")
    invoice = await bobs_invoice(world)
    finish = {"method": "redirect", "uri": f"{client_app}/callback?state=xyz", "nonce": uuid.uuid4().hex}
    access = [outgoing_item(world.receiver, {**LIMITS, "receiver": invoice}), {"type": "quote", "actions": ["create", "read"]}]
    pending = await start(world, shop, access, finish)

    response = await browser.open(pending["interact"]["redirect"])
    assert response["status"] == 200 and response["mimeType"] == "text/html"
    text = await text_of(browser)
    assert text.startswith("Example Bank\nAllow Shop App to use Alice?"), text
    assert "25.00 USD in each period" in text and "Bob's Café" in text and "every month from 1 December 2026, 00:00 UTC" in text
    assert await browser.evaluate("document.querySelector('.brand img').naturalWidth") == 64  # the logo, shown
    await browser.screenshot(SHOTS / "consent.png")
    await browser.viewport(*PHONE, mobile=True)
    await browser.screenshot(SHOTS / "consent-phone.png")
    assert await browser.evaluate("document.documentElement.scrollWidth") <= PHONE[0]  # nothing wider than a phone
    await browser.viewport(*DESKTOP)

    await browser.click("button.primary")
    landed = urllib.parse.urlsplit(await browser.evaluate("location.href"))
    assert f"{landed.scheme}://{landed.netloc}{landed.path}" == f"{client_app}/callback", landed
    query = urllib.parse.parse_qs(landed.query)
    assert query["state"] == ["xyz"]
    interact_ref = query["interact_ref"][0]
    assert query["hash"] == [expected_hash(finish["nonce"], pending["interact"]["finish"], interact_ref, world.receiver["authServer"])]
    await browser.screenshot(SHOTS / "finish.png")

    # The click counted: the client continues with the interact_ref and gets its token.
    body = {"interact_ref": interact_ref}
    token = await shop.request("POST", pending["continue"]["uri"], json=body, token=pending["continue"]["access_token"]["value"])
    assert token.status_code == 200 and token.json()["access_token"]["access"][0]["limits"]["debitAmount"]["value"] == "2500", token.text


async def test_deny_without_a_finish_uri_ends_on_a_page_that_says_so(world, browser) -> None:
    shop = await named_client(world, "Shop App")
    pending = await start(world, shop, [outgoing_item(world.receiver)])
    await browser.open(pending["interact"]["redirect"])
    assert "No amount limit" in await text_of(browser)
    await browser.click("button.secondary")
    text = await text_of(browser)
    assert "Denied\nYou denied the request of Shop App" in text and "Shop App gets no access, and nothing was paid." in text, text
    await browser.screenshot(SHOTS / "denied.png")


async def test_a_wallet_address_and_a_missing_page_in_the_browser(world, browser) -> None:
    response = await browser.open(world.receiver["id"])
    assert response["status"] == 200 and response["mimeType"] == "text/html" and {k.lower(): v for k, v in response["headers"].items()}["vary"] == "Accept"
    text = await text_of(browser)
    assert text.startswith("Example Bank\nAlice\n") and "USD (2 decimal places)" in text, text
    await browser.screenshot(SHOTS / "wallet-address.png")

    response = await browser.open(f"{world.server.public_url}/nobody-here")
    assert response["status"] == 404 and response["mimeType"] == "text/html"
    assert "Not Found\nNo such wallet address.\nError 404 · not_found" in await text_of(browser)
    await browser.screenshot(SHOTS / "not-found.png")
