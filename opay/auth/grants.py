"""The GNAP authorization server's store: grants and access tokens, kept in Redis.

Token values are never stored: the key is their SHA-256, so a leaked database holds no
usable token. Rotation and revocation are atomic, and every change is announced so the
resource servers' introspection caches drop the token at once.

The transitions themselves (pending -> approved | denied -> finalized) are pure functions
in opay/auth/grant_states.py; here each one is a compare-and-set (WATCH/MULTI on the
grant's key), so a decision is made once (the first one stands) and a grant is finalized
once, however many continuation requests race. A pending grant lives
`interaction_seconds` in Redis; once finalized it is kept like a non-interactive grant.

Every grant is listed, in the same write that stores it, in two indexes by creation time:
its client's, and each wallet address its access names (keys.grants_of_*). A cancel or
revoke takes it out in the same write; one that expired undecided is dropped from an
index when a listing meets it. Grants stored before the indexes existed are in none.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Awaitable, Callable, TypeVar

import msgspec
import redis
import redis.asyncio as aioredis

from opay.auth import grant_states as states
from opay.auth.access import AccessItem
from opay.auth.grant_states import (
    INACTIVE,
    INTERACTION_SECONDS,
    WAIT_SECONDS,
    ClientRef,
    Continued,
    Decided,
    Finish,
    Grant,
    Introspection,
    Token,
    digest,
    new_secret,
)
from opay.persistence import keys
from opay.persistence.positions import Collected, Position, Positions, collect

T = TypeVar("T")
# Optimistic transactions retried past this many concurrent changes are refused (503).
WATCH_ATTEMPTS = 16

_encoder = msgspec.msgpack.Encoder()
_grant_decoder = msgspec.msgpack.Decoder(Grant)
_token_decoder = msgspec.msgpack.Decoder(Token)


class GrantStore:
    def __init__(
        self, client: aioredis.Redis, token_seconds: int, interaction_seconds: int = INTERACTION_SECONDS, wait_seconds: int = WAIT_SECONDS
    ) -> None:
        assert token_seconds > 0 and interaction_seconds > 0 and wait_seconds >= 0
        self._client = client
        self._token_seconds = token_seconds
        self._interaction_seconds = interaction_seconds
        self._wait_seconds = wait_seconds
        self._on_revoke: list[Callable[[str], Awaitable[None] | None]] = []
        self._positions = Positions(client)

    def on_revoke(self, listener: Callable[[str], Awaitable[None] | None]) -> None:
        """Called with the digest of every token that stops being valid."""
        self._on_revoke.append(listener)

    async def issue(self, client: ClientRef, access: list[AccessItem], now_ms: int) -> tuple[Grant, str, Token, str]:
        """A finalized grant with its first token: (grant, token value, token, continue token)."""
        continue_token = new_secret()
        grant = states.issued(str(uuid.uuid4()), client, access, continue_token, now_ms)
        value = new_secret()
        token = states.new_token(str(uuid.uuid4()), grant, now_ms, self._token_seconds)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(keys.grant(grant.id), _encoder.encode(grant))
        self._index(pipe, grant)
        self._put_token(pipe, value, token)
        await pipe.execute()
        return grant, value, token, continue_token

    async def start(self, client: ClientRef, access: list[AccessItem], finish: Finish | None, now_ms: int) -> tuple[Grant, str]:
        """A pending grant awaiting the user's decision: (grant, continue token)."""
        continue_token = new_secret()
        grant = states.pending(
            str(uuid.uuid4()),
            client,
            access,
            finish,
            continue_token,
            now_ms,
            wait_seconds=self._wait_seconds,
            interaction_seconds=self._interaction_seconds,
        )
        pipe = self._client.pipeline(transaction=True)
        pipe.set(keys.grant(grant.id), _encoder.encode(grant), ex=self._interaction_seconds)
        self._index(pipe, grant)
        await pipe.execute()
        return grant, continue_token

    async def get(self, grant_id: str) -> Grant | None:
        raw = await self._client.get(keys.grant(grant_id))
        return None if raw is None else _grant_decoder.decode(raw)

    async def interactive(self, grant_id: str, nonce: str) -> Grant | None:
        """The interactive grant behind a consent page URL, only for the right nonce."""
        grant = await self.get(grant_id)
        if grant is None or not states.nonce_matches(grant, nonce):
            return None
        return grant

    async def decide(self, grant_id: str, approve: bool, now_ms: int, nonce: str | None = None) -> Decided | None:
        """Approve (with a fresh interact_ref) or deny a pending grant; the first decision
        stands. None: no such grant (or, given a nonce, not the right one)."""
        key = keys.grant(grant_id)

        async def attempt(pipe: aioredis.client.Pipeline) -> Decided | None:
            raw = await pipe.get(key)
            if raw is None:
                return None
            decided = states.decided(_grant_decoder.decode(raw), approve, now_ms, str(uuid.uuid4()), nonce)
            if decided is None or not decided.changed:
                return decided
            pipe.multi()
            pipe.set(key, _encoder.encode(decided.grant), keepttl=True)
            await pipe.execute()
            return decided

        return await self._optimistic([key], attempt)

    async def continue_grant(self, grant_id: str, continue_token: str, interact_ref: str | None, now_ms: int) -> Continued:
        """A continuation: with interact_ref after the finish redirect, or without (a poll).
        An approved grant is finalized here, once: its first access token and a new
        continue token are issued and the grant no longer expires."""
        key = keys.grant(grant_id)

        async def attempt(pipe: aioredis.client.Pipeline) -> Continued:
            raw = await pipe.get(key)
            if raw is None:
                raise states.unknown_continuation()
            grant = _grant_decoder.decode(raw)
            polled = states.continued(grant, continue_token, interact_ref, now_ms)
            if polled is not None:
                pipe.multi()
                pipe.set(key, _encoder.encode(polled), keepttl=True)
                await pipe.execute()
                return Continued(grant=polled)
            # Approved: finalize, once.
            new_continue = new_secret()
            finalized = states.finalized(grant, new_continue)
            value = new_secret()
            token = states.new_token(str(uuid.uuid4()), grant, now_ms, self._token_seconds)
            pipe.multi()
            pipe.set(key, _encoder.encode(finalized))  # no TTL any more
            self._put_token(pipe, value, token)
            await pipe.execute()
            return Continued(grant=finalized, token_value=value, token=token, continue_token=new_continue)

        return await self._optimistic([key], attempt)

    async def introspect(self, value: str, now_ms: int) -> Introspection:
        raw = await self._client.get(keys.token(digest(value)))
        if raw is None:
            return INACTIVE
        token = _token_decoder.decode(raw)
        # A token outlives its grant only through a race with a cancel; it must not work.
        if token.expires_at_ms <= now_ms or not await self._client.exists(keys.grant(token.grant_id)):
            return INACTIVE
        return Introspection(active=True, grant=token.grant_id, access=token.access, client=token.client)

    async def token(self, token_id: str, value: str) -> Token | None:
        """The token behind a management URL, only for the one who holds its value."""
        stored_digest = await self._client.get(keys.token_by_id(token_id))
        if stored_digest is None or not secrets.compare_digest(stored_digest.decode(), digest(value)):
            return None
        raw = await self._client.get(keys.token(digest(value)))
        return None if raw is None else _token_decoder.decode(raw)

    async def rotate(self, old: Token, old_value: str, now_ms: int) -> tuple[str, Token] | None:
        """A successor for `old`, which stops working; None when `old` is already gone
        (rotated, revoked, or its grant cancelled), so a token chain never forks."""
        value = new_secret()
        token = msgspec.structs.replace(old, id=str(uuid.uuid4()), expires_at_ms=now_ms + self._token_seconds * 1000)

        def change(pipe: aioredis.client.Pipeline) -> None:
            self._drop_token(pipe, old, old_value)
            self._put_token(pipe, value, token)

        if not await self._change_token(old, old_value, change):
            return None
        return value, token

    async def revoke(self, token: Token, value: str) -> bool:
        """False when the token was already gone."""
        return await self._change_token(token, value, lambda pipe: self._drop_token(pipe, token, value))

    async def _change_token(self, token: Token, value: str, change: Callable[[aioredis.client.Pipeline], None]) -> bool:
        """Apply `change` only while the token and its grant both exist (compare-and-set:
        a concurrent rotate, revoke or cancel makes this one retry and see it gone)."""
        token_key, grant_key = keys.token(digest(value)), keys.grant(token.grant_id)

        async def attempt(pipe: aioredis.client.Pipeline) -> bool:
            present = await pipe.exists(token_key, keys.token_by_id(token.id), grant_key)
            if present != 3:
                return False
            pipe.multi()
            change(pipe)
            await pipe.execute()
            return True

        changed = await self._optimistic([token_key, keys.token_by_id(token.id), grant_key, self._grant_tokens(token.grant_id)], attempt)
        if changed:
            await self._announce(digest(value))
        return changed

    async def grant(self, grant_id: str, continue_token: str) -> Grant | None:
        raw = await self._client.get(keys.grant(grant_id))
        if raw is None:
            return None
        grant = _grant_decoder.decode(raw)
        return grant if states.continue_token_matches(grant, continue_token) else None

    async def cancel(self, grant: Grant, continue_token: str) -> bool:
        """The grant (pending, decided or finalized) and every token issued under it stop
        working. A continue token replaced meanwhile (the grant was finalized) no longer
        cancels. False: nothing was cancelled."""
        return await self._end(grant.id, lambda current: states.continue_token_matches(current, continue_token)) is not None

    async def revoke_grant(self, grant_id: str) -> tuple[Grant, int] | None:
        """The operator's revoke: a cancel that needs no continue token. Answers the grant
        as it was and how many tokens stopped working; None: no such grant."""
        return await self._end(grant_id, lambda current: True)

    async def _end(self, grant_id: str, allowed: Callable[[Grant], bool]) -> tuple[Grant, int] | None:
        """The grant and every token issued under it stop working, if `allowed` says so of
        the grant as it is. Compare-and-set on the grant and its token set: a token issued
        or rotated meanwhile is not left behind. Announced, so introspection caches drop
        the tokens at once."""
        grant_key, tokens_key = keys.grant(grant_id), self._grant_tokens(grant_id)

        async def attempt(pipe: aioredis.client.Pipeline) -> tuple[Grant, list[str]] | None:
            raw = await pipe.get(grant_key)
            current = None if raw is None else _grant_decoder.decode(raw)
            if current is None or not allowed(current):
                return None
            digests = [d.decode() for d in await pipe.smembers(tokens_key)]
            pipe.multi()
            pipe.delete(grant_key, tokens_key)
            for token_digest in digests:
                pipe.delete(keys.token(token_digest))
            self._unindex(pipe, current)
            await pipe.execute()
            return current, digests

        ended = await self._optimistic([grant_key, tokens_key], attempt)
        if ended is None:
            return None
        for token_digest in ended[1]:
            await self._announce(token_digest)
        return ended[0], len(ended[1])

    async def listed(self, index: str, cursor: Position | None, direction: str, count: int, state: str | None) -> Collected[Grant]:
        """A page of an index (keys.grants_of_client / grants_of_wallet), in creation order,
        of the grants in `state` (None: any). Entries whose grant has expired are dropped
        from the index on the way: a grant and its entries are written and removed
        together, so an entry without its grant is one that expired, for good."""

        async def load(entries: list[Position]) -> list[Grant | None]:
            raws = await self._client.mget([keys.grant(entry.member) for entry in entries])
            gone = [entry.member for entry, raw in zip(entries, raws) if raw is None]
            if gone:
                await self._client.zrem(index, *gone)
            found = [None if raw is None else _grant_decoder.decode(raw) for raw in raws]
            return [grant if grant is not None and state in (None, grant.state) else None for grant in found]

        return await collect(self._positions.pager(index), cursor, direction, count, load)

    async def _optimistic(self, watched: list[str], attempt: Callable[[aioredis.client.Pipeline], Awaitable[T]]) -> T:
        """Read, decide and write `watched` keys atomically (WATCH/MULTI/EXEC), again if a
        concurrent writer got there first, a bounded number of times: past that the
        contention is an outage (503), not a reason to spin."""
        async with self._client.pipeline(transaction=True) as pipe:
            for _ in range(WATCH_ATTEMPTS):
                try:
                    await pipe.watch(*watched)
                    return await attempt(pipe)
                except aioredis.WatchError:
                    await pipe.reset()
        raise redis.TimeoutError(f"{WATCH_ATTEMPTS} concurrent changes in a row to {watched[0]}")

    def _indexes(self, grant: Grant) -> list[str]:
        wallets = {item.identifier for item in grant.access if item.identifier is not None}
        return [keys.grants_of_client(grant.client.identity), *(keys.grants_of_wallet(wallet) for wallet in sorted(wallets))]

    def _index(self, pipe: aioredis.client.Pipeline, grant: Grant) -> None:
        for index in self._indexes(grant):
            pipe.zadd(index, {grant.id: grant.created_at_ms})

    def _unindex(self, pipe: aioredis.client.Pipeline, grant: Grant) -> None:
        for index in self._indexes(grant):
            pipe.zrem(index, grant.id)

    def _grant_tokens(self, grant_id: str) -> str:
        return f"{keys.grant(grant_id)}:tokens"

    def _put_token(self, pipe: aioredis.client.Pipeline, value: str, token: Token) -> None:
        token_digest = digest(value)
        ttl = self._token_seconds
        pipe.set(keys.token(token_digest), _encoder.encode(token), ex=ttl)
        pipe.set(keys.token_by_id(token.id), token_digest, ex=ttl)
        pipe.sadd(self._grant_tokens(token.grant_id), token_digest)

    def _drop_token(self, pipe: aioredis.client.Pipeline, token: Token, value: str) -> None:
        pipe.delete(keys.token(digest(value)), keys.token_by_id(token.id))
        pipe.srem(self._grant_tokens(token.grant_id), digest(value))

    async def _announce(self, token_digest: str) -> None:
        for listener in self._on_revoke:
            result = listener(token_digest)
            if result is not None:
                await result
        # Other front-end processes listen here and drop the token from their caches.
        await self._client.publish(keys.REVOCATIONS_CHANNEL, token_digest)
