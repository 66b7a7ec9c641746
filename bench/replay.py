"""Replay requests signed just before the run against opay with wrk, then check what the server stored.

  .venv/bin/python bench/replay.py                        # own server; 3 rounds of 20 s per scenario
  .venv/bin/python bench/replay.py --quick                # 1 round of 3 s (development, the test)
  .venv/bin/python bench/replay.py --scenario creates,hot --rounds 5 --seconds 10
  .venv/bin/python bench/replay.py --frontend-processes 2 --shards 4 --redis-cluster-masters 3   # 2 front ends, on a Redis Cluster
  .venv/bin/python bench/replay.py --public-url http://127.0.0.1:8000 \
      --operator-url http://127.0.0.1:8001 --operator-token "$OPAY_OPERATOR_TOKEN"   # no CPU figures

Scenarios (connections):
  creates  POST /incoming-payments, GNAP token + RFC 9421 signature (50)
  gets     GET /incoming-payments/{id}, signed, over --get-payments payments (50)
  credits  operator POST /credits, amount 1, distinct idempotency keys, over --payments payments (50)
  hot      the same on one incoming payment with an incomingAmount cap (256)
  flow     incoming payment -> quote -> outgoing payment -> GETs until it is completed (50)
The Lua scripts are in bench/replay/; bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import percentile, session_processes  # noqa: E402
from bench.load import interactive_outgoing_token  # noqa: E402
from opay.client import Operator, SignedClient  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent / "replay"
SCENARIOS = ("creates", "gets", "credits", "hot", "flow")
CONNECTIONS = {"creates": 50, "gets": 50, "credits": 50, "hot": 256, "flow": 50}
AMOUNT = 1000  # incomingAmount of the created payments (USD, scale 2), and each flow's
MAX_SECONDS = 240
DRAIN_SECONDS = 30  # wrk's own cap past the window; a run ends as soon as every answer is in
ROLES = ("front end", "shards", "redis", "ray other")
CORES = os.cpu_count() or 1


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not on PATH: installing Debian's package (apt-get install -y wrk)", flush=True)
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    for command in (apt + ["install", "-y", "wrk"], apt + ["update"], apt + ["install", "-y", "wrk"]):
        if subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0 and shutil.which("wrk"):
            return shutil.which("wrk") or "wrk"
    raise SystemExit(
        "bench/replay.py needs wrk: `apt-get install -y wrk` failed (not root, no sudo, or no Debian archive); install it and run again"
    )


def raw_request(method: str, url: str, headers: dict[str, str], body: bytes) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def write_requests(path: Path, requests: list[bytes]) -> Path:
    with open(path, "wb") as out:
        for request in requests:
            out.write(b"%d\n" % len(request) + request)
    return path


def processes(sid: int, outside: dict[str, list[int]]) -> dict[int, tuple[str, int]]:
    """pid: (role, utime+stime in ticks) of every process in the server's session, and of the
    processes it uses outside it (`outside`: role: pids, the nodes of a Redis Cluster)."""
    found = {}
    for pid, (command, ticks) in session_processes(sid, with_command=True).items():
        if "redis-server" in command:
            role = "redis"
        elif command.startswith("ray::"):  # Ray's workers name themselves after their actor
            role = "shards" if "Shard" in command else "ray other"
        elif "/ray/" in command:  # Ray's daemons, all run from its package
            role = "ray other"
        else:  # `opay serve` (its uvicorn and its Ray driver), and any front end it starts
            role = "front end"
        found[pid] = (role, ticks)
    for role, pids in outside.items():
        found.update({pid: (role, ticks) for pid, ticks in common.process_ticks(pids).items()})
    return found


def cpu_seconds(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> tuple[dict[str, float], dict[str, float]]:
    """CPU by role between two snapshots, and the most any one process of each role spent; a
    process started in between counts from zero."""
    spent = dict.fromkeys(ROLES, 0.0)
    busiest = dict.fromkeys(ROLES, 0.0)
    for pid, (role, ticks) in after.items():
        mine = (ticks - before.get(pid, (role, 0))[1]) / common.CLK_TCK
        spent[role] += mine
        busiest[role] = max(busiest[role], mine)
    return spent, busiest


@dataclass
class Run:
    """One wrk run, from the report bench/replay/common.lua writes, and the CPU it cost."""

    name: str
    connections: int
    report: dict
    out: Path
    cpu: dict[str, float] | None  # seconds by role over the window
    busiest: dict[str, float] | None  # seconds of the busiest process of each role over the window
    wrk_cpu: float
    window: float  # wall seconds from the CPU snapshot before wrk to the one after it
    machine: float  # cores of the whole machine busy over the window (every process, wrk's and others' too)
    stolen: float  # cores the hypervisor took from this machine over the window (/proc/stat steal)
    statuses: Counter = field(default_factory=Counter)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threads = list(self.report["threads"].values())
        for thread in self.threads:
            self.statuses.update({int(status): count for status, count in (thread["statuses"] or {}).items()})
            for kind, counts in (thread["kinds"] or {}).items():
                mine = self.kinds.setdefault(kind, {"sent": 0, "ok": 0})
                mine["sent"] += counts["sent"]
                mine["ok"] += counts["ok"]

    def total(self, name: str) -> int:
        return sum(int(thread.get(name, 0)) for thread in self.threads)

    @property
    def answered(self) -> int:
        return self.total("answered")

    @property
    def unanswered(self) -> int:
        return max(0, self.total("sent") - self.answered)

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)

    def _until(self, last: str) -> float:
        """From the first request to the threads' latest `last` (a time common.lua notes)."""
        threads = [t for t in self.threads if t.get(last)]
        return max(t[last] for t in threads) - min(t["first"] for t in threads) if threads else 0.0

    @property
    def seconds(self) -> float:
        return self._until("last")

    @property
    def accepting_seconds(self) -> float:
        """From the first request to the last 2xx answer: how long the server took what it took."""
        return self._until("last_ok")

    def per_second(self, count: int) -> float:
        return count / self.seconds if self.seconds else 0.0

    @property
    def rate(self) -> float:
        return self.per_second(self.answered)

    def list(self, name: str) -> list[float]:
        """A list the threads recorded (bench/replay/common.lua record()), all threads' together."""
        return [float(line) for path in sorted(self.out.parent.glob(f"{self.out.name}.*.{name}")) for line in path.read_text().split()]

    def socket_errors(self) -> str:
        errors = {k: v for k, v in self.report["errors"].items() if k != "status" and v}
        return ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"

    def non_2xx(self) -> str:
        return ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()) if not 200 <= status < 300) or "none"

    def cpu_text(self, per: int, unit: str = "request") -> str:
        wrk = f"wrk {self.wrk_cpu * 1000 / per:.3f}" if per else "wrk -"
        if self.cpu is None or not per:
            return f"CPU ms/{unit}: server n/a (not started here)  ({wrk})"
        main = "  ".join(f"{role} {self.cpu[role] * 1000 / per:.3f}" for role in ROLES[:3])
        return f"CPU ms/{unit}: {main}  (Ray's other processes {self.cpu['ray other'] * 1000 / per:.3f}, {wrk})"

    def load_text(self) -> str:
        """How busy the machine was during the run, and the busiest single process of each role:
        what ran out (every core, or one process at a whole core)."""
        text = f"machine: {self.machine:.2f} of {CORES} cores busy, {self.stolen:.2f} stolen by the host, over the run's {self.window:.1f} s"
        if self.busiest is None:
            return text
        busiest = "  ".join(f"{role} {self.busiest[role] / self.window:.2f}" for role in ROLES)
        return f"{text}; busiest process, cores: {busiest}  wrk {self.wrk_cpu / self.window:.2f}"

    def figures(self) -> dict:
        """What bench/scaling.py tabulates (replay.py --json)."""
        latency = self.report["latency_us"]
        per = self.answered or 1
        return {
            "answered": self.answered, "seconds": self.seconds, "rate": self.rate, "p50_ms": latency["p50"] / 1000,
            "p99_ms": latency["p99"] / 1000, "non_2xx": self.non_2xx(), "socket_errors": self.socket_errors(),
            "unanswered": self.unanswered, "window": self.window, "machine_cores": self.machine, "stolen_cores": self.stolen, "cores": CORES,
            "cpu_ms_per_request": None if self.cpu is None else {role: self.cpu[role] * 1000 / per for role in ROLES},
            "busiest_cores": None if self.busiest is None else {role: self.busiest[role] / self.window for role in ROLES},
            "wrk_ms_per_request": self.wrk_cpu * 1000 / per, "wrk_cores": self.wrk_cpu / self.window,
        }

    def line(self, label: str) -> str:
        latency = self.report["latency_us"]
        return (
            f"{self.name:<8} {label:<11} c={self.connections:<4} {self.answered:>8,} answered in {self.seconds:5.1f} s "
            f"{self.rate:>9,.0f} req/s  p50 {latency['p50'] / 1000:6.1f} ms  p99 {latency['p99'] / 1000:6.1f} ms  "
            f"non-2xx: {self.non_2xx()}  socket errors: {self.socket_errors()}"
            + (f"  unanswered {self.unanswered}" if self.unanswered else "")
        )


def bounded(stored: int, acked: int, unanswered: int, what: str, acked_what: str) -> tuple[bool, str]:
    """What the server stored against what wrk saw: equal, unless requests were cut off
    unanswered (socket errors), which may or may not have landed."""
    if unanswered:
        ok = acked <= stored <= acked + unanswered
        return ok, f"{stored:,} {what}, {acked:,} {acked_what} + at most {unanswered} unanswered"
    return stored == acked, f"{stored:,} {what} {'==' if stored == acked else '!='} {acked:,} {acked_what}"


class Bench:
    """The server's URLs, the client app that signs, and wrk runs in a temp dir."""

    def __init__(
        self, args: argparse.Namespace, http: httpx.AsyncClient, public: str, operator_url: str, token: str, sid: int | None, work: Path
    ) -> None:
        self.args, self.public, self.operator_url, self.token, self.sid, self.work = args, public, operator_url, token, sid, work
        self.operator = Operator(http, operator_url, token)
        self.tag = uuid.uuid4().hex[:8]
        self.client: SignedClient
        self.rates: dict[str, float] = {}
        self.runs = 0

    async def start(self) -> None:
        _, self.client, _ = await common.receiver_and_client(self.operator, "replay", self.tag, ["read"])

    async def receiver(self, name: str) -> tuple[dict, str]:
        """A fresh receiving wallet address and an incoming-payment token on it."""
        wallet = await self.operator.wallet_address(f"replay-{name}-{self.tag}", "USD", 2, "Replay receiver")
        grant = await self.client.grant(wallet["authServer"], [{"type": "incoming-payment", "actions": ["create", "read", "list"]}])
        return wallet, grant["access_token"]["value"]

    def signed(self, method: str, url: str, token: str, json_body: object = None) -> bytes:
        body, headers = self.client.prepare(method, url, json=json_body, token=token)
        return raw_request(method, url, headers, body)

    def create_body(self, wallet: dict, amount: int | None) -> dict:
        body: dict = {"walletAddress": wallet["id"]}
        if amount is not None:
            body["incomingAmount"] = {"value": str(amount), "assetCode": "USD", "assetScale": 2}
        return body

    async def listed(self, kind: str, wallet: dict, token: str) -> list[dict]:
        """Every item of a wallet address's list (incoming-payments, outgoing-payments), by pages of 100."""
        items: list[dict] = []
        cursor = ""
        while True:
            url = f"{self.public}/{kind}?wallet-address={wallet['id']}&first=100" + (f"&cursor={cursor}" if cursor else "")
            page = await self.client.request("GET", url, token=token)
            if page.status_code != 200:
                raise SystemExit(f"listing {kind}: {page.status_code} {page.text}")
            answer = page.json()
            items += answer["result"]
            if not answer["pagination"]["hasNextPage"]:
                return items
            cursor = answer["pagination"]["endCursor"]

    def wrk(
        self, name: str, script: str, connections: int, env: dict[str, str], *, seconds: float, max_requests: int = 0, url: str = ""
    ) -> Run:
        """One wrk run of `script` on `url` (default the public API): `seconds` of new requests
        (0: none but the `max_requests` bound), then the answers to those under way."""
        self.runs += 1
        out = self.work / f"run-{self.runs}.json"
        threads = min(self.args.threads, connections)
        env = {**os.environ, **env, "REPLAY_OUT": str(out), "REPLAY_SECONDS": str(seconds),
               "REPLAY_MAX": str(math.ceil(max_requests / threads)) if max_requests else "0"}
        duration = math.ceil(seconds + DRAIN_SECONDS) if seconds else 600
        command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "60s", "-s", str(SCRIPTS / script)]
        command.append(url or self.public)
        outside = self.args.outside_pids
        before = processes(self.sid, outside) if self.sid else None
        machine_before, started = common.machine_ticks(), time.monotonic()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        log = self.work / f"run-{self.runs}.log"
        with open(log, "w") as logged:
            wrk = subprocess.Popen(command, env=env, stdout=logged, stderr=subprocess.STDOUT)
            # wrk sleeps out its whole -d; once every thread has drained (common.lua), SIGINT ends it.
            while wrk.poll() is None:
                if all((self.work / f"{out.name}.{t}.stopped").exists() for t in range(threads)):
                    wrk.send_signal(signal.SIGINT)
                    break
                time.sleep(0.05)
            wrk.wait()
        after = processes(self.sid, outside) if self.sid else None
        (busy0, stolen0, all0), (busy1, stolen1, all1), window = machine_before, common.machine_ticks(), time.monotonic() - started
        spent = resource.getrusage(resource.RUSAGE_CHILDREN)
        if wrk.returncode != 0 or not out.exists():
            raise SystemExit(f"wrk failed ({wrk.returncode}): {log.read_text()[-2000:]}")
        wrk_cpu = spent.ru_utime + spent.ru_stime - children.ru_utime - children.ru_stime
        cpu, busiest = cpu_seconds(before, after) if before is not None and after is not None else (None, None)
        machine, stolen = ((busy1 - busy0) / (all1 - all0) * CORES, (stolen1 - stolen0) / (all1 - all0) * CORES) if all1 > all0 else (0.0, 0.0)
        return Run(name, connections, json.loads(out.read_text()), out, cpu, busiest, wrk_cpu, window, machine, stolen)

    async def populate(self, wallet: dict, token: str, count: int, amount: int | None) -> list[str]:
        """`count` incoming payments on `wallet` (setup, not measured): replayed creates, then listed."""
        create = self.signed("POST", f"{self.public}/incoming-payments", token, self.create_body(wallet, amount))
        requests = write_requests(self.work / "populate.req", [create])
        ids = [item["id"] for item in await self.listed("incoming-payments", wallet, token)]
        for _ in range(3):
            if len(ids) >= count:
                break
            self.wrk("setup", "pool.lua", 20, {"REPLAY_REQUESTS": str(requests)}, seconds=0, max_requests=count - len(ids))
            ids = [item["id"] for item in await self.listed("incoming-payments", wallet, token)]
        if len(ids) < count:
            raise SystemExit(f"setup: {len(ids)} of {count} incoming payments created")
        return ids[:count]


Scenario = Callable[[Bench, int, dict], Awaitable[tuple[Run, list[tuple[bool, str]], str]]]


async def creates(b: Bench, round_: int, _: dict) -> tuple[Run, list[tuple[bool, str]], str]:
    # opay names every incoming-payment create anew (a uuid per request; an Idempotency-Key
    # only exists for outgoing payments), so each replay is a new payment: the check says so.
    # The pool still differs in incomingAmount, so no two requests in it are the same.
    wallet, token = await b.receiver(f"creates-{round_}")
    url = f"{b.public}/incoming-payments"
    pool = [b.signed("POST", url, token, b.create_body(wallet, AMOUNT + i)) for i in range(b.args.pool)]
    env = {"REPLAY_REQUESTS": str(write_requests(b.work / "creates.req", pool))}
    run = b.wrk("creates", "pool.lua", CONNECTIONS["creates"], env, seconds=b.args.seconds)
    stored = len(await b.listed("incoming-payments", wallet, token))
    return run, [bounded(stored, run.statuses[201], run.unanswered, "incoming payments listed", "answered 201")], run.cpu_text(run.answered)


async def gets(b: Bench, round_: int, state: dict) -> tuple[Run, list[tuple[bool, str]], str]:
    if not state:
        state["wallet"], state["token"] = await b.receiver("gets")
        state["ids"] = await b.populate(state["wallet"], state["token"], b.args.get_payments, AMOUNT)
    wallet, token, ids = state["wallet"], state["token"], state["ids"]
    pool = [b.signed("GET", payment, token) for payment in ids]
    env = {"REPLAY_REQUESTS": str(write_requests(b.work / "gets.req", pool)), "REPLAY_EXPECT": f'"walletAddress":"{wallet["id"]}"'}
    run = b.wrk("gets", "pool.lua", CONNECTIONS["gets"], env, seconds=b.args.seconds)
    matched = run.total("matched")
    stored = len(await b.listed("incoming-payments", wallet, token))
    checks = [
        (matched == run.ok, f"{matched:,} 2xx answers name the payments' wallet {'==' if matched == run.ok else '!='} {run.ok:,} 2xx"),
        (stored == len(ids), f"{stored:,} incoming payments listed == the {len(ids):,} read"),
    ]
    return run, checks, run.cpu_text(run.answered)


async def credited(b: Bench, wallet: dict, token: str) -> tuple[int, int]:
    """Incoming payments listed on `wallet`, and their receivedAmount summed."""
    items = await b.listed("incoming-payments", wallet, token)
    return len(items), sum(int(p["receivedAmount"]["value"]) for p in items)


def credits_env(b: Bench, payments: list[str], round_: int, name: str) -> dict[str, str]:
    path = b.work / f"{name}.payments"
    path.write_text("\n".join(payments) + "\n")
    return {"REPLAY_PAYMENTS": str(path), "REPLAY_HOST": urlsplit(b.operator_url).netloc, "REPLAY_TOKEN": b.token,
            "REPLAY_KEY_PREFIX": f"replay-{b.tag}-{name}-{round_}-"}


async def credits(b: Bench, round_: int, state: dict) -> tuple[Run, list[tuple[bool, str]], str]:
    if not state:
        state["wallet"], state["token"] = await b.receiver("credits")
        state["ids"] = await b.populate(state["wallet"], state["token"], b.args.payments, None)
    wallet, token, ids = state["wallet"], state["token"], state["ids"]
    _, before = await credited(b, wallet, token)
    env = credits_env(b, ids, round_, "credits")
    run = b.wrk("credits", "credits.lua", CONNECTIONS["credits"], env, seconds=b.args.seconds, url=b.operator_url)
    count, after = await credited(b, wallet, token)
    checks = [
        bounded(after - before, run.statuses[200], run.unanswered, f"received over the {count:,} payments (amount 1 each)", "answered 200"),
    ]
    return run, checks, run.cpu_text(run.answered)


async def hot(b: Bench, round_: int, state: dict) -> tuple[Run, list[tuple[bool, str]], str]:
    if not state:
        state["wallet"], state["token"] = await b.receiver("hot")
    wallet, token = state["wallet"], state["token"]
    # The cap is meant to be reached near the end of the round, so the refusal past it (no
    # overshoot) is tested under load: from the last round's rate, or the credits scenario's.
    rate = b.args.hot_rate or b.rates.get("hot") or b.rates.get("credits") or 2000.0
    cap = max(100, int(rate * b.args.seconds * 0.9))
    created = await b.client.request("POST", f"{b.public}/incoming-payments", json=b.create_body(wallet, cap), token=token)
    created.raise_for_status()
    payment = created.json()["id"]
    env = credits_env(b, [payment], round_, "hot")
    run = b.wrk("hot", "credits.lua", CONNECTIONS["hot"], env, seconds=b.args.seconds, url=b.operator_url)
    b.rates["hot"] = run.rate
    answer = (await b.client.request("GET", payment, token=token)).json()
    received = int(answer["receivedAmount"]["value"])
    checks = [
        bounded(received, run.statuses[200], run.unanswered, "receivedAmount", "answered 200 (amount 1 each)"),
        (received <= cap, f"receivedAmount {received:,} {'<=' if received <= cap else '>'} cap {cap:,}: overshoot {max(0, received - cap)}"
         + (", cap reached" if received == cap else ", cap not reached")),
    ]
    accepted, accepting = run.statuses[200], run.accepting_seconds
    until_cap = f"{accepted / accepting:,.0f}/s over the {accepting:.1f} s until the last was accepted" if accepting else "none accepted"
    text = (f"credits accepted {accepted:,} ({run.per_second(accepted):,.0f}/s over the window; {until_cap}), "
            f"refused once the cap was reached {run.statuses[409]:,}\n{'':<9}")
    return run, checks, text + run.cpu_text(run.answered)


async def flow(b: Bench, round_: int, state: dict) -> tuple[Run, list[tuple[bool, str]], str]:
    # A flow's later requests name ids the server returns during the run, so bench/replay/flow.lua
    # signs them when it sends them (sign.lua, libcrypto); only the incoming payment is pre-signed.
    wallet, incoming_token = await b.receiver(f"flow-{round_}")
    sender = await b.operator.wallet_address(f"replay-sender-{round_}-{b.tag}", "USD", 2, "Replay sender")
    quote_token = (await b.client.grant(sender["authServer"], [{"type": "quote", "actions": ["create", "read"]}]))["access_token"]["value"]
    debit = {"value": str(10**15), "assetCode": "USD", "assetScale": 2}
    outgoing_token = await interactive_outgoing_token(b.client, b.operator, sender, {"debitAmount": debit})
    create = b.signed("POST", f"{b.public}/incoming-payments", incoming_token, b.create_body(wallet, AMOUNT))
    key = b.client.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    env = {
        "REPLAY_REQUESTS": str(write_requests(b.work / "flow.req", [create])), "REPLAY_KEY": key, "REPLAY_KEYID": b.client.keyid,
        "REPLAY_SENDER": sender["id"], "REPLAY_PUBLIC": b.public, "REPLAY_QUOTE_TOKEN": quote_token,
        "REPLAY_OUTGOING_TOKEN": outgoing_token, "REPLAY_INCOMING_TOKEN": incoming_token,
        "REPLAY_POLL_MS": str(b.args.poll_ms), "REPLAY_MAX_POLLS": str(b.args.max_polls),
    }
    run = b.wrk("flow", "flow.lua", CONNECTIONS["flow"], env, seconds=b.args.seconds)
    kinds = {kind: run.kinds.get(kind, {"sent": 0, "ok": 0}) for kind in ("incoming", "quote", "outgoing", "get")}
    paid = await b.listed("outgoing-payments", sender, outgoing_token)
    # Settlement the run did not wait for (its GETs gave up, or failed) may still be under way.
    for _ in range(150):
        payments = await b.listed("incoming-payments", wallet, incoming_token)
        completed = [p for p in payments if p["completed"]]
        if len(completed) >= len(paid):
            break
        await asyncio.sleep(0.2)
    received = sum(int(p["receivedAmount"]["value"]) for p in payments)
    over = sum(1 for p in payments if int(p["receivedAmount"]["value"]) > AMOUNT)
    failed = sum(1 for p in paid if p["failed"])
    settled = run.list("settle_ms")
    checks = [
        bounded(len(payments), kinds["incoming"]["ok"], run.unanswered, "incoming payments listed", "answered 201"),
        bounded(len(paid), kinds["outgoing"]["ok"], run.unanswered, "outgoing payments listed", "answered 201"),
        (len(completed) == len(paid) and failed == 0,
         f"{len(completed):,} incoming payments completed {'==' if len(completed) == len(paid) else '!='} "
         f"{len(paid):,} outgoing payments, {failed} failed"),
        (received == AMOUNT * len(paid) and over == 0,
         f"received {received:,} {'==' if received == AMOUNT * len(paid) else '!='} {AMOUNT} x {len(paid):,} outgoing payments, "
         f"{over} past incomingAmount"),
    ]
    flows = len(settled)
    steps = "  ".join(f"{kind} {counts['ok']:,}/{counts['sent']:,}" for kind, counts in kinds.items())
    flow_ms = run.list("flow_ms")
    text = (
        f"flows settled {flows:,} ({run.per_second(flows):,.1f} flows/s), GETs gave up on {run.total('unsettled')}; "
        f"2xx/sent by step: {steps}\n"
        f"{'':<9}settlement (outgoing 201 -> a GET shows it completed, every {b.args.poll_ms} ms): "
        f"p50 {statistics.median(settled or [0]):6.1f} ms  p99 {percentile(settled, 0.99):6.1f} ms;  "
        f"incoming 201 -> settled: p50 {statistics.median(flow_ms or [0]):6.1f} ms  p99 {percentile(flow_ms, 0.99):6.1f} ms\n"
        f"{'':<9}{run.cpu_text(run.answered)}\n{'':<9}{run.cpu_text(flows, 'flow')}"
    )
    return run, checks, text


SCENARIO_FUNCTIONS: dict[str, Scenario] = {"creates": creates, "gets": gets, "credits": credits, "hot": hot, "flow": flow}


async def main(args: argparse.Namespace, public_url: str, operator_url: str, token: str, server_sid: int | None) -> None:
    failures: list[str] = []
    summary: list[str] = []
    medians: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="opay-replay-") as work:
        async with httpx.AsyncClient(timeout=60) as http:
            b = Bench(args, http, public_url, operator_url, token, server_sid, Path(work))
            await b.start()
            for name in args.scenario.split(","):
                state: dict = {}
                runs = []
                for round_ in range(1, args.rounds + 1):
                    run, checks, text = await SCENARIO_FUNCTIONS[name](b, round_, state)
                    text += f"\n{'':<9}{run.load_text()}"
                    runs.append((run, text))
                    print(run.line(f"round {round_}/{args.rounds}"), flush=True)
                    print(f"{'':<9}{text}", flush=True)
                    for ok, what in checks:
                        print(f"{'':<9}check: {what}: {'OK' if ok else 'MISMATCH'}", flush=True)
                        if not ok:
                            failures.append(f"{name} round {round_}: {what}")
                median, text = sorted(runs, key=lambda r: r[0].rate)[len(runs) // 2]
                b.rates[name] = median.rate
                medians[name] = median.figures()
                summary.append(f"{median.line(f'median of {len(runs)}')}\n{'':<9}{text}")
    print(f"\nmedian round per scenario (by req/s):\n" + "\n".join(summary), flush=True)
    if args.json:
        config = {"shards": args.shards or None, "frontend_processes": args.frontend_processes,
                  "redis_cluster_masters": args.redis_cluster_masters, "rounds": args.rounds, "seconds": args.seconds}
        Path(args.json).write_text(json.dumps({"config": config, "scenarios": medians, "failures": failures}, indent=1))
    if failures:
        print(f"checks FAILED ({len(failures)}):\n  " + "\n  ".join(failures), flush=True)
        raise SystemExit(1)
    print("checks: all passed", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--rounds", type=int, help="wrk runs per scenario (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, help="each run's window, seconds (default 20; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: for development and the test")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the load generator shares the cores)")
    parser.add_argument("--pool", type=int, default=1000, help="creates: distinct signed creates replayed in turn (default 1000)")
    parser.add_argument("--payments", type=int, default=10_000, help="credits: incoming payments the credits go round (default 10000)")
    parser.add_argument("--get-payments", type=int, default=1000, help="gets: incoming payments read in turn (default 1000)")
    parser.add_argument("--hot-rate", type=float, default=0.0, help="hot: credits/s the cap is sized for (default: measured)")
    parser.add_argument("--poll-ms", type=int, default=10, help="flow: wait between a flow's GETs, ms (default 10)")
    parser.add_argument("--max-polls", type=int, default=500, help="flow: GETs per flow at most (default 500)")
    parser.add_argument("--shards", type=int, default=0, help="OPAY_SHARDS for the server this script starts (0: as tests, 2)")
    parser.add_argument("--frontend-processes", type=int, default=1,
                        help="OPAY_FRONTEND_PROCESSES for the server this script starts (default 1: one process, no supervisor)")
    parser.add_argument("--redis-cluster-masters", type=int, default=0,
                        help="0 (default): the server's embedded Redis; M >= 1: a Redis Cluster of M masters, no replicas, started for it")
    parser.add_argument("--json", help="also write the median round of each scenario's figures to this file (bench/scaling.py reads it)")
    parser.add_argument("--public-url", help="a running server's public API (loopback only)")
    parser.add_argument("--operator-url", help="a running server's operator API (loopback only)")
    parser.add_argument("--operator-token", default=os.environ.get("OPAY_OPERATOR_TOKEN", ""))
    args = parser.parse_args(argv)
    common.check_server_args(parser, args)
    if not args.scenario or set(args.scenario.split(",")) - set(SCENARIOS):
        parser.error(f"--scenario takes any of {', '.join(SCENARIOS)}")
    if args.public_url and (args.frontend_processes != 1 or args.redis_cluster_masters or args.shards):
        parser.error("--shards, --frontend-processes and --redis-cluster-masters are for the server this script starts")
    if args.frontend_processes < 1 or args.redis_cluster_masters < 0:
        parser.error("--frontend-processes is at least 1, --redis-cluster-masters at least 0")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    if args.seconds > MAX_SECONDS:
        # Requests signed before the run must still be fresh at its end.
        parser.error(f"--seconds at most {MAX_SECONDS}: signatures older than OPAY_SIGNATURE_MAX_AGE_SECONDS (300 by default) are refused")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    return common.run_main(
        args, main, data_prefix="opay-replay-", extra_env={}, up_details="{public} (operator {operator}); shards {shards}; front-end processes {frontends}; Redis: {redis}; data {data}"
    )


if __name__ == "__main__":
    sys.exit(run())
