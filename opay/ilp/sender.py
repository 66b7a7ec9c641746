"""The STREAM sender (RFC 0029) as a pure, serializable state machine.

No I/O and no clock: time comes in as milliseconds, randomness (IVs, probe conditions)
through `rand`. The whole connection is one msgspec Struct (`SenderState`), so an entity
can keep it in its durable state and resume after a crash.

    state, prepares = next_prepares(state, now_ms)        # what to put on the wire now
    state = on_reply(state, prepare, reply, now_ms)       # one Fulfill / Reject back

Phases: a rate probe (unfulfillable Prepares of a few amounts; the receiver's F99 replies
say what arrived, which bounds the path's exchange rate to [d/s, (d+1)/s)), then money
packets (StreamMoney on stream 1, fulfillable), then one best-effort ConnectionClose.

Arithmetic is integers and Fractions only. Rates are destination units per source unit.
  - `max_dest(s) = ceil(s * H) - 1`, H the exclusive high bound: the most a packet of s
    can deliver. It is reserved against the target while the packet is in flight, so
    delivered + Σ max_dest(in flight) <= target always: **delivery is never over**, and
    a packet is sized `s = floor((room + 1) / H)`, the largest whose max_dest fits.
  - `min_dest(s) = ceil(s * min_rate)` is the Prepare's STREAM prepareAmount: the least
    the receiver may accept (rounded up, in the sender's favour).
  - A Fulfill counts only if SHA-256(fulfillment) == condition; it counts what the
    receiver says arrived, clamped to [min_dest, max_dest] (outside that range, or no
    authentic STREAM reply, is a protocol violation that ends the payment after
    accounting). Rejects, timeouts, HTTP errors never count.
Invariants (asserted on every transition): delivered <= target for a fixed delivery;
sent <= max_source always.
"""

from __future__ import annotations

import hashlib
import os
from fractions import Fraction
from datetime import datetime, timezone
from typing import Callable, Literal

import msgspec
from msgspec.structs import replace

from opay.ilp.oer import U64_MAX, OerError, Reader
from opay.ilp.packet import Fulfill, IlpPacketType, Prepare, Reject
from opay.ilp.stream import (
    ConnectionClose,
    StreamClose,
    StreamDecryptError,
    StreamErrorCode,
    StreamMaxMoney,
    StreamMoney,
    StreamPacket,
    condition_for,
    decrypt_stream_packet,
    encrypt_stream_packet,
    fulfillment_for,
)

FIXED_DELIVERY = "fixed_delivery"  # target in destination units: deliver exactly that
FIXED_SEND = "fixed_send"  # target in source units: spend at most that
STREAM_ID = 1
MAX_SEQUENCE = 2**31  # AES-GCM nonce safety limit per shared secret (RFC 0029 §5.1.3)
DEFAULT_PROBE_AMOUNTS = (10**12, 10**9, 10**6, 10**3)
CLOSE_EXPIRY_MS = 5_000

Rand = Callable[[int], bytes]  # random conditions for unfulfillable packets (IVs: stream.encrypt)

# Terminal reasons (Outcome.reason).
COMPLETED = "completed"
CLOSED_BY_RECEIVER = "closed_by_receiver"
RECEIVER_LIMIT = "receiver_limit_reached"  # StreamMaxMoney or the caller's cap: no room left
SOURCE_EXHAUSTED = "source_exhausted"  # fixed delivery: max_source spent before the target
ROUNDING = "rounding"  # the rest is smaller than one source unit can deliver without risk of over-delivery
RATE_PROBE_FAILED = "rate_probe_failed"
INSUFFICIENT_RATE = "insufficient_exchange_rate"
CONNECTOR_ERROR = "connector_error"  # a final ILP error (F02, F06, ...) or max packet 0
INVALID_FULFILLMENT = "invalid_fulfillment"
PROTOCOL_VIOLATION = "receiver_protocol_violation"
TOO_MANY_FAILURES = "too_many_failures"
IDLE_TIMEOUT = "idle_timeout"
SEQUENCE_LIMIT = "sequence_limit"


class SenderConfig(msgspec.Struct, frozen=True, kw_only=True):
    packets_in_flight: int = 20
    packet_expiry_ms: int = 30_000
    backoff_base_ms: int = 100  # after the n-th consecutive T/R error: base * 2^(n-1), capped
    backoff_max_ms: int = 5_000
    max_failures: int = 30  # consecutive failed packets without progress: then fail
    idle_timeout_ms: int = 120_000  # no authentic reply for this long: fail
    probe_amounts: tuple[int, ...] = DEFAULT_PROBE_AMOUNTS


class Ratio(msgspec.Struct, frozen=True, array_like=True):
    """An exact non-negative rational (num/den), serializable."""

    num: int
    den: int

    @classmethod
    def of(cls, value: Fraction | int) -> "Ratio":
        f = Fraction(value)
        if f < 0:
            raise ValueError("a rate is never negative")
        return cls(f.numerator, f.denominator)

    @property
    def value(self) -> Fraction:
        return Fraction(self.num, self.den)


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    kind: Literal["money", "probe", "close"]
    amount: int  # source units
    min_dest: int  # STREAM prepareAmount
    max_dest: int  # the most it can deliver; reserved against the target while in flight
    condition: bytes
    expires_at_ms: int


class Outcome(msgspec.Struct, frozen=True):
    status: Literal["completed", "failed"]
    reason: str
    detail: str = ""


class SenderState(msgspec.Struct, frozen=True, kw_only=True):
    # The connection and the target.
    destination: str
    shared_secret: bytes
    mode: Literal["fixed_delivery", "fixed_send"]
    target: int  # destination units (fixed delivery) or source units (fixed send)
    max_source: int  # never spend more (fixed send: == target)
    min_rate: Ratio  # the least acceptable rate (quote rate x (1 - slippage))
    config: SenderConfig = SenderConfig()
    next_sequence: int = 1
    # Accounting: only Fulfills move these.
    sent: int = 0  # source units
    delivered: int = 0  # destination units, from the receiver's replies
    over_reported: int = 0  # what receivers claimed beyond max_dest (never counted)
    packets_sent: int = 0
    packets_fulfilled: int = 0
    # What the path and the receiver told us.
    rate_low: Ratio | None = None  # inclusive
    rate_high: Ratio | None = None  # exclusive
    probe_queue: tuple[int, ...] = ()
    probe_done: bool = False
    max_packet: int = U64_MAX
    receive_max: int | None = None  # StreamMaxMoney on our stream, largest seen
    total_received: int | None = None
    cap: int | None = None  # the caller's cap (e.g. incomingAmount - receivedAmount), dest units,
    cap_base: int = 0  # counted from `delivered` at the time it was set
    established: bool = False  # an authentic STREAM reply was seen
    # In flight, retries, progress.
    in_flight: tuple[InFlight, ...] = ()
    failures: int = 0
    not_before_ms: int = 0
    last_progress_ms: int | None = None
    last_error: str = ""
    outcome: Outcome | None = None
    closed: bool = False


# ---------------------------------------------------------------- construction


def min_rate_for(rate: Fraction | int, slippage: Fraction | str = Fraction(1, 100)) -> Fraction:
    """quote rate x (1 - slippage), exact."""
    s = Fraction(slippage)
    if not 0 <= s <= 1:
        raise ValueError("slippage must be in [0, 1]")
    return Fraction(rate) * (1 - s)


def fixed_delivery(
    destination: str,
    shared_secret: bytes,
    amount: int,
    min_rate: Fraction | int,
    *,
    max_source: int | None = None,
    rate_bounds: tuple[Fraction, Fraction] | None = None,
    config: SenderConfig | None = None,
) -> SenderState:
    """Deliver exactly `amount` destination units. Without max_source, spend at most
    floor(amount / min_rate) + 1 (one unit of allowance for each hop's flooring)."""
    m = Fraction(min_rate)
    if max_source is None:
        if m == 0:
            raise ValueError("a fixed delivery at min rate 0 needs max_source")
        max_source = int(Fraction(amount) / m) + 1
    return _new(destination, shared_secret, FIXED_DELIVERY, amount, max_source, m, rate_bounds, config)


def fixed_send(
    destination: str,
    shared_secret: bytes,
    amount: int,
    min_rate: Fraction | int,
    *,
    rate_bounds: tuple[Fraction, Fraction] | None = None,
    config: SenderConfig | None = None,
) -> SenderState:
    """Spend at most `amount` source units, delivering whatever they buy at >= min_rate."""
    return _new(destination, shared_secret, FIXED_SEND, amount, amount, Fraction(min_rate), rate_bounds, config)


def _new(destination, shared_secret, mode, target, max_source, m, rate_bounds, config) -> SenderState:
    if not 0 <= target or not 0 <= max_source:
        raise ValueError("amounts are never negative")
    if len(shared_secret) != 32:
        raise ValueError("the shared secret must be 32 bytes")
    config = config or SenderConfig()
    low = high = None
    probe_done = False
    if rate_bounds is not None:  # known from the quote's probe: no second probe
        lo, hi = (Fraction(x) for x in rate_bounds)
        if not 0 <= lo < hi:
            raise ValueError("rate bounds must be 0 <= low < high")
        low, high, probe_done = Ratio.of(lo), Ratio.of(hi), True
    state = SenderState(
        destination=destination,
        shared_secret=bytes(shared_secret),
        mode=mode,
        target=target,
        max_source=max_source,
        min_rate=Ratio.of(m),
        config=config,
        rate_low=low,
        rate_high=high,
        probe_queue=() if probe_done else tuple(config.probe_amounts),
        probe_done=probe_done,
    )
    if probe_done:
        state = _check_rate(state)
    return _settle(state)


def set_cap(state: SenderState, remaining: int) -> SenderState:
    """The receiver's room as read elsewhere (Open Payments: incomingAmount - receivedAmount),
    in destination units: nothing past it is offered from now on."""
    return _settle(replace(state, cap=max(0, remaining), cap_base=state.delivered))


# ---------------------------------------------------------------- derived


def _in_flight_money(state: SenderState) -> tuple[int, int]:
    source = dest = 0
    for p in state.in_flight:
        if p.kind == "money":
            source += p.amount
            dest += p.max_dest
    return source, dest


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def max_dest(state: SenderState, source: int) -> int:
    """The most `source` can deliver: ceil(source x H) - 1 (H exclusive)."""
    assert state.rate_high is not None
    return max(0, _ceil(source * state.rate_high.value) - 1)


def min_dest(state: SenderState, source: int) -> int:
    return _ceil(source * state.min_rate.value)


def _plan(state: SenderState) -> tuple[int, int, int] | str:
    """(source, min_dest, max_dest) of the next money packet, or why there is none."""
    in_source, in_dest = _in_flight_money(state)
    available = state.max_source - state.sent - in_source
    if available <= 0:
        return SOURCE_EXHAUSTED
    room: int | None = None
    reason = RECEIVER_LIMIT
    if state.mode == FIXED_DELIVERY:
        room, reason = state.target - state.delivered - in_dest, COMPLETED
    if state.receive_max is not None:
        r = state.receive_max - (state.total_received or 0) - in_dest
        if room is None or r < room:
            room, reason = r, RECEIVER_LIMIT
    if state.cap is not None:
        r = state.cap - (state.delivered - state.cap_base) - in_dest
        if room is None or r < room:
            room, reason = r, RECEIVER_LIMIT
    source = min(available, state.max_packet)
    if room is not None:
        if room <= 0:
            return reason
        # The largest s with ceil(s*H) - 1 <= room, i.e. s*H <= room + 1.
        assert state.rate_high is not None
        source = min(source, int(Fraction(room + 1) / state.rate_high.value))
        if source <= 0:
            return ROUNDING
    lo, hi = min_dest(state, source), max_dest(state, source)
    if lo > hi:
        # A small packet whose rounded-up minimum exceeds what it can deliver: allow the
        # rounding (floor, less than one destination unit below the minimum rate).
        lo = int(source * state.min_rate.value)
        if lo > hi:
            return INSUFFICIENT_RATE
    return source, lo, hi


def _check_invariants(state: SenderState) -> SenderState:
    assert 0 <= state.sent <= state.max_source, (state.sent, state.max_source)
    if state.mode == FIXED_DELIVERY:
        _, in_dest = _in_flight_money(state)
        assert 0 <= state.delivered and state.delivered + in_dest <= state.target, (state.delivered, in_dest, state.target)
    in_source, _ = _in_flight_money(state)
    assert state.sent + in_source <= state.max_source
    return state


def _fail(state: SenderState, reason: str, detail: str = "") -> SenderState:
    if state.outcome is not None:
        return state
    return replace(state, outcome=Outcome("failed", reason, detail))


def _settle(state: SenderState) -> SenderState:
    """Decide the outcome once nothing is in flight and nothing more can be sent."""
    _check_invariants(state)
    if state.outcome is not None or not state.probe_done:
        return state
    money_in_flight = any(p.kind == "money" for p in state.in_flight)
    if money_in_flight:
        return state
    if state.mode == FIXED_DELIVERY and state.delivered == state.target:
        return replace(state, outcome=Outcome("completed", COMPLETED))
    if state.mode == FIXED_SEND and state.sent == state.max_source:
        return replace(state, outcome=Outcome("completed", COMPLETED))
    plan = _plan(state)
    if isinstance(plan, str):
        detail = f"delivered {state.delivered} of {state.target}" if state.mode == FIXED_DELIVERY else f"sent {state.sent} of {state.target}"
        if plan == COMPLETED:  # cannot happen: room 0 means delivered == target
            plan = ROUNDING
        return _fail(state, plan, detail)
    return state


def wake_at(state: SenderState) -> int | None:
    """When next_prepares may have something again though no reply is due (a backoff)."""
    return state.not_before_ms or None


def is_finished(state: SenderState) -> bool:
    """Terminal, and every packet has been answered (the close packet included)."""
    return state.outcome is not None and not state.in_flight and (state.closed or not state.established)


# ---------------------------------------------------------------- packets out


def _expiry(now_ms: int, ms: int) -> datetime:
    return datetime.fromtimestamp((now_ms + ms) / 1000, tz=timezone.utc)


def _build(
    state: SenderState, kind: str, amount: int, lo: int, hi: int, frames: tuple, now_ms: int, rand: Rand, fulfillable: bool, expiry_ms: int
) -> tuple[SenderState, Prepare]:
    sequence = state.next_sequence
    data = encrypt_stream_packet(state.shared_secret, StreamPacket(sequence, IlpPacketType.PREPARE, lo, frames))
    condition = condition_for(fulfillment_for(state.shared_secret, data)) if fulfillable else rand(32)
    expires_at = _expiry(now_ms, expiry_ms)
    prepare = Prepare(amount=amount, expires_at=expires_at, execution_condition=condition, destination=state.destination, data=data)
    record = InFlight(
        sequence=sequence, kind=kind, amount=amount, min_dest=lo, max_dest=hi, condition=condition,
        expires_at_ms=now_ms + expiry_ms,
    )
    state = replace(
        state, next_sequence=sequence + 1, in_flight=state.in_flight + (record,), packets_sent=state.packets_sent + 1
    )
    return state, prepare


def next_prepares(state: SenderState, now_ms: int, *, limit: int | None = None, rand: Rand = os.urandom) -> tuple[SenderState, list[Prepare]]:
    """The Prepares to send now (possibly none), with the state that records them in flight."""
    if state.last_progress_ms is None:
        state = replace(state, last_progress_ms=now_ms)
    if state.outcome is None and now_ms - state.last_progress_ms >= state.config.idle_timeout_ms and not state.in_flight:
        state = _fail(state, IDLE_TIMEOUT, f"no authentic reply for {now_ms - state.last_progress_ms} ms; last error: {state.last_error}")
    out: list[Prepare] = []
    room = state.config.packets_in_flight - len(state.in_flight)
    if limit is not None:
        room = min(room, limit)
    if state.outcome is not None:
        if not state.closed and state.next_sequence >= MAX_SEQUENCE:
            state = replace(state, closed=True)  # no sequence left to close with
        if not state.closed and state.established and not state.in_flight and room > 0:
            frames = (ConnectionClose(StreamErrorCode.NO_ERROR, ""),)
            state, prepare = _build(state, "close", 0, 0, 0, frames, now_ms, rand, False, CLOSE_EXPIRY_MS)
            state = replace(state, closed=True)
            out.append(prepare)
        return state, out
    if now_ms < state.not_before_ms:
        return state, out
    while room > 0 and state.outcome is None:
        if state.next_sequence >= MAX_SEQUENCE:
            state = _fail(state, SEQUENCE_LIMIT, "2^31 packets on one shared secret")
            break
        if not state.probe_done:
            if not state.probe_queue:
                break
            amount = min(state.probe_queue[0], state.max_packet)
            state = replace(state, probe_queue=state.probe_queue[1:])
            frames = (StreamMoney(STREAM_ID, 1),)
            state, prepare = _build(state, "probe", amount, 0, 0, frames, now_ms, rand, False, state.config.packet_expiry_ms)
        else:
            plan = _plan(state)
            if isinstance(plan, str):
                break
            source, lo, hi = plan
            frames = (StreamMoney(STREAM_ID, 1),)
            state, prepare = _build(state, "money", source, lo, hi, frames, now_ms, rand, True, state.config.packet_expiry_ms)
        out.append(prepare)
        room -= 1
    return _settle(state), out


# ---------------------------------------------------------------- replies in


def _authentic(state: SenderState, record: InFlight, data: bytes, kind: int) -> StreamPacket | None:
    if not data:
        return None
    try:
        packet = decrypt_stream_packet(state.shared_secret, data)
    except (StreamDecryptError, OerError, ValueError):
        return None
    if packet.sequence != record.sequence or packet.ilp_packet_type != kind:
        return None
    return packet


def _observe_rate(state: SenderState, amount: int, arrived: int) -> SenderState:
    """One more (source, arrived) pair: the rate lies in [arrived/amount, (arrived+1)/amount)."""
    if amount == 0:
        return state
    lo, hi = Fraction(arrived, amount), Fraction(arrived + 1, amount)
    if state.rate_low is not None and state.rate_high is not None:
        low, high = state.rate_low.value, state.rate_high.value
        if not (hi <= low or lo >= high):  # overlapping: narrow; disjoint: the rate moved, start again
            lo, hi = max(low, lo), min(high, hi)
    return replace(state, rate_low=Ratio.of(lo), rate_high=Ratio.of(hi))


def _learn_frames(state: SenderState, packet: StreamPacket) -> tuple[SenderState, bool]:
    """StreamMaxMoney (limits only grow) and whether the receiver closed."""
    closed = False
    for frame in packet.frames:
        if isinstance(frame, StreamMaxMoney) and frame.stream_id == STREAM_ID:
            receive_max = frame.receive_max if state.receive_max is None else max(state.receive_max, frame.receive_max)
            total = frame.total_received if state.total_received is None else max(state.total_received, frame.total_received)
            state = replace(state, receive_max=receive_max, total_received=total)
        elif isinstance(frame, ConnectionClose):
            closed = True
        elif isinstance(frame, StreamClose) and frame.stream_id == STREAM_ID:
            closed = True
    return state, closed


def _check_rate(state: SenderState) -> SenderState:
    if state.rate_low is None or state.rate_high is None:
        return _fail(state, RATE_PROBE_FAILED, state.last_error or "no authentic reply to the rate probe")
    if state.rate_low.value < state.min_rate.value:
        return _fail(
            state, INSUFFICIENT_RATE,
            f"path rate >= {state.rate_low.num}/{state.rate_low.den}, below the minimum {state.min_rate.num}/{state.min_rate.den}",
        )
    return state


def _failure(state: SenderState, now_ms: int, error: str, backoff: bool) -> SenderState:
    failures = state.failures + 1
    not_before = state.not_before_ms
    if backoff:
        delay = min(state.config.backoff_max_ms, state.config.backoff_base_ms * 2 ** min(failures - 1, 30))
        not_before = max(not_before, now_ms + delay)
    state = replace(state, failures=failures, not_before_ms=not_before, last_error=error)
    if failures >= state.config.max_failures:
        state = _fail(state, TOO_MANY_FAILURES, f"{failures} packets in a row failed; last: {error}")
    return state


def _lowered_max(state: SenderState, reject: Reject, amount: int) -> SenderState:
    """After an F08 for `amount`: the max packet amount lowered (never raised), or the
    payment failed when nothing can pass."""
    new_max = _f08_max(reject, amount)
    if new_max < state.max_packet:
        state = replace(state, max_packet=new_max)
    if state.max_packet <= 0:
        return _fail(state, CONNECTOR_ERROR, "F08: max packet amount is 0")
    return state


def _f08_max(reject: Reject, amount: int) -> int:
    """The new max packet amount in source units from an F08 (precise with data)."""
    if len(reject.data) >= 16:
        r = Reader(reject.data)
        received, maximum = r.read_uint64(), r.read_uint64()
        if received > maximum:
            return (maximum * amount) // received  # back to source units, rounded down
    return amount - 1


def _reject_text(reject: Reject) -> str:
    message = reject.message.decode("utf-8", "replace")[:200]
    return f"{reject.code} from {reject.triggered_by or '?'}: {message}"


def on_reply(state: SenderState, prepare: Prepare, reply: Fulfill | Reject, now_ms: int) -> SenderState:
    """Account one reply to a Prepare this state sent. A reply to an unknown packet (late,
    duplicated, or after a restart that lost nothing) changes nothing."""
    record = next((p for p in state.in_flight if p.condition == prepare.execution_condition), None)
    if record is None:
        return state
    state = replace(state, in_flight=tuple(p for p in state.in_flight if p is not record))
    if record.kind == "close":
        return _settle(state)
    if isinstance(reply, Fulfill):
        return _settle(_on_fulfill(state, record, reply, now_ms))
    return _settle(_on_reject(state, record, reply, now_ms))


def _on_fulfill(state: SenderState, record: InFlight, reply: Fulfill, now_ms: int) -> SenderState:
    if record.kind != "money" or hashlib.sha256(reply.fulfillment).digest() != record.condition:
        # Never counted: the fulfillment does not unlock our condition.
        return _fail(state, INVALID_FULFILLMENT, f"packet {record.sequence}: the fulfillment does not hash to the condition")
    stream = _authentic(state, record, reply.data, IlpPacketType.FULFILL)
    counted, violation = record.min_dest, None
    if stream is None:
        violation = "a Fulfill without an authentic STREAM reply"
    else:
        arrived = stream.prepare_amount
        counted = min(max(arrived, record.min_dest), record.max_dest)
        if arrived < record.min_dest:
            violation = f"receiver claims {arrived}, below the minimum {record.min_dest} it accepted"
        elif arrived > record.max_dest:
            violation = f"receiver claims {arrived}, above the {record.max_dest} this path can deliver"
            state = replace(state, over_reported=state.over_reported + arrived - record.max_dest)
    state = replace(
        state,
        sent=state.sent + record.amount,
        delivered=state.delivered + counted,
        packets_fulfilled=state.packets_fulfilled + 1,
        failures=0,
        last_progress_ms=now_ms,
    )
    if stream is not None:
        state = replace(state, established=True)
        state, closed = _learn_frames(state, stream)
        if violation is None:
            state = _observe_rate(state, record.amount, stream.prepare_amount)
        if closed:
            state = _settle(state)
            state = _fail(state, CLOSED_BY_RECEIVER, "the receiver closed the connection")
    if violation is not None:
        state = _fail(state, PROTOCOL_VIOLATION, violation)
    return state


def _on_reject(state: SenderState, record: InFlight, reply: Reject, now_ms: int) -> SenderState:
    code = reply.code
    text = _reject_text(reply)
    stream = _authentic(state, record, reply.data, IlpPacketType.REJECT) if code == "F99" else None
    if stream is not None:
        state, closed = _learn_frames(state, stream)
        state = replace(state, established=True, last_progress_ms=now_ms)
        state = _observe_rate(state, record.amount, stream.prepare_amount)
        if closed:
            return _fail(state, CLOSED_BY_RECEIVER, "the receiver closed the connection")
    if record.kind == "probe":
        return _on_probe_reject(state, record, reply, stream, now_ms, text)
    # A money packet: its amount is back in the pool for the next packets.
    if code == "F08":
        state = _lowered_max(state, reply, record.amount)
        return state if state.outcome is not None else replace(state, last_error=text)
    if code[0] in "TR":
        return _failure(state, now_ms, text, backoff=True)
    if code == "F99" and stream is not None:
        if state.rate_low is not None and state.rate_low.value < state.min_rate.value:
            return _fail(state, INSUFFICIENT_RATE, f"packet {record.sequence}: {stream.prepare_amount} arrived for {record.amount}")
        return _failure(state, now_ms, f"F99: {stream.prepare_amount} arrived, min {record.min_dest}", backoff=False)
    return _fail(state, CONNECTOR_ERROR, text)


def _on_probe_reject(state, record, reply, stream, now_ms, text) -> SenderState:
    code = reply.code
    if code == "F08":
        state = _lowered_max(state, reply, record.amount)
        if state.outcome is not None:
            return state
        # Probe the path at its new maximum, and keep the smaller probes.
        queue = sorted({min(a, state.max_packet) for a in state.probe_queue} | {state.max_packet}, reverse=True)
        state = replace(state, probe_queue=tuple(queue), last_error=text)
    elif code[0] in "TR":
        state = _failure(state, now_ms, text, backoff=True)
        state = replace(state, probe_queue=(record.amount,) + state.probe_queue)
    elif code == "F99":
        if stream is None:
            state = replace(state, last_error=text)  # no rate from it; the other probes may tell
    else:
        return _fail(state, CONNECTOR_ERROR, text)
    if state.outcome is None and not state.probe_queue and not any(p.kind == "probe" for p in state.in_flight):
        state = _check_rate(replace(state, probe_done=True))
    return state


def describe(state: SenderState) -> dict:
    """A small summary for logs and tests."""
    return {
        "mode": state.mode,
        "target": state.target,
        "sent": state.sent,
        "delivered": state.delivered,
        "packets": state.packets_sent,
        "fulfilled": state.packets_fulfilled,
        "maxPacket": state.max_packet,
        "rate": None if state.rate_low is None else [f"{state.rate_low.num}/{state.rate_low.den}", f"{state.rate_high.num}/{state.rate_high.den}"],
        "outcome": None if state.outcome is None else msgspec.to_builtins(state.outcome),
    }


def abandon_expired(state: SenderState, now_ms: int) -> SenderState:
    """After a restart: packets recorded in flight whose reply was lost with the process.
    Once past its expiry no Fulfill for a packet is valid any more, so it is dropped,
    never counted. The receiver may still have credited it before the crash: the caller
    reads what the receiver holds (Open Payments receivedAmount) and calls set_cap
    before sending on."""
    expired = tuple(p for p in state.in_flight if p.expires_at_ms <= now_ms)
    if not expired:
        return state
    state = replace(state, in_flight=tuple(p for p in state.in_flight if p.expires_at_ms > now_ms))
    if any(p.kind == "probe" for p in expired) and not state.probe_done:
        state = replace(state, probe_queue=tuple(p.amount for p in expired if p.kind == "probe") + state.probe_queue)
    return _settle(replace(state, last_error=f"{len(expired)} packets lost in flight (expired unanswered)"))
