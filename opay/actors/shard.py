"""A shard: one Ray actor hosting many entity actors. Ray places, restarts and scales shards."""

from __future__ import annotations

import os


from opay.clock import now_ms
from opay.actors import registry
from opay.actors.entity import EntityHost
from opay.actors.messages import Command, CreditIncomingPayment, Credited, Failed, Reply, encode
from opay.domain.outgoing_payment import OutgoingPayment
from opay.observability import logs
from opay.observability.tally import ShardTally
from opay.persistence import clients, keys
from opay.persistence.snapshots import SnapshotStore


class Shard:
    """A synchronous actor on purpose: Ray runs its calls one at a time, which is the
    per-entity serial order the rules rely on, at half the CPU cost of an async actor."""

    def __init__(
        self,
        index: int,
        redis_url: str,
        max_active: int,
        redis_timeout_seconds: float,
        redis_wait_replicas: int,
        emit_events: bool,
        log_level: str,
        log_format: str,
    ) -> None:
        # The front end's log settings: the same lines, from Ray's worker process (its
        # stderr: Ray's worker-*.err files, and the stderr of the front end that started it).
        logs.configure(log_level, log_format, static={"shard": index})
        self.index = index
        self._redis_url = redis_url
        client = clients.blocking(redis_url, redis_timeout_seconds, keys.shard_tag(index))
        replicas = redis_wait_replicas if clients.is_cluster(redis_url, redis_timeout_seconds) else 0
        self._tally = ShardTally()
        self._host = EntityHost(
            SnapshotStore(client, index, self._tally.write_seconds, wait_replicas=replicas, wait_ms=int(redis_timeout_seconds * 500)),
            registry.HANDLERS,
            max_active,
            emit_events,
            journal_keys=registry.JOURNAL_KEYS,
            codec=registry.codec,
            on_commit=lambda before, after: count_settlement(self._tally, before, after),
        )

    def handle(self, batch: bytes) -> bytes:
        commands = registry.decode_commands(batch)
        result = self._host.handle(commands, now_ms())
        count_credits(self._tally, commands, result.replies)
        return encode(result)

    def ping(self) -> int:
        """The cheapest call there is: the shard is up and takes calls (GET /readyz)."""
        return self.index

    def stats(self) -> dict[str, object]:
        host = self._host
        return {
            "index": self.index,
            "active": host.active_count,
            "pid": os.getpid(),
            "redis_url": self._redis_url,
            "quarantined": host.quarantined,
            "journal_reads": host.journal_reads,
            "metrics": self._tally.snapshot(),
        }


def count_credits(tally: ShardTally, commands: list[Command], replies: list[Reply]) -> None:
    """Each credit's outcome as its caller hears it. A reply says "credited" only once its
    write landed (the host replaces the replies of a failed write), so the money counted is
    the money Redis holds; a replay credits nothing and is counted as one."""
    for command, reply in zip(commands, replies):
        if not isinstance(command, CreditIncomingPayment):
            continue
        if isinstance(reply, Credited) and reply.replayed:
            tally.credit(command.source, "replayed")
        elif isinstance(reply, Credited) and reply.outcome.accepted:
            tally.credit(command.source, "credited", "", (reply.asset.code, reply.asset.scale), reply.outcome.amount)
        elif isinstance(reply, Credited):
            tally.credit(command.source, "refused", reply.outcome.refused_code)
        elif isinstance(reply, Failed):
            tally.credit(command.source, "unavailable" if reply.kind == "unavailable" else "failed", reply.code)


def count_settlement(tally: ShardTally, before: object | None, after: object) -> None:
    """An outgoing payment's write that settled it (completed or failed): counted once, as
    the write that moved it there landed once. Money settled: what it sent, in its debit asset."""
    if not isinstance(after, OutgoingPayment) or not after.settled:
        return
    if isinstance(before, OutgoingPayment) and before.settled:
        return
    asset = after.debit_asset
    tally.settlement("remote" if after.remote is not None else "local", after.phase, (asset.code, asset.scale), after.sent)
