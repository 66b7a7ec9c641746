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

# Answers that mean "this node no longer serves the slot": look it up again.
_MOVED = (MovedError, AskError, ReadOnlyError, ClusterDownError)
# A slot table is asked for at most this often while nodes fail, however many connect.
REFRESH_MIN_SECONDS = 0.1
NODES_MAX = 1000  # nodes learned from CLUSTER SLOTS, kept as places to ask next time


class Placement:
    """Which master serves which slot, for one Redis Cluster: asked of any node it knows."""

    def __init__(self, seeds: list[tuple[str, int]], timeout_seconds: float, password: str | None, username: str | None) -> None:
        assert seeds
        self._known = list(dict.fromkeys(seeds))
        self._timeout = timeout_seconds
        self._auth = {"password": password, "username": username}
        self._ranges: list[tuple[int, int, tuple[str, int]]] = []
        self._asked_at = 0.0
        self._lock = threading.Lock()

    def master_of(self, slot: int) -> tuple[str, int]:
        with self._lock:
            if not self._ranges:
                self._refresh()
            for first, last, master in self._ranges:
                if first <= slot <= last:
                    return master
        raise redis.ConnectionError(f"no Redis Cluster node serves slot {slot}")

    def forget(self) -> None:
        # No lock: an event loop calls this, and a refresh may hold the lock for seconds
        # while nodes refuse. One assignment; the next lookup asks again.
        self._ranges = []

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
        self.placement.forget()
        return redis.ConnectionError(f"slot {self.slot} moved ({type(error).__name__}: {error}); asking the cluster again")


class PinnedConnection(_Pinned, redis.connection.Connection):
    def __init__(self, *, placement: Placement, slot: int, **kwargs) -> None:
        self.placement, self.slot = placement, slot
        super().__init__(**kwargs)

    def _connect(self):
        self._pin()
        try:
            return super()._connect()
        except OSError:
            self.placement.forget()
            raise

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except _MOVED as error:
            self.disconnect()
            raise self._moved(error) from error


class AsyncPinnedConnection(_Pinned, aioconnection.Connection):
    def __init__(self, *, placement: Placement, slot: int, **kwargs) -> None:
        self.placement, self.slot = placement, slot
        super().__init__(**kwargs)

    async def _connect(self):
        # The lookup blocks (a few round trips, only when connecting): off the event loop.
        self.host, self.port = await asyncio.to_thread(self.placement.master_of, self.slot)
        try:
            return await super()._connect()
        except OSError:
            self.placement.forget()
            raise

    async def read_response(self, *args, **kwargs):
        try:
            return await super().read_response(*args, **kwargs)
        except _MOVED as error:
            await self.disconnect()
            raise self._moved(error) from error


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
    return _client(redis.Redis, redis.ConnectionPool, PinnedConnection, Retry, url, timeout_seconds, tag)


def asynchronous(url: str, timeout_seconds: float, tag: str = keys.CONTROL_TAG) -> aioredis.Redis:
    """`blocking`'s asyncio twin."""
    return _client(aioredis.Redis, aioredis.ConnectionPool, AsyncPinnedConnection, AsyncRetry, url, timeout_seconds, tag)


def _client(client_class, pool_class, connection_class, retry_class, url: str, timeout_seconds: float, tag: str):
    options = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    found = placement(url, timeout_seconds)
    if found is None:
        return client_class.from_url(url, retry=retry_class(NoBackoff(), 1), **options)
    pool = pool_class.from_url(url, connection_class=connection_class, placement=found, slot=key_slot(tag.encode()), **options)
    return client_class(connection_pool=pool, retry=retry_class(NoBackoff(), 1))


class ShardClients:
    """One asyncio client per shard's tag (on one Redis, one client serves them all)."""

    def __init__(self, url: str, timeout_seconds: float, shard_count: int) -> None:
        assert shard_count > 0
        if is_cluster(url, timeout_seconds):
            self._clients = [asynchronous(url, timeout_seconds, keys.shard_tag(n)) for n in range(shard_count)]
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
