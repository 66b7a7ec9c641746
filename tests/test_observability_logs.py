"""Logs (issue 11, item 1): one JSON line per request, read back from the session server's
stderr (tests/support.py writes it to serve.log): the route's template, never its path;
X-Request-Id honoured or generated, and returned; who called; a 5xx with its traceback."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Callable

import anyio
import pytest
import redis

from opay.actors import ids
from opay.persistence.keys import shard_of
from opay.observability import logs
from opay.persistence import keys
from tests.support import OpayServer

pytestmark = pytest.mark.anyio

WAIT_SECONDS = 20.0  # a request's line is written once its answer has left


def records(server: OpayServer) -> list[dict]:
    """Every JSON line the server wrote so far (its other lines are the start/stop lines)."""
    found = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


async def wait_for(server: OpayServer, match: Callable[[dict], bool], count: int = 1) -> list[dict]:
    """The records that `match`, once there are at least `count` of them."""
    with anyio.fail_after(WAIT_SECONDS):
        while True:
            found = [record for record in records(server) if match(record)]
            if len(found) >= count:
                return found
            await anyio.sleep(0.05)


def request_line(server: OpayServer, request_id: str):
    return wait_for(server, lambda r: r.get("request_id") == request_id and r["msg"] == "request")


async def test_a_request_line_names_the_route_template_the_caller_and_the_status(world) -> None:
    token = await world.token()
    created = await world.create_payment(token, incomingAmount={"value": "500", "assetCode": "USD", "assetScale": 2})
    assert created.status_code == 201, created.text
    payment_id = created.json()["id"].rsplit("/", 1)[1]
    read = await world.client.request("GET", created.json()["id"], token=token)
    assert read.status_code == 200

    [line] = await request_line(world.server, read.headers["x-request-id"])
    assert line["server"] == "public" and line["method"] == "GET" and line["status"] == 200
    assert line["route"] == "/incoming-payments/{resource_id}"
    assert payment_id not in json.dumps(line)  # the template, never the path
    assert line["client"] == world.client.wallet_address and line["key_id"] == "key-1"
    assert line["level"] == "info" and line["logger"] == "opay.http"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0

    [create_line] = await request_line(world.server, created.headers["x-request-id"])
    assert (create_line["method"], create_line["route"], create_line["status"]) == ("POST", "/incoming-payments", 201)


async def test_the_operator_api_logs_its_caller_as_operator_and_an_unmatched_path_by_a_fixed_label(world) -> None:
    listed = await world.operator.get("/wallet-addresses")
    assert listed.status_code == 200
    [line] = await request_line(world.server, listed.headers["x-request-id"])
    assert (line["server"], line["route"], line["client"], line["status"]) == ("operator", "/wallet-addresses", "operator", 200)

    missing = await world.http.get(f"{world.server.operator_url}/no/such/route/{uuid.uuid4()}")
    assert missing.status_code == 404
    [line] = await request_line(world.server, missing.headers["x-request-id"])
    assert (line["route"], line["status"], line["client"]) == ("unmatched", 404, None)

    refused = await world.http.get(f"{world.server.operator_url}/wallet-addresses")  # no token
    assert refused.status_code == 401
    [line] = await request_line(world.server, refused.headers["x-request-id"])
    assert (line["route"], line["status"], line["client"]) == ("/wallet-addresses", 401, None)


async def test_an_incoming_request_id_is_kept_and_returned_and_an_insane_one_replaced(world) -> None:
    mine = f"lb-{uuid.uuid4()}"
    answered = await world.http.get(world.receiver["id"], headers={"x-request-id": mine})
    assert answered.status_code == 200 and answered.headers["x-request-id"] == mine
    [line] = await request_line(world.server, mine)
    assert (line["route"], line["status"]) == ("/{path}", 200)

    generated = (await world.http.get(world.receiver["id"])).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    await request_line(world.server, generated)

    for insane in ("has space", "x" * 129, "caf\u00e9"):
        answer = await world.http.get(world.receiver["id"], headers={"x-request-id": insane.encode()})
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"]), insane
        await request_line(world.server, answer.headers["x-request-id"])
    assert not [r for r in records(world.server) if r.get("request_id") in ("has space", "x" * 129)]


async def test_a_5xx_is_logged_with_its_traceback_and_request_id(world) -> None:
    # A wallet address whose record in Redis is not one: reading it fails unexpectedly.
    path = f"broken-{uuid.uuid4().hex[:10]}"
    await world.operator.wallet_address(path)
    store = redis.Redis.from_url(world.server.redis_url)
    original = store.get(keys.wallet_address(path))
    store.set(keys.wallet_address(path), b"\xff")
    try:
        request_id = f"broken-{uuid.uuid4()}"
        answer = await world.http.get(f"{world.server.public_url}/{path}", headers={"x-request-id": request_id})
    finally:
        store.set(keys.wallet_address(path), original)
        store.close()
    assert answer.status_code == 500 and answer.headers["x-request-id"] == request_id
    assert answer.json()["error"]["code"] == "internal_error"
    [failure] = await wait_for(world.server, lambda r: r.get("request_id") == request_id and r["level"] == "error")
    assert failure["msg"].startswith("500 internal_error: ValidationError")
    assert failure["traceback"].startswith("Traceback (most recent call last)") and "msgspec.ValidationError" in failure["traceback"]
    [line] = await request_line(world.server, request_id)
    assert (line["route"], line["status"]) == ("/{path}", 500)
    # Answered and logged once: not raised again for uvicorn to print another traceback.
    assert "Exception in ASGI application" not in world.server.log_path.read_text(errors="replace")


async def test_a_quarantine_is_logged_by_its_shard_in_the_same_format(world) -> None:
    # A snapshot no shard has read, that cannot be decoded: the credit's shard sets it aside.
    payment_uuid = str(uuid.uuid4())
    entity = ids.INCOMING_PAYMENT(payment_uuid)
    store = redis.Redis.from_url(world.server.redis_url)
    store.hset(keys.entity(entity, shard_of(entity, 2)), mapping={"v": 1, "s": b"\xff"})  # the session server runs 2 shards
    store.close()
    request_id = f"poisoned-{uuid.uuid4()}"
    body = {"incomingPayment": f"{world.server.public_url}/incoming-payments/{payment_uuid}", "amount": "1", "idempotencyKey": "k"}
    answer = await world.http.post(f"{world.server.operator_url}/credits", json=body, headers={**world.operator.headers, "x-request-id": request_id})
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "quarantined"
    # Written by the shard's Ray worker, passed on to the front end's stderr as it was written.
    [quarantined] = await wait_for(world.server, lambda r: r["logger"] == "opay.entities" and entity in r["msg"])
    assert quarantined["level"] == "error" and quarantined["shard"] in (0, 1)
    assert quarantined["msg"].startswith(f"entity {entity} quarantined")
    [line] = await request_line(world.server, request_id)
    assert (line["server"], line["route"], line["status"]) == ("operator", "/credits", 500)


def test_logfmt_keeps_a_record_with_its_traceback_on_one_line() -> None:
    try:
        raise ValueError('bad "value"\nsecond line')
    except ValueError:
        record = logging.LogRecord("opay.http", logging.ERROR, __file__, 1, "failed: %s", ("a b",), sys.exc_info())
    record.fields = {"status": 500, "client": None, "route": "/{path}"}
    token = logs.REQUEST_ID.set("rid-1")
    try:
        line = logs.LogfmtFormatter({"shard": 1}).format(record)
    finally:
        logs.REQUEST_ID.reset(token)
    assert "\n" not in line
    pairs = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
    assert pairs["level"] == "error" and pairs["request_id"] == "rid-1" and pairs["shard"] == "1" and pairs["status"] == "500"
    assert json.loads(pairs["msg"]) == "failed: a b" and pairs["route"] == "/{path}" and "client" not in pairs
    traceback = json.loads(pairs["traceback"])
    assert traceback.startswith("Traceback (most recent call last)") and traceback.endswith('ValueError: bad "value"\nsecond line')
