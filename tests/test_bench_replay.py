"""bench/replay.py end to end, briefly: wrk replays signed creates against the session's server,
and against a server replay starts itself (two front-end processes, a Redis Cluster), and what
the server stored matches what wrk counted. No figure is asserted, only the checks, and that
a cluster's nodes are in the CPU figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import OpayServer

ROOT = Path(__file__).resolve().parent.parent


def test_replayed_creates_are_all_stored(server: OpayServer) -> None:
    done = subprocess.run(
        [sys.executable, "bench/replay.py", "--quick", "--seconds", "1", "--scenario", "creates",
         "--public-url", server.public_url, "--operator-url", server.operator_url, "--operator-token", server.operator_token],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    check = next(line for line in output.splitlines() if "check:" in line)
    # "check: N incoming payments listed == N answered 201: OK", with N > 0
    listed, answered = check.split("check: ", 1)[1].split(" incoming payments listed == ")
    assert listed == answered.split(" answered 201")[0] and int(listed.replace(",", "")) > 0, check
    assert check.endswith(": OK") and "checks: all passed" in output, output


def test_replayed_creates_on_a_redis_cluster_with_two_front_ends(tmp_path: Path) -> None:
    """replay.py's own server, with two front-end processes on a 3-master Redis Cluster it starts:
    the creates are all stored, and the cluster's nodes (outside the server's session) are in
    the redis figure, which would be 0 without them (the server runs no Redis of its own)."""
    figures = tmp_path / "replay.json"
    done = subprocess.run(
        [sys.executable, "bench/replay.py", "--quick", "--seconds", "1", "--scenario", "creates",
         "--redis-cluster-masters", "3", "--frontend-processes", "2", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "front-end processes 2; Redis: Redis Cluster of 3 masters" in output, output
    assert "checks: all passed" in output and ": OK" in output, output
    creates = json.loads(figures.read_text())["scenarios"]["creates"]
    assert creates["answered"] > 0 and creates["cpu_ms_per_request"]["redis"] > 0, creates
