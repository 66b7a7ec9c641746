"""Fault injection under load (issue 8): real signals to real processes of a real server.

- kill -9 of a shard worker three times, kill -9 of Redis for 5 s, SIGSTOP of a shard for
  15 s, each under 50 concurrent credit writers retrying the same idempotency key until a
  final answer: lost = 0, phantom = 0, overshoot = 0, every key has one answer, and no
  request waits past the shard deadline (plus a margin);
- the full flow (incoming payment -> quote -> outgoing payment) under a shard kill and a
  front-end kill: every acknowledged payment is retrievable and settled at most once.

The scenarios live in tests/faults_support.py (bench/faults.py runs the same ones and
prints the figures). Each test prints its line of figures (shown with `-rA`, and in a
table at the end of the module).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import faults_support as faults

# serial: it bounds how long a request waits under faults, so it runs alone (Makefile).
pytestmark = [pytest.mark.anyio, pytest.mark.serial]


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest):
    lines: list[str] = []
    yield lines
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None and lines:
        reporter.write_line("")
        for line in [faults.Figures.HEADER, *lines]:
            reporter.write_line(line)


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory):
    server = faults.own_server(Path(tmp_path_factory.mktemp("faults")))
    server.start()
    yield server
    faults.stop_server(server)


def report(run: faults.Run, table: list[str]) -> None:
    line = run.figures.line()
    print(faults.Figures.HEADER)
    print(line)
    table.append(line)
    assert not run.violations, "\n".join([*run.violations, "server log:", run.log])


async def test_shard_worker_killed_three_times_under_writers(fault_server, table) -> None:
    report(await faults.shard_kills(fault_server), table)


async def test_redis_killed_for_five_seconds_under_writers(fault_server, table) -> None:
    report(await faults.redis_outage(fault_server), table)


async def test_shard_stopped_fifteen_seconds_under_writers(fault_server, table) -> None:
    report(await faults.shard_stop(fault_server), table)


async def test_full_flow_under_a_shard_kill(fault_server, table) -> None:
    run = await faults.flow_shard_kill(fault_server)
    report(run, table)
    # Issue 8 item 5: a retry with the same quoteId gets its own payment, never quote_used.
    assert run.quote_used_own == 0  # type: ignore[attr-defined]


async def test_full_flow_under_a_front_end_kill(tmp_path: Path, table) -> None:
    with faults.joined_front_end(tmp_path) as server:
        run = await faults.flow_front_end_kill(server)
    report(run, table)
    assert run.quote_used_own == 0  # type: ignore[attr-defined]  (issue 8 item 5)
