"""Remote payments between two opay servers on loopback: payments completed per second,
packets per second, and p50/p99 of payment completion.

Starts A (test.a) and B (test.b) as the tests do (tests/support.py OpayServer: each its own
redis-server with AOF and its own Ray, OPAY_SHARDS=2), peers them both ways (POST /peers),
then for `--payments` payments (`-c` at a time): an incoming payment on B (B's API, with
incomingAmount), and an outgoing payment at A to it, opened at A's entity level as
tests/test_remote_payments.py does (A's resolver reads B's payment; the payment's state is
written with a due time; A's timer brings it up). Measured per payment: from that write to
the payment's completed state in A's Redis (polled every --poll seconds), so the figure
includes up to one timer interval (OPAY_TIMER_INTERVAL_SECONDS, 1 s by default: set
lower with --timer-interval) before the first packet. Setup (incoming payments, the
resolver's reads) is not in the figure.

    .venv/bin/python bench/remote.py --payments 200 -c 20 --amount 1000 --max-packet 100
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opay.actors.registry import codec  # noqa: E402
from opay.persistence.keys import shard_of  # noqa: E402
from opay.domain.outgoing_payment import OutgoingPayment  # noqa: E402
from opay.ilp import sender as stream  # noqa: E402
from opay.persistence import keys  # noqa: E402
from tests.conftest import make_world  # noqa: E402
from tests.support import A_TO_B, B_TO_A, LOOPBACK_FETCHES, OpayServer  # noqa: E402
from tests.test_remote_payments import SHARDS, incoming_at_b, open_remote_payment, totals  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="opay-remote-bench-"))
    env = {**LOOPBACK_FETCHES, "OPAY_TIMER_INTERVAL_SECONDS": str(args.timer_interval)}
    a = OpayServer(root / "a", {**env, "OPAY_ILP_ADDRESS": "test.a"})
    b = OpayServer(root / "b", {**env, "OPAY_ILP_ADDRESS": "test.b"})
    a.start()
    b.start()
    try:
        for at, name, other, out, inc, route in ((a, "b", b, A_TO_B, B_TO_A, "test.b"), (b, "a", a, B_TO_A, A_TO_B, "test.a")):
            body = {
                "name": name, "url": f"{other.public_url}/ilp", "outgoingToken": out, "incomingToken": inc,
                "assetCode": "USD", "assetScale": 2, "routes": [route], "maxPacketAmount": str(args.max_packet),
            }
            assert httpx.post(f"{at.operator_url}/peers", json=body, headers=at.operator_headers, timeout=10).status_code == 201
        async with httpx.AsyncClient(timeout=30) as http:
            at_b = await make_world(b, http)
            incoming = [await incoming_at_b(at_b, args.amount) for _ in range(args.payments)]
        redis_a = aioredis.Redis.from_url(a.redis_url)
        done: list[float] = []
        packets = 0
        failed = 0
        gate = asyncio.Semaphore(args.concurrency)

        async def one(url: str) -> None:
            nonlocal packets, failed
            async with gate:
                entity_id = await open_remote_payment(a, url, receive=args.amount, in_flight=args.in_flight)
                started = time.perf_counter()
                while True:
                    raw = await redis_a.hget(keys.entity(entity_id, shard_of(entity_id, SHARDS)), "s")
                    payment = codec.decode_state(raw)
                    assert isinstance(payment, OutgoingPayment)
                    if payment.settled:
                        break
                    await asyncio.sleep(args.poll)
                if payment.phase != "completed":
                    failed += 1
                    return
                done.append(time.perf_counter() - started)
                state = msgspec.msgpack.decode(payment.remote.stream, type=stream.SenderState)
                packets += state.packets_fulfilled

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p["id"]) for p in incoming))
        wall = time.perf_counter() - t0
        await redis_a.aclose()
        sent_a, _ = totals(a, "b")
        _, received_b = totals(b, "a")
        print(f"payments: {len(done)} completed, {failed} failed, of {args.payments} (concurrency {args.concurrency}, "
              f"{args.amount} each, max packet {args.max_packet}, {args.in_flight} in flight per payment)")
        print(f"wall {wall:.2f} s (includes the bench's own resolve per payment): {len(done) / wall:.1f} payments/s, {packets / wall:.0f} packets/s")
        print(f"completion p50 {percentile(done, 0.5) * 1000:.0f} ms, p99 {percentile(done, 0.99) * 1000:.0f} ms")
        print(f"peer totals: A sent {sent_a}, B received {received_b}, expected {len(done) * args.amount}")
    finally:
        b.stop()
        a.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=100)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--amount", type=int, default=1000)
    parser.add_argument("--max-packet", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--poll", type=float, default=0.01)
    parser.add_argument("--timer-interval", type=float, default=0.05)
    asyncio.run(main(parser.parse_args()))
