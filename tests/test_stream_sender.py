"""opay's STREAM sender (opay/ilp/sender.py + link.py) against real receivers.

Receivers: opay's own (a real `opay serve` with ILP on, max packet 300 so F08 splits),
ilp-protocol-stream@2.7.2-alpha.3's createServer behind ilp-plugin-http, and
@interledger/stream-receiver@0.2.2 behind a small Node HTTP peer (tests/interop/receive.js).
Bad peers are real HTTP servers too: one that never answers, one that corrupts
fulfillments on the way back from opay's receiver. The state machine's arithmetic is
also checked with hypothesis against a receiver simulated here (rates, flooring, F08,
caps, T errors).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from opay import base64url
from opay.ilp import sender as machine
from opay.ilp.link import HttpLink, send
from opay.ilp.oer import encode_uint64
from opay.ilp.packet import Fulfill, Reject, decode_packet
from opay.ilp.sender import SenderConfig, SenderState
from opay.ilp.stream import (
    ConnectionClose,
    StreamMaxMoney,
    StreamPacket,
    condition_for,
    decrypt_stream_packet,
    encrypt_stream_packet,
    fulfillment_for,
)
from tests.ilp_support import PEER_TOKEN, ilp_env, ilp_method, received
from tests.support import OpayServer, free_port

INTEROP = Path(__file__).resolve().parent / "interop"
RECEIVE_JS = INTEROP / "receive.js"
MAX_PACKET = 300
ONE = machine.min_rate_for(1)  # same asset, 1% slippage


def usd(value: int) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(Path(tmp_path_factory.mktemp("stream-sender")), extra_env=ilp_env(OPAY_ILP_MAX_PACKET_AMOUNT=str(MAX_PACKET)))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def ilp_url(server) -> str:
    return f"{server.public_url}/ilp"


@pytest.fixture
async def token(world) -> str:
    return await world.token()


async def new_payment(world, token: str, **body) -> tuple[dict, bytes, str]:
    created = await world.create_payment(token, **body)
    assert created.status_code == 201, created.text
    payment = created.json()
    method = ilp_method(payment)
    return payment, base64url.decode(method["sharedSecret"]), method["ilpAddress"]


async def run(state: SenderState, url: str, token: str = PEER_TOKEN, **bounds) -> SenderState:
    link = HttpLink(url, token, pool_size=state.config.packets_in_flight)
    try:
        return await send(state, link, **bounds)
    finally:
        link.close()


# ---------------------------------------------------------------- (a) opay's own receiver


@pytest.mark.anyio
async def test_fixed_delivery_lands_exactly_in_received_amount(world, token, ilp_url) -> None:
    payment, secret, address = await new_payment(world, token, incomingAmount=usd(10_000))
    state = await run(machine.fixed_delivery(address, secret, 1234, ONE), ilp_url)
    assert state.outcome == machine.Outcome("completed", "completed"), machine.describe(state)
    assert (state.delivered, state.sent) == (1234, 1234)
    assert await received(world, payment, token) == (1234, False)
    # F08 from the receiver's max packet amount: the sender learned it and split.
    assert state.max_packet == MAX_PACKET and state.packets_fulfilled == 5


@pytest.mark.anyio
async def test_f08_splits_into_packets_of_the_max(world, token, ilp_url) -> None:
    payment, secret, address = await new_payment(world, token)
    state = await run(machine.fixed_send(address, secret, 5000, ONE), ilp_url)
    assert state.outcome is not None and state.outcome.status == "completed", machine.describe(state)
    assert (state.sent, state.delivered) == (5000, 5000)
    assert state.packets_fulfilled == 17  # ceil(5000 / 300)
    assert await received(world, payment, token) == (5000, False)


@pytest.mark.anyio
async def test_capped_payment_stops_exactly_at_the_cap(world, token, ilp_url) -> None:
    payment, secret, address = await new_payment(world, token, incomingAmount=usd(1000))
    state = await run(machine.fixed_delivery(address, secret, 1500, ONE), ilp_url)
    assert state.outcome is not None and state.outcome.reason == machine.RECEIVER_LIMIT, machine.describe(state)
    assert state.delivered == state.sent == 1000
    assert state.receive_max == 1000  # from the receiver's StreamMaxMoney
    assert await received(world, payment, token) == (1000, True)


@pytest.mark.anyio
async def test_a_completed_payment_closes_the_connection_and_nothing_moves(world, token, ilp_url) -> None:
    payment, secret, address = await new_payment(world, token, incomingAmount=usd(500))
    first = await run(machine.fixed_delivery(address, secret, 500, ONE), ilp_url)
    assert first.outcome.status == "completed" and first.delivered == 500
    again = await run(machine.fixed_delivery(address, secret, 100, ONE), ilp_url)
    assert again.outcome.status == "failed" and again.delivered == again.sent == 0, machine.describe(again)
    assert again.outcome.reason in (machine.CLOSED_BY_RECEIVER, machine.RECEIVER_LIMIT)
    assert await received(world, payment, token) == (500, True)


@pytest.mark.anyio
async def test_bounded_runs_resume_from_serialized_state_and_deliver_once(world, token, ilp_url) -> None:
    """What the entity will do: a step, persist the state (msgspec), restart, go on."""
    payment, secret, address = await new_payment(world, token, incomingAmount=usd(5000))
    state = machine.fixed_delivery(address, secret, 3000, ONE, config=SenderConfig(packets_in_flight=4))
    runs = 0
    while state.outcome is None or not machine.is_finished(state):
        state = await run(state, ilp_url, max_packets=3)
        assert not state.in_flight  # every Prepare sent was answered and accounted
        state = msgspec.json.decode(msgspec.json.encode(state), type=SenderState)
        assert state.delivered <= 3000 and (await received(world, payment, token))[0] == state.delivered
        runs += 1
        assert runs < 40
    assert state.outcome.status == "completed" and state.delivered == 3000
    assert await received(world, payment, token) == (3000, False)


@pytest.mark.anyio
async def test_throughput_through_opays_receiver(world, token, ilp_url) -> None:
    payment, secret, address = await new_payment(world, token)
    amount = 300 * 200  # 200 packets at the max packet amount
    state = machine.fixed_send(address, secret, amount, ONE, config=SenderConfig(packets_in_flight=20))
    started = time.perf_counter()
    state = await run(state, ilp_url)
    elapsed = time.perf_counter() - started
    assert state.outcome.status == "completed" and state.delivered == amount
    assert await received(world, payment, token) == (amount, False)
    print(f"\nstream sender -> opay receiver: {state.packets_sent} packets ({state.packets_fulfilled} fulfilled) "
          f"in {elapsed:.2f} s = {state.packets_sent / elapsed:.0f} packets/s, 20 in flight")


# ---------------------------------------------------------------- (d) bad input


@pytest.mark.anyio
async def test_unreachable_address_fails_with_a_reason(ilp_url) -> None:
    state = await run(machine.fixed_delivery("test.opay.nosuchpayment", os.urandom(32), 100, ONE), ilp_url)
    assert state.outcome.status == "failed" and state.outcome.reason == machine.CONNECTOR_ERROR
    assert state.outcome.detail.startswith("F02"), state.outcome
    assert state.delivered == state.sent == 0


class _SilentPeer:
    """Accepts connections and reads requests, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/ilp"
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.mark.anyio
async def test_a_peer_that_never_answers_is_retried_bounded_and_never_counted() -> None:
    peer = _SilentPeer()
    config = SenderConfig(packets_in_flight=2, packet_expiry_ms=400, backoff_base_ms=10, backoff_max_ms=50, max_failures=5)
    try:
        started = time.monotonic()
        state = await run(machine.fixed_delivery("test.b.x", os.urandom(32), 100, ONE, config=config), peer.url)
        elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert state.outcome.reason == machine.TOO_MANY_FAILURES and "T00" in state.outcome.detail, state.outcome
    assert state.delivered == state.sent == 0 and state.packets_fulfilled == 0
    assert 5 <= state.packets_sent <= 6 and peer.accepted >= 2  # retried, and bounded
    assert elapsed < 5


class _CorruptingPeer:
    """Forwards to opay's receiver and replaces every Fulfill's fulfillment on the way back."""

    def __init__(self, target: str) -> None:
        outer = self
        self.corrupted = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                answer = httpx.post(target, content=body, headers={"authorization": self.headers["authorization"]}, timeout=30)
                content = answer.content
                reply = decode_packet(content)
                if isinstance(reply, Fulfill):
                    outer.corrupted += 1
                    content = Fulfill(os.urandom(32), reply.data).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ilp"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.anyio
async def test_a_wrong_fulfillment_is_never_counted(world, token, ilp_url) -> None:
    payment, secret, address = await new_payment(world, token, incomingAmount=usd(1000))
    peer = _CorruptingPeer(ilp_url)
    try:
        state = await run(machine.fixed_delivery(address, secret, 200, ONE, config=SenderConfig(packets_in_flight=1)), peer.url)
    finally:
        peer.close()
    assert state.outcome.reason == machine.INVALID_FULFILLMENT, machine.describe(state)
    assert state.delivered == state.sent == 0 and peer.corrupted == 1
    # The receiver was paid: the peer kept the Fulfill. The sender stopped at one packet.
    assert (await received(world, payment, token))[0] == 200


# ---------------------------------------------------------------- (b, c) receivers written by others


class NodeReceiver:
    def __init__(self, mode: str, **args) -> None:
        node = shutil.which("node")
        assert node, "the ILP interop tests need Node.js (node on PATH)"
        assert (INTEROP / "node_modules" / "ilp-protocol-stream").is_dir(), "run `npm ci` in tests/interop (make test does it)"
        self.mode = mode
        self.process = subprocess.Popen(
            [node, str(RECEIVE_JS), json.dumps({"mode": mode, "token": PEER_TOKEN, **args})],
            cwd=INTEROP, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()
        ready = json.loads(line)
        assert "fatal" not in ready, ready
        self.url, self.address, self.secret = ready["url"], ready["ilpAddress"], base64url.decode(ready["sharedSecret"])

    def report(self) -> dict:
        self.process.stdin.write("report\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stateless_available() -> bool:
    return (INTEROP / "node_modules" / "@interledger" / "stream-receiver").is_dir()


@pytest.fixture(params=["stream", "stateless"])
def receiver_mode(request) -> str:
    if request.param == "stateless" and not _stateless_available():
        pytest.skip("@interledger/stream-receiver is not installed in tests/interop (npm ci)")
    return request.param


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["delivery", "send"])
async def test_receivers_by_others_report_what_opay_counted(receiver_mode, how) -> None:
    node = NodeReceiver(receiver_mode)
    try:
        if how == "delivery":
            state = machine.fixed_delivery(node.address, node.secret, 1234, ONE)
        else:
            state = machine.fixed_send(node.address, node.secret, 4321, ONE)
        state = await run(state, node.url)
        report = node.report()
    finally:
        node.stop()
    assert state.outcome.status == "completed", machine.describe(state)
    assert int(report["totalReceived"]) == state.delivered == (1234 if how == "delivery" else 4321)
    assert report["fulfilled"] == state.packets_fulfilled


@pytest.mark.anyio
async def test_ilp_protocol_stream_receive_max_stops_delivery_at_its_limit() -> None:
    node = NodeReceiver("stream", receiveMax="1000")
    try:
        state = await run(machine.fixed_delivery(node.address, node.secret, 1234, ONE), node.url)
        report = node.report()
    finally:
        node.stop()
    assert state.outcome.reason == machine.RECEIVER_LIMIT, machine.describe(state)
    assert int(report["totalReceived"]) == state.delivered == 1000


@pytest.mark.anyio
async def test_a_receiver_without_stream_max_money_is_capped_by_the_caller() -> None:
    """Rafiki's receiver never sends StreamMaxMoney: the entity caps at incomingAmount - receivedAmount."""
    if not _stateless_available():
        pytest.skip("@interledger/stream-receiver is not installed in tests/interop (npm ci)")
    node = NodeReceiver("stateless")
    try:
        state = machine.set_cap(machine.fixed_delivery(node.address, node.secret, 1234, ONE), 1000)
        state = await run(state, node.url)
        report = node.report()
    finally:
        node.stop()
    assert state.receive_max is None and state.outcome.reason == machine.RECEIVER_LIMIT
    assert int(report["totalReceived"]) == state.delivered == 1000


# ---------------------------------------------------------------- the arithmetic, against a simulated receiver


class _Simulated:
    """A path with an exact rate floored at the end, a max packet amount (F08 with data in
    source units), a receiver cap advertised (or not) by StreamMaxMoney, and T04s."""

    def __init__(self, secret: bytes, rate: Fraction, max_packet: int, cap: int | None, advertise: bool, t_every: int) -> None:
        self.secret, self.rate, self.max_packet, self.cap, self.advertise = secret, rate, max_packet, cap, advertise
        self.t_every, self.seen, self.received = t_every, 0, 0

    def answer(self, prepare) -> Fulfill | Reject:
        self.seen += 1
        if self.t_every and self.seen % self.t_every == 0:
            return Reject("T04", "test.sim", b"liquidity")
        if prepare.amount > self.max_packet:
            return Reject("F08", "test.sim", b"", encode_uint64(prepare.amount) + encode_uint64(self.max_packet))
        request = decrypt_stream_packet(self.secret, prepare.data)
        arrived = int(prepare.amount * self.rate)
        frames = (StreamMaxMoney(1, self.cap, self.received),) if self.advertise and self.cap is not None else ()
        fulfillment = fulfillment_for(self.secret, prepare.data)
        over = self.cap is not None and self.received + arrived > self.cap
        if condition_for(fulfillment) != prepare.execution_condition or arrived < request.prepare_amount or over:
            return Reject("F99", "test.sim", b"", encrypt_stream_packet(self.secret, StreamPacket(request.sequence, 14, arrived, frames)))
        self.received += arrived
        frames = (StreamMaxMoney(1, self.cap, self.received),) if self.advertise and self.cap is not None else ()
        return Fulfill(fulfillment, encrypt_stream_packet(self.secret, StreamPacket(request.sequence, 13, arrived, frames)))


def _drive(state: SenderState, sim: _Simulated, caller_cap: int | None) -> SenderState:
    if caller_cap is not None:
        state = machine.set_cap(state, caller_cap)
    now = 0
    for _ in range(20_000):
        if machine.is_finished(state):
            return state
        state, prepares = machine.next_prepares(state, now)
        # Answer out of order: the machine must not care.
        for prepare in reversed(prepares):
            state = machine.on_reply(state, prepare, sim.answer(prepare), now)
            assert state.delivered == sim.received or state.outcome is not None
        now += 10
    raise AssertionError(f"did not finish: {machine.describe(state)}")


rates = st.fractions(min_value=Fraction(1, 50), max_value=50, max_denominator=1000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=rates,
    max_packet=st.integers(1, 5000),
    target=st.integers(1, 20_000),
    cap=st.none() | st.integers(0, 20_000),
    advertise=st.booleans(),
    t_every=st.sampled_from([0, 0, 3, 7]),
    fixed=st.sampled_from(["delivery", "send"]),
    slippage=st.sampled_from([Fraction(0), Fraction(1, 100), Fraction(1, 2)]),
)
def test_never_over_delivers_never_over_spends(rate, max_packet, target, cap, advertise, t_every, fixed, slippage) -> None:
    secret = os.urandom(32)
    sim = _Simulated(secret, rate, max_packet, cap, advertise, t_every)
    config = SenderConfig(packets_in_flight=5, max_failures=50, backoff_base_ms=1, backoff_max_ms=5, idle_timeout_ms=10**9)
    m = machine.min_rate_for(rate, slippage)
    if fixed == "delivery":
        state = machine.fixed_delivery("test.sim.x", secret, target, m, config=config)
    else:
        state = machine.fixed_send("test.sim.x", secret, target, m, config=config)
    state = _drive(state, sim, None if advertise else cap)
    outcome = state.outcome
    assert outcome is not None
    assert state.delivered == sim.received  # every arrival was counted, nothing else
    assert state.sent <= state.max_source
    if fixed == "delivery":
        assert state.delivered <= target
    if cap is not None:
        assert sim.received <= cap
    if outcome.status == "completed":
        assert state.delivered == target if fixed == "delivery" else state.sent == target
    else:
        allowed = {machine.RECEIVER_LIMIT, machine.ROUNDING, machine.SOURCE_EXHAUSTED}
        biggest = min(max_packet, 10**12)
        if slippage == 0 or Fraction(int(biggest * rate), biggest) < m:
            # Floored arrivals of the largest packet the path takes cannot prove the minimum rate.
            allowed.add(machine.INSUFFICIENT_RATE)
        assert outcome.reason in allowed, outcome
        rooms = ([target - state.delivered] if fixed == "delivery" else []) + ([cap - sim.received] if cap is not None else [])
        if outcome.reason == machine.RECEIVER_LIMIT:
            assert cap is not None and sim.received == cap
        if outcome.reason == machine.ROUNDING:
            assert 0 < min(rooms) < state.rate_high.value  # less than one source unit's worth is left
        if outcome.reason == machine.SOURCE_EXHAUSTED:
            assert fixed == "delivery" and state.sent == state.max_source


def test_state_round_trips_through_msgspec() -> None:
    state = machine.fixed_delivery("test.x.y", os.urandom(32), 10, ONE)
    state, prepares = machine.next_prepares(state, 1_000)
    assert prepares and state.in_flight
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(state), type=SenderState) == state


def test_a_fulfill_for_a_probe_or_an_unknown_packet_counts_nothing() -> None:
    secret = os.urandom(32)
    state, prepares = machine.next_prepares(machine.fixed_delivery("test.x.y", secret, 10, ONE), 0)
    late = machine.on_reply(state, prepares[0], Fulfill(os.urandom(32)), 0)
    assert late.delivered == 0 and late.outcome.reason == machine.INVALID_FULFILLMENT
    done = machine.on_reply(late, prepares[0], Fulfill(os.urandom(32)), 0)  # answered already: ignored
    assert done == late


def test_receiver_close_and_rate_below_minimum() -> None:
    secret = os.urandom(32)
    sim = _Simulated(secret, Fraction(9, 10), 10**15, None, False, 0)
    state = _drive(machine.fixed_delivery("test.x.y", secret, 100, machine.min_rate_for(1)), sim, None)
    assert state.outcome.reason == machine.INSUFFICIENT_RATE and state.sent == 0
    state, prepares = machine.next_prepares(machine.fixed_delivery("test.x.y", secret, 100, ONE), 0)
    request = decrypt_stream_packet(secret, prepares[0].data)
    closing = StreamPacket(request.sequence, 14, prepares[0].amount, (ConnectionClose(1, "bye"),))
    state = machine.on_reply(state, prepares[0], Reject("F99", "t", b"", encrypt_stream_packet(secret, closing)), 0)
    assert state.outcome.reason == machine.CLOSED_BY_RECEIVER


def test_packets_lost_in_a_crash_are_dropped_after_their_expiry_never_counted() -> None:
    secret = os.urandom(32)
    sim = _Simulated(secret, Fraction(1), 10**15, None, False, 0)
    state = machine.fixed_delivery("test.x.y", secret, 100, ONE)
    state, probes = machine.next_prepares(state, 0)
    for prepare in probes:
        state = machine.on_reply(state, prepare, sim.answer(prepare), 0)
    state, money = machine.next_prepares(state, 0)
    assert [p.amount for p in money] == [100]
    restored = msgspec.json.decode(msgspec.json.encode(state), type=SenderState)  # the process died here
    assert machine.abandon_expired(restored, 29_999) == restored  # still valid: wait for it
    state = machine.abandon_expired(restored, 30_000)
    assert not state.in_flight and state.delivered == 0 and state.outcome is None
    state = machine.set_cap(state, 100)  # the receiver holds nothing of it: the whole 100 is still open
    state, again = machine.next_prepares(state, 30_000)
    assert [p.amount for p in again] == [100]
