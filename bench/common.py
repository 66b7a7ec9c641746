"""What bench/load.py and bench/ilp_packets.py share: a phase's measured window, the server's
CPU, the receiver and client setup, loopback-only URLs, and starting a server of their own
(on a Redis Cluster of its own, if asked) when not given one."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay.client import Operator, SignedClient, public_jwk

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _stat(pid: int | str) -> tuple[int, int]:
    """(session, utime+stime in ticks) of a live process; OSError once it is gone."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after the name: state ppid pgrp session ... utime(14) stime(15)
    return int(fields[3]), int(fields[11]) + int(fields[12])


def session_processes(sid: int, with_command: bool = False) -> dict[int, tuple[str, int]]:
    """pid: (its command line, or "" without with_command; utime+stime in ticks) of every live
    process in a session: the server, its Redis and its Ray (Ray's workers, the shards among
    them, run in process groups of their own)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            session, ticks = _stat(entry)
            if session != sid:
                continue
            command = ""
            if with_command:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry)] = (command, ticks)
    return found


def process_ticks(pids: list[int]) -> dict[int, int]:
    """pid: utime+stime in ticks of each of `pids` still alive (processes outside the server's
    session, such as the nodes of a Redis Cluster bench/common.run_main started)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = _stat(pid)[1]
        except OSError:
            continue
    return found


def machine_ticks() -> tuple[int, int, int]:
    """(busy, stolen, all) CPU ticks of the whole machine since boot, over every core
    (/proc/stat): busy is user, nice, system, irq and softirq (guest time is inside user);
    stolen is the time a virtual machine's cores wanted to run but the host ran something else."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


def session_cpu_seconds(sid: int) -> float:
    """utime+stime of every live process in a session, in seconds."""
    return sum(ticks for _, ticks in session_processes(sid).values()) / CLK_TCK


@dataclass
class Result:
    """One phase: its latencies and outcomes (status or reply code: count); each script prints it."""

    name: str
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float | None = None

    def record(self, outcome: str, started: float) -> None:
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @contextmanager
    def measure(self, server_sid: int | None) -> Iterator[float]:
        """Wall and CPU time of the block, which gets its start (monotonic) to set deadlines from."""
        cpu0, wall0 = time.process_time(), time.monotonic()
        server0 = session_cpu_seconds(server_sid) if server_sid else None
        yield wall0
        self.wall_seconds = time.monotonic() - wall0
        self.client_cpu_seconds = time.process_time() - cpu0
        if server_sid and server0 is not None:
            self.server_cpu_seconds = session_cpu_seconds(server_sid) - server0

    def cpu_text(self) -> str:
        server = "" if self.server_cpu_seconds is None else f"  server CPU {self.server_cpu_seconds / self.wall_seconds:.2f} cores"
        return f"{'':<15}load generator CPU {self.client_cpu_seconds / self.wall_seconds:.2f} cores{server}"


async def receiver_and_client(operator: Operator, prefix: str, tag: str, actions: list[str]) -> tuple[dict, SignedClient, str]:
    """A receiving wallet address (USD, scale 2), a client app with a key of its own ("bench-key"),
    and the app's incoming-payment token (`actions`) on the receiver."""
    receiver = await operator.wallet_address(f"{prefix}-receiver-{tag}", "USD", 2, "Bench receiver")
    app_wallet = await operator.wallet_address(f"{prefix}-app-{tag}")
    key = Ed25519PrivateKey.generate()
    (await operator.add_key(app_wallet["id"].rsplit("/", 1)[1], public_jwk(key, "bench-key"))).raise_for_status()
    client = SignedClient(operator.http, app_wallet["id"], key, "bench-key")
    grant = await client.grant(receiver["authServer"], [{"type": "incoming-payment", "actions": actions}])
    return receiver, client, grant["access_token"]["value"]


def loopback(url: str) -> str:
    if urlsplit(url).hostname not in LOOPBACK:
        raise SystemExit(f"refusing {url}: this load script only targets loopback")
    return url.rstrip("/")


def check_server_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.public_url) != bool(args.operator_url):
        parser.error("give both --public-url and --operator-url, or neither")
    if args.public_url and not args.operator_token:
        parser.error("--operator-token (or OPAY_OPERATOR_TOKEN) is needed with a running server")


def run_main(args: argparse.Namespace, main: Callable[..., Coroutine[Any, Any, Any]], *, data_prefix: str, extra_env: dict[str, str], up_details: str) -> int:
    """`main(args, public_url, operator_url, operator_token, server_sid)` against --public-url, or
    else against a server started here in a temp dir (as the tests do), and stopped after.
    The server takes `args.shards` (OPAY_SHARDS) and, where a script has them,
    `args.frontend_processes` (OPAY_FRONTEND_PROCESSES) and `args.redis_cluster_masters`: with
    M >= 1 a Redis Cluster of M masters and no replicas (tests/redis_cluster.py) is started in the
    temp dir first, the server is given it (OPAY_REDIS_URL, OPAY_REDIS_WAIT_REPLICAS=0) instead of
    its embedded Redis, and it is stopped after the server. Its nodes are outside the server's
    session, so main finds their pids in `args.outside_pids` ({role: [pid, ...]}, empty without).
    `up_details` is formatted with public, operator, shards, frontends, redis and data for the
    "server up" line."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    args.outside_pids = {}
    if args.public_url:
        asyncio.run(main(args, loopback(args.public_url), loopback(args.operator_url), args.operator_token, None))
        return 0
    from tests.redis_cluster import RedisCluster
    from tests.support import OpayServer

    with tempfile.TemporaryDirectory(prefix=data_prefix) as data_dir:
        extra = dict(extra_env)
        if args.shards:
            extra["OPAY_SHARDS"] = str(args.shards)
        if getattr(args, "frontend_processes", 0):
            extra["OPAY_FRONTEND_PROCESSES"] = str(args.frontend_processes)
        masters = getattr(args, "redis_cluster_masters", 0)
        cluster = None
        redis = "embedded"
        if masters:
            started = time.monotonic()
            cluster = RedisCluster(Path(data_dir) / "redis-cluster", masters=masters, replicas_each=0).start()
            extra.update({"OPAY_REDIS_URL": cluster.url, "OPAY_REDIS_WAIT_REPLICAS": "0"})
            args.outside_pids = {"redis": [process.pid for process in cluster.processes.values()]}
            redis = f"Redis Cluster of {masters} master{'s' if masters > 1 else ''}, no replicas ({cluster.url})"
            print(f"Redis Cluster up in {time.monotonic() - started:.1f} s: {masters} masters on ports {', '.join(map(str, cluster.ports))}", flush=True)
        try:
            server = OpayServer(Path(data_dir), extra)
            started = time.monotonic()
            server.start()
            env = server.env()
            details = up_details.format(
                public=server.public_url, operator=server.operator_url, shards=env["OPAY_SHARDS"],
                frontends=env["OPAY_FRONTEND_PROCESSES"], redis=redis, data=data_dir,
            )
            print(f"server up in {time.monotonic() - started:.1f} s: {details}", flush=True)
            try:
                assert server.process is not None
                asyncio.run(main(args, server.public_url, server.operator_url, server.operator_token, server.process.pid))
            finally:
                server.stop()
        finally:
            if cluster is not None:
                cluster.stop()
    return 0
