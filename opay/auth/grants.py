"""The GNAP authorization server's state: grants and access tokens, kept in Redis.

Token values are never stored: the key is their SHA-256, so a leaked database holds no
usable token. Rotation and revocation are atomic, and every change is announced so the
resource servers' introspection caches drop the token at once.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis

from opay.auth.access import AccessItem
from opay.persistence import keys
from opay.persistence.wallet_addresses import Jwk


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


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    client: ClientRef
    access: list[AccessItem]
    continue_token_digest: str
    created_at_ms: int


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


class GrantStore:
    def __init__(self, client: aioredis.Redis, token_seconds: int) -> None:
        assert token_seconds > 0
        self._client = client
        self._token_seconds = token_seconds
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

    async def introspect(self, value: str, now_ms: int) -> Introspection:
        raw = await self._client.get(keys.token(digest(value)))
        if raw is None:
            return INACTIVE
        token = _token_decoder.decode(raw)
        if token.expires_at_ms <= now_ms:
            return INACTIVE
        return Introspection(active=True, grant=token.grant_id, access=token.access, client=token.client)

    async def token(self, token_id: str, value: str) -> Token | None:
        """The token behind a management URL, only for the one who holds its value."""
        stored_digest = await self._client.get(keys.token_by_id(token_id))
        if stored_digest is None or not secrets.compare_digest(stored_digest.decode(), digest(value)):
            return None
        raw = await self._client.get(keys.token(digest(value)))
        return None if raw is None else _token_decoder.decode(raw)

    async def rotate(self, old: Token, old_value: str, now_ms: int) -> tuple[str, Token]:
        value = new_secret()
        token = msgspec.structs.replace(old, id=str(uuid.uuid4()), expires_at_ms=now_ms + self._token_seconds * 1000)
        pipe = self._client.pipeline(transaction=True)
        self._drop_token(pipe, old, old_value)
        self._put_token(pipe, value, token)
        await pipe.execute()
        await self._announce(digest(old_value))
        return value, token

    async def revoke(self, token: Token, value: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        self._drop_token(pipe, token, value)
        await pipe.execute()
        await self._announce(digest(value))

    async def grant(self, grant_id: str, continue_token: str) -> Grant | None:
        raw = await self._client.get(keys.grant(grant_id))
        if raw is None:
            return None
        grant = _grant_decoder.decode(raw)
        if not secrets.compare_digest(grant.continue_token_digest, digest(continue_token)):
            return None
        return grant

    async def cancel(self, grant: Grant) -> None:
        """The grant and every token issued under it stop working."""
        digests = [d.decode() for d in await self._client.smembers(self._grant_tokens(grant.id))]
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(keys.grant(grant.id), self._grant_tokens(grant.id))
        for token_digest in digests:
            pipe.delete(keys.token(token_digest))
        await pipe.execute()
        for token_digest in digests:
            await self._announce(token_digest)

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
