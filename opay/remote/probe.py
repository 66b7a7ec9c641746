"""The exchange rate of the path to a receiver on another server: a STREAM rate probe.

As Rafiki's quote does with `@interledger/pay`'s startQuote: unfulfillable Prepares of a
few amounts go to the receiver's ILP address through the peer that routes it (ILP-over-HTTP,
opay.ilp.link.HttpLink with the peer's outgoing token); the receiver answers each with an
F99 whose encrypted STREAM reply says what arrived, and each (sent, arrived) pair bounds the
path's rate to [arrived/sent, (arrived+1)/sent). It is a probe-only run of the sender's state
machine (opay.ilp.sender: a fixed send of 0, so it has nothing to pay once the rate is known),
and nothing it sends can be fulfilled: no money moves.

Bounded in time by OPAY_QUOTE_PROBE_SECONDS: Prepares are offered during the first half of
it and each expires within the other half, so the answer (a rate, or why not) comes within
it however the peer behaves. No ConnectionClose is sent after it: a close would be one more
round trip past that bound, and a probe leaves nothing open at a stateless receiver.

Errors (ApiError):
- 400 `receiver_unreachable`: the path refused the packets for good (F02 unreachable, F06...)
  or nothing can pass it (max packet amount 0);
- 503 `rate_probe_failed` with Retry-After: no authentic answer in time (timeouts, T errors);
- 400 `insufficient_exchange_rate`: the path delivers nothing of what is sent.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import msgspec
from msgspec.structs import replace

from opay.clock import now_ms
from opay.http.errors import ApiError
from opay.ilp import link as driver
from opay.ilp import sender as machine
from opay.ilp.link import HttpLink
from opay.ilp.peers import Peer
from opay.settings import Settings

LINKS_MAX = 100  # HTTP pools kept, one per peer (url, token)
POOL_SIZE = 8  # concurrent probe requests per peer link
UNREACHABLE = "receiver_unreachable"
PROBE_FAILED = "rate_probe_failed"
INSUFFICIENT = "insufficient_exchange_rate"


class ProbedRate(msgspec.Struct, frozen=True):
    low: Fraction  # inclusive: the path delivers at least this per link unit
    high: Fraction  # exclusive
    max_packet: int | None  # the largest packet the path took, if it told (F08)
    packets: int
    elapsed_ms: float


def probe_amounts(max_packet: int | None) -> tuple[int, ...]:
    """The default probe amounts, none above the link's max packet (and the max itself)."""
    if max_packet is None:
        return machine.DEFAULT_PROBE_AMOUNTS
    return tuple(sorted({min(a, max_packet) for a in machine.DEFAULT_PROBE_AMOUNTS} | {max_packet}, reverse=True))


class RateProber:
    def __init__(self, settings: Settings) -> None:
        self._seconds = settings.quote_probe_seconds
        self._retry_after = str(settings.remote_retry_after_seconds)
        self._links: dict[tuple[str, str], HttpLink] = {}

    def _link(self, peer: Peer) -> HttpLink:
        key = (peer.url, peer.outgoing_token)
        found = self._links.get(key)
        if found is None:
            if len(self._links) >= LINKS_MAX:  # a peer's url or token changed many times
                oldest = next(iter(self._links))
                stale = self._links.pop(oldest)
                asyncio.get_running_loop().run_in_executor(None, stale.close)
            found = self._links[key] = HttpLink(peer.url, peer.outgoing_token, pool_size=POOL_SIZE, max_wait_seconds=self._seconds)
        return found

    async def probe(self, peer: Peer, destination: str, shared_secret: bytes) -> ProbedRate:
        half_ms = max(1, int(self._seconds * 500))
        config = machine.SenderConfig(
            packet_expiry_ms=half_ms,
            probe_amounts=probe_amounts(peer.max_packet_amount),
            backoff_base_ms=50,
            backoff_max_ms=max(50, half_ms // 4),
            idle_timeout_ms=2 * half_ms,
        )
        state = machine.fixed_send(destination, shared_secret, 0, 0, config=config)
        if peer.max_packet_amount is not None:
            state = replace(state, max_packet=peer.max_packet_amount)
        state = replace(state, closed=True)  # probe only: no ConnectionClose afterwards (see above)
        started = time.monotonic()
        deadline_ms = now_ms() + half_ms
        state = await driver.send(state, self._link(peer), deadline_ms=deadline_ms)
        elapsed_ms = (time.monotonic() - started) * 1000
        return self._judged(peer, destination, state, elapsed_ms)

    def _judged(self, peer: Peer, destination: str, state: machine.SenderState, elapsed_ms: float) -> ProbedRate:
        details = {"peer": peer.name, "ilpAddress": destination}
        outcome = state.outcome
        if outcome is not None and outcome.reason == machine.CONNECTOR_ERROR:
            raise ApiError(400, UNREACHABLE, f"the path to the receiver refuses its packets: {outcome.detail}", details)
        if state.rate_low is None or state.rate_high is None:
            why = state.last_error or (outcome.detail if outcome is not None else "") or "no answer"
            raise ApiError(
                503,
                PROBE_FAILED,
                f"the rate probe through peer {peer.name} got no answer from the receiver within {self._seconds:g} s ({why}); retry later",
                details,
                {"Retry-After": self._retry_after},
            )
        low, high = state.rate_low.value, state.rate_high.value
        if low <= 0:
            raise ApiError(400, INSUFFICIENT, "the path to the receiver delivers nothing of what is sent", details)
        max_packet = None if state.max_packet == machine.U64_MAX else state.max_packet
        return ProbedRate(low, high, max_packet, state.packets_sent, elapsed_ms)

    def close(self) -> None:
        for found in self._links.values():
            found.close()
        self._links.clear()
