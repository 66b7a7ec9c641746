"""A URL a client names (its wallet address) is fetched under one rule, never to reach inside.

Real servers only: opay's session server (defaults: https only), one opay with
OPAY_ALLOW_INSECURE_FETCH but no allow list, one that also allow-lists 127.0.0.1, and a
real loopback HTTP server that plays a client's wallet (good, huge, slow, redirecting
jwks.json) and an internal service, recording every request it gets.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from opay.client import SignedClient, public_jwk
from opay.net.fetch import FetchPolicy, FetchRefused, non_public
from tests.conftest import INCOMING_ALL, make_world
from tests.support import OpayServer, free_port
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio

HUGE_BYTES = 200 * 1024 * 1024
FETCH_TIMEOUT = 2.0
INCOMING = [{"type": "incoming-payment", "actions": INCOMING_ALL}]


class RemoteWallet:
    """A real HTTP server on loopback: client wallets (their jwks.json) and a stand-in internal service."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hits: list[tuple[str, str]] = []  # (path, Host header)
        self.huge_sent = 0
        self.toggle_redirects = False
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/{path:path}", self._answer)])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.hits]

    def client(self, http: httpx.AsyncClient, wallet: str) -> SignedClient:
        return SignedClient(http, wallet, self.key, "key-1")

    async def _answer(self, request: Request) -> Response:
        path = request.url.path
        with self._lock:
            self.hits.append((path, request.headers.get("host", "")))
        jwks = {"keys": [public_jwk(self.key, "key-1")]}
        if path in ("/good/jwks.json", "/target/jwks.json") or (path == "/toggle/jwks.json" and not self.toggle_redirects):
            return JSONResponse(jwks)
        if path in ("/redirect/jwks.json", "/toggle/jwks.json"):
            return RedirectResponse(f"{self.url}/target/jwks.json", status_code=302)
        if path == "/huge/jwks.json":
            return StreamingResponse(self._huge(request), media_type="application/json")
        if path == "/slow/jwks.json":
            return StreamingResponse(self._slow(), media_type="application/json")
        return JSONResponse({"error": "no such thing"}, status_code=404)

    async def _huge(self, request: Request):
        chunk = b" " * 65536
        yield b'{"keys": []'
        for _ in range(HUGE_BYTES // len(chunk)):
            if await request.is_disconnected():  # uvicorn drops writes to a closed connection silently
                return
            self.huge_sent += len(chunk)
            yield chunk
        yield b"}"

    async def _slow(self):
        # Each byte comes well within any per-read timeout; the whole answer takes 30 s.
        yield b'{"keys": []'
        for _ in range(120):
            await asyncio.sleep(0.25)
            yield b" "
        yield b"}"

    def start(self) -> "RemoteWallet":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "remote wallet server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def remote():
    wallet = RemoteWallet().start()
    yield wallet
    wallet.stop()


@pytest.fixture(scope="module")
def insecure(tmp_path_factory: pytest.TempPathFactory):
    """http allowed, no allow list: loopback and private targets stay refused."""
    server = OpayServer(Path(tmp_path_factory.mktemp("fetch-insecure")), extra_env={"OPAY_ALLOW_INSECURE_FETCH": "true"})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory):
    """http allowed and 127.0.0.1 allow-listed (a client wallet on another loopback server)."""
    server = OpayServer(
        Path(tmp_path_factory.mktemp("fetch-allowed")),
        extra_env={
            "OPAY_ALLOW_INSECURE_FETCH": "true",
            "OPAY_FETCH_ALLOW": "127.0.0.1",
            "OPAY_FETCH_TIMEOUT_SECONDS": str(FETCH_TIMEOUT),
            "OPAY_JWKS_CACHE_SECONDS": "0",  # every request asks the client's wallet again
        },
    )
    server.start()
    yield server
    server.stop()


async def ask_grant(server: OpayServer, client: SignedClient) -> tuple[httpx.Response, dict]:
    world = await make_world(server, client.http)
    body = {"access_token": {"access": INCOMING}, "client": client.wallet_address}
    return await client.request("POST", world.receiver["authServer"], json=body), world.receiver


def refused(response: httpx.Response, *words: str) -> dict:
    """400 invalid_client, the reason in the description and in details."""
    error = assert_error(response, 400, "invalid_client")
    assert error["details"]["reason"] in error["description"], error
    for word in words:
        assert word in error["details"]["reason"], error
    return error


# --- the policy itself, on literal addresses (real resolution, no server) -------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9/x", "loopback"),
        ("http://[::1]:9/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://172.16.0.1/x", "private"),
        ("http://192.168.1.1/x", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://[ff02::1]/x", "multicast"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://[::ffff:10.0.0.1]/x", "private"),
        ("http://[::ffff:169.254.169.254]/x", "link-local"),
        ("http://[2002:7f00:1::]/x", "loopback"),  # 6to4 of 127.0.0.1
        ("http://[64:ff9b::a00:1]/x", "private"),  # NAT64 of 10.0.0.1
        ("http://100.64.0.1/x", "non-public"),  # carrier-grade NAT
        ("http://localhost:9/x", "loopback"),
    ],
)
async def test_the_policy_refuses_non_public_addresses(url: str, kind: str) -> None:
    policy = FetchPolicy(allow_insecure=True)
    with pytest.raises(FetchRefused) as refusal:
        await policy.vet(url)
    assert f" {kind} address" in refusal.value.reason, refusal.value.reason


async def test_the_policy_allows_public_addresses_and_its_allow_list() -> None:
    policy = FetchPolicy(allow_insecure=True, allow="10.0.0.0/8, localhost, [::1]")
    assert (await policy.vet("https://8.8.8.8/alice")).addresses == ("8.8.8.8",)
    assert (await policy.vet("https://[2606:4700::1111]/alice")).addresses == ("2606:4700::1111",)
    assert (await policy.vet("http://10.9.8.7/alice")).addresses == ("10.9.8.7",)
    assert (await policy.vet("http://[::ffff:10.0.0.1]/alice")).addresses == ("::ffff:a00:1",)
    assert (await policy.vet("http://[::1]:9/alice")).addresses == ("::1",)
    assert "127.0.0.1" in (await policy.vet("http://localhost:9/alice")).addresses
    assert non_public(__import__("ipaddress").ip_address("1.1.1.1")) is None
    with pytest.raises(FetchRefused):
        await policy.vet("http://192.168.0.1/alice")  # only what is listed
    with pytest.raises(ValueError):
        FetchPolicy(allow="http://example.com/")


async def test_the_policy_refuses_http_and_its_own_listeners() -> None:
    policy = FetchPolicy(allow="127.0.0.0/8", own_listeners=(("127.0.0.1", 8000), ("0.0.0.0", 8001)))
    with pytest.raises(FetchRefused, match="https"):
        await FetchPolicy().vet("http://8.8.8.8/alice")
    insecure = FetchPolicy(allow_insecure=True, allow="127.0.0.0/8", own_listeners=policy.own_listeners)
    for url in ("http://127.0.0.1:8000/a", "http://localhost:8000/a", "http://[::ffff:127.0.0.1]:8000/a", "http://127.0.0.5:8001/a", "http://[::1]:8001/a"):
        with pytest.raises(FetchRefused, match="own listeners"):
            await insecure.vet(url)
    assert (await insecure.vet("http://127.0.0.1:8002/a")).addresses == ("127.0.0.1",)


# --- through the authorization server ----------------------------------------------


async def test_a_client_naming_the_operator_api_is_400_and_nothing_is_asked(server, insecure, allowed, remote) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for opay in (server, insecure, allowed):  # defaults, http allowed, 127.0.0.1 allow-listed
            response, _ = await ask_grant(opay, remote.client(http, f"{opay.operator_url}/grants"))
            refused(response)
        refused((await ask_grant(allowed, remote.client(http, f"{allowed.operator_url}/grants")))[0], "own listeners")
        # An internal service on loopback (the remote server stands in for one) is never called.
        for opay in (server, insecure):
            response, _ = await ask_grant(opay, remote.client(http, f"{remote.url}/internal-admin"))
            refused(response)
        assert "/internal-admin/jwks.json" not in remote.paths()


async def test_http_is_refused_without_the_insecure_flag(server, remote) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        before = len(remote.paths())
        for wallet in (f"{remote.url}/good", "http://8.8.8.8/alice"):
            refused((await ask_grant(server, remote.client(http, wallet)))[0], "https")
        assert len(remote.paths()) == before


async def test_loopback_is_refused_without_the_allow_list(insecure, remote) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        before = len(remote.paths())
        refused((await ask_grant(insecure, remote.client(http, f"{remote.url}/good")))[0], "127.0.0.1 is a loopback address")
        # A name that resolves to loopback is judged by its address.
        wallet = f"http://localhost:{remote.port}/good"
        refused((await ask_grant(insecure, remote.client(http, wallet)))[0], "localhost resolves to", "loopback")
        assert len(remote.paths()) == before


@pytest.mark.parametrize(
    "wallet",
    ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/alice", "http://[::ffff:127.0.0.1]/alice", "http://224.0.0.1/alice"],
    ids=["metadata", "private", "ipv4-mapped", "multicast"],
)
async def test_internal_addresses_are_refused_at_once(insecure, remote, wallet) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        started = time.monotonic()
        refused((await ask_grant(insecure, remote.client(http, wallet)))[0], "address")
        assert time.monotonic() - started < 1.5  # refused before any connection, no timeout waited


async def test_an_allow_listed_client_on_another_loopback_server_works(allowed, remote) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        # By name: resolved once, connected to the vetted 127.0.0.1, Host naming the host.
        client = remote.client(http, f"http://localhost:{remote.port}/good")
        response, receiver = await ask_grant(allowed, client)
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]["value"]
        assert ("/good/jwks.json", f"localhost:{remote.port}") in remote.hits
        body = {"walletAddress": receiver["id"], "incomingAmount": {"value": "100", "assetCode": "USD", "assetScale": 2}}
        created = await client.request("POST", f"{allowed.public_url}/incoming-payments", json=body, token=token)
        assert created.status_code == 201, created.text


async def test_a_too_large_jwks_is_refused_without_reading_it(allowed, remote) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        started = time.monotonic()
        response, _ = await ask_grant(allowed, remote.client(http, f"{remote.url}/huge"))
        refused(response, "larger than")
        assert time.monotonic() - started < FETCH_TIMEOUT + 1
        await asyncio.sleep(0.5)  # let the server notice the closed connection
        assert remote.huge_sent < HUGE_BYTES // 10, remote.huge_sent


async def test_a_slow_client_wallet_hits_the_deadline(allowed, remote) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        started = time.monotonic()
        response, _ = await ask_grant(allowed, remote.client(http, f"{remote.url}/slow"))
        elapsed = time.monotonic() - started
        assert_error(response, 503, "keys_unavailable")
        assert response.headers.get("retry-after", "").isdigit(), response.headers
        assert FETCH_TIMEOUT - 0.5 < elapsed < FETCH_TIMEOUT + 2, elapsed


async def test_a_redirect_is_never_followed(allowed, remote) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        refused((await ask_grant(allowed, remote.client(http, f"{remote.url}/redirect")))[0], "redirect")
        assert "/redirect/jwks.json" in remote.paths()
        assert "/target/jwks.json" not in remote.paths()


async def test_the_servers_own_public_port_is_refused_even_if_allow_listed(allowed) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        world = await make_world(allowed, http)
        path = world.client.wallet_address.rsplit("/", 1)[1]
        # The same wallet address, named so it is not under OPAY_PUBLIC_URL: it would be asked over HTTP.
        for wallet in (f"http://localhost:{allowed.port}/{path}", f"HTTP://127.0.0.1:{allowed.port}/{path}"):
            client = SignedClient(http, wallet, world.client.private_key, world.client.keyid)
            body = {"access_token": {"access": INCOMING}, "client": wallet}
            refused(await client.request("POST", world.receiver["authServer"], json=body), "own listeners")
        # Under the public URL it is looked up in-process, as always.
        body = {"access_token": {"access": INCOMING}, "client": world.client.wallet_address}
        assert (await world.client.request("POST", world.receiver["authServer"], json=body)).status_code == 200


async def test_a_tokens_client_whose_keys_turn_unusable_is_401_at_the_resource_server(allowed, remote) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        client = remote.client(http, f"{remote.url}/toggle")
        remote.toggle_redirects = False
        response, receiver = await ask_grant(allowed, client)
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]["value"]
        try:
            remote.toggle_redirects = True
            url = f"{allowed.public_url}/incoming-payments?wallet-address={receiver['id']}"
            answer = await client.request("GET", url, token=token)
        finally:
            remote.toggle_redirects = False
        error = assert_error(answer, 401, "invalid_client")
        assert "redirect" in error["details"]["reason"], error
        assert answer.headers.get("www-authenticate", "").startswith("GNAP as_uri="), answer.headers


async def test_a_fetch_allow_that_is_not_a_host_stops_the_server(tmp_path) -> None:
    server = OpayServer(tmp_path, extra_env={"OPAY_FETCH_ALLOW": "http://127.0.0.1/"})
    with pytest.raises(RuntimeError, match="OPAY_FETCH_ALLOW"):
        server.start()
