"""Redis clients, configured once: fail fast, so an outage is a quick 503, not a stall.

redis-py retries a failed command ten times with backoff by default; inside a shard,
which runs one batch at a time, that would freeze every entity it hosts for seconds.
One immediate retry covers a dropped connection; beyond that the caller hears
"unavailable" and retries with its idempotency key.

On Redis Cluster (found by asking the URL's node), every client is pinned to one hash
tag (opay/persistence/keys.py): its connections go to the master serving the tag's slot,
looked up with CLUSTER SLOTS, and looked up again after a MOVED, a READONLY, a CLUSTERDOWN
or a refused connection (a failover). A pinned client is a plain redis-py client, so
transactions, scripts, pipelines and pub/sub work as on one Redis, and every command it
sends must stay within its tag's slot, which the key layout guarantees.

Replication there is asynchronous: a write the master acknowledged is lost if it dies
before its replica has it. So an asyncio pinned client's connection that sent a write
WAITs for `wait_replicas` replicas before it goes back to the pool, which is before the
caller hears the answer; unconfirmed, the caller hears NotReplicated (a RedisError: the
outcome is unknown, as after a timeout). A shard's blocking client does its own WAIT after
each group commit, where it can keep each write's outcome (persistence/snapshots.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
import redis.connection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, ReadOnlyError
from redis.retry import Retry

from opay.persistence import keys

# Commands that change data: a connection that sent one owes a WAIT before it is reused
# (a script counts, whatever it does; a WAIT on a connection with nothing new returns at once).
_WRITES = frozenset(
    b"SET SETNX DEL UNLINK EXPIRE PEXPIRE PERSIST HSET HSETNX HMSET HDEL HINCRBY ZADD ZREM ZINCRBY ZREMRANGEBYSCORE"
    b" SADD SREM RPUSH LPUSH LPOP RPOP LTRIM INCR INCRBY DECR EXEC EVAL EVALSHA FCALL".split()
)


class NotReplicated(redis.RedisError):
    """A write the master holds but no replica has confirmed: a failover may lose it."""


# Answers that mean "this node no longer serves the slot": look it up again.
_MOVED = (MovedError, AskError, ReadOnlyError, ClusterDownError)
# A slot table is asked for at most this often while nodes fail, however many connect.
REFRESH_MIN_SECONDS = 0.1
NODES_MAX = 1000  # nodes learned from CLUSTER SLOTS, kept as places to ask next time
HEALTH_CHECK_SECONDS = 1
SLOTS_MOVED_MAX = 16384  # slots whose MOVED answer is kept (a client uses one)


class Placement:
    """Which master serves which slot, for one Redis Cluster: asked of any node it knows."""

    def __init__(self, seeds: list[tuple[str, int]], timeout_seconds: float, password: str | None, username: str | None) -> None:
        assert seeds
        self._known = list(dict.fromkeys(seeds))
        self._timeout = timeout_seconds
        self._auth = {"password": password, "username": username}
        self._ranges: list[tuple[int, int, tuple[str, int]]] = []
        # Where a MOVED said a slot is, until the next table: a node just back from a failure
        # may still describe the cluster as it was, but a MOVED is the slot's master's word.
        self._moved: dict[int, tuple[str, int]] = {}
        self._asked_at = 0.0
        self._lock = threading.Lock()

    def master_of(self, slot: int) -> tuple[str, int]:
        moved = self._moved.get(slot)
        if moved is not None:
            return moved
        with self._lock:
            if not self._ranges:
                self._refresh()
            for first, last, master in self._ranges:
                if first <= slot <= last:
                    return master
        raise redis.ConnectionError(f"no Redis Cluster node serves slot {slot}")

    def forget(self) -> None:
        # No lock: an event loop calls this, and a refresh may hold the lock for seconds
        # while nodes refuse. Plain assignments; the next lookup asks again.
        self._ranges, self._moved = [], {}

    def moved(self, slot: int, address: tuple[str, int]) -> None:
        if len(self._moved) >= SLOTS_MOVED_MAX:
            self._moved = {}
        self._moved = {**self._moved, slot: address}

    def _refresh(self) -> None:
        wait = self._asked_at + REFRESH_MIN_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._asked_at = time.monotonic()
        failures = []
        for host, port in list(self._known):
            try:
                node = redis.Redis(host=host, port=port, socket_timeout=self._timeout, socket_connect_timeout=self._timeout, **self._auth)
                try:
                    table = node.execute_command("CLUSTER SLOTS")
                finally:
                    node.close()
            except redis.RedisError as error:
                failures.append(f"{host}:{port}: {error}")
                continue
            ranges = []
            for entry in table:
                first, last, master = int(entry[0]), int(entry[1]), entry[2]
                address = (master[0].decode() if isinstance(master[0], bytes) else master[0]) or host, int(master[1])
                ranges.append((first, last, address))
                for node_entry in entry[2:]:
                    learned = ((node_entry[0].decode() if isinstance(node_entry[0], bytes) else node_entry[0]) or host, int(node_entry[1]))
                    if learned not in self._known and len(self._known) < NODES_MAX:
                        self._known.append(learned)
            self._ranges = ranges
            return
        raise redis.ConnectionError("no Redis Cluster node answered CLUSTER SLOTS: " + "; ".join(failures))


class _Pinned:
    """What both pinned connection classes share: where to connect, and when to look again."""

    placement: Placement
    slot: int

    def _pin(self) -> None:
        self.host, self.port = self.placement.master_of(self.slot)

    def _moved(self, error: Exception) -> redis.ConnectionError:
        if isinstance(error, MovedError) and error.slot_id == self.slot:
            self.placement.moved(self.slot, (error.host, int(error.port)))
        else:
            self.placement.forget()
        return redis.ConnectionError(f"slot {self.slot} moved ({type(error).__name__}: {error}); asking the cluster again")


class PinnedConnection(_Pinned, redis.connection.Connection):
    def __init__(self, *, placement: Placement, slot: int, **kwargs) -> None:
        self.placement, self.slot = placement, slot
        super().__init__(**kwargs)

    def _connect(self):
        for attempt in (1, 2):
            self._pin()
            try:
                return super()._connect()
            except OSError:
                # Refused: the master it had is gone. Once more, where the cluster says now.
                self.placement.forget()
                if attempt == 2:
                    raise

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except _MOVED as error:
            self.disconnect()
            raise self._moved(error) from error
        except redis.ConnectionError:
            self.placement.forget()  # its node went away: where the slot is now, the retry asks
            raise


class AsyncPinnedConnection(_Pinned, aioconnection.Connection):
    def __init__(self, *, placement: Placement, slot: int, wait_replicas: int, wait_ms: int, **kwargs) -> None:
        self.placement, self.slot = placement, slot
        self.wait = (wait_replicas, wait_ms)
        self.wrote = False  # a write was sent since the last WAIT
        super().__init__(**kwargs)

    def pack_command(self, *args):
        name = args[0] if isinstance(args[0], bytes) else str(args[0]).encode()
        if name.upper() in _WRITES:
            self.wrote = True
        return super().pack_command(*args)

    async def replicated(self) -> bool:
        """WAIT for this connection's writes (False: not confirmed in time, or no answer)."""
        self.wrote = False
        replicas, wait_ms = self.wait
        if not replicas or not self.is_connected:
            return True  # nothing to wait for, or the write failed with its connection
        try:
            await self.send_command("WAIT", replicas, wait_ms)
            return int(await self.read_response()) >= replicas
        except redis.RedisError:
            return False

    async def _connect(self):
        for attempt in (1, 2):
            # The lookup blocks (a few round trips, only when connecting): off the event loop.
            self.host, self.port = await asyncio.to_thread(self.placement.master_of, self.slot)
            try:
                return await super()._connect()
            except OSError:
                self.placement.forget()  # as the blocking twin's
                if attempt == 2:
                    raise

    async def read_response(self, *args, **kwargs):
        try:
            return await super().read_response(*args, **kwargs)
        except _MOVED as error:
            await self.disconnect()
            raise self._moved(error) from error
        except redis.ConnectionError:
            self.placement.forget()  # its node went away: where the slot is now, the retry asks
            raise


class ReplicatedPool(aioredis.ConnectionPool):
    """Hands a connection back only once the writes it sent are on the replicas."""

    async def release(self, connection: AsyncPinnedConnection) -> None:
        confirmed = await connection.replicated() if connection.wrote else True
        await super().release(connection)
        if not confirmed:
            raise NotReplicated(f"no {connection.wait[0]} replica of {connection.host}:{connection.port} confirmed a write in time")


_placements: dict[str, Placement | None] = {}
_placements_lock = threading.Lock()


def placement(url: str, timeout_seconds: float) -> Placement | None:
    """The cluster's placement if `url` names a Redis Cluster node, else None (asked once
    per process and URL)."""
    with _placements_lock:
        if url not in _placements:
            probe = redis.Redis.from_url(url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)
            try:
                enabled = probe.info("cluster").get("cluster_enabled") == 1
            finally:
                probe.close()
            parts = urlsplit(url)
            _placements[url] = (
                Placement([(parts.hostname or "127.0.0.1", parts.port or 6379)], timeout_seconds, parts.password, parts.username)
                if enabled
                else None
            )
        return _placements[url]


def is_cluster(url: str, timeout_seconds: float) -> bool:
    return placement(url, timeout_seconds) is not None


def blocking(url: str, timeout_seconds: float, tag: str = keys.CONTROL_TAG) -> redis.Redis:
    """A client for the keys tagged `tag` (keys.CONTROL_TAG, or keys.shard_tag(n))."""
    return _client(redis.Redis, redis.ConnectionPool, PinnedConnection, Retry, url, timeout_seconds, tag, {})


def asynchronous(url: str, timeout_seconds: float, tag: str = keys.CONTROL_TAG, wait_replicas: int = 0) -> aioredis.Redis:
    """`blocking`'s asyncio twin; on Redis Cluster its writes wait for `wait_replicas`
    replicas, at most half of `timeout_seconds` (NotReplicated if they do not confirm)."""
    wait = {"wait_replicas": wait_replicas, "wait_ms": int(timeout_seconds * 500)}
    return _client(aioredis.Redis, ReplicatedPool, AsyncPinnedConnection, AsyncRetry, url, timeout_seconds, tag, wait)


def _client(client_class, pool_class, connection_class, retry_class, url: str, timeout_seconds: float, tag: str, pinned: dict):
    options = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    found = placement(url, timeout_seconds)
    if found is None:
        return client_class.from_url(url, retry=retry_class(NoBackoff(), 1), **options)
    # A connection idle for a second is PINGed before use: after a failover, the pool's
    # connections to the dead master are found dead there and made again, not by a request.
    options["health_check_interval"] = HEALTH_CHECK_SECONDS
    # The retry goes to the connections: a client given a pool does not hand its own down.
    options["retry"] = retry_class(NoBackoff(), 1)
    pool = pool_class.from_url(url, connection_class=connection_class, placement=found, slot=key_slot(tag.encode()), **options, **pinned)
    return client_class(connection_pool=pool)


class ShardClients:
    """One asyncio client per shard's tag (on one Redis, one client serves them all)."""

    def __init__(self, url: str, timeout_seconds: float, shard_count: int, wait_replicas: int = 0) -> None:
        assert shard_count > 0
        if is_cluster(url, timeout_seconds):
            self._clients = [asynchronous(url, timeout_seconds, keys.shard_tag(n), wait_replicas) for n in range(shard_count)]
        else:
            self._clients = [asynchronous(url, timeout_seconds)] * shard_count

    @property
    def count(self) -> int:
        return len(self._clients)

    def of(self, shard: int) -> aioredis.Redis:
        return self._clients[shard]

    async def aclose(self) -> None:
        for client in {id(c): c for c in self._clients}.values():
            await client.aclose()
