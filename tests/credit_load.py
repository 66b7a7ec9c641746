"""Operator credits around a fault (a Ray node lost, a Redis master failed over): streams of
credits with fresh idempotency keys, unknown outcomes asked again with the same key until
known, and the check that each payment stores exactly what was acknowledged, within its cap."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Awaitable, Callable

import httpx

STREAM_WORKERS = 12
WARM_SECONDS = 3.0  # of load before the fault
AFTER_SECONDS = 2.0  # of load once the fault's payments are served again
ASKS_MAX = 100  # an unknown outcome asked again at most this often, 0.2 s apart


def outcome_of(response: httpx.Response) -> str:
    """'acked', 'refused' (409: nothing applied) or 'unknown' (503: may have landed)."""
    if response.status_code == 200:
        return "acked"
    if response.status_code == 409:
        assert response.json()["error"]["code"] in ("cap_exceeded", "completed"), response.text
        return "refused"
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after"), "a 503 says when to retry"
    return "unknown"


class CreditLoad:
    def __init__(self, http: httpx.AsyncClient, operator_url: str, caps: dict[str, int], seed: int) -> None:
        """`caps`: payment URL -> its incomingAmount."""
        self._http = http
        self._operator_url = operator_url
        self.caps = caps
        self._rng = random.Random(seed)
        self.sent: dict[str, tuple[str, int]] = {}  # idempotency key -> (url, amount)
        self.final: dict[str, str] = {}  # key -> acked / refused / unknown
        self.slowest = 0.0
        self.fault_at: float | None = None
        self.back_at: float | None = None
        self.unknown_at_first = 0
        self._watched: set[str] = set()

    async def credit(self, key: str) -> str:
        url, amount = self.sent[key]
        started = time.monotonic()
        body = {"incomingPayment": url, "amount": str(amount), "idempotencyKey": key}
        response = await self._http.post(f"{self._operator_url}/credits", json=body)
        self.slowest = max(self.slowest, time.monotonic() - started)
        result = outcome_of(response)
        if result == "acked":
            assert int(response.json()["receivedAmount"]["value"]) <= self.caps[url]
            if self.fault_at is not None and self.back_at is None and url in self._watched and started > self.fault_at:
                self.back_at = time.monotonic()
        return result

    async def _stream(self, worker: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            key = f"w{worker}-{n}"
            n += 1
            self.sent[key] = (self._rng.choice(list(self.caps)), self._rng.randint(1, 20))
            self.final[key] = await self.credit(key)

    def faulted(self) -> None:
        """The fault's moment: call it from `fault` right after the kill."""
        self.fault_at = time.monotonic()

    async def around(self, fault: Callable[[], Awaitable[None]], watched: list[str], bound_seconds: float, log: Callable[[], str]) -> None:
        """Load, then `fault()` under it, then load until a credit to a `watched` payment sent
        after the fault is acknowledged (within `bound_seconds`, a bound of the poll, not a
        timing assertion), and a while more."""
        self._watched = set(watched)
        stop = asyncio.Event()
        workers = [asyncio.create_task(self._stream(w, stop)) for w in range(STREAM_WORKERS)]
        try:
            await asyncio.sleep(WARM_SECONDS)
            await fault()
            assert self.fault_at is not None, "fault() did not call faulted()"
            while self.back_at is None:
                assert time.monotonic() - self.fault_at < bound_seconds, f"the fault's payments were not served again:\n{log()}"
                assert not any(w.done() for w in workers), [w.exception() for w in workers if w.done()]
                await asyncio.sleep(0.2)
            await asyncio.sleep(AFTER_SECONDS)
        finally:
            stop.set()
            await asyncio.gather(*workers)

    async def settle_and_check(self) -> None:
        """Every unknown outcome asked again until known; then each payment's stored amount is
        the sum of its acknowledged credits (none lost, none applied twice) and within its cap."""
        unknown = [key for key, result in self.final.items() if result == "unknown"]
        self.unknown_at_first = len(unknown)
        for key in unknown:
            for _ in range(ASKS_MAX):
                self.final[key] = await self.credit(key)
                if self.final[key] != "unknown":
                    break
                await asyncio.sleep(0.2)
            assert self.final[key] != "unknown", f"{key} still unknown"
        for url, cap in self.caps.items():
            read = await self._http.get(f"{self._operator_url}/incoming-payments/{url.rsplit('/', 1)[1]}")
            assert read.status_code == 200, read.text
            stored = int(read.json()["receivedAmount"]["value"])
            acked = sum(amount for key, (u, amount) in self.sent.items() if u == url and self.final[key] == "acked")
            assert stored == acked, (url, stored, acked)
            assert stored <= cap

    def summary(self) -> str:
        counts = {result: sum(1 for r in self.final.values() if r == result) for result in ("acked", "refused")}
        assert self.fault_at is not None and self.back_at is not None
        return (
            f"first credit acked there {self.back_at - self.fault_at:.1f} s after the fault; {len(self.final)} credits ({counts}), "
            f"{self.unknown_at_first} unknown at first; slowest answer seen here {self.slowest:.1f} s"
        )
