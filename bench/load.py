"""Load an opay server on loopback and report throughput, latency and errors.

  .venv/bin/python bench/load.py                      # starts its own server (tests.support)
  .venv/bin/python bench/load.py --public-url http://127.0.0.1:8000 \
      --operator-url http://127.0.0.1:8001 --operator-token "$OPAY_OPERATOR_TOKEN"

Phases (each bounded by --seconds and --max-requests, after a short warm-up):
  creates  POST /incoming-payments, signed (RFC 9421) with a GNAP token, N concurrent clients
  credits  POST /credits on the operator API, distinct idempotency keys, spread over a few
           uncapped incoming payments
  flow     the whole Open Payments flow per iteration: incoming payment (receiver wallet) ->
           quote for its remainder (sender wallet) -> outgoing payment from the quote (auto-fund),
           plus settlement latency (outgoing 201 -> incoming completed) on a sample of flows
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import percentile  # noqa: E402
from opay.client import Operator, SignedClient  # noqa: E402
from opay.http import signatures  # noqa: E402

PHASES = ("creates", "credits", "flow")
FLOW_STEPS = ("incoming", "quote", "outgoing")
AMOUNT = 1000  # incomingAmount of every measured incoming payment (USD, scale 2)


@dataclass
class Result(common.Result):
    """`outcomes` by HTTP status or exception name, "ok" for the phase's expected status."""

    pending: set[asyncio.Task] = field(default_factory=set)  # work to await after the measured window

    @property
    def ok(self) -> int:
        return self.outcomes.get("ok", 0)

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.outcomes.items() if status != "ok")

    def error_text(self) -> str:
        return ", ".join(f"{status}: {count}" for status, count in sorted(self.outcomes.items()) if status != "ok") or "none"

    def line(self) -> str:
        done = self.ok + self.errors
        lat = self.latencies_ms or [0.0]
        return (
            f"{self.name:<8} c={self.clients:<4} {done:>7} requests in {self.wall_seconds:5.1f} s  "
            f"{done / self.wall_seconds:8.0f} req/s  p50 {statistics.median(lat):6.1f} ms  p99 {percentile(lat, 0.99):6.1f} ms  "
            f"errors: {self.error_text()}\n{self.cpu_text()}"
        )


@dataclass
class FlowResult(Result):
    """A flow is three requests; `latencies_ms` holds whole flows (first request sent to the
    outgoing payment's 201), `steps` each request's own latency (successful ones only)."""

    steps: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in FLOW_STEPS})
    settle_every: int = 1
    settle_ms: list[float] = field(default_factory=list)
    settle_statuses: dict[str, int] = field(default_factory=dict)  # samples that did not settle, by cause

    def line(self) -> str:
        done = self.ok + self.errors
        lat = self.latencies_ms or [0.0]
        steps = "  ".join(
            f"{step} p50 {statistics.median(self.steps[step] or [0.0]):6.1f} p99 {percentile(self.steps[step], 0.99):6.1f}"
            for step in FLOW_STEPS
        )
        sampled = len(self.settle_ms) + sum(self.settle_statuses.values())
        unsettled = ", ".join(f"{cause}: {count}" for cause, count in sorted(self.settle_statuses.items())) or "none"
        settle = self.settle_ms or [0.0]
        return (
            f"{self.name:<8} c={self.clients:<4} {done:>7} flows in {self.wall_seconds:5.1f} s  "
            f"{done / self.wall_seconds:8.1f} flows/s  flow p50 {statistics.median(lat):6.1f} ms  p99 {percentile(lat, 0.99):6.1f} ms  "
            f"errors: {self.error_text()}\n"
            f"{'':<15}steps (ms): {steps}\n"
            f"{'':<15}settlement (1 in {self.settle_every} flows, {len(self.settle_ms)}/{sampled} settled): "
            f"p50 {statistics.median(settle):6.1f} ms  p99 {percentile(settle, 0.99):6.1f} ms  not settled: {unsettled}\n"
            f"{self.cpu_text()}"
        )


async def run_phase(
    name: str,
    request: Callable[[int, Result | None], Awaitable[int | str]],
    ok_status: int,
    *,
    result_type: Callable[[str, int], Result] = Result,
    concurrency: int,
    seconds: float,
    max_requests: int,
    warmup_seconds: float,
    server_sid: int | None,
) -> Result:
    counter = 0

    async def worker(deadline: float, limit: int, result: Result | None) -> None:
        nonlocal counter
        while time.monotonic() < deadline and counter < limit:
            n = counter
            counter += 1
            started = time.perf_counter()
            try:
                answer = await request(n, result)
                status = "ok" if answer == ok_status else str(answer)
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                status = type(error).__name__
            if result is not None:
                result.record(status, started)

    if warmup_seconds > 0:
        await asyncio.gather(*(worker(time.monotonic() + warmup_seconds, max_requests, None) for _ in range(concurrency)))
    result = result_type(name, concurrency)
    limit = counter + max_requests
    with result.measure(server_sid) as wall0:
        await asyncio.gather(*(worker(wall0 + seconds, limit, result) for _ in range(concurrency)))
    while result.pending:  # e.g. settlement pollers still running: outside the measured window
        await asyncio.gather(*list(result.pending))
    return result


async def interactive_outgoing_token(client: SignedClient, operator: Operator, wallet: dict, limits: dict) -> str:
    """As tests/conftest.py World.outgoing_token: an interactive grant the ASE approves via
    the operator API, then the client continues (retrying while `too_fast`)."""
    item = {"type": "outgoing-payment", "actions": ["create", "read", "list"], "identifier": wallet["id"], "limits": limits}
    body = {"access_token": {"access": [item]}, "client": client.wallet_address, "interact": {"start": ["redirect"]}}
    pending = await client.request("POST", wallet["authServer"], json=body)
    if pending.status_code != 200:
        raise SystemExit(f"outgoing-payment grant request: {pending.status_code} {pending.text}")
    cont = pending.json()["continue"]
    approved = await operator.post(f"/grants/{cont['uri'].rsplit('/', 1)[1]}/approve", {})
    if approved.status_code not in (200, 204):
        raise SystemExit(f"grant approval: {approved.status_code} {approved.text}")
    for _ in range(100):
        continued = await client.request("POST", cont["uri"], token=cont["access_token"]["value"])
        if continued.status_code == 400 and continued.json()["error"]["code"] == "too_fast":
            await asyncio.sleep(0.2)
            continue
        if continued.status_code != 200:
            raise SystemExit(f"grant continuation: {continued.status_code} {continued.text}")
        return continued.json()["access_token"]["value"]
    raise SystemExit("grant continuation: still too_fast after 100 tries")


async def main(args: argparse.Namespace, public_url: str, operator_url: str, token: str, server_sid: int | None) -> list[Result]:
    # Setup through the project's own client (httpx); the measured requests go through
    # aiohttp, whose client costs a fraction of httpx's CPU: with httpx the load generator,
    # not the server, was the limit (one core at ~300 req/s).
    async with httpx.AsyncClient(timeout=60) as http:
        operator = Operator(http, operator_url, token)
        tag = uuid.uuid4().hex[:8]
        receiver, client, gnap = await common.receiver_and_client(operator, "bench", tag, ["create", "read", "list"])
        key = client.private_key
        create_url = f"{public_url}/incoming-payments"
        payments = []
        phases_wanted = args.phases.split(",")
        for _ in range(args.payments if "credits" in phases_wanted else 0):
            created = await client.request("POST", create_url, json={"walletAddress": receiver["id"]}, token=gnap)
            created.raise_for_status()
            payments.append(created.json()["id"])
        if "flow" in phases_wanted:
            sender = await operator.wallet_address(f"bench-sender-{tag}", "USD", 2, "Bench sender")
            quote_token = (await client.grant(sender["authServer"], [{"type": "quote", "actions": ["create", "read"]}]))[
                "access_token"
            ]["value"]
            # Warm-up and the measured window each run at most --max-requests flows.
            debit_limit = {"value": str(AMOUNT * (2 * args.max_requests + 1)), "assetCode": "USD", "assetScale": 2}
            outgoing_token = await interactive_outgoing_token(client, operator, sender, {"debitAmount": debit_limit})

    create_body = msgspec.json.encode(
        {"walletAddress": receiver["id"], "incomingAmount": {"value": str(AMOUNT), "assetCode": "USD", "assetScale": 2}}
    )
    operator_headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    # Settlement pollers get connections of their own, so they never queue behind the flows.
    poll_connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session,
        aiohttp.ClientSession(connector=poll_connector, timeout=aiohttp.ClientTimeout(total=60)) as poll_session,
    ):

        async def signed(
            http: aiohttp.ClientSession, method: str, url: str, bearer: str, body: bytes = b""
        ) -> tuple[int, bytes]:
            # Signed per request, as a real client must (the signature's `created` is checked).
            headers = {"authorization": f"GNAP {bearer}"}
            if body:
                headers["content-type"] = "application/json"
            headers = signatures.sign(method=method, url=url, headers=headers, body=body, private_key=key, keyid="bench-key")
            async with http.request(method, url, data=body or None, headers=headers) as answer:
                return answer.status, await answer.read()

        async def create(_: int, __: Result | None) -> int:
            # Signed per request, as a real client must (the signature's `created` is checked).
            headers = signatures.sign(
                method="POST",
                url=create_url,
                headers={"content-type": "application/json", "authorization": f"GNAP {gnap}"},
                body=create_body,
                private_key=key,
                keyid="bench-key",
            )
            async with session.post(create_url, data=create_body, headers=headers) as answer:
                await answer.read()
                return answer.status

        async def credit(n: int, _: Result | None) -> int:
            body = msgspec.json.encode(
                {"incomingPayment": payments[n % len(payments)], "amount": "1", "idempotencyKey": f"bench-{tag}-{n}"}
            )
            async with session.post(f"{operator_url}/credits", data=body, headers=operator_headers) as answer:
                await answer.read()
                return answer.status

        async def settle(incoming_id: str, expected: dict, started: float, result: FlowResult) -> None:
            for _ in range(args.settle_polls):
                try:
                    status, body = await signed(poll_session, "GET", incoming_id, gnap)
                except (aiohttp.ClientError, TimeoutError) as error:
                    cause = f"GET {type(error).__name__}"
                    break
                if status != 200:
                    cause = f"GET {status}"
                    break
                current = msgspec.json.decode(body)
                if current.get("completed") and current.get("receivedAmount") == expected:
                    result.settle_ms.append((time.perf_counter() - started) * 1000)
                    return
                await asyncio.sleep(args.settle_interval)
            else:
                cause = f"not completed after {args.settle_polls} polls"
            result.settle_statuses[cause] = result.settle_statuses.get(cause, 0) + 1

        async def flow(n: int, result: Result | None) -> int | str:
            step = FLOW_STEPS[0]
            try:
                began = time.perf_counter()
                status, body = await signed(session, "POST", create_url, gnap, create_body)
                if status != 201:
                    return f"{step} {status}"
                incoming_id = msgspec.json.decode(body)["id"]
                step, t1 = FLOW_STEPS[1], time.perf_counter()
                quote_body = msgspec.json.encode({"walletAddress": sender["id"], "receiver": incoming_id, "method": "ilp"})
                status, body = await signed(session, "POST", f"{public_url}/quotes", quote_token, quote_body)
                if status != 201:
                    return f"{step} {status}"
                quote = msgspec.json.decode(body)
                step, t2 = FLOW_STEPS[2], time.perf_counter()
                pay_body = msgspec.json.encode({"walletAddress": sender["id"], "quoteId": quote["id"]})
                status, body = await signed(session, "POST", f"{public_url}/outgoing-payments", outgoing_token, pay_body)
                if status != 201:
                    return f"{step} {status}"
                t3 = time.perf_counter()
            except (aiohttp.ClientError, TimeoutError) as error:
                return f"{step} {type(error).__name__}"
            if isinstance(result, FlowResult):
                for name, seconds in zip(FLOW_STEPS, (t1 - began, t2 - t1, t3 - t2)):
                    result.steps[name].append(seconds * 1000)
                result.settle_every = args.settle_every
                if args.settle_every and n % args.settle_every == 0:
                    task = asyncio.create_task(settle(incoming_id, quote["receiveAmount"], t3, result))
                    result.pending.add(task)
                    task.add_done_callback(result.pending.discard)
            return 201

        phases = {"creates": (create, 201, Result), "credits": (credit, 200, Result), "flow": (flow, 201, FlowResult)}
        results = []
        for name in phases_wanted:
            request, ok_status, result_type = phases[name]
            results.append(
                await run_phase(
                    name,
                    request,
                    ok_status,
                    result_type=result_type,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    max_requests=args.max_requests,
                    warmup_seconds=args.warmup,
                    server_sid=server_sid,
                )
            )
            print(results[-1].line(), flush=True)
        return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase (default 10)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="measured requests per phase at most (default 50000)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured warm-up per phase, seconds (default 1)")
    parser.add_argument("--concurrency", "-c", type=int, default=50, help="concurrent clients/connections (default 50)")
    parser.add_argument("--payments", type=int, default=4, help="incoming payments the credits spread over (default 4)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated: creates, credits, flow (default all)")
    parser.add_argument("--settle-every", type=int, default=10,
                        help="flow: measure settlement on every Nth flow (0: never; default 10)")
    parser.add_argument("--settle-polls", type=int, default=500, help="flow: GETs per sampled flow at most (default 500)")
    parser.add_argument("--settle-interval", type=float, default=0.02,
                        help="flow: seconds between a sampled flow's GETs (default 0.02)")
    parser.add_argument("--public-url", help="a running server's public API (loopback only)")
    parser.add_argument("--operator-url", help="a running server's operator API (loopback only)")
    parser.add_argument("--operator-token", default=os.environ.get("OPAY_OPERATOR_TOKEN", ""))
    parser.add_argument("--shards", type=int, default=0, help="OPAY_SHARDS for the server this script starts (0: as tests, 2)")
    args = parser.parse_args(argv)
    common.check_server_args(parser, args)
    if set(args.phases.split(",")) - set(PHASES):
        parser.error(f"--phases takes any of {', '.join(PHASES)}")
    return args


def run(argv: list[str] | None = None) -> int:
    return common.run_main(
        parse_args(argv),
        main,
        data_prefix="opay-bench-",
        extra_env={},
        up_details="{public} (operator {operator}); shards {shards}; data {data}",
    )


if __name__ == "__main__":
    sys.exit(run())
