"""The front end's way to its shards: one outbound queue per shard, one Ray call per batch.

A Ray call costs about half a millisecond of CPU on each side, far more than applying a
command. So each shard's pump sends whatever queued up in one event-loop tick as one
call, with a bounded number of calls in flight; under load batches grow by themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque

from opay.actors.messages import UNAVAILABLE, Answered, Command, Reply, Tell, decode_result, encode, tag_of
from opay.actors.routing import shard_of


class ShardRouter:
    def __init__(
        self,
        shards: list,
        *,
        batch_max: int,
        in_flight: int,
        call_timeout_seconds: float,
        queue_max: int = 100_000,
        tells_max: int = 10_000,
    ) -> None:
        assert shards and batch_max > 0 and in_flight > 0
        self._shards = shards
        self._batch_max = batch_max
        self._call_timeout = call_timeout_seconds
        self._queue_max = queue_max
        self._tells_max = tells_max
        self._telling = 0
        self._queues: list[deque[tuple[Command, asyncio.Future[Reply]]]] = [deque() for _ in shards]
        self._ready = [asyncio.Event() for _ in shards]
        self._slots = [asyncio.Semaphore(in_flight) for _ in shards]
        self._tasks: set[asyncio.Task] = set()
        self._pumps = [asyncio.create_task(self._pump(n)) for n in range(len(shards))]

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    async def ask(self, command: Command) -> Reply:
        n = shard_of(command.entity_id, len(self._shards))
        queue = self._queues[n]
        if len(queue) >= self._queue_max:
            # Back-pressure: refuse rather than queue without bound.
            return UNAVAILABLE
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        queue.append((command, reply))
        self._ready[n].set()
        return await reply

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
                batch = [queue.popleft() for _ in range(min(len(queue), self._batch_max))]
                if not batch:
                    slots.release()
                    break
                task = asyncio.create_task(self._send(n, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, n: int, batch: list[tuple[Command, asyncio.Future[Reply]]]) -> None:
        try:
            payload = encode([command for command, _ in batch])
            try:
                answer = await asyncio.wait_for(self._shards[n].handle.remote(payload), self._call_timeout)
                result = decode_result(answer)
                replies = result.replies
                assert len(replies) == len(batch)
                for tell in result.tells:
                    self._deliver(tell)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A dead, restarting or stuck shard: the outcome is unknown, so the caller
                # hears "unavailable" and retries (with an idempotency key where it matters).
                replies = [UNAVAILABLE] * len(batch)
            for (_, future), reply in zip(batch, replies):
                if not future.done():
                    future.set_result(reply)
        finally:
            self._slots[n].release()

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
            answer = await self.ask(tell.command)
            if tell.reply_to is not None:
                await self.ask(Answered(tell.reply_to, tag_of(tell.command), answer))
        finally:
            self._telling -= 1
