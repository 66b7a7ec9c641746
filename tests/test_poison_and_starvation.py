"""No poison, no starvation (issue 8, item 7), on a real server with one shard:

- a snapshot that cannot be decoded is quarantined: its commands and reads answer 500
  `quarantined`, its batch-mates are served, its due entry leaves the timers;
- 600 due entries that cannot progress back off and do not starve healthy timers, and an
  entry of no known kind is dropped instead of killing the timer loop;
- a crashed background task is restarted;
- a Redis ResponseError (OOM) is 503 with Retry-After, not 500.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from opay.domain.amounts import Asset
from opay.domain.incoming_payment import IncomingPayment
from opay.actors.registry import codec
from opay.persistence import keys
from opay.supervision import supervise
from tests.conftest import make_world
from tests.support import OpayServer

pytestmark = pytest.mark.anyio
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory):
    server = OpayServer(Path(tmp_path_factory.mktemp("lone")), extra_env={"OPAY_SHARDS": "1"}).start()
    yield server
    server.stop()


@pytest.fixture
async def lone_world(lone):
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(lone, http)


# The lone server runs one shard: every entity's keys are shard 0's.
def _raw(server: OpayServer) -> redis.Redis:
    return redis.Redis.from_url(server.redis_url)


async def _eventually(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS} s: {what}"
        await anyio.sleep(0.2)


async def test_a_poisoned_snapshot_is_quarantined_and_its_batch_mates_are_served(lone_world) -> None:
    world, raw = lone_world, _raw(lone_world.server)
    token = await world.token()
    healthy = []
    for _ in range(20):
        created = await world.create_payment(token)
        assert created.status_code == 201, created.text
        healthy.append(created.json()["id"])
    poisoned_uuid = str(uuid.uuid4())
    poisoned = f"ip:{poisoned_uuid}"
    raw.hset(keys.entity(poisoned, 0), mapping={"v": 1, "s": b"\xc1 not a snapshot"})
    raw.zadd(keys.due(0), {poisoned: 1})
    poisoned_url = f"{world.server.public_url}/incoming-payments/{poisoned_uuid}"

    answers = await asyncio.gather(
        world.operator.credit(poisoned_url, "1", "poison-1"),
        *(world.operator.credit(url, "1", f"healthy-{n}") for n, url in enumerate(healthy)),
    )
    assert answers[0].status_code == 500 and answers[0].json()["error"]["code"] == "quarantined", answers[0].text
    assert [a.status_code for a in answers[1:]] == [200] * len(healthy)

    read = await world.client.request("GET", poisoned_url, token=token)
    assert read.status_code == 500 and read.json()["error"]["code"] == "quarantined", read.text
    await _eventually(lambda: raw.zscore(keys.due(0), poisoned) is None, "the poisoned entry left the due set")
    assert raw.hget(keys.quarantine(0), poisoned) is not None


async def test_stuck_timers_back_off_and_healthy_ones_fire(lone_world) -> None:
    world, raw = lone_world, _raw(lone_world.server)
    # 600 entities that cannot progress (a grant-spend id holding another kind's state:
    # every firing fails), due before anything else; and an entry of no known kind.
    wrong = IncomingPayment(
        id="x", wallet_address="w", client=None, asset=Asset("USD", 2), incoming_amount=None, expires_at_ms=1, created_at_ms=1
    )
    stuck = [f"grant:{uuid.uuid4()}" for _ in range(600)]
    pipe = raw.pipeline(transaction=False)
    for entity_id in stuck:
        pipe.hset(keys.entity(entity_id, 0), mapping={"v": 1, "s": codec.encode(wrong)})
    pipe.zadd(keys.due(0), {entity_id: 1 for entity_id in stuck})
    pipe.zadd(keys.due(0), {"zz:of-no-kind": 1})
    pipe.execute()

    token = await world.token()
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    expiring = []
    for _ in range(5):
        created = await world.create_payment(token, expiresAt=soon)
        assert created.status_code == 201, created.text
        expiring.append(f"ip:{created.json()['id'].rsplit('/', 1)[1]}")

    def all_expired() -> bool:
        return all(codec.decode_state(raw.hget(keys.entity(e, 0), "s")).expired for e in expiring)

    await _eventually(all_expired, "healthy payments expired beside 600 stuck timers")
    assert raw.zscore(keys.due(0), "zz:of-no-kind") is None
    now_ms = time.time() * 1000
    later = [score for _, score in raw.zrange(keys.due(0), 0, -1, withscores=True) if score > now_ms]
    assert len(later) >= 500, "stuck entries were not leased into the future"
    assert max(int(raw.zscore(keys.due_tries(0), e) or 0) for e in stuck) >= 1
    raw.delete(*[keys.entity(e, 0) for e in stuck])  # leave the server clean for the next test
    raw.zrem(keys.due(0), *stuck)


async def test_a_crashed_background_task_is_restarted() -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("crash")
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("flaky", flaky))
    try:
        async with asyncio.timeout(10):
            while len(runs) < 3:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert runs == [0, 1, 2]


async def test_redis_out_of_memory_is_503_not_500(lone_world) -> None:
    world, raw = lone_world, _raw(lone_world.server)
    token = await world.token()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", 1)
    try:
        grant = await world.client.request(
            "POST", world.receiver["authServer"], json={"access_token": {"access": [{"type": "quote", "actions": ["read"]}]}, "client": world.client.wallet_address}
        )
        assert grant.status_code == 503 and grant.headers.get("retry-after"), grant.text
        created = await world.create_payment(token)
        assert created.status_code == 503 and created.headers.get("retry-after"), created.text
    finally:
        raw.config_set("maxmemory", 0)
    assert (await world.create_payment(token)).status_code == 201
