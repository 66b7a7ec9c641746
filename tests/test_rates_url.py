"""Exchange rates from an HTTP rates URL: read exactly, cached for a TTL, an outage is 503."""

from __future__ import annotations

import threading
import uuid
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest

from opay.domain import exchange, quote
from opay.domain.amounts import Asset
from tests.conftest import make_world
from tests.support import OpayServer

pytestmark = pytest.mark.anyio


class Rates:
    """What the rates server answers; `body` None makes it fail with 500."""

    body: bytes | None = b'{"base": "USD", "rates": {"EUR": 0.91370000000000001}}'
    asked: list[str] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        Rates.asked.append(self.path)
        if Rates.body is None:
            self.send_response(500)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(Rates.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def rates_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/rates"
    httpd.shutdown()


async def test_rates_url_is_read_exactly_cached_and_its_outage_is_503(rates_server: str, tmp_path: Path) -> None:
    server = OpayServer(tmp_path, extra_env={"OPAY_RATES_URL": rates_server, "OPAY_RATES_CACHE_SECONDS": "1"}).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            world = await make_world(server, http)
            eur_wallet = await world.operator.wallet_address(f"eur-{uuid.uuid4().hex[:8]}", "EUR", 2)
            receiver = await world.client.request(
                "POST", f"{server.public_url}/incoming-payments", json={"walletAddress": eur_wallet["id"]}, token=await world.token()
            )
            token = await world.token([{"type": "quote", "actions": ["create"]}])

            async def quote_for(debit: int) -> httpx.Response:
                return await world.client.request(
                    "POST",
                    f"{server.public_url}/quotes",
                    json={
                        "walletAddress": world.receiver["id"],
                        "receiver": receiver.json()["id"],
                        "method": "ilp",
                        "debitAmount": {"value": str(debit), "assetCode": "USD", "assetScale": 2},
                    },
                    token=token,
                )

            def expected(debit: int, rate: Fraction) -> str:
                priced = quote.price(
                    debit=debit, receive=None, rate=rate, sender=Asset("USD", 2), receiver=Asset("EUR", 2), fees=exchange.FeeSchedule(), remaining=None
                )
                return str(priced.receive)

            # 10^17 units: a float would already have lost the 17th significant digit.
            exact = Fraction("0.91370000000000001")
            first = await quote_for(10**17)
            assert first.status_code == 201, first.text
            assert first.json()["receiveAmount"]["value"] == expected(10**17, exact)
            assert Rates.asked[-1] == "/rates?base=USD"

            Rates.body = b'{"base": "USD", "rates": {"EUR": "0.5"}}'
            cached = await quote_for(1000)
            assert cached.json()["receiveAmount"]["value"] == expected(1000, exact), "within the TTL the cached rate holds"
            await anyio.sleep(1.1)
            fresh = await quote_for(1000)
            assert fresh.json()["receiveAmount"]["value"] == "500"

            Rates.body = None
            await anyio.sleep(1.1)
            outage = await quote_for(1000)
            assert outage.status_code == 503 and outage.json()["error"]["code"] == "rates_unavailable"
            assert outage.headers["retry-after"]
    finally:
        server.stop()
