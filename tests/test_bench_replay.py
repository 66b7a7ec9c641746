"""bench/replay.py end to end, briefly: wrk replays signed creates against the session's server,
and what the server stored matches what wrk counted. No figure is asserted, only the check."""

from __future__ import annotations

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
