"""opay on an existing Ray cluster (OPAY_RAY_ADDRESS), and never on one by accident."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.support import OpayServer, free_port, session_members

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head():
    """A Ray head in a session of its own, so stopping it touches no other Ray here
    (`ray stop` would stop every Ray on the machine)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayop-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None, "ray start --head exited"
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    for pid in session_members(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def test_opay_joins_an_existing_cluster_and_runs_its_shards_there(ray_head: str, tmp_path: Path) -> None:
    # Ray 2.60 turns token authentication on: a process joining the cluster says so.
    server = OpayServer(tmp_path / "joined", extra_env={"OPAY_RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "token"}).start()
    try:
        created = httpx.post(
            f"{server.operator_url}/wallet-addresses",
            json={"path": "dora", "assetCode": "USD", "assetScale": 2},
            headers=server.operator_headers,
        )
        assert created.status_code == 201, server.log()
        names = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True)))" % ray_head],
            env={**os.environ, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert "opay-shard-0" in names and "opay-shard-1" in names
    finally:
        server.stop()


def test_without_an_address_opay_starts_its_own_ray_even_beside_a_running_cluster(ray_head: str, tmp_path: Path) -> None:
    server = OpayServer(tmp_path / "own").start()
    try:
        created = httpx.post(
            f"{server.operator_url}/wallet-addresses",
            json={"path": "eve", "assetCode": "USD", "assetScale": 2},
            headers=server.operator_headers,
        )
        assert created.status_code == 201, server.log()
    finally:
        server.stop()
