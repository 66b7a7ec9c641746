"""Join or start Ray, pin the shard count, and keep handles to the shard actors.

Shards are detached named actors: no front end owns them, so a front end that dies
(kill -9) takes none with it, and Ray restarts a shard whose worker dies. A front end
that finds a handle dead looks the shard up again by name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

# Read by Ray when it is imported (opay imports it only here): a shard's log lines reach the
# stderr of the front end that started it as the shard wrote them, not behind a
# "(Shard pid=...)" prefix that would break a JSON line, nor folded into "[repeated 3x]".
os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
import redis  # noqa: E402

from opay import reach  # noqa: E402
from opay.actors.shard import Shard  # noqa: E402
from opay.persistence import keys  # noqa: E402
from opay.settings import Settings  # noqa: E402

NAMESPACE = "opay"
log = logging.getLogger("opay.cluster")

# How often one shard may be looked up again, and how long a lookup may take.
REFRESH_INTERVAL_SECONDS = 1.0
LOOKUP_TIMEOUT_SECONDS = 10.0
START_TIMEOUT_SECONDS = 120
# A Ray whose port answers may still take a while to let a driver in (a head that is still
# starting); one that never does (a wrong RAY_AUTH_MODE, not a Ray at all) ends the start.
JOIN_TIMEOUT_SECONDS = 60.0
_HOST_PORT = re.compile(r"(?:ray://)?(\[[^\]]+\]|[^:/\[\]]+):(\d{1,5})")
# The custom resource that says which Ray nodes host shards (`ray start --resources=
# '{"shard_slot": k}'`: at most k shards on that node, one slot each). On a cluster where no
# node has it (`opay serve`'s own Ray, a plain cluster) shards go on any node: requiring a
# resource nobody has would leave them unschedulable.
SHARD_RESOURCE = "shard_slot"


class DeploymentMismatch(Exception):
    """This process does not fit the deployment it joins (shard count, or shards of another Redis)."""


def start_ray(settings: Settings) -> str:
    """Join OPAY_RAY_ADDRESS, or start a Ray of our own; what it is, for the start line.
    Ray's loggers go through opay's (opay/observability/logs.py: its errors only)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if settings.ray_address:
        join_ray(settings.ray_address, settings.connect_timeout_seconds)
        return f"joined {settings.ray_address}"
    # "local": always a fresh instance of our own, never a cluster someone else started on
    # this machine (plain ray.init() would join it, with their resources and lifetime).
    cpus = os.cpu_count() or 1
    ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, configure_logging=False, num_cpus=cpus)
    return f"local, {cpus} CPUs"


def join_ray(address: str, connect_timeout_seconds: float) -> None:
    """ray.init retries an unreachable address for ever: its port must answer within the
    connect timeout, then the join itself end within JOIN_TIMEOUT_SECONDS (reach.Unreachable)."""
    endpoint = _HOST_PORT.fullmatch(address)
    if endpoint is not None:
        reach.port_answers("Ray", address, endpoint[1].strip("[]"), int(endpoint[2]), connect_timeout_seconds)
    reach.within(JOIN_TIMEOUT_SECONDS, "Ray", address, lambda: ray.init(address=address, namespace=NAMESPACE, configure_logging=False))


def pin_shard_count(client: redis.Redis, requested: int) -> int:
    """The deployment's shard count S, pinned in Redis by the first process to start.

    Routing is crc32(id) % S, so two processes with different S would send one entity to
    two shards. `requested` 0 (OPAY_SHARDS unset) adopts the pinned S, or pins one per CPU;
    an explicit S that differs from the pinned one is refused."""
    assert requested >= 0
    client.set(keys.SHARD_COUNT, requested or os.cpu_count() or 1, nx=True)
    pinned = int(client.get(keys.SHARD_COUNT))
    if requested and requested != pinned:
        raise DeploymentMismatch(
            f"OPAY_SHARDS={requested}, but this deployment has {pinned} shards (pinned in Redis key "
            f"{keys.SHARD_COUNT} by its first start): every process must route with the same count. "
            f"Start with OPAY_SHARDS={pinned} or unset."
        )
    return pinned


def shard_name(n: int) -> str:
    return f"opay-shard-{n}"


class ShardDirectory:
    """The handles of the S shard actors, each looked up again (or, if gone, re-created)
    by name when a call to it fails."""

    def __init__(self, settings: Settings, redis_url: str, count: int, *, create: bool = True, wait_seconds: float = 0.0) -> None:
        """`create` False (`opay frontend`): only look the shards up by name, waiting up to
        `wait_seconds` for the head to have created them; the head (or `opay serve`)
        creates them, with its settings, and is the one that re-creates one gone for good."""
        assert count > 0
        self._settings = settings
        self._redis_url = redis_url
        self._create = create
        self._handles = [self._ensure(n) for n in range(count)] if create else self._wait_for(count, wait_seconds)
        self._next_refresh = [0.0] * count
        stats = ray.get([shard.stats.remote() for shard in self._handles], timeout=START_TIMEOUT_SECONDS)
        stale = [s["index"] for s in stats if s.get("redis_url") != redis_url]
        if stale:
            # Detached shards of another deployment on this Ray cluster: they would write
            # to another Redis. Refuse rather than route to them.
            raise DeploymentMismatch(f"shards {stale} on this Ray cluster serve another Redis; stop them or use another namespace")

    @property
    def count(self) -> int:
        return len(self._handles)

    def handle(self, n: int):
        return self._handles[n]

    async def refresh(self, n: int) -> None:
        now = time.monotonic()
        if now < self._next_refresh[n]:
            return
        self._next_refresh[n] = now + REFRESH_INTERVAL_SECONDS
        try:
            self._handles[n] = await asyncio.wait_for(asyncio.to_thread(self._ensure, n), LOOKUP_TIMEOUT_SECONDS)
        except Exception as error:
            log.warning("shard %d could not be looked up again: %s", n, error)

    def _wait_for(self, count: int, seconds: float) -> list:
        deadline = time.monotonic() + seconds
        handles: list = []
        while len(handles) < count:
            try:
                handles.append(ray.get_actor(shard_name(len(handles)), namespace=NAMESPACE))
            except ValueError:  # no actor of that name (yet)
                if time.monotonic() >= deadline:
                    raise DeploymentMismatch(
                        f"shard {len(handles)} of {count} not found on this Ray cluster within {seconds:g} s: "
                        "is `opay head` running against the same Redis and Ray?"
                    ) from None
                time.sleep(0.5)
        return handles

    def _ensure(self, n: int):
        if not self._create:
            return ray.get_actor(shard_name(n), namespace=NAMESPACE)
        # lifetime="detached": owned by no front end, so one dying takes no shard with it.
        # num_cpus=0: a shard is mostly waiting on Redis; Ray's CPU accounting must not cap S.
        # max_restarts=-1: a crashed shard comes back and re-activates entities from Redis.
        # max_task_retries=0: a batch is never replayed behind the caller's back.
        # get_if_exists: the existing actor by name, or a new one if it is gone.
        # SPREAD: the shards over the nodes in turn (DEFAULT leaves it to chance, and may put
        # them all on one node); one lost with its node restarts where a slot is free.
        settings = self._settings
        slot = {SHARD_RESOURCE: 1} if ray.cluster_resources().get(SHARD_RESOURCE, 0) > 0 else {}
        return (
            ray.remote(Shard)
            .options(
                name=shard_name(n),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                resources=slot,
                scheduling_strategy="SPREAD",
                max_restarts=-1,
                max_task_retries=0,
            )
            .remote(
                n,
                self._redis_url,
                settings.shard_max_active_entities,
                settings.redis_timeout_seconds,
                settings.redis_wait_replicas,
                bool(settings.webhook_url),
                settings.log_level,
                settings.log_format,
            )
        )
