"""Front ends are stateless (issue 8, items 1 and 2): two real `opay serve` processes on
one Redis and one Ray cluster (`ray start`). kill -9 of one, under credit load through
the other, takes no shard with it; the survivor answers every request throughout, and
the dead one serves again after a restart. The shard count is one number for the whole
deployment: a process started with another refuses to start and says why.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from opay.actors.cluster import DeploymentMismatch, pin_shard_count
from opay.persistence import clients, keys
from tests.conftest import make_world
from tests.support import OpayServer
from tests.test_ray_cluster import ray_head  # noqa: F401  (a fixture)

pytestmark = pytest.mark.anyio
DEADLINE_SECONDS = 5


def _front_end(tmp_path: Path, name: str, ray_address: str, redis_url: str, public_url: str | None = None) -> OpayServer:
    server = OpayServer(
        tmp_path / name,
        extra_env={
            "OPAY_RAY_ADDRESS": ray_address,
            "RAY_AUTH_MODE": "token",
            "OPAY_REDIS_URL": redis_url,
            "OPAY_SHARDS": "2",
            "OPAY_SHARD_CALL_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
        },
    )
    # One deployment, one public URL (a load balancer in front of every front end).
    server.extra_env["OPAY_PUBLIC_URL"] = public_url or server.public_url
    return server


async def test_a_surviving_front_end_serves_through_another_s_kill_and_restart(ray_head, embedded, tmp_path: Path) -> None:  # noqa: F811
    b = _front_end(tmp_path, "b", ray_head, embedded.url)
    a = _front_end(tmp_path, "a", ray_head, embedded.url, public_url=b.public_url).start()
    b.start()
    try:
        async with httpx.AsyncClient(timeout=DEADLINE_SECONDS * 3) as http:
            world = await make_world(b, http)
            token = await world.token()
            payments = []
            for _ in range(5):
                created = await world.create_payment(token)
                assert created.status_code == 201, created.text
                payments.append(created.json()["id"])

            statuses: list[int] = []
            accepted: dict[str, int] = {p: 0 for p in payments}

            async def writer(n: int, stop_at: float) -> None:
                k = 0
                while time.monotonic() < stop_at:
                    payment = payments[(n + k) % len(payments)]
                    key = f"w{n}-{k}"
                    # The same key until an answer is known (bounded: a dead deployment
                    # would answer 503 for ever).
                    while True:
                        answer = await world.operator.credit(payment, "1", key)
                        statuses.append(answer.status_code)
                        if answer.status_code != 503 or time.monotonic() > stop_at + 2 * DEADLINE_SECONDS:
                            break
                    if answer.status_code == 200:
                        accepted[payment] += 1
                    k += 1

            async def killer() -> None:
                await anyio.sleep(2)
                a.kill9()

            stop_at = time.monotonic() + 8
            async with anyio.create_task_group() as group:
                group.start_soon(killer)
                for n in range(20):
                    group.start_soon(writer, n, stop_at)
            assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}

            a.start()
            via_a = httpx.AsyncClient(timeout=DEADLINE_SECONDS * 3)
            try:
                answer = await via_a.post(
                    f"{a.operator_url}/credits",
                    json={"incomingPayment": payments[0], "amount": "1", "idempotencyKey": "via-a"},
                    headers=a.operator_headers,
                )
                assert answer.status_code == 200, answer.text
                accepted[payments[0]] += 1
            finally:
                await via_a.aclose()
            for payment in payments:
                seen = await world.client.request("GET", payment, token=token)
                assert int(seen.json()["receivedAmount"]["value"]) == accepted[payment]
    finally:
        for server in (a, b):
            if server.process is not None:
                server.stop()


def test_a_process_with_another_shard_count_refuses_to_start(embedded, tmp_path: Path) -> None:
    client = clients.blocking(embedded.url, 2)
    assert pin_shard_count(client, 2) == 2
    assert pin_shard_count(client, 0) == 2  # unset adopts the deployment's count
    with pytest.raises(DeploymentMismatch, match="OPAY_SHARDS=3"):
        pin_shard_count(client, 3)
    assert client.get(keys.SHARD_COUNT) == b"2"

    server = OpayServer(tmp_path / "three", extra_env={"OPAY_REDIS_URL": embedded.url, "OPAY_SHARDS": "3"})
    finished = subprocess.run(
        [sys.executable, "-m", "opay.cli", "serve"], env=server.env(), capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 2
    assert "OPAY_SHARDS=3" in finished.stderr and "2 shards" in finished.stderr, finished.stderr
