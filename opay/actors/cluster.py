"""Join or start Ray and activate the shard actors."""

from __future__ import annotations

import logging
import os

import ray

from opay.actors.shard import Shard
from opay.settings import Settings

NAMESPACE = "opay"


def start_ray(settings: Settings) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return
    # "local": always a fresh instance of our own, never a cluster someone else started on
    # this machine (plain ray.init() would join it, with their resources and lifetime).
    ray.init(
        address="local",
        namespace=NAMESPACE,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
        num_cpus=settings.shard_count(),
    )


def start_shards(settings: Settings, redis_url: str) -> list:
    # num_cpus=0: a shard is mostly waiting on Redis; Ray's CPU accounting must not cap S.
    # max_restarts=-1: a crashed shard comes back and re-activates entities from Redis.
    # max_task_retries=0: a batch is never replayed behind the caller's back.
    actor = ray.remote(Shard)
    shards = [
        actor.options(
            name=f"opay-shard-{n}", get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=0
        ).remote(n, redis_url, settings.shard_max_active_entities, settings.redis_timeout_seconds, bool(settings.webhook_url))
        for n in range(settings.shard_count())
    ]
    ray.get([shard.stats.remote() for shard in shards], timeout=120)
    return shards
