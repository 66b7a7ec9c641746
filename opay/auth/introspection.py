"""The resource server's view of a token: the authorization server's answer, cached briefly.

Only active answers are cached, for a few seconds, and a revocation drops the entry at
once (in this process directly, in others through Redis pub/sub). An authorization
server that cannot be reached is an outage, reported as such, never as a bad token.
"""

from __future__ import annotations

import time

import httpx
import msgspec
import redis

from opay.auth.grant_states import Introspection, digest
from opay.auth.grants import GrantStore
from opay.clock import now_ms


class IntrospectionUnavailable(Exception):
    pass


_decoder = msgspec.json.Decoder(Introspection)


class Introspector:
    def __init__(
        self,
        *,
        local: GrantStore | None,
        url: str,
        bearer: str,
        http: httpx.AsyncClient,
        cache_seconds: float,
        timeout_seconds: float,
        cache_max: int = 100_000,
    ) -> None:
        assert local is not None or url, "introspection needs the local grant store or a URL"
        self._local = local
        self._url = url
        self._bearer = bearer
        self._http = http
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._cache_max = cache_max
        self._cache: dict[str, tuple[float, Introspection]] = {}

    async def introspect(self, value: str) -> Introspection:
        key = digest(value)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        answer = await self._ask(value)
        if answer.active and self._cache_seconds > 0:
            if len(self._cache) >= self._cache_max:
                self._cache.clear()
            self._cache[key] = (now + self._cache_seconds, answer)
        return answer

    def forget(self, token_digest: str) -> None:
        self._cache.pop(token_digest, None)

    async def _ask(self, value: str) -> Introspection:
        if not self._url:
            assert self._local is not None
            try:
                return await self._local.introspect(value, now_ms())
            except redis.RedisError as error:
                raise IntrospectionUnavailable(str(error)) from None
        try:
            response = await self._http.post(
                self._url,
                json={"access_token": value},
                headers={"Authorization": f"Bearer {self._bearer}"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as error:
            raise IntrospectionUnavailable(str(error)) from None
        if response.status_code != 200:
            raise IntrospectionUnavailable(f"introspection answered {response.status_code}")
        try:
            return _decoder.decode(response.content)
        except msgspec.MsgspecError as error:
            raise IntrospectionUnavailable(f"introspection answer is malformed: {error}") from None
