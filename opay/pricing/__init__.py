"""Exchange rates and sending fees, as quotes need them: the rates and fees adapters.

Rates come from the operator-set table in Redis (PUT /rates/{base} on the operator API)
or, with OPAY_RATES_URL, from `GET {url}?base=XXX` answering {"base", "rates": {...}}.
Either way they are cached for a short TTL and read exactly: JSON numbers are decoded
as decimals, never through a float.
"""

from __future__ import annotations

import time
from decimal import Decimal
from fractions import Fraction

import httpx
import msgspec
import redis.asyncio as aioredis

from opay.domain.errors import Invalid
from opay.domain.exchange import FeeSchedule, parse_rate
from opay.persistence import keys


class RatesUnavailable(Exception):
    pass


class _RatesDocument(msgspec.Struct):
    rates: dict[str, Decimal]
    base: str | None = None


_rates_decoder = msgspec.json.Decoder(_RatesDocument)
_fees_decoder = msgspec.msgpack.Decoder(FeeSchedule)


def _texts(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A stored rate table: asset code -> the rate as the operator wrote it, by code."""
    return {code.decode(): text.decode() for code, text in sorted(raw.items())}


class Pricing:
    def __init__(self, client: aioredis.Redis, http: httpx.AsyncClient, *, rates_url: str, cache_seconds: float, timeout_seconds: float = 2.0) -> None:
        self._client = client
        self._http = http
        self._rates_url = rates_url
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._tables: dict[str, tuple[float, dict[str, Fraction]]] = {}

    async def rate(self, base: str, quote: str) -> Fraction:
        """Units of `quote` per unit of `base`."""
        if base == quote:
            return Fraction(1)
        found = (await self._table(base)).get(quote)
        if found is None and not self._rates_url:
            inverse = (await self._table(quote)).get(base)
            found = None if inverse is None else 1 / inverse
        if found is None:
            raise Invalid("no_exchange_rate", f"no exchange rate from {base} to {quote}", {"base": base, "quote": quote})
        return found

    async def fees(self, asset_code: str) -> FeeSchedule:
        raw = await self._client.hget(keys.FEES, asset_code)
        return FeeSchedule() if raw is None else _fees_decoder.decode(raw)

    async def set_rates(self, base: str, rates: dict[str, Fraction], texts: dict[str, str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(keys.rates(base))
        if texts:
            pipe.hset(keys.rates(base), mapping=texts)
            pipe.zadd(keys.RATE_BASES, {base: 0})
        else:
            pipe.zrem(keys.RATE_BASES, base)
        await pipe.execute()
        self._tables.pop(base, None)

    async def set_fees(self, asset_code: str, schedule: FeeSchedule) -> None:
        await self._client.hset(keys.FEES, asset_code, msgspec.msgpack.encode(schedule))

    async def table(self, base: str) -> dict[str, str]:
        """The operator-set table from `base`, each rate as it was written; {} when none."""
        return _texts(await self._client.hgetall(keys.rates(base)))

    async def tables(self, limit: int) -> dict[str, dict[str, str]]:
        """The first `limit` operator-set tables by base (those set since bases were listed)."""
        bases = [base.decode() for base in await self._client.zrange(keys.RATE_BASES, 0, limit - 1)]
        pipe = self._client.pipeline(transaction=False)
        for base in bases:
            pipe.hgetall(keys.rates(base))
        found = zip(bases, await pipe.execute())
        return {base: _texts(raw) for base, raw in found if raw}

    async def all_fees(self, limit: int) -> dict[str, FeeSchedule]:
        """Up to `limit` assets' fee schedules, by asset code (an asset without one pays none)."""
        found: dict[bytes, bytes] = {}
        cursor = 0
        while len(found) < limit:
            cursor, page = await self._client.hscan(keys.FEES, cursor, count=limit)
            found.update(page)
            if cursor == 0:
                break
        return {code.decode(): _fees_decoder.decode(raw) for code, raw in sorted(found.items())[:limit]}

    async def _table(self, base: str) -> dict[str, Fraction]:
        now = time.monotonic()
        hit = self._tables.get(base)
        if hit is not None and hit[0] > now:
            return hit[1]
        table = await (self._fetch(base) if self._rates_url else self._stored(base))
        if len(self._tables) > 1000:
            self._tables.clear()
        self._tables[base] = (now + self._cache_seconds, table)
        return table

    async def _stored(self, base: str) -> dict[str, Fraction]:
        return {code: parse_rate(text) for code, text in (await self.table(base)).items()}

    async def _fetch(self, base: str) -> dict[str, Fraction]:
        try:
            response = await self._http.get(self._rates_url, params={"base": base}, timeout=self._timeout)
            response.raise_for_status()
            document = _rates_decoder.decode(response.content)
        except (httpx.HTTPError, msgspec.MsgspecError) as error:
            raise RatesUnavailable(f"rates from {self._rates_url}: {error}") from None
        return {code: parse_rate(str(value)) for code, value in document.rates.items()}
