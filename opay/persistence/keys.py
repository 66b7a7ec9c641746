"""Every Redis key opay uses, in one place."""

from __future__ import annotations

PREFIX = "opay"


def due(shard: int) -> str:
    """A sorted set per shard: entity id -> when its timer fires (ms). The hash tag keeps
    it in one slot with its tries set on Redis Cluster."""
    return f"{PREFIX}:due:{{s{shard}}}"


def due_tries(shard: int) -> str:
    """A sorted set per shard: entity id -> firings since the entity last set its due time."""
    return f"{PREFIX}:due-tries:{{s{shard}}}"


QUARANTINE = f"{PREFIX}:quarantine"  # entity id -> why its snapshot could not be read


def entity(entity_id: str) -> str:
    """A hash {v: version, s: snapshot}."""
    return f"{PREFIX}:e:{entity_id}"


def journal(entity_id: str) -> str:
    """A hash idempotency key -> first outcome, written atomically with the snapshot."""
    return f"{PREFIX}:j:{entity_id}"


def index(kind: str, wallet_address: str, client: str | None = None) -> str:
    """A sorted set of entity ids by creation time: all of a wallet address's, or one client's."""
    owner = wallet_address if client is None else f"{wallet_address}|{client}"
    return f"{PREFIX}:ix:{kind}:{owner}"


def wallet_address(path: str) -> str:
    return f"{PREFIX}:wa:{path}"


WALLET_ADDRESSES = f"{PREFIX}:wa-all"


def wallet_keys(path: str) -> str:
    return f"{PREFIX}:wa-keys:{path}"


def grant(grant_id: str) -> str:
    return f"{PREFIX}:grant:{grant_id}"


def grants_of_client(identity: str) -> str:
    """A sorted set of grant ids by creation time: one client's (ClientRef.identity)."""
    return f"{PREFIX}:grants-of-client:{identity}"


def grants_of_wallet(wallet_address: str) -> str:
    """A sorted set of grant ids by creation time: those whose access names this wallet address URL."""
    return f"{PREFIX}:grants-of-wallet:{wallet_address}"


def token(token_digest: str) -> str:
    return f"{PREFIX}:token:{token_digest}"


def token_by_id(token_id: str) -> str:
    return f"{PREFIX}:token-id:{token_id}"


REVOCATIONS_CHANNEL = f"{PREFIX}:revoked"
STREAM_SECRET = f"{PREFIX}:stream-secret"
# The raw Ed25519 private key of the ASE's own client identity (opay/remote/identity.py).
CLIENT_KEY = f"{PREFIX}:client-key"
# The deployment's shard count, pinned by the first process to start (routing depends on it).
SHARD_COUNT = f"{PREFIX}:shard-count"
WEBHOOK_EVENTS = f"{PREFIX}:webhooks:events"
WEBHOOK_DUE = f"{PREFIX}:webhooks:due"
WEBHOOK_DEAD = f"{PREFIX}:webhooks:dead"
WEBHOOK_ATTEMPTS = f"{PREFIX}:webhooks:attempts"
WEBHOOK_ERRORS = f"{PREFIX}:webhooks:errors"
FEES = f"{PREFIX}:fees"


def rates(base: str) -> str:
    return f"{PREFIX}:rates:{base}"


RATE_BASES = f"{PREFIX}:rate-bases"  # a sorted set (scores 0, so by name): every base with a table


# ILP peers (opay/ilp/peers.py).
PEERS = f"{PREFIX}:peers"  # a set: every peer's name
PEER_TOKENS = f"{PREFIX}:peer-tokens"  # a hash: sha256(incoming token) hex -> peer name
PEERS_CHANNEL = f"{PREFIX}:peers:changed"  # pub/sub: a change id per create or delete


def peer(name: str) -> str:
    """A hash: one peer's fields (its incoming token only as a digest)."""
    return f"{PREFIX}:peer:{name}"


def peer_totals(name: str) -> str:
    """A hash {sent, received}: exact decimal totals, moved only by entity writes."""
    return f"{PREFIX}:peer-totals:{name}"


def peers_acks(change: str) -> str:
    """A list: one entry per process that dropped its peer cache for this change."""
    return f"{PREFIX}:peers:acks:{change}"
