"""ILP packets per second into opay's STREAM receiver (ILP-over-HTTP) on loopback.

  .venv/bin/python bench/ilp_packets.py                  # starts its own server (tests.support)
  .venv/bin/python bench/ilp_packets.py --seconds 10 --max-packets 50000 --connections 50 --payments 10
  .venv/bin/python bench/ilp_packets.py --public-url http://127.0.0.1:8000 \
      --operator-url http://127.0.0.1:8001 --operator-token "$OPAY_OPERATOR_TOKEN" --ilp-token "$TOKEN"

Setup (not measured): `--payments` uncapped incoming payments created through the Open
Payments API, and `--connections` STREAM connections (a fresh set of credentials each, from
authenticated GETs), round-robin over the payments. Each connection is one client that
sends one Prepare at a time on its own HTTP keep-alive connection, with increasing
sequence numbers, like a STREAM sender with one packet in flight.

Phases (each bounded by --seconds and --max-packets, after an unmeasured warm-up):
  money   fulfillable Prepares of 1 unit with StreamMoney: decrypt, credit through the
          payment's entity actor (journal + snapshot fsynced in Redis), Fulfill. OK = Fulfill.
  probes  unfulfillable Prepares (rate probes): decrypt, read the payment, F99 with the
          encrypted STREAM reply. OK = F99.
Printed per phase: packets, packets/s, p50/p99 latency (ms, client side), replies by code,
load generator CPU and (when this script started the server) the server's CPU.
At the end, for the money phase: receivedAmount summed over the payments must equal the
number of Fulfills the clients saw, warm-up included (checked; exit 1 on a mismatch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import percentile  # noqa: E402
from opay import base64url
from opay.client import Operator, SignedClient  # noqa: E402
from opay.ilp.packet import Fulfill, Prepare, Reject, decode_packet  # noqa: E402
from opay.ilp.stream import StreamMoney, StreamPacket, condition_for, encrypt_stream_packet, fulfillment_for  # noqa: E402

BENCH_ILP_TOKEN = "bench-ilp-peer-token"


@dataclass
class Conn:
    destination: str
    secret: bytes
    sequence: int = 0

    def prepare(self, fulfillable: bool) -> bytes:
        self.sequence += 1
        data = encrypt_stream_packet(self.secret, StreamPacket(self.sequence, 12, 0, (StreamMoney(1, 1),)))
        condition = condition_for(fulfillment_for(self.secret, data)) if fulfillable else os.urandom(32)
        expires = datetime.now(timezone.utc) + timedelta(seconds=30)
        return Prepare(1, expires, condition, self.destination, data).encode()


class Result(common.Result):
    """`outcomes` by reply: "fulfill", a Reject's code, or an HTTP status or exception name."""

    def line(self) -> str:
        done = sum(self.outcomes.values())
        lat = self.latencies_ms or [0.0]
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(self.outcomes.items()))
        return (
            f"{self.name:<7} connections={self.clients:<4} {done:>7} packets in {self.wall_seconds:5.1f} s  "
            f"{done / self.wall_seconds:8.0f} packets/s  p50 {statistics.median(lat):6.1f} ms  p99 {percentile(lat, 0.99):6.1f} ms  "
            f"replies: {codes}\n{self.cpu_text()}"
        )


async def setup(public_url: str, operator_url: str, operator_token: str, payments: int, connections: int) -> tuple[list[Conn], list[str], SignedClient, str, httpx.AsyncClient]:
    http = httpx.AsyncClient(timeout=60)
    operator = Operator(http, operator_url, operator_token)
    receiver, client, gnap = await common.receiver_and_client(operator, "bench-ilp", uuid.uuid4().hex[:8], ["create", "read"])
    ids = []
    for _ in range(payments):
        created = await client.request("POST", f"{public_url}/incoming-payments", json={"walletAddress": receiver["id"]}, token=gnap)
        created.raise_for_status()
        ids.append(created.json()["id"])
    conns = []
    for n in range(connections):
        view = await client.request("GET", ids[n % len(ids)], token=gnap)
        view.raise_for_status()
        method = next(m for m in view.json()["methods"] if m["type"] == "ilp")
        secret = method["sharedSecret"]
        conns.append(Conn(method["ilpAddress"], base64url.decode(secret)))
    return conns, ids, client, gnap, http


async def run_phase(
    name: str, conns: list[Conn], url: str, ilp_token: str, *, seconds: float, max_packets: int, warmup: float, server_sid: int | None
) -> tuple[Result, int]:
    """The measured result, and every Fulfill seen (warm-up included)."""
    fulfillable = name == "money"
    ok_code = "fulfill" if fulfillable else "F99"
    counter = 0
    fulfills = 0
    headers = {"authorization": f"Bearer {ilp_token}", "content-type": "application/octet-stream"}

    async def worker(conn: Conn, session: aiohttp.ClientSession, deadline: float, limit: int, result: Result | None) -> None:
        nonlocal counter, fulfills
        while time.monotonic() < deadline and counter < limit:
            counter += 1
            raw = conn.prepare(fulfillable)
            started = time.perf_counter()
            try:
                async with session.post(url, data=raw, headers=headers) as answer:
                    body = await answer.read()
                if answer.status != 200:
                    code = f"http {answer.status}"
                else:
                    packet = decode_packet(body)
                    code = "fulfill" if isinstance(packet, Fulfill) else packet.code if isinstance(packet, Reject) else "?"
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                code = type(error).__name__
            fulfills += code == "fulfill"
            if result is not None:
                result.record(code, started)

    # One HTTP connection per STREAM connection, kept alive.
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=60)) for _ in conns
    ]
    try:
        if warmup > 0:
            await asyncio.gather(*(worker(c, s, time.monotonic() + warmup, max_packets, None) for c, s in zip(conns, sessions)))
        result = Result(name, len(conns))
        limit = counter + max_packets
        with result.measure(server_sid) as wall0:
            await asyncio.gather(*(worker(c, s, wall0 + seconds, limit, result) for c, s in zip(conns, sessions)))
        result.outcomes.setdefault(ok_code, 0)
        return result, fulfills
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def main(args: argparse.Namespace, public_url: str, operator_url: str, operator_token: str, server_sid: int | None) -> None:
    conns, ids, client, gnap, http = await setup(public_url, operator_url, operator_token, args.payments, args.connections)
    url = f"{public_url}/ilp"
    fulfilled = 0
    try:
        for name in args.phases.split(","):
            result, seen = await run_phase(
                name, conns, url, args.ilp_token,
                seconds=args.seconds, max_packets=args.max_packets, warmup=args.warmup, server_sid=server_sid,
            )
            print(result.line(), flush=True)
            fulfilled += seen
        if "money" in args.phases.split(","):
            total = 0
            for payment in ids:
                view = await client.request("GET", payment, token=gnap)
                total += int(view.json()["receivedAmount"]["value"])
            verdict = "OK" if total == fulfilled else "MISMATCH"
            print(f"receivedAmount over {len(ids)} payments: {total}; Fulfills seen (warm-up included): {fulfilled}  {verdict}", flush=True)
            if total != fulfilled:
                raise SystemExit(1)
    finally:
        await http.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase (default 10)")
    parser.add_argument("--max-packets", type=int, default=50_000, help="measured packets per phase at most (default 50000)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured warm-up per phase, seconds (default 1)")
    parser.add_argument("--connections", "-c", type=int, default=50, help="STREAM connections, one packet in flight each (default 50)")
    parser.add_argument("--payments", type=int, default=10, help="incoming payments the connections spread over (default 10)")
    parser.add_argument("--phases", default="money,probes", help="comma-separated: money, probes")
    parser.add_argument("--public-url", help="a running server's public URL (loopback only)")
    parser.add_argument("--operator-url", help="a running server's operator API (loopback only)")
    parser.add_argument("--operator-token", default=os.environ.get("OPAY_OPERATOR_TOKEN", ""))
    parser.add_argument("--ilp-token", default=BENCH_ILP_TOKEN, help="a token from the server's OPAY_ILP_INCOMING_TOKENS")
    parser.add_argument("--shards", type=int, default=0, help="OPAY_SHARDS for the server this script starts (0: as tests, 2)")
    args = parser.parse_args(argv)
    common.check_server_args(parser, args)
    if set(args.phases.split(",")) - {"money", "probes"}:
        parser.error("--phases takes money and/or probes")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return common.run_main(
        args,
        main,
        data_prefix="opay-bench-ilp-",
        extra_env={"OPAY_ILP_INCOMING_TOKENS": args.ilp_token},
        up_details="{public}; shards {shards}",
    )


if __name__ == "__main__":
    sys.exit(run())
