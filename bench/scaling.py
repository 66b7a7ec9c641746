"""How throughput follows front-end processes, shards and Redis Cluster masters on this machine:
bench/replay.py's `creates` and `credits` (one round each) against a server of its own per
configuration, and one table of them all.

  .venv/bin/python bench/scaling.py        # front ends 1,2,4 x shards 2,4,8, then Redis Cluster masters 1 vs 3 (~15 min on 2 cores)
  .venv/bin/python bench/scaling.py --frontend-processes 1,2 --shards 2 --masters 1,3
  .venv/bin/python bench/scaling.py --masters none          # the grid only
  .venv/bin/python bench/scaling.py --quick                 # 1 front end x 2 shards and a 1-master cluster, 2 s runs

Each configuration is one `bench/replay.py --json` run in a process (and session) of its own,
bounded by --run-timeout: past it the run is interrupted (SIGINT, so it stops its server and
cluster), then killed. bench/README.md says what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ROOT / "bench" / "replay.py"
SCENARIOS = ("creates", "credits")
ROLES = {"front end": "fe", "shards": "sh", "redis": "redis"}  # the roles tabulated, as abbreviated in the table
STOP_SECONDS = 90  # after SIGINT, how long a timed-out run gets to stop its server and cluster


@dataclass(frozen=True)
class Config:
    frontends: int
    shards: int
    masters: int  # 0: the server's embedded Redis

    @property
    def label(self) -> str:
        redis = f", cluster {self.masters}m" if self.masters else ""
        return f"{self.frontends} fe x {self.shards} sh{redis}"

    def argv(self) -> list[str]:
        return ["--frontend-processes", str(self.frontends), "--shards", str(self.shards), "--redis-cluster-masters", str(self.masters)]


ONE_PROCESS = 0.75  # cores: a Python process's event loop is at its limit well before 1.0 (see bench/README.md)


def ran_out(figures: dict) -> str:
    """What limited a run: every core busy, else one process near a whole core, else neither
    (the load's own round trips and waits: 50 connections, each one request at a time)."""
    cores, busy, stolen = figures["cores"], figures["machine_cores"], figures["stolen_cores"]
    processes = {**(figures["busiest_cores"] or {}), "wrk": figures["wrk_cores"]}
    role, top = max(processes.items(), key=lambda item: item[1])
    if busy + stolen >= 0.9 * cores:
        return f"cores ({busy:.2f} of {cores} busy" + (f", {stolen:.2f} stolen)" if stolen >= 0.05 else ")")
    if top >= ONE_PROCESS:
        return f"{role} (one process at {top:.2f} core)"
    return f"neither ({busy:.2f} of {cores} busy; busiest: {role} {top:.2f} core)"


def run_one(config: Config, args: argparse.Namespace, work: Path, n: int) -> tuple[dict | None, str, float]:
    """(replay's --json, or None if it failed; its output; seconds it took)."""
    out, log = work / f"run-{n}.json", work / f"run-{n}.log"
    command = [sys.executable, str(REPLAY), "--scenario", ",".join(SCENARIOS), "--rounds", "1", "--seconds", str(args.seconds),
               "--payments", str(args.payments), "--json", str(out), *config.argv()]
    started = time.monotonic()
    with open(log, "w") as logged:
        # A session of its own: a timeout's SIGINT reaches replay, its wrk and its cluster's nodes (the
        # server replay started is in a session of its own, and replay's cleanup stops it).
        replay = subprocess.Popen(command, cwd=ROOT, stdout=logged, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            replay.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(replay.pid, signal.SIGINT)
            try:
                replay.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(replay.pid, signal.SIGKILL)
                replay.wait()
            with open(log, "a") as logged_too:
                logged_too.write(f"\nbench/scaling.py: interrupted after --run-timeout {args.run_timeout:g} s\n")
    output = log.read_text(errors="replace")
    figures = json.loads(out.read_text()) if out.exists() else None
    if replay.returncode != 0 and figures is not None:
        figures["failures"] = figures["failures"] or [f"replay exited {replay.returncode}"]
    return figures, output, time.monotonic() - started


def row(config: Config, result: dict | None, took: float) -> list[str]:
    if result is None:
        return [config.label] + ["failed"] * 4 + ["", "", "", f"no figures ({took:.0f} s)"]
    cells = [config.label]
    scenarios = [result["scenarios"].get(name) for name in SCENARIOS]
    for figures in scenarios:
        cells += [f"{figures['rate']:,.0f}", f"{figures['p99_ms']:,.0f}"] if figures else ["-", "-"]
    for figures in scenarios:
        cpu = figures and figures["cpu_ms_per_request"]
        cells.append("/".join(f"{cpu[role]:.2f}" for role in ROLES) if cpu else "-")
    cells.append(" / ".join(f"{figures['machine_cores']:.2f} ({figures['stolen_cores']:.2f})" if figures else "-" for figures in scenarios))
    limits = "; ".join(f"{name} {ran_out(figures)}" for name, figures in zip(SCENARIOS, scenarios) if figures)
    if result["failures"]:
        limits += f"; CHECKS FAILED: {'; '.join(result['failures'])}"
    return cells + [limits]


HEADER = ["config", "creates/s", "p99 ms", "credits/s", "p99 ms", "CPU ms/create fe/sh/redis", "CPU ms/credit fe/sh/redis",
          "busy (stolen) cores cr / cd", "ran out"]
RIGHT = {1, 2, 3, 4}  # numeric columns, right-aligned


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = []
    for cells in [HEADER, *rows]:
        lines.append("  ".join(c.rjust(w) if i in RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return "\n".join(lines)


def numbers(text: str, what: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{what}: a comma-separated list of numbers (or none), not {text!r}")
    if any(v < 1 for v in values):
        raise SystemExit(f"{what}: every number at least 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontend-processes", default="1,2,4", help="the grid's front-end processes (default 1,2,4; none: no grid)")
    parser.add_argument("--shards", default="2,4,8", help="the grid's shard counts (default 2,4,8)")
    parser.add_argument("--masters", default="1,3", help="Redis Cluster masters, each one run after the grid (default 1,3; none: no cluster runs)")
    parser.add_argument("--cluster-frontend-processes", type=int, default=1, help="front-end processes of the cluster runs (default 1)")
    parser.add_argument("--cluster-shards", type=int, default=4, help="shards of the cluster runs (default 4)")
    parser.add_argument("--seconds", type=float, help="each scenario's window (default 10; --quick 2)")
    parser.add_argument("--payments", type=int, help="credits: incoming payments the credits go round (default 2000; --quick 200)")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds a configuration may take, server start included (default 300)")
    parser.add_argument("--quick", action="store_true", help="1 front end x 2 shards and a 1-master cluster, 2 s runs (development)")
    args = parser.parse_args(argv)
    if args.quick:
        args.frontend_processes, args.shards, args.masters = "1", "2", "1"
        args.cluster_shards = 2
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.payments = args.payments or (200 if args.quick else 2000)
    grid = [Config(f, s, 0) for f in numbers(args.frontend_processes, "--frontend-processes") for s in numbers(args.shards, "--shards")]
    cluster = [Config(args.cluster_frontend_processes, args.cluster_shards, m) for m in numbers(args.masters, "--masters")]
    args.configs = grid + cluster
    if not args.configs:
        parser.error("nothing to run: give --frontend-processes and --shards, or --masters")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    print(f"{len(configs)} configurations, creates and credits {args.seconds:g} s each (--payments {args.payments}), "
          f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows: list[list[str]] = []
    failed = 0
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opay-scaling-") as work:
        for n, config in enumerate(configs, 1):
            result, output, took = run_one(config, args, Path(work), n)
            rows.append(row(config, result, took))
            if result is None or result["failures"]:
                failed += 1
                print(f"[{n}/{len(configs)}] {config.label}: FAILED after {took:.0f} s; replay's output ends:\n{output[-3000:]}", flush=True)
                continue
            figures = "  ".join(f"{name} {f['rate']:,.0f}/s p99 {f['p99_ms']:,.0f} ms" for name, f in result["scenarios"].items())
            print(f"[{n}/{len(configs)}] {config.label}: {figures}  ({took:.0f} s)", flush=True)
    print(f"\n{table(rows)}\n", flush=True)
    print(f"fe: front-end processes (OPAY_FRONTEND_PROCESSES), sh: shards (OPAY_SHARDS), cluster Nm: a Redis Cluster of N masters, "
          f"no replicas, instead of the embedded Redis; {len(configs)} runs in {(time.monotonic() - begun) / 60:.1f} min", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
