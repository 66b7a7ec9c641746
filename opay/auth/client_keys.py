"""A client's public keys: its wallet address's JWKS, local or fetched, cached briefly."""

from __future__ import annotations

import time

import httpx
import msgspec

from opay.persistence.wallet_addresses import Jwk, WalletAddressStore


class KeysUnavailable(Exception):
    """The client's wallet address could not be asked: an outage, not a bad signature."""


class _Jwks(msgspec.Struct):
    keys: list[Jwk]


_jwks_decoder = msgspec.json.Decoder(_Jwks)


class ClientKeys:
    def __init__(
        self, *, public_url: str, wallets: WalletAddressStore, http: httpx.AsyncClient, cache_seconds: float, timeout_seconds: float
    ) -> None:
        self._prefix = public_url + "/"
        self._wallets = wallets
        self._http = http
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
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
            return await self._wallets.keys_of(wallet_address_url[len(self._prefix) :])
        try:
            response = await self._http.get(f"{wallet_address_url}/jwks.json", timeout=self._timeout)
        except httpx.HTTPError as error:
            raise KeysUnavailable(str(error)) from None
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise KeysUnavailable(f"{wallet_address_url}/jwks.json answered {response.status_code}")
        try:
            return _jwks_decoder.decode(response.content).keys
        except msgspec.MsgspecError:
            return []
