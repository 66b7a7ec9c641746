"""kill -9 of the whole server (its Redis and Ray too) under load, then restart on the same
data: everything acknowledged is there, nothing unattempted is, and idempotency keys
still answer their first outcome. Also: expiry timers survive a graceful restart."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from opay.persistence.keys import shard_of
from opay import base64url
from opay.ilp.credentials import CredentialMint
from opay.actors.registry import codec
from opay.persistence import keys
from opay.settings import Settings
from opay.client import Operator
from tests.conftest import make_world
from tests.support import OpayServer

pytestmark = pytest.mark.anyio

LOAD_SECONDS = 2.5
PAYMENTS = 6


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory):
    server = OpayServer(Path(tmp_path_factory.mktemp("crash")))
    server.start()
    yield server
    if server.process is not None:
        server.stop()


def client(limit: int = 60) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))


def without_methods(view: dict) -> dict:
    return {name: value for name, value in view.items() if name != "methods"}


async def test_kill9_under_load_loses_nothing_acknowledged(own_server: OpayServer) -> None:
    server = own_server
    async with client() as http:
        world = await make_world(server, http)
        token = await world.token()
        payments = []
        for _ in range(PAYMENTS):
            created = await world.create_payment(token)  # uncapped
            assert created.status_code == 201, created.text
            payments.append(created.json())
        urls = [payment["id"] for payment in payments]

        attempted_creates = 0
        acked_creates: list[dict] = []
        attempted_credits: dict[str, list[str]] = {url: [] for url in urls}
        acked_credits: dict[str, dict] = {}  # key -> first 200 body
        statuses: dict[str, int] = {}
        sequence = itertools.count()
        stop = False

        def seen(status: str) -> None:
            statuses[status] = statuses.get(status, 0) + 1

        async def creator() -> None:
            nonlocal attempted_creates
            while not stop:
                attempted_creates += 1
                try:
                    answer = await world.create_payment(token, metadata={"n": next(sequence)})
                except httpx.HTTPError as error:
                    seen(type(error).__name__)
                    continue
                seen(str(answer.status_code))
                if answer.status_code == 201:
                    acked_creates.append(answer.json())

        async def creditor() -> None:
            while not stop:
                n = next(sequence)
                url = urls[n % PAYMENTS]
                key = f"crash-{n}"
                attempted_credits[url].append(key)
                try:
                    answer = await world.operator.credit(url, "1", key)
                except httpx.HTTPError as error:
                    seen(type(error).__name__)
                    continue
                seen(str(answer.status_code))
                if answer.status_code == 200:
                    acked_credits[key] = answer.json()

        async def killer() -> None:
            nonlocal stop
            await anyio.sleep(LOAD_SECONDS)
            await anyio.to_thread.run_sync(server.kill9)
            stop = True

        await asyncio.gather(*(creator() for _ in range(10)), *(creditor() for _ in range(30)), killer())

    # The load ran, and nothing but success was answered before the kill.
    assert len(acked_creates) >= 10 and len(acked_credits) >= 10, statuses
    assert set(statuses) <= {"200", "201", "ConnectError", "ReadError", "RemoteProtocolError", "WriteError"}, statuses

    await anyio.to_thread.run_sync(server.start)  # same data dir and ports: Redis replays its AOF

    async with client() as http:
        world.http = http
        world.client.http = http
        world.operator.http = http
        # Grants, keys and wallet addresses are in Redis too: the old token still works.

        # Every acknowledged create is there, unchanged.
        stored = redis.Redis.from_url(server.redis_url)
        mint = CredentialMint(stored.get(keys.STREAM_SECRET), Settings().ilp_address)
        fetched = await asyncio.gather(*(world.client.request("GET", created["id"], token=token) for created in acked_creates))
        for created, answer in zip(acked_creates, fetched):
            assert answer.status_code == 200, answer.text
            assert without_methods(answer.json()) == without_methods(created)
            [method] = answer.json()["methods"]
            opened = mint.open(method["ilpAddress"])
            assert opened is not None and opened[0] == created["id"].rsplit("/", 1)[1]
            assert method["sharedSecret"] == base64url.encode(mint.shared_secret_for(opened[1]))

        # The list index holds every acknowledged create and nothing never attempted.
        list_url = f"{server.public_url}/incoming-payments?wallet-address={world.receiver['id']}&first=100"
        listed = {item["id"] for item in await world.list_all(list_url, token)}
        assert {created["id"] for created in acked_creates} | set(urls) <= listed
        assert len(listed) <= attempted_creates + PAYMENTS

        # Credits: acknowledged <= received <= attempted, per payment.
        before = {}
        for url in urls:
            answer = await world.client.request("GET", url, token=token)
            received = int(answer.json()["receivedAmount"]["value"])
            acked = sum(1 for key in attempted_credits[url] if key in acked_credits)
            assert acked <= received <= len(attempted_credits[url]), (url, acked, received, len(attempted_credits[url]))
            before[url] = received

        # Every acknowledged key replays to its first outcome, and changes nothing.
        replay = sorted(acked_credits)
        owner = {key: url for url, keys_ in attempted_credits.items() for key in keys_}
        answers = await asyncio.gather(*(world.operator.credit(owner[key], "1", key) for key in replay))
        for key, answer in zip(replay, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json() == acked_credits[key]
        for url in urls:
            answer = await world.client.request("GET", url, token=token)
            assert int(answer.json()["receivedAmount"]["value"]) == before[url]

        # Retrying the unacknowledged keys applies each exactly once: afterwards every
        # payment holds exactly what was attempted.
        unacked = [key for key in owner if key not in acked_credits]
        answers = await asyncio.gather(*(world.operator.credit(owner[key], "1", key) for key in unacked))
        assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers if a.status_code != 200][:3]
        for url in urls:
            answer = await world.client.request("GET", url, token=token)
            assert int(answer.json()["receivedAmount"]["value"]) == len(attempted_credits[url])


def rfc3339_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def test_expiry_timer_survives_a_restart(own_server: OpayServer) -> None:
    server = own_server
    async with client(10) as http:
        world = await make_world(server, http)
        token = await world.token()
        expires_at_ms = int(time.time() * 1000) + 3000
        created = await world.create_payment(token, expiresAt=rfc3339_ms(expires_at_ms))
        assert created.status_code == 201, created.text
        url = created.json()["id"]
    entity_id = f"ip:{url.rsplit('/', 1)[1]}"

    await anyio.to_thread.run_sync(server.stop)
    assert time.time() * 1000 < expires_at_ms, "the server must be down before the payment is due"
    await anyio.sleep((expires_at_ms - time.time() * 1000) / 1000 + 0.2)
    await anyio.to_thread.run_sync(server.start)

    stored = redis.Redis.from_url(server.redis_url)
    deadline = time.monotonic() + 20
    while stored.zscore(keys.due(shard_of(entity_id, 2)), entity_id) is not None:
        assert time.monotonic() < deadline, "the due timer did not fire after the restart"
        await anyio.sleep(0.1)
    state = codec.decode_state(stored.hget(keys.entity(entity_id, shard_of(entity_id, 2)), "s"))
    assert state.expired and not state.completed and state.received == 0

    async with client(10) as http:
        refused = await Operator(http, server.operator_url, server.operator_token).credit(url, "1", str(uuid.uuid4()))
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "expired"
