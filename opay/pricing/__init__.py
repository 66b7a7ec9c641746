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
        await pipe.execute()
        self._tables.pop(base, None)

    async def set_fees(self, asset_code: str, schedule: FeeSchedule) -> None:
        await self._client.hset(keys.FEES, asset_code, msgspec.msgpack.encode(schedule))

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
        raw = await self._client.hgetall(keys.rates(base))
        return {code.decode(): parse_rate(text.decode()) for code, text in raw.items()}

    async def _fetch(self, base: str) -> dict[str, Fraction]:
        try:
            response = await self._http.get(self._rates_url, params={"base": base}, timeout=self._timeout)
            response.raise_for_status()
            document = _rates_decoder.decode(response.content)
        except (httpx.HTTPError, msgspec.MsgspecError) as error:
            raise RatesUnavailable(f"rates from {self._rates_url}: {error}") from None
        return {code: parse_rate(str(value)) for code, value in document.rates.items()}
