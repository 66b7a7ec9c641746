"""The front end's way to its shards: one outbound queue per shard, one Ray call per batch.

A Ray call costs about half a millisecond of CPU on each side, far more than applying a
command. So each shard's pump sends whatever queued up in one event-loop tick as one
call, with a bounded number of calls in flight; under load batches grow by themselves.

Nothing here can hang a caller: each command is encoded in `ask()`, so one that cannot
be encoded is refused alone; every future of a batch is resolved whatever goes wrong
with the call; and every `ask()` has a deadline, queue wait included, so commands behind
a stuck shard hear "unavailable" at the deadline (and, still queued then, are never sent).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

import msgspec

from opay.actors.messages import CONFLICT_RETRY, UNAVAILABLE, Answered, Command, Failed, Reply, SendPackets, Tell, encode, tag_of
from opay.actors.registry import decode_result
from opay.persistence.keys import shard_of
from opay.observability import metrics

log = logging.getLogger("opay.router")

DEADLINE = Failed("unavailable", "shard_timeout", "the resource did not answer in time; retry shortly (with the same idempotency key)")
BACK_PRESSURE = Failed("unavailable", "overloaded", "too many requests are waiting for this resource; retry shortly")
# Replies after which a command may or may not have been applied (never sent is known).
UNKNOWN_OUTCOME = frozenset({DEADLINE.code, UNAVAILABLE.code, CONFLICT_RETRY.code})


class Shards(Protocol):
    """Where the shard actors are: a handle per shard, looked up again when one dies."""

    @property
    def count(self) -> int: ...

    def handle(self, n: int): ...

    async def refresh(self, n: int) -> None: ...


Queued = tuple[bytes, asyncio.Future]
_EXPIRED = Failed("unavailable", "expired", "")  # what an ask's own timer answers; its caller returns DEADLINE


def _expire(reply: asyncio.Future) -> None:
    if not reply.done():
        reply.set_result(_EXPIRED)


class ShardRouter:
    def __init__(
        self,
        shards: Shards,
        *,
        batch_max: int,
        in_flight: int,
        deadline_seconds: float,
        queue_max: int = 100_000,
        tells_max: int = 10_000,
    ) -> None:
        assert shards.count > 0 and batch_max > 0 and in_flight > 0 and deadline_seconds > 0
        self._shards = shards
        self._batch_max = batch_max
        self._deadline = deadline_seconds
        self._queue_max = queue_max
        self._tells_max = tells_max
        self._telling = 0
        self._queues: list[deque[Queued]] = [deque() for _ in range(shards.count)]
        self._ready = [asyncio.Event() for _ in range(shards.count)]
        self._slots = [asyncio.Semaphore(in_flight) for _ in range(shards.count)]
        self._tasks: set[asyncio.Task] = set()
        self._pumps = [asyncio.create_task(self._pump(n)) for n in range(shards.count)]
        # Where a Tell of SendPackets goes (a remote payment's packets on a peer's link:
        # opay.ilp.links.PacketLinks); None: such tells are answered "unavailable".
        self.links = None

    @property
    def deadline_seconds(self) -> float:
        return self._deadline

    @property
    def shard_count(self) -> int:
        return self._shards.count

    async def ask(self, command: Command, deadline_seconds: float | None = None) -> Reply:
        """The command's reply, or DEADLINE after the router's deadline (or the caller's
        own, when shorter: an ILP Prepare has only until its expiry)."""
        deadline = self._deadline if deadline_seconds is None else max(0.0, min(self._deadline, deadline_seconds))
        try:
            payload = encode(command)
        except (TypeError, ValueError, OverflowError) as error:
            # Only this caller's input is at fault; its batch-mates never see it.
            log.warning("refused a command that cannot be encoded: %s", error)
            return Failed("invalid", "invalid_request", f"the request holds a value that cannot be stored: {error}")
        n = shard_of(command.entity_id, self._shards.count)
        queue = self._queues[n]
        if len(queue) >= self._queue_max:
            log.warning("refused %s for %s: %d commands already wait for shard %d", tag_of(command), command.entity_id, len(queue), n)
            return BACK_PRESSURE
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Reply] = loop.create_future()
        queue.append((payload, reply))
        self._ready[n].set()
        # The deadline is one timer that answers the future itself (asyncio.wait_for costs a
        # coroutine, a callback and a timer per ask): an answered future is never sent, or its
        # batch's reply to it is dropped.
        timer = loop.call_later(deadline, _expire, reply)
        try:
            answer = await reply
        finally:
            timer.cancel()
        if answer is _EXPIRED:
            log.warning("%s for %s: no answer from shard %d within %.1f s", tag_of(command), command.entity_id, n, deadline)
            return DEADLINE
        return answer

    async def ask_until_known(self, command: Command, deadline_seconds: float | None = None) -> Reply:
        """For idempotent commands (keyed, so they land at most once): an unknown outcome
        is not an answer, so the command is asked again, once, before the caller hears it.
        A write that landed behind a slow shard is then reported as landed. Both asks fit
        in `deadline_seconds` (default: the router's deadline, so an HTTP caller never
        waits longer than for one ask); the first leaves at least half of it, and neither
        waits longer than the router's deadline (an ILP Prepare may give more time)."""
        total = self._deadline if deadline_seconds is None else max(0.0, deadline_seconds)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self.ask(command, min(self._deadline, total / 2))
        left = total - (loop.time() - started)
        if isinstance(reply, Failed) and reply.code in UNKNOWN_OUTCOME and left > 0:
            log.warning("outcome of %s for %s unknown (%s); asking again", tag_of(command), command.entity_id, reply.code)
            reply = await self.ask(command, min(self._deadline, left))
        return reply

    async def each_shard(self, method: str, deadline_seconds: float) -> list[Any | None]:
        """`method()` of every shard (`stats`, `ping`: opay/actors/shard.py), asked at once and
        directly, not behind queued commands; None for a shard that did not answer within the
        deadline (stopped, restarting, or busy with a batch: a shard runs one call at a time)."""

        async def one(n: int) -> Any | None:
            try:
                return await asyncio.wait_for(getattr(self._shards.handle(n), method).remote(), deadline_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                return None

        return list(await asyncio.gather(*(one(n) for n in range(self._shards.count))))

    async def close(self) -> None:
        for task in [*self._pumps, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._pumps, *self._tasks, return_exceptions=True)

    async def _pump(self, n: int) -> None:
        queue, ready, slots = self._queues[n], self._ready[n], self._slots[n]
        while True:
            await ready.wait()
            ready.clear()
            while queue:
                await slots.acquire()
                batch: list[Queued] = []
                while queue and len(batch) < self._batch_max:
                    queued = queue.popleft()
                    if not queued[1].done():  # its caller's deadline passed while it waited
                        batch.append(queued)
                if not batch:
                    slots.release()
                    break
                task = asyncio.create_task(self._send(n, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, n: int, batch: list[Queued]) -> None:
        replies: list[Reply] = [UNAVAILABLE] * len(batch)
        lost = False
        outcome = "error"
        started = asyncio.get_running_loop().time()
        try:
            payload = encode([msgspec.Raw(command) for command, _ in batch])
            answer = await asyncio.wait_for(self._shards.handle(n).handle.remote(payload), self._deadline)
            result = decode_result(answer)
            if len(result.replies) != len(batch):
                raise ValueError(f"shard {n} answered {len(result.replies)} replies to {len(batch)} commands")
            replies = result.replies
            outcome = "ok"
            for tell in result.tells:
                self._deliver(tell)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            # A stuck shard (stopped, overloaded): the outcome is unknown, so the callers
            # hear "unavailable" and retry (with an idempotency key where it matters).
            outcome = "timeout"
            log.warning("shard %d did not answer a batch of %d within %.1f s", n, len(batch), self._deadline)
        except Exception as error:
            # A dead or restarting shard, or an answer we cannot read: unknown outcome too.
            log.warning("shard %d failed a batch of %d: %s", n, len(batch), error)
            lost = True
        finally:
            for (_, future), reply in zip(batch, replies):
                if not future.done():
                    future.set_result(reply)
            self._slots[n].release()
            metrics.observe_shard_call(n, len(batch), outcome, asyncio.get_running_loop().time() - started)
        if lost:
            await self._shards.refresh(n)

    def _deliver(self, tell: Tell) -> None:
        if self._telling >= self._tells_max:
            # Dropping is safe: the teller's committed state and due time make its timer ask again.
            return
        self._telling += 1
        task = asyncio.create_task(self._relay(tell))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, tell: Tell) -> None:
        try:
            if isinstance(tell.command, SendPackets):
                answer = await self._send_packets(tell.command)
            else:
                answer = await self.ask(tell.command)
            if tell.reply_to is not None:
                await self.ask(Answered(tell.reply_to, tag_of(tell.command), answer))
        finally:
            self._telling -= 1

    async def _send_packets(self, command: SendPackets) -> Reply:
        if self.links is None:
            return Failed("unavailable", "no_links", "this front end sends no ILP packets")
        try:
            return await self.links.run(command)
        except Exception as error:  # never counted: the payment's due time resends
            log.warning("links: packets of %s not sent: %s", command.entity_id, error)
            return Failed("unavailable", "link_failed", str(error))
