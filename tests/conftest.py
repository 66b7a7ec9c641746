"""Shared fixtures: one real opay server for the session, and fresh wallets per test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay.client import Operator, SignedClient, public_jwk
from opay.persistence.embedded_redis import EmbeddedRedis
from tests.support import CONSENT_USER_HEADER, OpayServer, free_port

INCOMING_ALL = ["create", "read", "list", "complete"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def embedded(tmp_path: Path):
    """A real redis-server of the test's own (AOF, as opay ships it), without opay or Ray."""
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(Path(tmp_path_factory.mktemp("opay")))
    process.start()
    yield process
    process.stop()


@dataclass
class World:
    """A receiving wallet address, a client app with a registered key, and the operator."""

    server: OpayServer
    http: httpx.AsyncClient
    operator: Operator
    receiver: dict
    client_wallet: dict
    client: SignedClient

    async def token(self, access: list[dict] | None = None, client: SignedClient | None = None) -> str:
        access = access or [{"type": "incoming-payment", "actions": INCOMING_ALL}]
        grant = await (client or self.client).grant(self.receiver["authServer"], access)
        return grant["access_token"]["value"]

    async def outgoing_token(self, limits: dict | None = None, wallet: dict | None = None, client: SignedClient | None = None) -> str:
        """An outgoing-payment token: an interactive grant the ASE approves via the operator API."""
        client = client or self.client
        wallet = wallet or self.receiver
        item: dict = {"type": "outgoing-payment", "actions": ["create", "read", "list"], "identifier": wallet["id"]}
        if limits:
            item["limits"] = limits
        return await self.consented_token([item], wallet, client)

    async def consented_token(self, access: list[dict], wallet: dict | None = None, client: SignedClient | None = None) -> str:
        """A token of an interactive grant (outgoing-payment, list-all) the ASE approves via the operator API."""
        client = client or self.client
        wallet = wallet or self.receiver
        body = {"access_token": {"access": access}, "client": client.wallet_address, "interact": {"start": ["redirect"]}}
        pending = await client.request("POST", wallet["authServer"], json=body)
        assert pending.status_code == 200, pending.text
        grant_id = pending.json()["continue"]["uri"].rsplit("/", 1)[1]
        approved = await self.operator.post(f"/grants/{grant_id}/approve", {})
        assert approved.status_code in (200, 204), approved.text
        while True:
            continued = await client.request("POST", pending.json()["continue"]["uri"], token=pending.json()["continue"]["access_token"]["value"])
            if continued.status_code == 400 and continued.json()["error"]["code"] == "too_fast":
                await anyio.sleep(0.2)
                continue
            assert continued.status_code == 200, continued.text
            return continued.json()["access_token"]["value"]

    @property
    def owner_headers(self) -> dict[str, str]:
        """What the login proxy sets for the receiver's owner: the consent page decides for them."""
        return {CONSENT_USER_HEADER: self.receiver["owner"]}

    async def new_client(self, name: str) -> SignedClient:
        wallet = await self.operator.wallet_address(f"{name}-{uuid.uuid4().hex[:10]}")
        key = Ed25519PrivateKey.generate()
        (await self.operator.add_key(wallet["id"].rsplit("/", 1)[1], public_jwk(key, "key-1"))).raise_for_status()
        return SignedClient(self.http, wallet["id"], key, "key-1")

    async def create_payment(self, token: str, **body) -> httpx.Response:
        return await self.client.request(
            "POST", f"{self.server.public_url}/incoming-payments", json={"walletAddress": self.receiver["id"], **body}, token=token
        )

    async def list_all(self, url: str, token: str) -> list[dict]:
        """Every item of a list URL (its query already started, e.g. `?wallet-address=...&first=100`), page by page."""
        return await every_page(lambda cursor: self.client.request("GET", url + (f"&cursor={cursor}" if cursor else ""), token=token))

    async def operator_list(self, path: str, **params: str) -> list[dict]:
        """Every item of an operator API list (e.g. `/grants`, first="1" to cross every page boundary), page by page."""
        return await every_page(
            lambda cursor: self.http.get(
                self.server.operator_url + path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=self.operator.headers
            )
        )


async def every_page(fetch: Callable[[str | None], Awaitable[httpx.Response]]) -> list[dict]:
    """Every item of a cursor-paginated list; `fetch(cursor)` asks for one page (None: the first)."""
    items: list[dict] = []
    cursor = None
    while True:
        answer = await fetch(cursor)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        items += page["result"]
        if not page["pagination"]["hasNextPage"]:
            return items
        cursor = page["pagination"]["endCursor"]


async def make_world(server: OpayServer, http: httpx.AsyncClient) -> World:
    operator = Operator(http, server.operator_url, server.operator_token)
    path = f"alice-{uuid.uuid4().hex[:10]}"
    receiver = await operator.wallet_address(path, "USD", 2, "Alice", owner=f"user-{path}")
    world = World(server, http, operator, receiver, {}, None)  # type: ignore[arg-type]
    world.client = await world.new_client("app")
    world.client_wallet = {"id": world.client.wallet_address}
    return world


@pytest.fixture
async def world(server: OpayServer):
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(server, http)
