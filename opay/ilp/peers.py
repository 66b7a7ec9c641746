"""ILP peers: the other ASEs (or connectors) opay exchanges packets with over ILP-over-HTTP.

A peer is operator data, kept in Redis: its name (a short slug), the URL of its
ILP-over-HTTP endpoint, the Bearer token opay presents when it sends (`outgoingToken`),
the one the peer presents to `POST /ilp` (`incomingToken`), the link's asset, the ILP
address prefixes it is the next hop for (`routes`), and optionally the largest packet
the link carries (`maxPacketAmount`).

Tokens at rest. The incoming token is only ever compared, so only its SHA-256 digest is
stored (a Redis dump does not let anyone pose as the peer; tokens are bearer secrets
the operator chooses, high-entropy by contract, so an unsalted hash is enough, and it is
what makes the lookup by token one dictionary probe: no comparison of secrets that
could leak through timing). The outgoing token must be presented as it is, so it is
stored as given; it is never shown again (GET /peers omits both tokens).

Keys (opay/persistence/keys.py): one hash per peer `opay:{o}:peer:<name>`, the name index
`opay:{o}:peers` (a set), `opay:{o}:peer-tokens` (incoming-token digest -> name), and the
totals, one hash per shard `opay:peer-totals:{s<n>}:<name>` (fields `sent`, `received`:
exact decimal strings, moved only by the shard's entity writes, atomically with the
credit or the delivery they count; see `record_received`, `record_sent`), summed on read. A peer's totals belong to its name: deleting the
peer keeps them (they are what was exchanged and must be settled); a peer created again
under that name continues them.

Every process caches the peers (for `route` and `peer_for_incoming_token`) while it is
subscribed to `opay:peers:changed`. A change (create, delete) is published with an id,
and the change is answered only once every subscribed process has dropped its cache and
said so (an ack list per change, bounded wait): so a deleted peer's token is refused at
once by every front end, not after a TTL. A process that is not subscribed (its
subscription dropped, or it never started the listener) reads Redis on every lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis

from opay.persistence import keys
from opay.persistence.clients import ShardClients
from opay.persistence.snapshots import SideEffect

if TYPE_CHECKING:
    from opay.actors.entity import Step

log = logging.getLogger("opay.peers")

U64_MAX = 2**64 - 1
NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")
TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # visible ASCII: what a Bearer header carries intact
ASSET_CODE = re.compile(r"[A-Za-z0-9]{1,32}")
URL_MAX = 2048
ROUTES_MAX = 100
PEERS_MAX = 1000
# RFC 0015: scheme 1*("." segment), at most 1023 characters. A route may also be a bare
# scheme ("test": every test address).
SCHEMES = frozenset({"g", "private", "example", "peer", "self", "test", "test1", "test2", "test3", "local"})
_SEGMENT = re.compile(r"[A-Za-z0-9_~-]+")
ADDRESS_MAX = 1023
ACK_WAIT_SECONDS = 2.0
ACK_TTL_SECONDS = 60


def is_ilp_address(text: str) -> bool:
    """An ILP address (RFC 0015): a known allocation scheme and one or more segments."""
    if not isinstance(text, str) or len(text) > ADDRESS_MAX:
        return False
    scheme, dot, rest = text.partition(".")
    return scheme in SCHEMES and bool(dot) and all(_SEGMENT.fullmatch(s) for s in rest.split("."))


def is_route_prefix(text: str) -> bool:
    return isinstance(text, str) and (text in SCHEMES or is_ilp_address(text))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Peer(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    outgoing_token: str
    incoming_token_digest: str  # sha256 hex of the incoming token
    asset_code: str
    asset_scale: int
    routes: tuple[str, ...]
    max_packet_amount: int | None = None
    created_at_ms: int = 0


class InvalidPeer(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_FIELDS = ("name", "url", "outgoingToken", "incomingToken", "assetCode", "assetScale", "routes", "maxPacketAmount")


def parse_peer(body: Any, *, now_ms: int = 0) -> tuple[Peer, str]:
    """The Peer a POST /peers body describes and its incoming token (in clear, for the
    caller's own checks), or InvalidPeer naming the first bad field. The URL is checked
    for shape here; the fetch policy's verdict is the caller's (it resolves names)."""
    if not isinstance(body, dict):
        raise InvalidPeer("body", "the body must be a JSON object")
    for field in body:
        if field not in _FIELDS:
            raise InvalidPeer(str(field)[:64], f"unknown field {str(field)[:64]!r}")
    name = body.get("name")
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise InvalidPeer("name", "name must be 1 to 63 characters of [a-z0-9-], starting with a letter or digit")
    url = body.get("url")
    if not isinstance(url, str) or len(url) > URL_MAX or re.match(r"https?://[^/?#\s]+(?:[/?#]\S*)?$", url) is None:
        raise InvalidPeer("url", "url must be the peer's http(s) ILP-over-HTTP endpoint")
    tokens = {}
    for field in ("outgoingToken", "incomingToken"):
        value = body.get(field)
        if not isinstance(value, str) or TOKEN.fullmatch(value) is None:
            raise InvalidPeer(field, f"{field} must be 1 to 512 visible ASCII characters")
        tokens[field] = value
    code = body.get("assetCode")
    if not isinstance(code, str) or ASSET_CODE.fullmatch(code) is None:
        raise InvalidPeer("assetCode", "assetCode must be 1 to 32 letters or digits")
    scale = body.get("assetScale")
    if not isinstance(scale, int) or isinstance(scale, bool) or not 0 <= scale <= 255:
        raise InvalidPeer("assetScale", "assetScale must be an integer 0..255")
    routes = body.get("routes")
    if not isinstance(routes, list) or not 1 <= len(routes) <= ROUTES_MAX:
        raise InvalidPeer("routes", f"routes must be a list of 1 to {ROUTES_MAX} ILP address prefixes")
    for route in routes:
        if not is_route_prefix(route):
            raise InvalidPeer("routes", f"{str(route)[:100]!r} is not an ILP address prefix (scheme, or scheme.segment...)")
    if len(set(routes)) != len(routes):
        raise InvalidPeer("routes", "routes must not repeat a prefix")
    limit: int | None = None
    if body.get("maxPacketAmount") is not None:
        raw = body["maxPacketAmount"]
        if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 20 or (len(raw) > 1 and raw[0] == "0"):
            raise InvalidPeer("maxPacketAmount", "maxPacketAmount must be a uint64 as a decimal string")
        limit = int(raw)
        if not 1 <= limit <= U64_MAX:
            raise InvalidPeer("maxPacketAmount", "maxPacketAmount must be 1..2^64-1")
    peer = Peer(
        name=name,
        url=url,
        outgoing_token=tokens["outgoingToken"],
        incoming_token_digest=token_digest(tokens["incomingToken"]),
        asset_code=code,
        asset_scale=scale,
        routes=tuple(routes),
        max_packet_amount=limit,
        created_at_ms=now_ms,
    )
    return peer, tokens["incomingToken"]


# ---------------------------------------------------------------- routing (pure)


def _matches(prefix: str, address: str) -> bool:
    return address == prefix or address.startswith(prefix + ".")


def route(peers: list[Peer] | tuple[Peer, ...], address: str) -> Peer | None:
    """The next hop for `address`: the peer with the longest route prefix that matches
    it on a segment boundary ("test.b" matches "test.b" and "test.b.x", not "test.bob").
    Two peers with the same longest prefix: the one created first (then by name)."""
    best: tuple[int, int, str] | None = None
    found: Peer | None = None
    for peer in peers:
        for prefix in peer.routes:
            if _matches(prefix, address):
                rank = (-len(prefix), peer.created_at_ms, peer.name)
                if best is None or rank < best:
                    best, found = rank, peer
    return found


class RoutingTable:
    """`route` as a dictionary walk: at most one probe per segment of the address."""

    def __init__(self, peers: list[Peer] | tuple[Peer, ...]) -> None:
        self.peers = tuple(sorted(peers, key=lambda p: (p.created_at_ms, p.name)))
        self._by_prefix: dict[str, Peer] = {}
        for peer in self.peers:  # first created wins a shared prefix
            for prefix in peer.routes:
                self._by_prefix.setdefault(prefix, peer)
        self.by_name = {peer.name: peer for peer in self.peers}
        self.by_digest = {peer.incoming_token_digest: peer for peer in self.peers}

    def route(self, address: str) -> Peer | None:
        candidate = address
        while candidate:
            found = self._by_prefix.get(candidate)
            if found is not None:
                return found
            cut = candidate.rfind(".")
            if cut < 0:
                return None
            candidate = candidate[:cut]
        return None


# ---------------------------------------------------------------- totals (entity side effects)


def record_received(step: Step, peer_name: str, amount: int) -> None:
    """Count `amount` as received from the peer, in the same compare-and-set write as the
    credit it counts (append to the crediting step's effects): a refused or deduplicated
    credit adds nothing, because it writes nothing."""
    if peer_name and amount > 0:
        step.effects.append(SideEffect("hincrby", keys.peer_totals(peer_name, step.shard), "received", str(amount)))


def record_sent(step: Step, peer_name: str, amount: int) -> None:
    """Count `amount` as sent to the peer (delivered: a Fulfill with the right fulfillment),
    in the same write as the outgoing payment's state that counts the delivery (append to
    the outgoing payment entity's step.effects)."""
    if peer_name and amount > 0:
        step.effects.append(SideEffect("hincrby", keys.peer_totals(peer_name, step.shard), "sent", str(amount)))


@dataclass(frozen=True)
class Totals:
    sent: int = 0
    received: int = 0


# ---------------------------------------------------------------- the store

# KEYS: peer hash, name index, token index. ARGV: name, digest, then field/value pairs.
_CREATE = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 'name' end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 'token' end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return 'ok'
"""

# KEYS: peer hash, name index, token index. ARGV: name.
_DELETE = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
local digest = redis.call('HGET', KEYS[1], 'incomingTokenDigest')
if digest and redis.call('HGET', KEYS[3], digest) == ARGV[1] then redis.call('HDEL', KEYS[3], digest) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


def _to_hash(peer: Peer) -> list[str]:
    fields = {
        "name": peer.name,
        "url": peer.url,
        "outgoingToken": peer.outgoing_token,
        "incomingTokenDigest": peer.incoming_token_digest,
        "assetCode": peer.asset_code,
        "assetScale": str(peer.asset_scale),
        "routes": msgspec.json.encode(list(peer.routes)).decode(),
        "maxPacketAmount": "" if peer.max_packet_amount is None else str(peer.max_packet_amount),
        "createdAt": str(peer.created_at_ms),
    }
    return [item for pair in fields.items() for item in pair]


def _from_hash(raw: dict[bytes, bytes]) -> Peer:
    f = {k.decode(): v.decode() for k, v in raw.items()}
    return Peer(
        name=f["name"],
        url=f["url"],
        outgoing_token=f["outgoingToken"],
        incoming_token_digest=f["incomingTokenDigest"],
        asset_code=f["assetCode"],
        asset_scale=int(f["assetScale"]),
        routes=tuple(msgspec.json.decode(f["routes"], type=list[str])),
        max_packet_amount=int(f["maxPacketAmount"]) if f.get("maxPacketAmount") else None,
        created_at_ms=int(f.get("createdAt") or 0),
    )


class PeerStore:
    """Peers in Redis, cached per process (see the module's docstring for invalidation)."""

    def __init__(self, client: aioredis.Redis, shards: ShardClients, *, ack_wait_seconds: float = ACK_WAIT_SECONDS) -> None:
        """`client`: the control plane's; `shards`: where the totals are."""
        self._client = client
        self._shards = shards
        self._create = client.register_script(_CREATE)
        self._delete = client.register_script(_DELETE)
        self._ack_wait = ack_wait_seconds
        self._live = False  # subscribed: the cache is kept current by change messages
        self._generation = 0  # bumped by every change message
        self._cached: RoutingTable | None = None
        self._loading: tuple[int, asyncio.Future] | None = None

    # ------------------------------------------------------------ writes

    async def create(self, peer: Peer) -> str:
        """'ok', or why not: 'name' (a peer has this name), 'token' (another peer has this
        incoming token), 'full' (PEERS_MAX peers)."""
        outcome = await self._create(
            keys=[keys.peer(peer.name), keys.PEERS, keys.PEER_TOKENS],
            args=[peer.name, peer.incoming_token_digest, PEERS_MAX, *_to_hash(peer)],
        )
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome == "ok":
            await self._changed()
        return outcome

    async def delete(self, name: str) -> bool:
        deleted = bool(await self._delete(keys=[keys.peer(name), keys.PEERS, keys.PEER_TOKENS], args=[name]))
        if deleted:
            await self._changed()
        return deleted

    async def _changed(self) -> None:
        """Tell every process, and wait (bounded) until each subscribed one has dropped its cache."""
        self._forget()
        change = os.urandom(8).hex()
        listeners = int(await self._client.publish(keys.PEERS_CHANNEL, change))
        deadline = time.monotonic() + self._ack_wait
        acks = keys.peers_acks(change)
        while listeners > 0:
            if int(await self._client.llen(acks)) >= listeners:
                break
            if time.monotonic() > deadline:
                log.warning("peer change %s: %d of %d processes did not confirm in time", change, await self._client.llen(acks), listeners)
                break
            await asyncio.sleep(0.002)
        await self._client.delete(acks)

    def _forget(self) -> None:
        self._generation += 1
        self._cached = None

    # ------------------------------------------------------------ reads

    async def get(self, name: str) -> Peer | None:
        raw = await self._client.hgetall(keys.peer(name))
        return _from_hash(raw) if raw else None

    async def load(self) -> list[Peer]:
        """Every peer, read from Redis now."""
        names = sorted(n.decode() for n in await self._client.smembers(keys.PEERS))
        if not names:
            return []
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.peer(name))
        return [_from_hash(raw) for raw in await pipe.execute() if raw]

    async def totals(self, names: list[str]) -> dict[str, Totals]:
        """Each peer's totals: the sums of the shards' (exact, as Python ints)."""
        if not names:
            return {}

        async def of_shard(shard: int) -> list:
            pipe = self._shards.of(shard).pipeline(transaction=False)
            for name in names:
                pipe.hmget(keys.peer_totals(name, shard), "sent", "received")
            return await pipe.execute()

        sent, received = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
        for found in await asyncio.gather(*(of_shard(n) for n in range(self._shards.count))):
            for name, (shard_sent, shard_received) in zip(names, found):
                sent[name] += int(shard_sent or 0)
                received[name] += int(shard_received or 0)
        return {name: Totals(sent[name], received[name]) for name in names}

    async def table(self) -> RoutingTable:
        """The peers as a routing table: the cached one while subscribed, else read now."""
        cached = self._cached
        if cached is not None and self._live:
            return cached
        generation = self._generation
        loading = self._loading
        if loading is None or loading[0] != generation:
            # One read at a time per generation: a burst of packets on a cold cache shares it.
            self._loading = loading = (generation, asyncio.ensure_future(self._read_table()))
        try:
            table = await asyncio.shield(loading[1])
        finally:
            if self._loading is loading and loading[1].done():
                self._loading = None  # a failed read is not remembered: the next lookup reads again
        if self._live and generation == self._generation:
            self._cached = table
        return table

    async def _read_table(self) -> RoutingTable:
        return RoutingTable(await self.load())

    async def route(self, address: str) -> Peer | None:
        return (await self.table()).route(address)

    async def peer_for_incoming_token(self, token: str) -> Peer | None:
        """The peer whose incoming token this is: one probe by the token's digest, so the
        time taken does not depend on how much of a secret a guess matches."""
        return (await self.table()).by_digest.get(token_digest(token))

    # ------------------------------------------------------------ invalidation

    async def listen(self) -> None:
        """Keep this process's cache current (run as a supervised background task)."""
        try:
            async with self._client.pubsub() as pubsub:
                await pubsub.subscribe(keys.PEERS_CHANNEL)
                while True:
                    # A bounded wait, not listen(): the client's socket timeout would end an
                    # idle listen() and leave the cache unmaintained while it resubscribes.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # From now on no change is missed: drop whatever was read before.
                        self._forget()
                        self._live = True
                    elif message["type"] == "message":
                        self._forget()
                        acks = keys.peers_acks(message["data"].decode())
                        pipe = self._client.pipeline(transaction=False)
                        pipe.rpush(acks, "1")
                        pipe.expire(acks, ACK_TTL_SECONDS)
                        await pipe.execute()
        finally:
            self._live = False
            self._forget()
