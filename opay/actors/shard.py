"""A shard: one Ray actor hosting many entity actors. Ray places, restarts and scales shards."""

from __future__ import annotations

import os


from opay.clock import now_ms
from opay.actors import registry
from opay.actors.entity import EntityHost
from opay.actors.messages import encode
from opay.persistence import clients
from opay.persistence.snapshots import SnapshotStore


class Shard:
    """A synchronous actor on purpose: Ray runs its calls one at a time, which is the
    per-entity serial order the rules rely on, at half the CPU cost of an async actor."""

    def __init__(self, index: int, redis_url: str, max_active: int, redis_timeout_seconds: float, emit_events: bool) -> None:
        self.index = index
        self._redis_url = redis_url
        client = clients.blocking(redis_url, redis_timeout_seconds)
        self._host = EntityHost(
            SnapshotStore(client),
            registry.HANDLERS,
            max_active,
            emit_events,
            shard=index,
            journal_keys=registry.JOURNAL_KEYS,
            codec=registry.codec,
        )

    def handle(self, batch: bytes) -> bytes:
        return encode(self._host.handle(registry.decode_commands(batch), now_ms()))

    def stats(self) -> dict[str, int | str]:
        host = self._host
        return {
            "index": self.index,
            "active": host.active_count,
            "pid": os.getpid(),
            "redis_url": self._redis_url,
            "quarantined": host.quarantined,
            "journal_reads": host.journal_reads,
        }
