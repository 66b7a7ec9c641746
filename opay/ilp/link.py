"""The I/O half of the STREAM sender: a synchronous ILP-over-HTTP link and a driver.

HttpLink.send(prepare) POSTs the Prepare's bytes to the peer with `Authorization: Bearer
<token>` (the synchronous ILP-over-HTTP Rafiki peers with); the 200 response body is the
Fulfill or Reject. Each request is bounded by the Prepare's expiry, and connections come
from a bounded pool. Anything that is not a well-formed Fulfill/Reject in time becomes a
local T00 Reject (a timeout, a refused connection, a non-200, garbage), and a reply that
arrives after the Prepare expired becomes a local R00: neither is ever counted.

`send(state, link, now)` runs opay.ilp.sender's machine until it is finished or a bound
(packets or a deadline) is hit, always waiting for the replies of packets already sent, so
the returned state accounts for every Prepare it put on the wire.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Protocol

import httpx

from opay.clock import now_ms as clock_ms
from opay.ilp.packet import Fulfill, Prepare, Reject, decode_packet
from opay.ilp import sender as machine
from opay.ilp.sender import SenderState

LOCAL = "self.link"  # triggeredBy of the Rejects the link makes up itself


class Link(Protocol):
    async def send_async(self, prepare: Prepare) -> Fulfill | Reject: ...


def local_reject(code: str, message: str) -> Reject:
    return Reject(code, LOCAL, message.encode("utf-8")[:1000])


class HttpLink:
    """Synchronous ILP-over-HTTP to one peer, from a bounded pool of connections and threads."""

    def __init__(self, url: str, token: str, *, pool_size: int = 20, max_wait_seconds: float = 60.0) -> None:
        self.url = url
        self._headers = {"authorization": f"Bearer {token}", "content-type": "application/octet-stream"}
        self._max_wait = max_wait_seconds
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self._http = httpx.Client(limits=limits, timeout=max_wait_seconds)
        self._threads = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="ilp-link")

    def send(self, prepare: Prepare) -> Fulfill | Reject:
        left = (prepare.expires_at - datetime.now(timezone.utc)).total_seconds()
        if left <= 0:
            return local_reject("R00", "the Prepare expired before it was sent")
        wait = min(left, self._max_wait)
        try:
            response = self._http.post(self.url, content=prepare.encode(), headers=self._headers, timeout=httpx.Timeout(wait))
        except httpx.TimeoutException:
            return local_reject("T00", f"no reply within {wait:.3f} s (the Prepare's expiry)")
        except httpx.HTTPError as error:
            return local_reject("T00", f"link error: {type(error).__name__}: {error}")
        if datetime.now(timezone.utc) >= prepare.expires_at:
            return local_reject("R00", "the reply came after the Prepare expired")
        if response.status_code != 200:
            return local_reject("T00", f"peer answered HTTP {response.status_code}")
        try:
            reply = decode_packet(response.content)
        except ValueError as error:
            return local_reject("T00", f"undecodable reply: {error}")
        if not isinstance(reply, (Fulfill, Reject)):
            return local_reject("T00", "the peer answered with a Prepare")
        return reply

    async def send_async(self, prepare: Prepare) -> Fulfill | Reject:
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.send, prepare)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> "HttpLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def send(
    state: SenderState,
    link: Link,
    now: Callable[[], int] = clock_ms,
    *,
    max_packets: int | None = None,
    deadline_ms: int | None = None,
    rand: machine.Rand = os.urandom,
) -> SenderState:
    """Run the machine until it is finished, or until `max_packets` Prepares were sent or
    `deadline_ms` passed (then it stops offering and waits for the replies in flight)."""
    pending: dict[asyncio.Future, Prepare] = {}
    packets = 0
    try:
        while True:
            t = now()
            stop = (max_packets is not None and packets >= max_packets) or (deadline_ms is not None and t >= deadline_ms)
            if not stop:
                limit = None if max_packets is None else max_packets - packets
                state, prepares = machine.next_prepares(state, t, limit=limit, rand=rand)
                for prepare in prepares:
                    pending[asyncio.ensure_future(link.send_async(prepare))] = prepare
                packets += len(prepares)
            if not pending:
                if machine.is_finished(state) or stop:
                    return state
                if state.outcome is not None:
                    continue  # the close packet goes out on the next turn
                wake = machine.wake_at(state)
                until = wake if wake is not None else t + 50
                if deadline_ms is not None:
                    until = min(until, deadline_ms)
                await asyncio.sleep(max(0, until - now()) / 1000)
                continue
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                prepare = pending.pop(future)
                try:
                    reply = future.result()
                except Exception as error:  # a link that raised: never counted, retried
                    reply = local_reject("T00", f"link raised {type(error).__name__}: {error}")
                state = machine.on_reply(state, prepare, reply, now())
    finally:
        if pending:  # cancelled: what is on the wire stays unaccounted, the caller must know
            for future in pending:
                future.cancel()
