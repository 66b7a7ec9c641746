"""Which shard hosts an entity. Stable across processes and restarts (not Python's hash())."""

from __future__ import annotations

import zlib


def shard_of(entity_id: str, shard_count: int) -> int:
    assert shard_count > 0
    return zlib.crc32(entity_id.encode()) % shard_count
