"""Every Redis key opay uses, in one place.

Each key carries a hash tag, so that on Redis Cluster everything one atomic write touches
lives in one slot. A shard's keys share `{s<n>}`: its entities' snapshots and journals,
its due times, its part of every list index, its webhook outbox and its part of the peer
totals, so an entity's compare-and-set write and all its side effects are one script on
one node. Everything else (wallet addresses, grants, tokens, peers, rates, the pinned
shard count) is the control plane, tagged `{o}`: its transactions span several of its keys.
On one Redis the tags change nothing.
"""

from __future__ import annotations

import zlib

PREFIX = "opay"
CONTROL_TAG = "{o}"
CONTROL = f"{PREFIX}:{CONTROL_TAG}"  # the prefix of every control-plane key


def shard_of(entity_id: str, shard_count: int) -> int:
    """Which shard hosts an entity, and so whose tag its keys carry. Stable across
    processes and restarts (not Python's hash())."""
    assert shard_count > 0
    return zlib.crc32(entity_id.encode()) % shard_count


def shard_tag(shard: int) -> str:
    assert shard >= 0
    return f"{{s{shard}}}"


def due(shard: int) -> str:
    """A sorted set per shard: entity id -> when its timer fires (ms)."""
    return f"{PREFIX}:due:{shard_tag(shard)}"


def due_tries(shard: int) -> str:
    """A sorted set per shard: entity id -> firings since the entity last set its due time."""
    return f"{PREFIX}:due-tries:{shard_tag(shard)}"


def fence(shard: int) -> str:
    """A counter per shard, bumped after a read on Redis Cluster: a WAIT then covers
    everything the read saw (replication is one ordered stream per master)."""
    return f"{PREFIX}:fence:{shard_tag(shard)}"


def quarantine(shard: int) -> str:
    """A hash per shard: entity id -> why its snapshot could not be read."""
    return f"{PREFIX}:quarantine:{shard_tag(shard)}"


def entity(entity_id: str, shard: int) -> str:
    """A hash {v: version, s: snapshot, w: write id}; `shard`: the one hosting the entity."""
    return f"{PREFIX}:e:{shard_tag(shard)}:{entity_id}"


def journal(entity_id: str, shard: int) -> str:
    """A hash idempotency key -> first outcome, written atomically with the snapshot."""
    return f"{PREFIX}:j:{shard_tag(shard)}:{entity_id}"


def index(kind: str, shard: int, wallet_address: str, client: str | None = None) -> str:
    """A sorted set of entity ids by creation time: the part of a wallet address's (or one
    client's) list hosted by `shard`. A list is the merge of its S parts (persistence/queries.py)."""
    owner = wallet_address if client is None else f"{wallet_address}|{client}"
    return f"{PREFIX}:ix:{shard_tag(shard)}:{kind}:{owner}"


def wallet_address(path: str) -> str:
    return f"{CONTROL}:wa:{path}"


WALLET_ADDRESSES = f"{CONTROL}:wa-all"


def wallet_keys(path: str) -> str:
    return f"{CONTROL}:wa-keys:{path}"


def grant(grant_id: str) -> str:
    return f"{CONTROL}:grant:{grant_id}"


def grants_of_client(identity: str) -> str:
    """A sorted set of grant ids by creation time: one client's (ClientRef.identity)."""
    return f"{CONTROL}:grants-of-client:{identity}"


def grants_of_wallet(wallet_address: str) -> str:
    """A sorted set of grant ids by creation time: those whose access names this wallet address URL."""
    return f"{CONTROL}:grants-of-wallet:{wallet_address}"


def token(token_digest: str) -> str:
    return f"{CONTROL}:token:{token_digest}"


def token_by_id(token_id: str) -> str:
    return f"{CONTROL}:token-id:{token_id}"


REVOCATIONS_CHANNEL = f"{PREFIX}:revoked"
STREAM_SECRET = f"{CONTROL}:stream-secret"
# The raw Ed25519 private key of the ASE's own client identity (opay/remote/identity.py).
CLIENT_KEY = f"{CONTROL}:client-key"
# The deployment's shard count, pinned by the first process to start (routing depends on it).
SHARD_COUNT = f"{CONTROL}:shard-count"


class Outbox:
    """A shard's webhook outbox (opay/outbox/store.py): its entities' writes add events to it
    atomically, so it shares their hash tag."""

    def __init__(self, shard: int) -> None:
        tag = shard_tag(shard)
        self.shard = shard
        self.events = f"{PREFIX}:webhooks:events:{tag}"  # a hash: event id -> event
        self.due = f"{PREFIX}:webhooks:due:{tag}"  # a sorted set: event id -> next attempt (ms)
        self.dead = f"{PREFIX}:webhooks:dead:{tag}"  # a sorted set: event id -> when it died (ms)
        self.attempts = f"{PREFIX}:webhooks:attempts:{tag}"  # a hash: event id -> attempts made
        self.errors = f"{PREFIX}:webhooks:errors:{tag}"  # a hash: event id -> the last error

    def all(self) -> list[str]:
        return [self.events, self.due, self.dead, self.attempts, self.errors]


FEES = f"{CONTROL}:fees"


def rates(base: str) -> str:
    return f"{CONTROL}:rates:{base}"


RATE_BASES = f"{CONTROL}:rate-bases"  # a sorted set (scores 0, so by name): every base with a table


# ILP peers (opay/ilp/peers.py).
PEERS = f"{CONTROL}:peers"  # a set: every peer's name
PEER_TOKENS = f"{CONTROL}:peer-tokens"  # a hash: sha256(incoming token) hex -> peer name
PEERS_CHANNEL = f"{PREFIX}:peers:changed"  # pub/sub: a change id per create or delete


def peer(name: str) -> str:
    """A hash: one peer's fields (its incoming token only as a digest)."""
    return f"{CONTROL}:peer:{name}"


def peer_totals(name: str, shard: int) -> str:
    """A hash {sent, received}: exact decimal totals of one shard's entities, moved only by
    their writes; a peer's totals are the sum over the shards."""
    return f"{PREFIX}:peer-totals:{shard_tag(shard)}:{name}"


def peers_acks(change: str) -> str:
    """A list: one entry per process that dropped its peer cache for this change."""
    return f"{CONTROL}:peers:acks:{change}"
