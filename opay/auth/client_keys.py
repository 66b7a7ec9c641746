"""A client's public keys: its wallet address's JWKS, local or fetched, cached briefly.

A wallet address under our public URL is looked up in-process, never over HTTP; any
other is fetched under the fetch policy (opay/net/fetch.py).
"""

from __future__ import annotations

import time

import msgspec

from opay.net.fetch import Fetcher, FetchUnavailable, FetchUnusable
from opay.persistence.wallet_addresses import Jwk, WalletAddressStore


class KeysUnavailable(Exception):
    """The client's wallet address could not be asked: an outage, not a bad signature."""


class ClientUnusable(Exception):
    """The client's wallet address cannot give keys (refused by policy, or a bad answer): its fault."""

    def __init__(self, wallet_address: str, reason: str) -> None:
        super().__init__(reason)
        self.wallet_address = wallet_address
        self.reason = reason


class _Jwks(msgspec.Struct):
    keys: list[dict]  # a key we cannot use (another kind, malformed) is skipped, not fatal


def _usable(raw: dict) -> Jwk | None:
    try:
        return msgspec.convert(raw, Jwk)
    except msgspec.ValidationError:
        return None


class ClientKeys:
    def __init__(
        self, *, public_url: str, wallets: WalletAddressStore, fetcher: Fetcher, cache_seconds: float
    ) -> None:
        self._prefix = public_url + "/"
        self._wallets = wallets
        self._fetcher = fetcher
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Jwk]]] = {}

    async def key(self, wallet_address_url: str, kid: str) -> Jwk | None:
        now = time.monotonic()
        hit = self._cache.get(wallet_address_url)
        if hit is None or hit[0] <= now:
            found = {jwk.kid: jwk for jwk in await self._fetch(wallet_address_url)}
            hit = (now + self._cache_seconds, found)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[wallet_address_url] = hit
        return hit[1].get(kid)

    def forget(self, wallet_address_url: str) -> None:
        self._cache.pop(wallet_address_url, None)

    async def _fetch(self, wallet_address_url: str) -> list[Jwk]:
        if wallet_address_url.startswith(self._prefix):
            path = wallet_address_url[len(self._prefix) :]
            wallet = await self._wallets.get(path)
            if wallet is not None and not wallet.active:
                # Its jwks.json is gone (404) for other servers too: it signs nothing more.
                raise ClientUnusable(wallet_address_url, "the wallet address is deactivated")
            return await self._wallets.keys_of(path)
        if "?" in wallet_address_url or "#" in wallet_address_url:
            raise ClientUnusable(wallet_address_url, "a wallet address has no query or fragment")
        try:
            jwks = await self._fetcher.fetch_json(f"{wallet_address_url}/jwks.json", _Jwks)
        except FetchUnavailable as error:
            raise KeysUnavailable(str(error)) from None
        except FetchUnusable as error:
            raise ClientUnusable(wallet_address_url, str(error)) from None
        return [jwk for jwk in map(_usable, jwks.keys) if jwk is not None]
