"""Wallet addresses and their public keys. Operator-managed, low rate: plain Redis, no actor.

The asset never changes once created; the public name, the owner and whether it is active
are operator-editable."""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from opay.domain.amounts import Asset
from opay.persistence import keys


class WalletAddress(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    asset: Asset
    public_name: str | None = None
    # Who may decide its consent on the built-in page: the login proxy's user name. None: nobody.
    owner: str | None = None
    created_at_ms: int
    # False: deactivated by the operator; it takes no new grants or payments (its existing
    # payments still settle). Snapshots written before this field read as active.
    active: bool = True


class Jwk(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kid: str
    alg: str
    kty: str
    crv: str
    x: str
    use: str | None = None


_encoder = msgspec.msgpack.Encoder()
_wallet_decoder = msgspec.msgpack.Decoder(WalletAddress)
_jwk_decoder = msgspec.msgpack.Decoder(Jwk)


class WalletAddressStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def create(self, wallet: WalletAddress) -> bool:
        """False when the path is taken: creation never overwrites."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(keys.wallet_address(wallet.path), _encoder.encode(wallet), nx=True)
        pipe.zadd(keys.WALLET_ADDRESSES, {wallet.path: wallet.created_at_ms}, nx=True)
        created, _ = await pipe.execute()
        return bool(created)

    async def get(self, path: str) -> WalletAddress | None:
        raw = await self._client.get(keys.wallet_address(path))
        return None if raw is None else _wallet_decoder.decode(raw)

    async def update(self, path: str, changes: dict) -> WalletAddress | None:
        """The wallet address with `changes` (fields of WalletAddress) applied, or None if
        there is none. Compare-and-set: two concurrent edits of different fields both stand."""
        key = keys.wallet_address(path)
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    updated = msgspec.structs.replace(_wallet_decoder.decode(raw), **changes)
                    pipe.multi()
                    pipe.set(key, _encoder.encode(updated))
                    await pipe.execute()
                    return updated
                except WatchError:
                    continue

    async def list(self, limit: int) -> list[WalletAddress]:
        paths = await self._client.zrange(keys.WALLET_ADDRESSES, 0, limit - 1)
        if not paths:
            return []
        raws = await self._client.mget([keys.wallet_address(p.decode()) for p in paths])
        return [_wallet_decoder.decode(raw) for raw in raws if raw is not None]

    async def add_key(self, path: str, jwk: Jwk) -> bool:
        """False when the kid is already in use for this wallet address."""
        return bool(await self._client.hsetnx(keys.wallet_keys(path), jwk.kid, _encoder.encode(jwk)))

    async def revoke_key(self, path: str, kid: str) -> bool:
        return bool(await self._client.hdel(keys.wallet_keys(path), kid))

    async def keys_of(self, path: str) -> list[Jwk]:
        raws = await self._client.hgetall(keys.wallet_keys(path))
        return [_jwk_decoder.decode(raw) for _, raw in sorted(raws.items())]
