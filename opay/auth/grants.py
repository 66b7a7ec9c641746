"""The GNAP authorization server's state: grants and access tokens, kept in Redis.

Token values are never stored: the key is their SHA-256, so a leaked database holds no
usable token. Rotation and revocation are atomic, and every change is announced so the
resource servers' introspection caches drop the token at once.

An interactive grant goes pending -> approved | denied -> finalized (tokens issued).
Every state change is a compare-and-set (WATCH/MULTI on the grant's key), so a decision
is made once (the first one stands) and a grant is finalized once, however many
continuation requests race. A pending grant lives `interaction_seconds` in Redis; once
finalized it is kept like a non-interactive grant.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from typing import Awaitable, Callable, Literal, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec
import redis
import redis.asyncio as aioredis

from opay.auth.access import AccessItem
from opay.persistence import keys
from opay.persistence.wallet_addresses import Jwk

T = TypeVar("T")
# Optimistic transactions retried past this many concurrent changes are refused (503).
WATCH_ATTEMPTS = 16


class ClientRef(msgspec.Struct, frozen=True, omit_defaults=True):
    """A client is its wallet address, or (directed identity) just its key."""

    walletAddress: str | None = None
    jwk: Jwk | None = None

    @property
    def identity(self) -> str:
        if self.walletAddress is not None:
            return self.walletAddress
        assert self.jwk is not None
        return f"jwk:{jwk_thumbprint(self.jwk)}"


class Finish(msgspec.Struct, frozen=True):
    """The client's `interact.finish`: where to send the user back, and its nonce."""

    method: Literal["redirect"]
    uri: str
    nonce: str


GrantState = Literal["pending", "approved", "denied", "finalized"]


class Interaction(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    nonce: str  # in the consent page's URL: whoever holds it may see and decide the grant
    finish_nonce: str  # the AS nonce (`interact.finish` of the response), an input of the hash
    finish: Finish | None = None
    wait_seconds: int
    next_poll_ms: int  # a poll before this instant is `too_fast`
    expires_at_ms: int
    interact_ref: str | None = None  # set on approval
    decided_at_ms: int | None = None


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    client: ClientRef
    access: list[AccessItem]
    continue_token_digest: str
    created_at_ms: int
    # Grants stored before interaction existed decode as finalized, non-interactive.
    state: GrantState = "finalized"
    interaction: Interaction | None = None


class Token(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    grant_id: str
    client: ClientRef
    access: list[AccessItem]
    expires_at_ms: int


class Introspection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The token-introspection contract: {active, grant, access, client}."""

    active: bool
    grant: str | None = None
    access: list[AccessItem] = []
    client: ClientRef | None = None


INACTIVE = Introspection(active=False)

WAIT_SECONDS = 1
POLL_SLACK_MS = 100  # a poll this early is forgiven: timers are coarse
INTERACTION_SECONDS = 600


class ContinuationRefused(Exception):
    """A continuation request that cannot proceed, by its GNAP error code:
    `invalid_continuation`, `request_denied` or `too_fast`."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class Continued(msgspec.Struct, frozen=True, kw_only=True):
    """A continuation's outcome: still pending, or finalized with its first token."""

    grant: Grant
    token_value: str | None = None
    token: Token | None = None
    continue_token: str | None = None


class Decided(msgspec.Struct, frozen=True):
    """The grant after a decision; `changed` is False when an earlier decision stood."""

    grant: Grant
    changed: bool

_encoder = msgspec.msgpack.Encoder()
_grant_decoder = msgspec.msgpack.Decoder(Grant)
_token_decoder = msgspec.msgpack.Decoder(Token)


def digest(secret_value: str) -> str:
    return hashlib.sha256(secret_value.encode()).hexdigest()


def jwk_thumbprint(jwk: Jwk) -> str:
    # RFC 7638 for OKP keys: the required members, lexicographic, no whitespace.
    canonical = msgspec.json.encode({"crv": jwk.crv, "kty": jwk.kty, "x": jwk.x})
    return hashlib.sha256(canonical).hexdigest()[:32]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def interaction_hash(client_nonce: str, finish_nonce: str, interact_ref: str, grant_endpoint: str) -> str:
    """GNAP (RFC 9635 §4.2.3): SHA-256 over the four values joined by LF, encoded as
    base64url without padding. (Rafiki sends standard base64 with padding instead.)"""
    data = "\n".join((client_nonce, finish_nonce, interact_ref, grant_endpoint)).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def with_query(uri: str, params: dict[str, str]) -> str:
    """`uri` with `params` appended to its query (after any query it already has)."""
    parts = urlsplit(uri)
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def finish_redirect(grant: Grant, grant_endpoint: str) -> str | None:
    """Where the user goes back to the client after the decision, if the client said."""
    interaction = grant.interaction
    if interaction is None or interaction.finish is None:
        return None
    if grant.state == "denied":
        return with_query(interaction.finish.uri, {"result": "grant_rejected"})
    if interaction.interact_ref is None:
        return None
    hash_ = interaction_hash(interaction.finish.nonce, interaction.finish_nonce, interaction.interact_ref, grant_endpoint)
    return with_query(interaction.finish.uri, {"hash": hash_, "interact_ref": interaction.interact_ref})


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

    def on_revoke(self, listener: Callable[[str], Awaitable[None] | None]) -> None:
        """Called with the digest of every token that stops being valid."""
        self._on_revoke.append(listener)

    async def issue(self, client: ClientRef, access: list[AccessItem], now_ms: int) -> tuple[Grant, str, Token, str]:
        """A finalized grant with its first token: (grant, token value, token, continue token)."""
        continue_token = new_secret()
        grant = Grant(
            id=str(uuid.uuid4()), client=client, access=access, continue_token_digest=digest(continue_token), created_at_ms=now_ms
        )
        value = new_secret()
        token = Token(id=str(uuid.uuid4()), grant_id=grant.id, client=client, access=access, expires_at_ms=now_ms + self._token_seconds * 1000)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(keys.grant(grant.id), _encoder.encode(grant))
        self._put_token(pipe, value, token)
        await pipe.execute()
        return grant, value, token, continue_token

    async def start(self, client: ClientRef, access: list[AccessItem], finish: Finish | None, now_ms: int) -> tuple[Grant, str]:
        """A pending grant awaiting the user's decision: (grant, continue token)."""
        continue_token = new_secret()
        interaction = Interaction(
            nonce=new_secret(),
            finish_nonce=new_secret(),
            finish=finish,
            wait_seconds=self._wait_seconds,
            next_poll_ms=now_ms + self._wait_seconds * 1000,
            expires_at_ms=now_ms + self._interaction_seconds * 1000,
        )
        grant = Grant(
            id=str(uuid.uuid4()),
            client=client,
            access=access,
            continue_token_digest=digest(continue_token),
            created_at_ms=now_ms,
            state="pending",
            interaction=interaction,
        )
        await self._client.set(keys.grant(grant.id), _encoder.encode(grant), ex=self._interaction_seconds)
        return grant, continue_token

    async def get(self, grant_id: str) -> Grant | None:
        raw = await self._client.get(keys.grant(grant_id))
        return None if raw is None else _grant_decoder.decode(raw)

    async def interactive(self, grant_id: str, nonce: str) -> Grant | None:
        """The interactive grant behind a consent page URL, only for the right nonce."""
        grant = await self.get(grant_id)
        if grant is None or grant.interaction is None or not secrets.compare_digest(grant.interaction.nonce.encode(), nonce.encode()):
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
            grant = _grant_decoder.decode(raw)
            interaction = grant.interaction
            if nonce is not None and (
                interaction is None or not secrets.compare_digest(interaction.nonce.encode(), nonce.encode())
            ):
                return None
            if grant.state != "pending" or interaction is None:
                return Decided(grant, changed=False)
            decided = msgspec.structs.replace(
                grant,
                state="approved" if approve else "denied",
                interaction=msgspec.structs.replace(
                    interaction, interact_ref=str(uuid.uuid4()) if approve else None, decided_at_ms=now_ms
                ),
            )
            pipe.multi()
            pipe.set(key, _encoder.encode(decided), keepttl=True)
            await pipe.execute()
            return Decided(decided, changed=True)

        return await self._optimistic([key], attempt)

    async def continue_grant(self, grant_id: str, continue_token: str, interact_ref: str | None, now_ms: int) -> Continued:
        """A continuation: with interact_ref after the finish redirect, or without (a poll).
        An approved grant is finalized here, once: its first access token and a new
        continue token are issued and the grant no longer expires."""
        key = keys.grant(grant_id)

        async def attempt(pipe: aioredis.client.Pipeline) -> Continued:
            raw = await pipe.get(key)
            grant = None if raw is None else _grant_decoder.decode(raw)
            if grant is None or not secrets.compare_digest(grant.continue_token_digest, digest(continue_token)):
                raise ContinuationRefused("invalid_continuation", "unknown grant or continuation token")
            interaction = grant.interaction
            if grant.state == "finalized" or interaction is None:
                raise ContinuationRefused("invalid_continuation", "the grant is already finalized: there is nothing to continue")
            if grant.state == "denied":
                raise ContinuationRefused("request_denied", "the grant was denied")
            if interact_ref is not None:
                expected = interaction.interact_ref
                if expected is None or not secrets.compare_digest(expected.encode(), interact_ref.encode()):
                    raise ContinuationRefused("invalid_continuation", "interact_ref does not match this grant's interaction")
            elif grant.state == "pending":
                # Only a poll that could learn nothing new is too fast: once the
                # grant is decided, the next poll gets the answer at once.
                if now_ms < interaction.next_poll_ms - POLL_SLACK_MS:
                    raise ContinuationRefused(
                        "too_fast", f"poll at most every {interaction.wait_seconds} s (the continue response's wait)"
                    )
                polled = msgspec.structs.replace(
                    grant,
                    interaction=msgspec.structs.replace(
                        interaction, next_poll_ms=now_ms + interaction.wait_seconds * 1000
                    ),
                )
                pipe.multi()
                pipe.set(key, _encoder.encode(polled), keepttl=True)
                await pipe.execute()
                return Continued(grant=polled)
            # Approved: finalize, once.
            new_continue = new_secret()
            finalized = msgspec.structs.replace(grant, state="finalized", continue_token_digest=digest(new_continue))
            value = new_secret()
            token = Token(
                id=str(uuid.uuid4()),
                grant_id=grant.id,
                client=grant.client,
                access=grant.access,
                expires_at_ms=now_ms + self._token_seconds * 1000,
            )
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
        if not secrets.compare_digest(grant.continue_token_digest, digest(continue_token)):
            return None
        return grant

    async def cancel(self, grant: Grant, continue_token: str) -> bool:
        """The grant (pending, decided or finalized) and every token issued under it stop
        working. Compare-and-set on the grant and its token set: a token issued or
        rotated meanwhile is not left behind, and a continue token replaced meanwhile
        (the grant was finalized) no longer cancels. False: nothing was cancelled."""
        grant_key, tokens_key = keys.grant(grant.id), self._grant_tokens(grant.id)

        async def attempt(pipe: aioredis.client.Pipeline) -> list[str] | None:
            raw = await pipe.get(grant_key)
            current = None if raw is None else _grant_decoder.decode(raw)
            if current is None or not secrets.compare_digest(current.continue_token_digest, digest(continue_token)):
                return None
            digests = [d.decode() for d in await pipe.smembers(tokens_key)]
            pipe.multi()
            pipe.delete(grant_key, tokens_key)
            for token_digest in digests:
                pipe.delete(keys.token(token_digest))
            await pipe.execute()
            return digests

        digests = await self._optimistic([grant_key, tokens_key], attempt)
        for token_digest in digests or []:
            await self._announce(token_digest)
        return digests is not None

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
