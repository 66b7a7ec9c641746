"""Health (issue 11, item 3) and what a start and a stop say (items 1 and 5).

One server of this module's own, so its Redis and a shard can be stopped (SIGSTOP, then
SIGCONT): /readyz names what does not answer, /healthz stays 200, neither needs a token.
A credit to the stopped shard is asked again, then refused, with a warning line each. Its
start and its stop (SIGINT) say one line per part; a Redis or a Ray that cannot be reached
ends a start with one line naming it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from opay.actors import ids
from opay.persistence.keys import shard_of
from tests.conftest import make_world
from tests.support import OpayServer, free_port, session_members
from tests.test_observability_logs import wait_for

pytestmark = pytest.mark.anyio

READINESS_SECONDS = 2.0
SHARDS = 2
# What Ray prints on its own when left to itself: none of it may reach opay's output.
RAY_NOISE = (
    "Token authentication",
    "usage stats",
    "Usage stats",
    "Started a local Ray instance",
    "metrics exporter",
    "gcs_client.cc",
    "rpc_client.h",
    "logging.cc",
    "(raylet)",
    "pid=",
    "SIGTERM handler",
    "[repeated",
    "WARNING",
)
PARTS = ("redis", "ray", "shards", "public API", "operator API")


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory):
    server = OpayServer(
        Path(tmp_path_factory.mktemp("health")),
        {"OPAY_READINESS_TIMEOUT_SECONDS": str(READINESS_SECONDS), "OPAY_SHARD_CALL_TIMEOUT_SECONDS": "2"},
    )
    server.start()
    yield server
    server.stop()


def line(part: str, what: str) -> str:
    """A start or stop line as serve prints it (opay/runtime.py say)."""
    return f"opay {part:<12} {what}"


def processes(server: OpayServer, title: re.Pattern) -> list[int]:
    """The server's processes whose command line matches `title` (Ray's workers set theirs
    to their actor, "ray::Shard"; Ray's workers stay in the session serve leads)."""
    assert server.process is not None
    found = []
    for pid in session_members(server.process.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.match(command):
            found.append(pid)
    return found


@contextmanager
def stopped(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def readiness(server: OpayServer) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(f"{server.operator_url}/readyz")


async def ready_again(server: OpayServer) -> None:
    with anyio.fail_after(60):
        while (await readiness(server)).status_code != 200:
            await anyio.sleep(0.2)


async def test_a_start_says_one_line_per_part_and_nothing_of_ray(own) -> None:
    output = own.log_path.read_text(errors="replace")
    for part in PARTS:
        assert len(re.findall(rf"^opay {re.escape(part)} +\S", output, re.M)) == 1, (part, output)
    assert output.count("opay ready") == 1
    for noise in RAY_NOISE:
        assert noise not in output, noise
    # Anything else is a structured log line.
    for line in output.splitlines():
        assert line.startswith(("opay ", "approve a pending grant", "{")), line


async def test_healthz_and_readyz_need_no_token_and_readyz_lists_what_it_asked(own) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        live = await http.get(f"{own.operator_url}/healthz")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = await http.get(f"{own.operator_url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ok", "parts": ["redis", "shard 0", "shard 1"], "failing": []}
        # The operator's own /health still wants the token.
        assert (await http.get(f"{own.operator_url}/health")).status_code == 401


async def test_readyz_names_redis_while_redis_is_stopped(own) -> None:
    [redis_server] = processes(own, re.compile(r"\S*redis-server "))
    with stopped(redis_server):
        answer = await readiness(own)
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "parts": ["redis", "shard 0", "shard 1"], "failing": ["redis"]}
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(f"{own.operator_url}/healthz")).status_code == 200
    await ready_again(own)


async def test_readyz_names_a_stopped_shard_and_a_credit_to_it_is_asked_again_then_refused(own) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        world = await make_world(own, http)
        token = await world.token()
        on_shard: dict[int, str] = {}
        while len(on_shard) < SHARDS:  # an incoming payment on each shard
            created = await world.create_payment(token, incomingAmount={"value": "100", "assetCode": "USD", "assetScale": 2})
            assert created.status_code == 201, created.text
            url = created.json()["id"]
            on_shard.setdefault(shard_of(ids.incoming_payment_of_url(url), SHARDS), url)

        workers = processes(own, re.compile(r"ray::Shard"))
        assert len(workers) == SHARDS, workers
        with stopped(workers[0]):
            answer = await readiness(own)
            assert answer.status_code == 503, answer.text
            [failing] = answer.json()["failing"]
            assert re.fullmatch(r"shard [01]", failing) and answer.json()["status"] == "unavailable"
            assert (await http.get(f"{own.operator_url}/healthz")).status_code == 200

            n = int(failing.split()[1])
            request_id = f"stuck-{uuid.uuid4()}"
            body = {"incomingPayment": on_shard[n], "amount": "1", "idempotencyKey": str(uuid.uuid4())}
            refused = await http.post(f"{own.operator_url}/credits", json=body, headers={**own.operator_headers, "x-request-id": request_id})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shard_timeout"
            warnings = await wait_for(own, lambda r: r.get("request_id") == request_id and r["level"] == "warning", count=3)
            messages = [w["msg"] for w in warnings]
            assert sum(f"no answer from shard {n}" in m for m in messages) == 2, messages
            assert any(m.startswith("outcome of ip.credit for ip:") and m.endswith("(shard_timeout); asking again") for m in messages), messages
            assert all(w["logger"] == "opay.router" for w in warnings)
    await ready_again(own)


def test_sigint_stops_every_part_with_a_line_each_then_stopped(own) -> None:
    process = own.process
    assert process is not None
    before = own.log_path.read_text(errors="replace")
    own.stop()
    assert process.returncode == 0
    said = [line for line in own.log_path.read_text(errors="replace")[len(before) :].splitlines() if line.startswith("opay ")]
    # The two APIs stop together, then what they stood on, last started first stopped.
    stops = ("public API", "operator API", "shards", "ray", "redis")
    assert said == [*(line(part, "stopped") for part in stops), "opay stopped"]


def serve_once(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    server = OpayServer(tmp_path, {"OPAY_CONNECT_TIMEOUT_SECONDS": "3", **env})
    return subprocess.run([sys.executable, "-m", "opay.cli", "serve"], env=server.env(), capture_output=True, text=True, timeout=120)


def test_an_unreachable_redis_ends_the_start_with_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    ended = serve_once(tmp_path, {"OPAY_REDIS_URL": url})
    assert ended.returncode == 1
    assert ended.stdout == ""
    assert ended.stderr == f"opay: cannot reach Redis at {url} within 3 s: Connection refused\n"


def test_an_unreachable_ray_ends_the_start_with_one_line(tmp_path: Path, embedded) -> None:
    address = f"127.0.0.1:{free_port()}"
    ended = serve_once(tmp_path, {"OPAY_REDIS_URL": embedded.url, "OPAY_RAY_ADDRESS": address})
    assert ended.returncode == 1
    assert ended.stderr == f"opay: cannot reach Ray at {address} within 3 s: Connection refused\n"
    assert ended.stdout.splitlines() == [line("redis", embedded.url), line("redis", "disconnected")]
    for noise in RAY_NOISE:
        assert noise not in ended.stdout + ended.stderr, noise
