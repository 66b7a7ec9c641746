"""Scale as the data grows: restart on N stored incoming payments, load with and without them,
and what one stored payment costs Redis and one resident entity costs a shard.

  .venv/bin/python bench/scale.py                   # 1,000,000 stored (~0.6 GB of Redis, about 8 minutes)
  .venv/bin/python bench/scale.py --count 20000     # development
  .venv/bin/python bench/scale.py --count 200000 --resident 50000 --load-seconds 5 -c 8 --shards 2
  .venv/bin/python bench/scale.py --count 20000 --redis-config hash-max-listpack-value=1024

One server of its own (tests/support.OpayServer: own redis-server, AOF `appendfsync always`,
own Ray), in a temp dir:
 1. fresh: bench/load.py's creates, credits and flow at a fixed small load (-c clients, each
    one request at a time) for --load-seconds each;
 2. populate: N incoming payments (an incomingAmount each, over --wallets receivers, one client)
    written by the server's own code, not a copy of it: an EntityHost per shard (the shard's
    handlers, codec, SnapshotStore and its compare-and-set script, group-committed --batch at a
    time) given OpenIncomingPayment commands, so every snapshot, version, write id, wallet and
    client index entry and due time is the one a create through the API writes; then an AOF
    rewrite, as Redis does on its own as an AOF grows;
 3. restart: the redis-server (its own process, opay's redis.conf, outside the server's
    session, given to the server as OPAY_REDIS_URL) timed until its AOF is loaded, then
    `opay serve` on that Redis: seconds to ready, to the first signed GET and the
    first operator credit of a stored payment; a sample GET through the real API (each 200
    and the stored fields) and credited;
 4. the same load as in 1, with N stored;
 5. memory: Redis's used_memory before/after populating / N, and MEMORY USAGE of sampled keys
    (the entity hash; each sorted set's share per member); --resident stored payments made
    active in the shards by operator credits (the shards' RSS before/after / count), and the
    same number activated in a standalone EntityHost here (ExpireIncomingPayment: a read that
    writes nothing) for RSS and tracemalloc figures and a sizes breakdown of one entity;
 6. the laptop's restart: the AOF rewritten again, `opay serve` on its embedded Redis, on the same files (the bench's
    Redis kept them where the embedded one does): seconds to ready and to the first signed
    GET, with Ray starting while Redis reads its files back, and the load time Redis logged.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import aiohttp
import httpx
import msgspec
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, load  # noqa: E402
from opay.actors import ids, registry  # noqa: E402
from opay.actors.entity import EntityHost  # noqa: E402
from opay.actors.messages import ExpireIncomingPayment, Nothing, OpenIncomingPayment, State  # noqa: E402
from opay.persistence.keys import shard_of  # noqa: E402
from opay.client import Operator  # noqa: E402
from opay.clock import now_ms  # noqa: E402
from opay.domain import incoming_payment as rules  # noqa: E402
from opay.persistence import keys  # noqa: E402
from opay.persistence.snapshots import SnapshotStore  # noqa: E402

AMOUNT = 1_000_000  # each stored payment's incomingAmount (USD 10,000.00): credits never complete it
SAMPLE = 200  # stored payments GET through the API after the restart, and keys sampled for MEMORY USAGE


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def shard_pids(session: int) -> list[int]:
    """Ray's workers hosting the Shard actors of the server's session (`ray::Shard...`)."""
    from tests.support import session_members

    found = []
    for pid in session_members(session):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if cmdline.read().startswith(b"ray::Shard"):
                    found.append(pid)
        except OSError:
            continue
    return found


def deep_size(value: object, seen: set[int] | None = None) -> int:
    """sys.getsizeof of an object and of everything it holds, each object counted once."""
    seen = set() if seen is None else seen
    if id(value) in seen or value is None or isinstance(value, (bool, type)):
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        size += sum(deep_size(v, seen) for v in value)
    elif isinstance(value, msgspec.Struct):
        size += sum(deep_size(getattr(value, f), seen) for f in value.__struct_fields__)
    return size


async def load_phases(args: argparse.Namespace, server) -> dict[str, float]:
    """bench/load.py's phases against the running server: ok requests (flows) per second."""
    argv = ["--seconds", str(args.load_seconds), "-c", str(args.concurrency), "--payments", "100", "--warmup", "1",
            "--public-url", server.public_url, "--operator-url", server.operator_url, "--operator-token", server.operator_token]
    results = await load.main(load.parse_args(argv), server.public_url, server.operator_url, server.operator_token, server.process.pid)
    return {r.name: r.ok / r.wall_seconds for r in results} | {f"{r.name} p99": common.percentile(r.latencies_ms, 0.99) for r in results}


def populate(args: argparse.Namespace, client: redis.Redis, wallets: list[str], client_identity: str, expiry_ms: int) -> list[str]:
    """N incoming payments opened by EntityHosts like the shards' (see the module's docstring)."""
    shards = int(client.get(keys.SHARD_COUNT))
    hosts = [
        EntityHost(SnapshotStore(client, n), registry.HANDLERS, 1, journal_keys=registry.JOURNAL_KEYS, codec=registry.codec) for n in range(shards)
    ]
    from opay.domain.amounts import Asset

    asset, policy = Asset("USD", 2), rules.ExpiryPolicy(expiry_ms, expiry_ms)
    entity_ids: list[str] = []
    started, done = time.monotonic(), 0
    while done < args.count:
        batch: list[list[OpenIncomingPayment]] = [[] for _ in range(shards)]
        now = now_ms()
        for n in range(done, min(args.count, done + args.batch)):
            payment = rules.open_payment(
                payment_id=str(uuid.uuid4()), wallet_address=wallets[n % len(wallets)], client=client_identity, asset=asset,
                incoming_amount=AMOUNT, expires_at_ms=None, metadata=None, now_ms=now, expiry=policy,
            )
            entity_id = ids.INCOMING_PAYMENT(payment.id)
            batch[shard_of(entity_id, shards)].append(OpenIncomingPayment(entity_id, payment))
            entity_ids.append(entity_id)
        for shard, commands in enumerate(batch):
            replies = hosts[shard].handle(commands, now).replies
            bad = [r for r in replies if not isinstance(r, State)]
            if bad:
                raise SystemExit(f"populate: {len(bad)} opens failed, e.g. {bad[0]!r}")
            done += len(commands)
        if done % (args.batch * 50) < args.batch or done == args.count:
            print(f"  populated {done:>9,} in {time.monotonic() - started:6.1f} s", flush=True)
    return entity_ids


def redis_breakdown(client: redis.Redis, sample: list[str], wallet: str, client_identity: str) -> dict[str, float]:
    """MEMORY USAGE (SAMPLES 0: exact) of sampled entity hashes, and each sorted set's bytes per member."""
    shards = int(client.get(keys.SHARD_COUNT))
    entity = statistics.mean(client.memory_usage(keys.entity(e, shard_of(e, shards)), samples=0) for e in sample)
    snapshot = statistics.mean(len(client.hget(keys.entity(e, shard_of(e, shards)), "s")) for e in sample)

    def per_member(parts: list[str]) -> float:
        """A list's bytes per member, over its parts (one sorted set per shard)."""
        return sum(client.memory_usage(key, samples=0) or 0 for key in parts) / max(1, sum(client.zcard(key) for key in parts))

    kind = ids.INCOMING_PAYMENT.prefix
    due = sum(client.memory_usage(keys.due(n), samples=0) for n in range(shards)) / max(1, sum(client.zcard(keys.due(n)) for n in range(shards)))
    return {
        "entity hash (v, s, w)": entity,
        "  of which the snapshot": snapshot,
        "wallet index, per member": per_member([keys.index(kind, n, wallet) for n in range(shards)]),
        "client index, per member": per_member([keys.index(kind, n, wallet, client_identity) for n in range(shards)]),
        "due set, per member": due,
    }


def standalone_resident(client: redis.Redis, shard: int, entity_ids: list[str], traced: bool) -> tuple[float, int, EntityHost]:
    """Bytes per entity made active in an EntityHost here by ExpireIncomingPayment (nothing is
    written): RSS delta, or tracemalloc's when `traced`. The host is `shard`'s: `entity_ids`
    must be entities it hosts."""
    host = EntityHost(SnapshotStore(client, shard), registry.HANDLERS, len(entity_ids) + 1, journal_keys=registry.JOURNAL_KEYS, codec=registry.codec)
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes(os.getpid())
    for start in range(0, len(entity_ids), 1000):
        commands = [ExpireIncomingPayment(e) for e in entity_ids[start : start + 1000]]
        replies = host.handle(commands, now_ms()).replies
        assert all(isinstance(r, Nothing) for r in replies), replies[:3]
    gc.collect()
    if traced:
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        after = rss_bytes(os.getpid())
    assert host.active_count == len(entity_ids)
    return (after - before) / len(entity_ids), host.active_count, host


async def credit_all(operator_url: str, token: str, urls: list[str], tag: str, concurrency: int = 50) -> int:
    """One operator credit (amount 1) on each payment, `concurrency` at a time: how many got 200."""
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    ok, position = 0, 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal ok, position
            while position < len(urls):
                url, position = urls[position], position + 1
                body = msgspec.json.encode({"incomingPayment": url, "amount": "1", "idempotencyKey": f"scale-{tag}-{url}"})
                async with session.post(f"{operator_url}/credits", data=body, headers=headers) as answer:
                    await answer.read()
                    ok += answer.status == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


class Table(list):
    """The figures, each also printed as it is found: a run that fails late keeps them."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"== {row[0]}: {row[1]}", flush=True)
        super().append(row)

    def __iadd__(self, rows):  # type: ignore[override]
        for row in rows:
            self.append(row)
        return self


def start_redis(data_dir: Path, port: int) -> tuple[subprocess.Popen, float]:
    """opay's redis-server with the shipped redis.conf, outside the server's session, so the
    server restarts on it: the process and the seconds until it answers (an AOF replay
    answers LOADING until its data is there)."""
    from opay.persistence.embedded_redis import config_path, redis_server_binary

    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(data_dir / "redis.log", "ab") as log:
        process = subprocess.Popen([redis_server_binary(), str(config_path()), "--port", str(port), "--dir", str(data_dir)],
                                   stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_timeout=1.0)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"redis-server exited with {process.returncode}; see {data_dir / 'redis.log'}")
        try:
            if client.ping():
                client.close()
                return process, time.monotonic() - started
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            time.sleep(0.05)


def rewrite_aof(client: redis.Redis) -> None:
    """An AOF rewrite, as Redis does on its own as the file grows: a restart then loads one
    RDB-preambled file instead of replaying every write since the last rewrite."""
    client.bgrewriteaof()
    while client.info("persistence")["aof_rewrite_in_progress"] or client.info("persistence")["aof_rewrite_scheduled"]:
        time.sleep(0.5)


def redis_loaded(data_dir: Path) -> str:
    """What the last start of the Redis in `data_dir` says its load took."""
    said = [line for line in (data_dir / "redis.log").read_text().splitlines() if "loaded from" in line or "DB loaded" in line]
    return said[-1].split("* ", 1)[-1] if said else "(not in its log)"


def stop_redis(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=120)


async def run(args: argparse.Namespace) -> None:
    from tests.support import OpayServer

    table = Table()
    from tests.support import free_port

    with tempfile.TemporaryDirectory(prefix="opay-scale-") as data_dir:
        redis_port = free_port()
        # Where the server's embedded Redis keeps its files: the last restart is `opay serve`'s own on them.
        redis_dir = Path(data_dir) / "redis"
        redis_process, _ = start_redis(redis_dir, redis_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        extra = {"OPAY_REDIS_URL": redis_url} | ({"OPAY_SHARDS": str(args.shards)} if args.shards else {})
        server = OpayServer(Path(data_dir), extra)
        t0 = time.monotonic()
        server.start()
        table.append(("fresh server: start to ready", f"{time.monotonic() - t0:.2f} s"))
        print(f"fresh server up: {server.public_url} (operator {server.operator_url}); data {data_dir}", flush=True)
        try:
            print("load, fresh server:", flush=True)
            fresh = await load_phases(args, server)
            client = redis.Redis.from_url(redis_url)
            async with httpx.AsyncClient(timeout=60) as http:
                operator = Operator(http, server.operator_url, server.operator_token)
                receiver, signed, gnap = await common.receiver_and_client(operator, "scale", "0", ["create", "read", "list"])
                wallets = [receiver["id"]] + [
                    (await operator.wallet_address(f"scale-receiver-{n}", "USD", 2, "Scale receiver"))["id"] for n in range(1, args.wallets)
                ]
                # One create through the API: the stored payments' client and expiry are the server's own.
                made = await signed.request("POST", f"{server.public_url}/incoming-payments", token=gnap,
                                            json={"walletAddress": receiver["id"], "incomingAmount": {"value": str(AMOUNT), "assetCode": "USD", "assetScale": 2}})
                made.raise_for_status()
                made_id = ids.incoming_payment_of_url(made.json()["id"])
                template = registry.codec.decode_state(client.hget(keys.entity(made_id, shard_of(made_id, int(client.get(keys.SHARD_COUNT)))), "s"))
                client_identity, expiry_ms = template.client, template.expires_at_ms - template.created_at_ms
            for setting in args.redis_config:
                client.config_set(*setting.split("=", 1))
            used0 = client.info("memory")["used_memory"]
            t0 = time.monotonic()
            entity_ids = populate(args, client, wallets, client_identity, expiry_ms)
            table.append((f"populate {args.count:,} (EntityHost, batches of {args.batch})", f"{time.monotonic() - t0:.1f} s"))
            used1 = client.info("memory")["used_memory"]
            sample = random.sample(entity_ids, min(SAMPLE, len(entity_ids)))
            breakdown = redis_breakdown(client, sample, wallets[1 % len(wallets)], client_identity)
            rewrite_aof(client)
            client.close()

            server.stop()
            stop_redis(redis_process)
            redis_process, loaded = start_redis(redis_dir, redis_port)
            table.append((f"redis-server restart: loading {args.count:,} stored (AOF, RDB preamble)", f"{loaded:.2f} s"))
            t0 = time.monotonic()
            server.start()
            ready = time.monotonic() - t0
            url = f"{server.public_url}/incoming-payments/{ids.INCOMING_PAYMENT.key(sample[0])}"
            async with httpx.AsyncClient(timeout=60) as http:
                signed.http = http
                got = await signed.request("GET", url, token=gnap)
                first_get = time.monotonic() - t0
                operator = Operator(http, server.operator_url, server.operator_token)
                credited = await operator.credit(f"{server.public_url}/incoming-payments/{ids.INCOMING_PAYMENT.key(sample[1])}", "1", "scale-first")
                first_credit = time.monotonic() - t0
                assert got.status_code == 200, got.text
                assert credited.status_code == 200, credited.text
                table += [(f"opay serve restart on {args.count:,} stored: start to ready", f"{ready:.2f} s"),
                          ("  to the first signed GET of a stored payment", f"{first_get:.2f} s"),
                          ("  to the first operator credit of one", f"{first_credit:.2f} s")]
                checked = 0
                for entity_id in sample[2:]:
                    answer = await signed.request("GET", f"{server.public_url}/incoming-payments/{ids.INCOMING_PAYMENT.key(entity_id)}", token=gnap)
                    body = answer.json()
                    assert answer.status_code == 200 and body["incomingAmount"]["value"] == str(AMOUNT) and body["walletAddress"] in wallets, answer.text
                    checked += 1
                some = [f"{server.public_url}/incoming-payments/{ids.INCOMING_PAYMENT.key(e)}" for e in sample[2:22]]
                ok = await credit_all(server.operator_url, server.operator_token, some, "sample", 10)
                for u in some:
                    body = (await signed.request("GET", u, token=gnap)).json()
                    assert body["receivedAmount"]["value"] == "1", body
                table.append(("stored payments read back through the API / credited", f"{checked} GET 200 / {ok} of {len(some)} credited, read back"))

            print(f"load, {args.count:,} stored:", flush=True)
            stored = await load_phases(args, server)
            for name in ("creates", "credits", "flow"):
                change = (stored[name] - fresh[name]) / fresh[name] * 100 if fresh[name] else float("nan")
                table.append((f"{name}/s fresh vs {args.count:,} stored (c={args.concurrency})",
                              f"{fresh[name]:.0f} vs {stored[name]:.0f} ({change:+.1f}%); p99 {fresh[name + ' p99']:.1f} vs {stored[name + ' p99']:.1f} ms"))

            table.append(("Redis used_memory per stored payment", f"{(used1 - used0) / args.count:.0f} B"))
            table += [(f"  {name}", f"{value:.0f} B") for name, value in breakdown.items()]

            resident = min(args.resident, len(entity_ids) - SAMPLE)
            chosen = entity_ids[:resident]
            pids = shard_pids(server.process.pid)
            before = sum(rss_bytes(p) for p in pids)
            t0 = time.monotonic()
            ok = await credit_all(server.operator_url, server.operator_token,
                                  [f"{server.public_url}/incoming-payments/{ids.INCOMING_PAYMENT.key(e)}" for e in chosen], "resident")
            after = sum(rss_bytes(p) for p in pids)
            table.append((f"shards' RSS per entity, {ok:,} made active by a credit ({len(pids)} shards, {time.monotonic() - t0:.0f} s)",
                          f"{(after - before) / max(1, ok):.0f} B (journal entry included)"))
            client = redis.Redis.from_url(redis_url)
            # Payments neither credited nor read yet (no journal entry): a bare resident entity.
            # The standalone host stands in for shard 0: it activates shard 0's entities.
            taken = set(chosen) | set(sample)
            shards = int(client.get(keys.SHARD_COUNT))
            bare = [e for e in entity_ids if e not in taken and shard_of(e, shards) == 0][:resident] or [e for e in chosen if shard_of(e, shards) == 0]
            per_rss, _, host = standalone_resident(client, 0, bare, traced=False)
            del host
            gc.collect()
            per_traced, _, host = standalone_resident(client, 0, bare, traced=True)
            table.append((f"EntityHost here, {len(bare):,} active (ExpireIncomingPayment)", f"RSS {per_rss:.0f} B, tracemalloc {per_traced:.0f} B per entity"))
            (_, first), (entity_id, active) = list(host._active.items())[:2]
            first_holds: set[int] = set()
            deep_size(first, first_holds)  # what the second holds alike with the first is not its own
            own, state_own = deep_size(active, set(first_holds)), deep_size(active.state, set(first_holds))
            table.append(("  one entity's own objects, sys.getsizeof", f"{own + sys.getsizeof(entity_id):.0f} B "
                          f"(Active {sys.getsizeof(active)}, state {state_own} + {deep_size(active.state) - state_own} shared, "
                          f"journal {deep_size(active.journal)}, id {sys.getsizeof(entity_id)}; the OrderedDict's entry not counted)"))
            # The credits since the first restart would be replayed one script at a time:
            # rewritten, the files are what the first restart read, plus those credits.
            rewrite_aof(client)
            client.close()
            del host
            gc.collect()

            # The laptop's restart: `opay serve` on its embedded Redis, the same files, Ray
            # starting while Redis reads them back.
            server.stop()
            stop_redis(redis_process)
            redis_process = None
            server.extra_env.pop("OPAY_REDIS_URL")
            t0 = time.monotonic()
            server.start()
            ready = time.monotonic() - t0
            async with httpx.AsyncClient(timeout=60) as http:
                signed.http = http
                got = await signed.request("GET", f"{server.public_url}/incoming-payments/{ids.INCOMING_PAYMENT.key(sample[-1])}", token=gnap)
                first_get = time.monotonic() - t0
                assert got.status_code == 200 and got.json()["incomingAmount"]["value"] == str(AMOUNT), got.text
            table += [(f"opay serve restart on {args.count:,} stored, its embedded Redis: start to ready", f"{ready:.2f} s"),
                      ("  to the first signed GET of a stored payment", f"{first_get:.2f} s"),
                      ("  of which Redis loading its files (its log)", redis_loaded(redis_dir))]
        finally:
            server.stop()
            if redis_process is not None:
                stop_redis(redis_process)
    width = max(len(name) for name, _ in table)
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in table), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="stored incoming payments (default 1000000)")
    parser.add_argument("--wallets", type=int, default=1000, help="receiving wallet addresses they spread over (default 1000)")
    parser.add_argument("--batch", type=int, default=2000, help="payments per group commit when populating (default 2000)")
    parser.add_argument("--resident", type=int, default=100_000, help="stored payments made active for the memory figures (default 100000)")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="each load phase's measured window (default 10)")
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="load clients, each one request at a time (default 8)")
    parser.add_argument("--shards", type=int, default=0, help="OPAY_SHARDS (0: as tests, 2)")
    parser.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE",
                        help="CONFIG SET before populating (repeatable), to see a setting's effect on the Redis figures; "
                        "the restart is on the shipped redis.conf")
    args = parser.parse_args(argv)
    if any("=" not in setting for setting in args.redis_config):
        parser.error("--redis-config takes NAME=VALUE")
    if args.count < SAMPLE + 2:
        parser.error(f"--count must be at least {SAMPLE + 2}")
    return args


if __name__ == "__main__":
    # SIGTERM ends the run like Ctrl-C does: through the `finally` that stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(parse_args()))
