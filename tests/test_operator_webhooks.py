"""The operator's webhook events (GET/DELETE /webhook-events, GET/DELETE
/webhook-events/{id}, POST /webhook-events/{id}/retry) on one real server of this module
with webhooks on, delivering to a receiver this test runs: events die against a failing
endpoint, are listed pending and dead, retried (and delivered), purged.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from opay.persistence import keys
from tests.support import OpayServer
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio

MAX_ATTEMPTS = 2
SHARDS = 2  # the server's: each event is in one of these shards' outboxes
OUTBOXES = [keys.Outbox(n) for n in range(SHARDS)]
WAIT_SECONDS = 30.0


class Receiver:
    """Records every event id it is sent; answers per the event's wallet address: 200
    unless told to fail (500) or to hold the request until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        self.failing: set[str] = set()
        self.holding: set[str] = set()
        self.release = threading.Event()
        self.url = ""

    def answer(self, event: dict) -> int:
        wallet = event["data"]["walletAddress"]
        with self.lock:
            self.seen.append(event)
        if wallet in self.holding:
            self.release.wait(WAIT_SECONDS)
        return 500 if wallet in self.failing else 200

    def attempts(self, resource: str) -> list[dict]:
        with self.lock:
            return [event for event in self.seen if event["data"]["id"] == resource]


async def eventually(condition: Callable, what: str):
    """What `condition` (sync or async) returns once it is truthy: opay delivers in the background."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = condition()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.05)


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            status = receiver.answer(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield receiver
    receiver.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver):
    """Overrides the session server: webhooks on, retried quickly, dead after MAX_ATTEMPTS."""
    process = OpayServer(
        Path(tmp_path_factory.mktemp("opay-operator-webhooks")),
        extra_env={
            "OPAY_SHARDS": str(SHARDS),
            "OPAY_WEBHOOK_URL": receiver.url,
            "OPAY_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "OPAY_WEBHOOK_TIMEOUT_SECONDS": str(WAIT_SECONDS),
            "OPAY_WEBHOOK_BACKOFF_BASE_SECONDS": "0.05",
            "OPAY_WEBHOOK_BACKOFF_MAX_SECONDS": "0.1",
            "OPAY_WEBHOOK_POLL_INTERVAL_SECONDS": "0.05",
        },
    )
    process.start()
    yield process
    receiver.release.set()
    process.stop()


async def get(world, path: str, **params) -> httpx.Response:
    return await world.http.get(world.server.operator_url + path, params=params, headers=world.operator.headers)


async def payment(world, token: str) -> str:
    """A new incoming payment's URL: its incoming_payment.created event is queued with it."""
    answer = await world.create_payment(token)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


async def dead_events(world, receiver: Receiver, count: int) -> list[dict]:
    """`count` events dead against the failing receiver: their operator views, in the order they were made."""
    receiver.failing.add(world.receiver["id"])
    token = await world.token()
    resources = [await payment(world, token) for _ in range(count)]
    ids = []
    for resource in resources:
        attempts = await eventually(lambda: len(receiver.attempts(resource)) >= MAX_ATTEMPTS and receiver.attempts(resource), "the attempts")
        ids.append(attempts[0]["id"])

    async def dead(event_id: str):
        answer = await get(world, f"/webhook-events/{event_id}")
        return answer.json() if answer.status_code == 200 and answer.json()["status"] == "dead" else None

    return [await eventually(lambda: dead(event_id), "a dead event") for event_id in ids]


async def every(world, status: str) -> list[dict]:
    return await world.operator_list("/webhook-events", status=status, first="1")


async def test_dead_events_are_listed_with_their_last_error_and_body(world, receiver) -> None:
    events = await dead_events(world, receiver, 3)
    for event in events:
        assert event["attempts"] == MAX_ATTEMPTS and event["lastError"] == "HTTP 500" and "diedAt" in event
        assert event["event"]["type"] == "incoming_payment.created"
        assert event["event"]["data"]["walletAddress"] == world.receiver["id"]
    # Retries back off with jitter, so events made one after another may die in another order.
    ids = [event["id"] for event in sorted(events, key=lambda event: (event["diedAt"], event["id"]))]
    listed = [event["id"] for event in await every(world, "dead")]
    assert [i for i in listed if i in ids] == ids and len(set(listed)) == len(listed)  # in order of death, each once
    assert not {e["id"] for e in await every(world, "pending")} & set(ids)
    newest = (await get(world, "/webhook-events", status="dead", last="1")).json()
    assert newest["result"][0]["id"] == ids[-1] and not newest["pagination"]["hasNextPage"]


async def test_a_dead_event_retried_is_delivered_once_more(world, receiver) -> None:
    [event] = await dead_events(world, receiver, 1)
    resource = event["event"]["data"]["id"]
    receiver.failing.discard(world.receiver["id"])
    retried = await world.operator.post(f"/webhook-events/{event['id']}/retry", {})
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "pending" and retried.json()["attempts"] == 0 and "dueAt" in retried.json()
    await eventually(lambda: len(receiver.attempts(resource)) == MAX_ATTEMPTS + 1, "the retried delivery")
    await eventually(lambda: _gone(world, event["id"]), "the delivered event to be forgotten")
    assert len(receiver.attempts(resource)) == MAX_ATTEMPTS + 1
    assert_error(await world.operator.post(f"/webhook-events/{event['id']}/retry", {}), 404, "not_found")


async def _gone(world, event_id: str) -> bool:
    return (await get(world, f"/webhook-events/{event_id}")).status_code == 404


async def test_a_pending_event_is_listed_and_neither_retried_nor_purged(world, receiver) -> None:
    receiver.holding.add(world.receiver["id"])
    resource = await payment(world, await world.token())
    [attempt] = await eventually(lambda: receiver.attempts(resource), "the held attempt")
    try:
        pending = {event["id"]: event for event in await every(world, "pending")}
        assert pending[attempt["id"]]["attempts"] == 1 and "dueAt" in pending[attempt["id"]]  # in flight, under its lease
        assert pending[attempt["id"]]["event"]["data"]["id"] == resource
        assert_error(await world.operator.post(f"/webhook-events/{attempt['id']}/retry", {}), 409, "not_dead")
        assert_error(await world.http.delete(f"{world.server.operator_url}/webhook-events/{attempt['id']}", headers=world.operator.headers), 409, "not_dead")
    finally:
        receiver.release.set()
    await eventually(lambda: _gone(world, attempt["id"]), "the held event delivered")
    assert len(receiver.attempts(resource)) == 1


async def test_bad_input_and_no_token_are_refused_and_change_nothing(world, receiver) -> None:
    [event] = await dead_events(world, receiver, 1)
    base, headers = world.server.operator_url, world.operator.headers
    for params in ({}, {"status": "buried"}, {"status": "dead", "first": "0"}, {"status": "dead", "first": "1", "last": "1"},
                   {"status": "dead", "cursor": event["id"]}, {"status": "dead", "cursor": "12.NOT-HEX"}):
        assert_error(await world.http.get(f"{base}/webhook-events", params=params, headers=headers), 400)
    for params in ({}, {"status": "pending"}):
        assert_error(await world.http.delete(f"{base}/webhook-events", params=params, headers=headers), 400, "invalid_request")
    for bad in ("not-a-uuid", event["id"].upper(), str(uuid.uuid4())):
        assert_error(await get(world, f"/webhook-events/{bad}"), 404, "not_found")
        assert_error(await world.operator.post(f"/webhook-events/{bad}/retry", {}), 404, "not_found")
        assert_error(await world.http.delete(f"{base}/webhook-events/{bad}", headers=headers), 404, "not_found")
    for auth in ({}, {"authorization": "Bearer wrong"}):
        for method, path in (
            ("GET", "/webhook-events?status=dead"),
            ("DELETE", "/webhook-events?status=dead"),
            ("GET", f"/webhook-events/{event['id']}"),
            ("POST", f"/webhook-events/{event['id']}/retry"),
            ("DELETE", f"/webhook-events/{event['id']}"),
        ):
            assert_error(await world.http.request(method, base + path, headers=auth), 401, "unauthorized")
    assert (await get(world, f"/webhook-events/{event['id']}")).json() == event


async def test_purge_forgets_one_dead_event_or_all_of_them(world, receiver) -> None:
    one, *rest = await dead_events(world, receiver, 3)
    client = aioredis.Redis.from_url(world.server.redis_url)
    try:
        holding = [outbox.shard for outbox in OUTBOXES if await client.zscore(outbox.dead, one["id"]) is not None]
        assert len(holding) == 1 and await client.hexists(OUTBOXES[holding[0]].events, one["id"])  # one shard's, until purged
        answer = await world.http.delete(f"{world.server.operator_url}/webhook-events/{one['id']}", headers=world.operator.headers)
        assert answer.status_code == 204, answer.text
        assert_error(await get(world, f"/webhook-events/{one['id']}"), 404)
        for outbox in OUTBOXES:
            for table in (outbox.events, outbox.attempts, outbox.errors):
                assert not await client.hexists(table, one["id"]), table
            assert await client.zscore(outbox.dead, one["id"]) is None and await client.zscore(outbox.due, one["id"]) is None
        left = len(await every(world, "dead"))
        assert left >= len(rest)
        purged = await world.http.delete(f"{world.server.operator_url}/webhook-events", params={"status": "dead"}, headers=world.operator.headers)
        assert purged.status_code == 200 and purged.json() == {"purged": left}, purged.text
        assert await every(world, "dead") == []
        for outbox in OUTBOXES:
            assert await client.zcard(outbox.dead) == 0, outbox.dead
            for event in rest:
                assert not await client.hexists(outbox.events, event["id"])
    finally:
        await client.aclose()
