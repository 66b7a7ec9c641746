"""A Ray node dies under credit load: its shards come back on a surviving node and serve
again; no acknowledged credit is lost and no payment goes past its cap.

Three Ray nodes on this machine, each `ray start` in a session of its own (so one node's
raylet, agents and workers are killed together, and `ray stop`, machine-wide, is never
needed): a head with no CPU and no shard slot, and two workers with two shard slots each
(either can host both shards). A real `opay serve` joins it; its driver attaches to the
head's raylet (Ray prefers the head among several nodes on one host), so killing a worker
node takes shards only, never the front end. The head's health checks are shortened so
the test spends seconds, not Ray's default quarter of a minute, noticing the death."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from opay.persistence.keys import shard_of
from opay.http.incoming_payments import entity_id
from tests.credit_load import CreditLoad
from tests.support import OpayServer, free_port, session_members

# serial: it bounds how long a request waits under faults, so it runs alone (Makefile).
pytestmark = [pytest.mark.anyio, pytest.mark.serial]

RAY = str(Path(sys.executable).with_name("ray"))
SHARDS = 2
# Node death is noticed by the head's health checks of each raylet. Ray's defaults (first
# check after 5 s, every 3 s, 5 failures in a row) take about 15 s; these about 3 s.
FAST_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
# Bounds of the polls below, never asserted as durations: a service that does not come
# back within them is a failure, however slow the machine.
RECOVERY_BOUND_SECONDS = 90
CAPS = [200, 600, 100_000, 10**12]

# Where every live actor runs and which nodes are up, from Ray's state API (served by the
# head's dashboard), in a process of its own.
STATE = """
import json, sys, time
from ray.util.state import list_actors, list_nodes
deadline = time.monotonic() + 120
while True:
    nodes = [n for n in list_nodes(sys.argv[1], filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)]
    if len(nodes) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.3)
actors = list_actors(sys.argv[1], filters=[("state", "=", "ALIVE")], detail=True, raise_on_missing_output=False)
print(json.dumps({
    "nodes": {n.node_id: sorted(k for k in n.resources_total if k.startswith("opay_node_")) for n in nodes},
    "shards": {a.name: a.node_id for a in actors if a.name.startswith("opay-shard-")},
}))
"""


class RayNode:
    """One Ray node: `ray start` in a session of its own, which its raylet, agents and
    workers stay in after it returns (it returns once the node has joined)."""

    def __init__(self, temp_dir: str, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [RAY, "start", "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
             "--min-worker-port=0", "--max-worker-port=0", "--object-store-memory=100000000", *args],
            env={**os.environ, **RAY_ENV, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_joined(self) -> None:
        output, _ = self.process.communicate(timeout=180)
        assert self.process.returncode == 0, f"ray start of node {self.name}: {output.decode(errors='replace')[-3000:]}"

    def kill9(self) -> None:
        """The node's loss: kill -9 of its raylet, its agents and its workers at once."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in session_members(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def ray_state(address: str, nodes: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STATE, address, str(nodes)],
        env={**os.environ, **RAY_ENV},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def node_of(state: dict, node_id: str) -> str:
    marks = state["nodes"].get(node_id, [])
    return marks[0].removeprefix("opay_node_") if marks else "head"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    temp_dir = tempfile.mkdtemp(prefix="rayno-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = {"head": RayNode(temp_dir, "head", ["--head", f"--port={port}", "--num-cpus=0", f"--dashboard-port={free_port()}",
                                                f"--ray-client-server-port={free_port()}"], FAST_DEATH)}
    try:
        nodes["head"].wait_joined()
        # One after the other: two raylets starting at once on one IP may each take the other's
        # registration for their own, and one start then times out.
        for name in ("a", "b"):
            slots = json.dumps({"shard_slot": SHARDS, f"opay_node_{name}": 1})
            nodes[name] = RayNode(temp_dir, name, [f"--address={address}", "--num-cpus=1", f"--resources={slots}"], {})
            nodes[name].wait_joined()
        server = OpayServer(
            tmp_path_factory.mktemp("node-loss"),
            extra_env={**RAY_ENV, "OPAY_RAY_ADDRESS": address, "OPAY_SHARDS": str(SHARDS), "OPAY_SHARD_CALL_TIMEOUT_SECONDS": "4"},
        ).start()
        try:
            yield address, nodes, server
        finally:
            server.stop()
    finally:
        for node in reversed(nodes.values()):
            node.kill9()
        shutil.rmtree(temp_dir, ignore_errors=True)  # the nodes' logs and sockets


async def test_a_node_dies_under_credit_load_and_its_shards_serve_again_elsewhere(cluster) -> None:
    address, nodes, server = cluster
    before = ray_state(address, 3)
    hosts = {name: node_of(before, node_id) for name, node_id in before["shards"].items()}
    assert sorted(hosts) == [f"opay-shard-{n}" for n in range(SHARDS)], before
    assert sorted(hosts.values()) == ["a", "b"], f"shards not spread over the shard nodes: {hosts}"
    victim = hosts["opay-shard-0"]

    headers = server.operator_headers
    async with httpx.AsyncClient(timeout=60, headers=headers, limits=httpx.Limits(max_connections=50)) as http:
        created = await http.post(f"{server.operator_url}/wallet-addresses", json={"path": "nodeloss", "assetCode": "USD", "assetScale": 2})
        assert created.status_code == 201, created.text
        wallet = created.json()["id"]
        payments: dict[str, tuple[int, int]] = {}  # url -> (cap, shard)
        while {shard for _, shard in payments.values()} != set(range(SHARDS)) or len(payments) < 2 * len(CAPS):
            cap = CAPS[len(payments) % len(CAPS)]
            made = await http.post(
                f"{server.operator_url}/incoming-payments",
                json={"walletAddress": wallet, "incomingAmount": {"value": str(cap), "assetCode": "USD", "assetScale": 2}},
            )
            assert made.status_code == 201, made.text
            url = made.json()["id"]
            payments[url] = (cap, shard_of(entity_id(url.rsplit("/", 1)[1]), SHARDS))
        moved = [url for url, (_, shard) in payments.items() if hosts[f"opay-shard-{shard}"] == victim]
        load = CreditLoad(http, server.operator_url, {url: cap for url, (cap, _) in payments.items()}, seed=12)

        async def lose_the_node() -> None:
            nodes[victim].kill9()
            load.faulted()

        # Served again: a credit to a payment of the lost node's shard, sent after the kill, acked.
        await load.around(lose_the_node, moved, RECOVERY_BOUND_SECONDS, server.log)
        await load.settle_and_check()

    after = ray_state(address, 2)
    assert set(after["shards"]) == set(hosts), after
    survivor = ({"a", "b"} - {victim}).pop()
    assert {node_of(after, node_id) for node_id in after["shards"].values()} == {survivor}, after
    print(f"\nnode {victim} killed; by its moved shard: {load.summary()}")
