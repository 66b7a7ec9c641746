"""Fault injection against a real server: the scenarios of tests/test_faults.py and
bench/faults.py (one copy, both use it).

Faults are real signals to real processes: kill -9 of a Ray shard worker (Ray restarts
it), kill -9 of the server's redis-server (started again here on the same port, config
and data dir, as opay's EmbeddedRedis starts it), SIGSTOP/SIGCONT of a shard worker, and
kill -9 of a front end (a `opay serve` joined to a Ray head and a Redis of their own, so
that killing it kills only the front end). Load is real HTTP on loopback.

Each scenario returns a `Run`: its figures (one line of the table) and the list of
violations it found (empty when the server kept every promise checked).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from opay.persistence.keys import shard_of
from opay.client import Operator
from opay.persistence.embedded_redis import EmbeddedRedis, _die_with_parent, config_path, redis_server_binary
from tests.conftest import World, make_world
from tests.support import OpayServer, free_port, session_members

DEADLINE_SECONDS = 5.0  # OPAY_SHARD_CALL_TIMEOUT_SECONDS of every server started here
MARGIN_SECONDS = 5.0  # a request that takes longer than the deadline plus this is a failure
WRITERS = 50
KEY_GIVE_UP_SECONDS = 60.0  # a key still answered 503 (or nothing) after this has no answer
SETTLE_SECONDS = 40.0
RETRYABLE_TRANSPORT = (httpx.TransportError,)
RAY = str(Path(sys.executable).with_name("ray"))
SERVER_ENV = {"OPAY_SHARD_CALL_TIMEOUT_SECONDS": str(int(DEADLINE_SECONDS)), "OPAY_SHARDS": "2"}


def usd(value: int | str) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


def uuid_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def http_client() -> httpx.AsyncClient:
    # A client timeout well past deadline + margin, so a slow answer is measured, not cut.
    return httpx.AsyncClient(timeout=DEADLINE_SECONDS * 6, limits=httpx.Limits(max_connections=120, max_keepalive_connections=120))


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    scenario: str
    attempts: int = 0
    acknowledged: int = 0
    lost: int = 0
    phantom: int = 0
    overshoot: int = 0
    max_request_seconds: float = 0.0
    recovery_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    HEADER = f"{'scenario':<26} {'attempts':>8} {'acked':>6} {'lost':>5} {'phantom':>7} {'overshoot':>9} {'max req s':>9} {'recovery s':>10}  other"

    def line(self) -> str:
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f}"
        other = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (
            f"{self.scenario:<26} {self.attempts:>8} {self.acknowledged:>6} {self.lost:>5} {self.phantom:>7} "
            f"{self.overshoot:>9} {self.max_request_seconds:>9.2f} {recovery:>10}  {other}"
        )


@dataclass
class Run:
    figures: Figures
    violations: list[str]
    log: str = ""  # the server's log tail when something was violated


# ---------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def members_named(session: int, prefix: str) -> list[int]:
    return sorted(pid for pid in session_members(session) if _cmdline(pid)[:1] and _cmdline(pid)[0].startswith(prefix))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def gcs_address(session: int) -> str:
    """The GCS address of the Ray whose raylet runs in this session (serve's own Ray)."""
    for pid in session_members(session):
        args = _cmdline(pid)
        if args and args[0].endswith("/raylet"):
            for arg in args:
                if arg.startswith("--gcs-address="):
                    return arg.split("=", 1)[1]
    raise RuntimeError(f"no raylet in session {session}")


def shard_pids(ray_address: str, count: int = 2) -> dict[int, int]:
    """shard index -> worker pid, asked of the shards themselves (Shard.stats) by a short
    driver process: which worker hosts which shard is Ray's choice."""
    code = (
        "import json, ray; ray.init(address=%r, namespace='opay', logging_level='ERROR');"
        "stats = [ray.get(ray.get_actor('opay-shard-%%d' %% n).stats.remote(), timeout=30) for n in range(%d)];"
        "print(json.dumps([{'index': s['index'], 'pid': s['pid']} for s in stats]))"
        % (ray_address, count)
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    if done.returncode != 0:
        raise RuntimeError(f"shard lookup failed: {done.stderr[-2000:]}")
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    return {s["index"]: s["pid"] for s in stats}


async def wait_new_shard_worker(session: int, known: set[int], timeout: float = 60) -> int:
    """The pid of the shard worker Ray starts in place of a killed one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [pid for pid in members_named(session, "ray::Shard") if pid not in known and alive(pid)]
        if fresh:
            return fresh[0]
        await asyncio.sleep(0.1)
    raise TimeoutError("Ray did not restart the killed shard worker")


class RestartedRedis:
    """The server's redis-server, started again by us exactly as EmbeddedRedis starts it
    (the binary, opay's redis.conf, the port, the data dir). redis-server rewrites its
    /proc cmdline to "redis-server host:port", so the command line is rebuilt from the
    same pieces EmbeddedRedis uses rather than read back. It dies with this process."""

    def __init__(self, server: OpayServer) -> None:
        self.data_dir = (server.data_dir / "redis").resolve()
        self.port = server.redis_port
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [redis_server_binary(), str(config_path()), "--port", str(self.port), "--dir", str(self.data_dir)]

    def start(self) -> None:
        # Popen from the event loop's (main) thread: PDEATHSIG follows the thread that forked.
        log = open(self.data_dir / "redis.log", "ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()

    async def ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await reader.readline()
                writer.close()
                if line.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError("restarted redis-server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def ray_head() -> Iterator[str]:
    """A Ray head in a session of its own (never `ray stop`: that stops every Ray here)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayf-", dir="/tmp")  # Ray's socket paths have a length limit
    process = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray start --head did not come up")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        for pid in session_members(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def own_server(data_dir: Path) -> OpayServer:
    """`opay serve` with its own Redis and Ray, and a short shard deadline."""
    return OpayServer(data_dir, extra_env=dict(SERVER_ENV))


# ---------------------------------------------------------------- credit load


@dataclass
class Request:
    shard: int
    started: float
    ended: float
    status: str
    retry_after: bool
    key: str = ""
    attempt: int = 0


class CreditLoad:
    """50 writers, each crediting 1 unit to its own payment (writer n -> payment n % P, so
    a stuck shard holds only its own writers), a new idempotency key after each final
    answer, the same key again after a 503 or a cut-off until a final answer comes."""

    def __init__(self, world: World, payments: list[dict], tag: str, writers: int = WRITERS) -> None:
        self.world = world
        self.payments = payments  # {"id", "cap", "shard"}
        self.tag = tag
        self.writers = writers
        self.requests: list[Request] = []
        self.final: dict[str, tuple[int, dict]] = {}  # key -> (status, body) of its final answer
        self.owner: dict[str, dict] = {}  # key -> payment
        self.unanswered: list[str] = []
        self.stop = False
        self.t0 = time.monotonic()

    async def _writer(self, n: int) -> None:
        payment = self.payments[n % len(self.payments)]
        k = 0
        while not self.stop:
            key = f"{self.tag}-{n}-{k}"
            k += 1
            self.owner[key] = payment
            give_up = time.monotonic() + KEY_GIVE_UP_SECONDS
            attempt = 0
            while True:
                attempt += 1
                started = time.monotonic()
                try:
                    answer = await self.world.operator.credit(payment["id"], "1", key)
                except RETRYABLE_TRANSPORT as error:
                    self.requests.append(Request(payment["shard"], started, time.monotonic(), type(error).__name__, False, key, attempt))
                    status = None
                else:
                    status = answer.status_code
                    self.requests.append(Request(payment["shard"], started, time.monotonic(), str(status), "retry-after" in answer.headers, key, attempt))
                if status is not None and status != 503:
                    self.final[key] = (status, answer.json())
                    break
                if time.monotonic() > give_up:
                    self.unanswered.append(key)
                    break
                await asyncio.sleep(0.2 if status == 503 else 0.5)

    async def run(self, faults) -> None:
        """Writers until `faults` (a coroutine) returns; then each finishes its key."""
        self.t0 = time.monotonic()
        writers = [asyncio.create_task(self._writer(n)) for n in range(self.writers)]
        try:
            await faults
        finally:
            self.stop = True
            await asyncio.gather(*writers)

    def first_200_after(self, moment: float, shards: set[int]) -> float | None:
        """Seconds from `moment` until every shard in `shards` answered a 200 to a request sent after it."""
        worst = 0.0
        for shard in shards:
            ends = [r.ended for r in self.requests if r.shard == shard and r.started >= moment and r.status == "200"]
            if not ends:
                return None
            worst = max(worst, min(ends) - moment)
        return worst

    async def check(self, scenario: str, recovery: float | None) -> Run:
        world, violations = self.world, []
        token = self._token
        received = {}
        for payment in self.payments:
            view = await world.client.request("GET", payment["id"], token=token)
            assert view.status_code == 200, view.text
            received[payment["id"]] = int(view.json()["receivedAmount"]["value"])
        acked = Counter(self.owner[key]["id"] for key, (status, _) in self.final.items() if status == 200)
        lost = sum(max(0, acked[p["id"]] - received[p["id"]]) for p in self.payments)
        phantom = sum(max(0, received[p["id"]] - acked[p["id"]]) for p in self.payments)
        overshoot = sum(max(0, received[p["id"]] - p["cap"]) for p in self.payments)
        for name, value in (("lost", lost), ("phantom", phantom), ("overshoot", overshoot)):
            if value:
                violations.append(f"{name} = {value} (received {received}, acknowledged {dict(acked)})")
        if self.unanswered:
            violations.append(f"{len(self.unanswered)} key(s) without a final answer after {KEY_GIVE_UP_SECONDS:.0f} s: {self.unanswered[:5]}")
        statuses = Counter(r.status for r in self.requests)
        unexpected = {s: c for s, c in statuses.items() if s not in ("200", "409", "503")}
        if unexpected:
            violations.append(f"answers other than 200/409/503: {unexpected}")
        finals = Counter(status for status, _ in self.final.values())
        if set(finals) - {200, 409}:
            violations.append(f"final answers other than 200/409: {dict(finals)}")
        no_retry_after = sum(1 for r in self.requests if r.status == "503" and not r.retry_after)
        if no_retry_after:
            violations.append(f"{no_retry_after} 503 answer(s) without Retry-After")
        slowest = max((r.ended - r.started for r in self.requests), default=0.0)
        if slowest > DEADLINE_SECONDS + MARGIN_SECONDS:
            violations.append(f"a request waited {slowest:.2f} s, past the {DEADLINE_SECONDS:.0f} s deadline + {MARGIN_SECONDS:.0f} s")

        # Every key has one answer: asked again, each answers exactly its final answer.
        gate = asyncio.Semaphore(50)

        async def again(key: str) -> tuple[str, httpx.Response]:
            async with gate:
                return key, await world.operator.credit(self.owner[key]["id"], "1", key)

        changed = []
        for key, answer in await asyncio.gather(*(again(key) for key in self.final)):
            first = self.final[key]
            if (answer.status_code, answer.json()) != first:
                changed.append(f"{key}: first {first[0]} {first[1]}, again {answer.status_code} {answer.text}")
        if changed:
            violations.append(f"{len(changed)} key(s) answered differently when asked again: {changed[:3]}")
        for payment in self.payments:
            view = await world.client.request("GET", payment["id"], token=token)
            if int(view.json()["receivedAmount"]["value"]) != received[payment["id"]]:
                violations.append(f"asking every key again changed {payment['id']}: {received[payment['id']]} -> {view.json()['receivedAmount']}")

        figures = Figures(
            scenario,
            attempts=len(self.requests),
            acknowledged=finals[200],
            lost=lost,
            phantom=phantom,
            overshoot=overshoot,
            max_request_seconds=slowest,
            recovery_seconds=recovery,
            extra={
                "keys": len(self.final),
                "409": finals[409],
                "503s": statuses["503"],
                "received": sum(received.values()),
                # Requests answered more than 1 s past the deadline: (shard, status, seconds) of the slowest.
                "past deadline+1s": sum(1 for r in self.requests if r.ended - r.started > DEADLINE_SECONDS + 1),
                "slowest": next(((r.shard, r.status, round(r.ended - r.started, 2)) for r in self.requests if r.ended - r.started == slowest), None),
            },
        )
        return Run(figures, violations)


async def credit_setup(world: World, tag: str) -> CreditLoad:
    """Four capped incoming payments, two on each shard: on each, a small cap (filled during
    the run, so credits past it are refused whole) and a large one."""
    token = await world.token()
    payments = []
    for shard, cap in ((0, 150), (0, 10**9), (1, 150), (1, 10**9)):
        while True:
            created = await world.create_payment(token, incomingAmount=usd(cap))
            assert created.status_code == 201, created.text
            if shard_of(f"ip:{uuid_of(created.json()['id'])}", 2) == shard:
                payments.append({"id": created.json()["id"], "shard": shard, "cap": cap})
                break
    load = CreditLoad(world, payments, f"{tag}-{uuid.uuid4().hex[:6]}")
    load._token = token  # type: ignore[attr-defined]
    return load


# ---------------------------------------------------------------- credit scenarios


async def shard_kills(server: OpayServer, kills: int = 3, apart: float = 3.0, shard: int = 0) -> Run:
    """kill -9 of one shard's worker `kills` times, `apart` seconds apart, under the writers."""
    async with http_client() as http:
        world = await make_world(server, http)
        load = await credit_setup(world, "kill")
        session = server.process.pid
        pid = (await asyncio.to_thread(shard_pids, gcs_address(session)))[shard]
        killed_at: list[float] = []

        async def faults() -> None:
            nonlocal pid
            known = set(members_named(session, "ray::Shard"))
            for _ in range(kills):
                await asyncio.sleep(apart)
                os.kill(pid, signal.SIGKILL)
                killed_at.append(time.monotonic())
                pid = await wait_new_shard_worker(session, known)
                known.add(pid)
            await asyncio.sleep(apart + 1)

        await load.run(faults())
        recoveries = [load.first_200_after(moment, {shard}) for moment in killed_at]
        recovery = None if None in recoveries else max(recoveries)  # type: ignore[type-var]
        run = await load.check("shard kill -9 x3", recovery)
        if recovery is None:
            run.violations.append(f"the killed shard never answered 200 again after a kill: {recoveries}")
        run.figures.extra["recoveries"] = "/".join("-" if r is None else f"{r:.1f}" for r in recoveries)
        return _with_log(run, server)


async def redis_outage(server: OpayServer, down: float = 5.0) -> Run:
    """kill -9 of the server's redis-server, `down` seconds without it, then started again
    on the same port, config and data dir (its AOF)."""
    async with http_client() as http:
        world = await make_world(server, http)
        load = await credit_setup(world, "redis")
        session = server.process.pid
        [redis_pid] = members_named(session, redis_server_binary())
        restarted = RestartedRedis(server)
        window: list[float] = []

        async def faults() -> None:
            await asyncio.sleep(2)
            os.kill(redis_pid, signal.SIGKILL)
            window.append(time.monotonic())
            await asyncio.sleep(down)
            window.append(time.monotonic())  # the fault ends: redis-server is started again
            restarted.start()
            await restarted.ready()
            await asyncio.sleep(5)

        server._restarted_redis = restarted  # type: ignore[attr-defined]  (stopped by whoever stops the server)
        await load.run(faults())
        killed, back = window
        recovery = load.first_200_after(back, {0, 1})
        run = await load.check("redis kill -9 5 s", recovery)
        during = [r for r in load.requests if r.started > killed + 0.2 and r.ended < back]
        outage = Counter(r.status for r in during)
        run.figures.extra["outage answers"] = dict(outage)
        if not during:
            run.violations.append("no request was answered during the Redis outage")
        elif set(outage) != {"503"}:
            odd = [r for r in during if r.status != "503"]
            history = {
                r.key: [(x.status, round(x.started - killed, 2), round(x.ended - killed, 2)) for x in load.requests if x.key == r.key]
                for r in odd[:5]
            }
            run.violations.append(
                f"answers during the Redis outage (killed at 0, back at {back - killed:.2f} s) other than 503: {dict(outage)}; "
                f"keys answered so, each with its (status, sent, answered) history: {history}"
            )
        if recovery is None:
            run.violations.append("no 200 on both shards after Redis came back")
        return _with_log(run, server)


async def shard_stop(server: OpayServer, stopped_for: float = 15.0, shard: int = 0) -> Run:
    """SIGSTOP of one shard's worker for `stopped_for` seconds, then SIGCONT."""
    async with http_client() as http:
        world = await make_world(server, http)
        load = await credit_setup(world, "stop")
        pid = (await asyncio.to_thread(shard_pids, gcs_address(server.process.pid)))[shard]
        window: list[float] = []

        async def faults() -> None:
            await asyncio.sleep(2)
            os.kill(pid, signal.SIGSTOP)
            window.append(time.monotonic())
            try:
                await asyncio.sleep(stopped_for)
            finally:
                os.kill(pid, signal.SIGCONT)
                window.append(time.monotonic())
            await asyncio.sleep(4)

        await load.run(faults())
        stopped, resumed = window
        recovery = load.first_200_after(resumed, {shard})
        run = await load.check(f"shard SIGSTOP {stopped_for:.0f} s", recovery)
        # Sent to the stopped shard while it stays stopped past the deadline: 503 at the deadline.
        on_stopped = [r for r in load.requests if r.shard == shard and stopped + 0.5 < r.started < resumed - DEADLINE_SECONDS - 0.5]
        wrong = [(r.status, round(r.ended - r.started, 2)) for r in on_stopped if r.status != "503" or r.ended - r.started < DEADLINE_SECONDS - 0.5]
        others = [r for r in load.requests if r.shard != shard and stopped < r.started and r.ended < resumed]
        other_answers = Counter(r.status for r in others)
        run.figures.extra["stopped shard"] = dict(Counter(r.status for r in on_stopped))
        run.figures.extra["other shard"] = dict(other_answers)
        if not on_stopped:
            run.violations.append("no request went to the stopped shard while it was stopped")
        if wrong:
            run.violations.append(f"{len(wrong)} request(s) to the stopped shard not answered 503 at the deadline: {wrong[:5]}")
        if not other_answers.get("200") or set(other_answers) - {"200", "409"}:
            run.violations.append(f"the other shard did not keep answering 200 while one was stopped: {dict(other_answers)}")
        if recovery is None:
            run.violations.append("the stopped shard never answered 200 after SIGCONT")
        return _with_log(run, server)


def _with_log(run: Run, server: OpayServer) -> Run:
    if run.violations:
        run.log = server.log()
    return run


# ---------------------------------------------------------------- full flow


@dataclass
class Flow:
    incoming: dict
    quote: dict | None = None
    payment_id: str | None = None  # the 201's id
    first_try: bool = False
    attempts: int = 0
    quote_used_own: int = 0  # retries of this flow's own quote told 409 quote_used
    final: str = ""
    failures: list = field(default_factory=list)  # what the payment create's attempts before the last got


class FlowLoad:
    """Workers each doing incoming payment -> quote (receiveAmount) -> outgoing payment from
    that quote, retrying every step after a 503 or a cut-off, the payment with the same quoteId."""

    def __init__(self, world: World, sender: dict, incoming_token: str, quote_token: str, token: str, workers: int) -> None:
        self.world, self.sender, self.workers = world, sender, workers
        self.incoming_token, self.quote_token, self.token = incoming_token, quote_token, token
        self.flows: list[Flow] = []
        self.statuses: Counter[str] = Counter()
        self.requests: list[tuple[float, float, str]] = []  # (started, ended, step status) of every request
        self.created: list[tuple[float, float, int]] = []  # (started, ended, shard) of each payment create answered 201
        self.stop = False
        self.base = world.server.public_url

    async def _post(self, step: str, url: str, body: dict, token: str, trail: list | None = None) -> httpx.Response | None:
        started = time.monotonic()
        try:
            answer = await self.world.client.request("POST", url, json=body, token=token)
        except RETRYABLE_TRANSPORT as error:
            status = type(error).__name__
            answer = None
        else:
            status = str(answer.status_code)
        self.statuses[f"{step} {status}"] += 1
        if trail is not None:
            trail.append(status)
        self.requests.append((started, time.monotonic(), f"{step} {status}"))
        return answer

    async def _until_created(self, step: str, url: str, body: dict, token: str) -> httpx.Response | None:
        give_up = time.monotonic() + KEY_GIVE_UP_SECONDS
        while time.monotonic() < give_up:
            answer = await self._post(step, url, body, token)
            if answer is not None and answer.status_code != 503:
                return answer
            await asyncio.sleep(0.2)
        return None

    async def _worker(self, n: int) -> None:
        while not self.stop:
            created = await self._until_created(
                "incoming", f"{self.base}/incoming-payments", {"walletAddress": self.world.receiver["id"]}, self.incoming_token
            )
            if created is None or created.status_code != 201:
                continue
            flow = Flow(created.json())
            self.flows.append(flow)
            quoted = await self._until_created(
                "quote",
                f"{self.base}/quotes",
                {"walletAddress": self.sender["id"], "receiver": flow.incoming["id"], "method": "ilp", "receiveAmount": usd(1 + len(self.flows) % 40)},
                self.quote_token,
            )
            if quoted is None or quoted.status_code != 201:
                flow.final = f"quote {None if quoted is None else quoted.status_code}"
                continue
            flow.quote = quoted.json()
            give_up = time.monotonic() + KEY_GIVE_UP_SECONDS
            while True:
                flow.attempts += 1
                sent = time.monotonic()
                answer = await self._post(
                    "payment", f"{self.base}/outgoing-payments", {"walletAddress": self.sender["id"], "quoteId": flow.quote["id"]}, self.token, flow.failures
                )
                if answer is not None and answer.status_code == 201:
                    flow.payment_id = answer.json()["id"]
                    self.created.append((sent, time.monotonic(), shard_of(f"op:{uuid_of(flow.payment_id)}", 2)))
                    flow.first_try = flow.attempts == 1
                    flow.final = "201"
                    break
                if answer is not None and answer.status_code != 503:
                    code = answer.json().get("error", {}).get("code")
                    flow.final = f"{answer.status_code} {code}"
                    if code == "quote_used" and flow.attempts > 1:
                        flow.quote_used_own += 1
                    break
                if time.monotonic() > give_up:
                    flow.final = "no answer"
                    break
                await asyncio.sleep(0.2)

    async def run(self, faults) -> None:
        workers = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]
        try:
            await faults
        finally:
            self.stop = True
            await asyncio.gather(*workers)

    async def check(self, scenario: str, recovery: float | None, server: OpayServer) -> Run:
        world, violations = self.world, []
        quoted = [f for f in self.flows if f.quote is not None]
        acked = [f for f in quoted if f.payment_id is not None]
        # Every acknowledged payment is retrievable, with its quote's terms; and every quote's
        # payment (acknowledged or not: its id is the quote's) is looked up, to see what settled.
        for f in acked:
            if uuid_of(f.payment_id) != uuid_of(f.quote["id"]):
                violations.append(f"payment {f.payment_id} of quote {f.quote['id']} has another id")
        views: dict[str, dict | None] = {}
        deadline = time.monotonic() + SETTLE_SECONDS
        pending = list(quoted)
        while pending:
            still = []
            for f in pending:
                pid = f"{self.base}/outgoing-payments/{uuid_of(f.quote['id'])}"
                answer = await world.client.request("GET", pid, token=self.token)
                if answer.status_code == 404:
                    views[pid] = None
                    continue
                if answer.status_code != 200:
                    still.append(f)
                    continue
                view = answer.json()
                views[pid] = view
                if not view["failed"] and view["sentAmount"]["value"] != view["debitAmount"]["value"]:
                    still.append(f)
            pending = still
            if pending and time.monotonic() > deadline:
                violations.append(f"{len(pending)} payment(s) not settled after {SETTLE_SECONDS:.0f} s")
                break
            if pending:
                await asyncio.sleep(0.5)
        missing = [f.payment_id for f in acked if views.get(f.payment_id) is None]
        if missing:
            violations.append(f"{len(missing)} acknowledged payment(s) not retrievable: {missing[:3]}")
        lost = phantom = overshoot = 0
        for f in quoted:
            pid = f"{self.base}/outgoing-payments/{uuid_of(f.quote['id'])}"
            view = views.get(pid)
            completed = view is not None and not view["failed"] and view["sentAmount"]["value"] == view["debitAmount"]["value"]
            expected = int(f.quote["receiveAmount"]["value"]) if completed else 0
            answer = await world.client.request("GET", f.incoming["id"], token=self.incoming_token)
            received = int(answer.json()["receivedAmount"]["value"])
            if received > expected:
                if completed:
                    overshoot += received - expected  # settled more than once
                else:
                    phantom += received
            elif received < expected:
                lost += expected - received
        if lost or phantom or overshoot:
            violations.append(f"settlement: lost {lost}, phantom {phantom}, settled twice {overshoot} (receivedAmount vs completed receiveAmount)")
        unexpected = {s: c for s, c in self.statuses.items() if s.split(" ", 1)[1] not in ("200", "201", "503", "409") and not s.split(" ", 1)[1].endswith("Error")}
        if unexpected:
            violations.append(f"unexpected answers: {unexpected}")
        no_answer = [f for f in quoted if f.final == "no answer"]
        if no_answer:
            violations.append(f"{len(no_answer)} payment create(s) never answered")
        slowest = max((end - start for start, end, status in self.requests if not status.endswith("Error")), default=0.0)
        if slowest > DEADLINE_SECONDS + MARGIN_SECONDS:
            violations.append(f"a request waited {slowest:.2f} s, past the deadline + margin")
        quote_used_own = sum(f.quote_used_own for f in quoted)
        figures = Figures(
            scenario,
            attempts=sum(f.attempts for f in quoted),
            acknowledged=len(acked),
            lost=lost,
            phantom=phantom,
            overshoot=overshoot,
            max_request_seconds=slowest,
            recovery_seconds=recovery,
            extra={
                "flows": len(quoted),
                "first try": sum(1 for f in acked if f.first_try),
                "on retry": sum(1 for f in acked if not f.first_try),
                "retry after": dict(Counter(x for f in acked if not f.first_try for x in sorted(set(f.failures[:-1])))),
                "quote_used own": quote_used_own,
                "existing": sum(1 for v in views.values() if v is not None),
            },
        )
        run = Run(figures, violations)
        run.quote_used_own = quote_used_own  # type: ignore[attr-defined]
        return _with_log(run, server)


async def flow_setup(server: OpayServer, http: httpx.AsyncClient, workers: int = 8) -> FlowLoad:
    world = await make_world(server, http)
    sender = await world.operator.wallet_address(f"payer-{uuid.uuid4().hex[:10]}", "USD", 2, "Payer")
    incoming_token = await world.token()
    quote_token = await world.token([{"type": "quote", "actions": ["create", "read"]}])
    token = await world.outgoing_token({"debitAmount": usd(10**12)}, wallet=sender)
    return FlowLoad(world, sender, incoming_token, quote_token, token, workers)


def _first_payment_201_after(load: FlowLoad, moment: float, shard: int | None = None) -> float | None:
    """Seconds from `moment` until a payment create sent after it (on `shard`, else any) was answered 201."""
    ends = [end for start, end, on in load.created if start >= moment and shard in (None, on)]
    return min(ends) - moment if ends else None


async def flow_shard_kill(server: OpayServer, shard: int = 0) -> Run:
    """The full flow, with one kill -9 of a shard worker in the middle of it."""
    async with http_client() as http:
        load = await flow_setup(server, http)
        session = server.process.pid
        pid = (await asyncio.to_thread(shard_pids, gcs_address(session)))[shard]
        killed: list[float] = []

        async def faults() -> None:
            known = set(members_named(session, "ray::Shard"))
            await asyncio.sleep(3)
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())
            await wait_new_shard_worker(session, known)
            await asyncio.sleep(4)

        await load.run(faults())
        return await load.check("flow, shard kill -9", _first_payment_201_after(load, killed[0], shard), server)


@contextmanager
def joined_front_end(data_dir: Path) -> Iterator[OpayServer]:
    """A front end (`opay serve` on a Ray head and a Redis of its own), so that its kill -9
    kills the front end alone: the shards live in the head's session."""
    redis_server = EmbeddedRedis(data_dir / "redis", free_port())
    redis_server.start()
    try:
        with ray_head() as address:
            server = OpayServer(
                data_dir / "front",
                extra_env={**SERVER_ENV, "OPAY_RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "OPAY_REDIS_URL": redis_server.url},
            )
            server.start()
            try:
                yield server
            finally:
                if server.process is not None:
                    server.stop()
    finally:
        redis_server.stop()


async def flow_front_end_kill(server: OpayServer) -> Run:
    """The full flow through one front end killed with kill -9 and started again."""
    async with http_client() as http:
        load = await flow_setup(server, http)
        back: list[float] = []

        async def faults() -> None:
            await asyncio.sleep(3)
            await asyncio.to_thread(server.kill9)
            await asyncio.to_thread(server.start)
            back.append(time.monotonic())
            await asyncio.sleep(4)

        await load.run(faults())
        return await load.check("flow, front end kill -9", _first_payment_201_after(load, back[0]), server)


def stop_server(server: OpayServer) -> None:
    if server.process is not None:
        server.stop()
    restarted = getattr(server, "_restarted_redis", None)
    if restarted is not None:
        restarted.stop()
