"""Many front-end processes (issue 12, items 3 and 4): one real `opay serve` with
OPAY_FRONTEND_PROCESSES=2 (a supervisor and two children on the same ports). Both children
answer; kill -9 of one under a stream of signed creates and operator credits loses no
acknowledged write, the other answers meanwhile and the supervisor starts a replacement;
Ctrl-C stops them all. Against the same Redis and Ray: `opay frontend` joins and serves,
`opay head` runs, and a front end with another shard count or without OPAY_RAY_ADDRESS
refuses to start with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import make_world
from tests.support import OpayServer, free_port

pytestmark = pytest.mark.anyio
WAIT_SECONDS = 60


def children(parent: int) -> set[int]:
    """pids of the supervisor's `opay frontend` children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"frontend" in command:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def serving_pids(server: OpayServer) -> set[int]:
    """Processes that logged a request line (a front end's lines carry its pid)."""
    pids = set()
    for line in full_log(server).splitlines():
        if line.startswith("{") and '"msg":"request"' in line:
            pids.add(json.loads(line)["pid"])
    return pids


def full_log(server: OpayServer) -> str:
    return server.log_path.read_text(errors="replace")  # server.log() is its tail only


def child_env(server: OpayServer, pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def opay(command: str, server: OpayServer, data_dir: Path, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in server.env().items() if not k.startswith("OPAY_")}
    base.update({"OPAY_DATA_DIR": str(data_dir), "OPAY_OPERATOR_TOKEN": server.operator_token, "OPAY_PUBLIC_URL": server.public_url, **env})
    return subprocess.Popen([sys.executable, "-m", "opay.cli", command], env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(Path(tmp_path_factory.mktemp("frontends")), {"OPAY_FRONTEND_PROCESSES": "2"}).start()
    yield process
    if process.process is not None:
        process.kill9()


async def test_both_children_serve_and_a_killed_one_is_replaced_losing_no_write(server: OpayServer) -> None:
    assert server.process is not None
    first = children(server.process.pid)
    assert len(first) == 2, first
    # New connections are spread by the kernel over both children's sockets.
    for _ in range(30):
        answer = httpx.get(f"{server.operator_url}/healthz", headers={"connection": "close"})
        assert answer.status_code == 200
    assert serving_pids(server) >= first

    async with httpx.AsyncClient(timeout=30) as http:
        world = await make_world(server, http)
        token = await world.token()
        target = (await world.create_payment(token)).json()["id"]
        created: list[str] = []
        credited: list[str] = []
        statuses: list[int] = []
        acknowledged_at: list[float] = []
        victim = min(first)
        killed_at: list[float] = []

        async def creates(stop_at: float) -> None:
            while time.monotonic() < stop_at:
                try:
                    answer = await world.create_payment(token)
                except httpx.TransportError:  # cut off with the killed child: its outcome is unknown
                    continue
                statuses.append(answer.status_code)
                if answer.status_code == 201:
                    created.append(answer.json()["id"])
                    acknowledged_at.append(time.monotonic())

        async def credits(n: int, stop_at: float) -> None:
            k = 0
            while time.monotonic() < stop_at:
                key = f"c{n}-{k}"
                while True:  # the same key until an answer is known: asked again, never twice
                    try:
                        answer = await world.operator.credit(target, "1", key)
                        break
                    except httpx.TransportError:
                        continue
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    credited.append(key)
                    acknowledged_at.append(time.monotonic())
                k += 1

        async def killer() -> None:
            await anyio.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            killed_at.append(time.monotonic())

        stop_at = time.monotonic() + 4.0
        async with anyio.create_task_group() as group:
            group.start_soon(creates, stop_at)
            group.start_soon(creates, stop_at)
            group.start_soon(credits, 0, stop_at)
            group.start_soon(credits, 1, stop_at)
            group.start_soon(killer)
        assert killed_at and not alive(victim)
        assert set(statuses) <= {200, 201}, statuses
        assert len(created) > 10 and len(credited) > 10
        # The survivor answered while the supervisor was still replacing the dead one.
        assert sum(at > killed_at[0] for at in acknowledged_at) > 10
        # Every acknowledged write is stored.
        for payment in created:
            stored = await world.operator.get(f"/incoming-payments/{payment.rsplit('/', 1)[1]}")
            assert stored.status_code == 200, stored.text
        stored = (await world.operator.get(f"/incoming-payments/{target.rsplit('/', 1)[1]}")).json()
        assert stored["receivedAmount"]["value"] == str(len(credited))

        # The supervisor replaced the dead child, said so, and the new one serves.
        deadline = time.monotonic() + WAIT_SECONDS
        while len(now := children(server.process.pid)) < 2 or "replaces" not in full_log(server):
            assert time.monotonic() < deadline, server.log()
            await anyio.sleep(0.2)
        (replacement,) = now - first
        log = full_log(server)
        assert f"front-end process {victim} exited with -9" in log and f"front-end process {replacement} replaces {victim}" in log
        while replacement not in serving_pids(server):
            assert time.monotonic() < deadline, "the replacement never served"
            for _ in range(10):
                answer = httpx.get(f"{server.operator_url}/healthz", headers={"connection": "close"})
                assert answer.status_code == 200
        again = await world.create_payment(token)
        assert again.status_code == 201, again.text


async def test_roles_join_the_deployment_and_refuse_another_shard_count(server: OpayServer, tmp_path: Path) -> None:
    assert server.process is not None
    env = child_env(server, min(children(server.process.pid)))
    joined = {"OPAY_REDIS_URL": env["OPAY_REDIS_URL"], "OPAY_RAY_ADDRESS": env["OPAY_RAY_ADDRESS"], "RAY_AUTH_MODE": "token"}

    refused = opay("frontend", server, tmp_path / "a", OPAY_SHARDS="3", **joined)
    no_ray = opay("frontend", server, tmp_path / "b", OPAY_REDIS_URL=server.redis_url)
    for process, line in (
        (refused, "opay: refusing to start: OPAY_SHARDS=3, but this deployment has 2 shards"),
        (no_ray, "opay: OPAY_RAY_ADDRESS not set: opay frontend joins a cluster's Redis and Ray"),
    ):
        out, err = process.communicate(timeout=WAIT_SECONDS)
        assert process.returncode == 2, (out, err)
        assert len(err.splitlines()) == 1 and err.startswith(line), err
    assert "not set" in opay("head", server, tmp_path / "c").communicate(timeout=WAIT_SECONDS)[1]

    # A head of its own against the same Redis and Ray: it finds the shards and runs the timers.
    head = opay("head", server, tmp_path / "head", **joined)
    port, operator_port = free_port(), free_port()
    front = opay(
        "frontend", server, tmp_path / "front", OPAY_PORT=str(port), OPAY_OPERATOR_PORT=str(operator_port), OPAY_FRONTEND_PROCESSES="1", **joined
    )
    try:
        assert head.stdout is not None and front.stdout is not None
        for process in (head, front):
            lines = []
            while not lines or not lines[-1].startswith("opay ready"):
                line = process.stdout.readline()
                assert line, (lines, process.stderr.read() if process.poll() is not None else "")
                lines.append(line)
        # What one front end stores, another reads: the same Redis and shards.
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(
                f"http://127.0.0.1:{operator_port}/wallet-addresses", json={"path": "frank", "assetCode": "USD", "assetScale": 2}, headers=server.operator_headers
            )
            assert answer.status_code == 201, answer.text
            assert (await http.get(f"{server.public_url}/frank")).status_code == 200
        for process in (front, head):
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=WAIT_SECONDS)
            assert process.returncode == 0 and "opay stopped" in out
    finally:
        for process in (front, head):
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_ctrl_c_stops_every_child(server: OpayServer) -> None:
    assert server.process is not None
    pids = children(server.process.pid)
    assert len(pids) == 2
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=WAIT_SECONDS) == 0
    server.process = None
    assert not any(alive(pid) for pid in pids)
    assert "opay front ends   stopped" in server.log() and server.log().rstrip().endswith("opay stopped"), server.log()


def test_cluster_yaml_is_a_launcher_config_that_starts_both_roles() -> None:
    """What `ray up cluster.yaml` checks first: the launcher's own schema, after its local
    provider's defaults are filled in (the same two steps `ray up` takes)."""
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).parents[1] / "cluster.yaml").read_text())
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert config["auth"]["ssh_user"] and config["file_mounts"] == {"~/opay": "."}
    validate_config(prepare_config(copy.deepcopy(config)))
    head, workers = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "ray start --head --port=6380" in head and "opay head" in head and "nohup" in head
    assert "ray start --address=$RAY_HEAD_IP:6380" in workers and "opay frontend" in workers
    setup = " ".join(config["setup_commands"])
    assert "OPAY_REDIS_URL=" in setup and "OPAY_PUBLIC_URL=" in setup and "pip install" in setup
