"""Many concurrent operator credits against capped incoming payments: the cap holds, the
sum adds up, and every idempotency key replays to its first outcome."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tests.conftest import make_world

pytestmark = pytest.mark.anyio

CREDITS = 1000
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)


def outcome(response: httpx.Response) -> tuple[int, str, int, bool]:
    """(status, refusal code or '', receivedAmount, completed) of a credit answer."""
    body = response.json()
    if response.status_code == 200:
        return 200, "", int(body["receivedAmount"]["value"]), body["completed"]
    assert response.status_code == 409, response.text
    view = body["error"]["details"]
    return 409, body["error"]["code"], int(view["receivedAmount"]["value"]), view["completed"]


async def credit_all(world, credits: list[tuple[str, int, str]]) -> list[httpx.Response]:
    return await asyncio.gather(*(world.operator.credit(url, str(amount), key) for url, amount, key in credits))


async def received(world, token: str, url: str) -> tuple[int, bool]:
    answer = await world.client.request("GET", url, token=token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return int(body["receivedAmount"]["value"]), body["completed"]


async def check_capped_payments(world, caps: list[int], credits_per_payment: int, rng: random.Random) -> None:
    token = await world.token()
    urls = []
    for cap in caps:
        created = await world.create_payment(token, incomingAmount={"value": str(cap), "assetCode": "USD", "assetScale": 2})
        assert created.status_code == 201, created.text
        urls.append(created.json()["id"])
    credits = [(url, rng.randint(1, 20), f"{n}-{i}-{rng.getrandbits(64):x}") for n, url in enumerate(urls) for i in range(credits_per_payment)]
    rng.shuffle(credits)  # interleave the payments so batches mix entities

    first = await credit_all(world, credits)
    outcomes = [outcome(response) for response in first]
    for n, (url, cap) in enumerate(zip(urls, caps)):
        mine = [(amount, result) for (u, amount, _), result in zip(credits, outcomes) if u == url]
        accepted = sum(amount for amount, (status, *_rest) in mine if status == 200)
        assert accepted <= cap
        assert any(status == 409 for _, (status, *_rest) in mine), "the cap must be hit partway"
        for amount, (status, code, seen, completed) in mine:
            assert seen <= cap
            if status == 409:
                assert code in ("cap_exceeded", "completed"), code
                # Refused whole: it could not fit into what was there when it ran.
                assert code == "completed" or seen + amount > cap
        total, completed = await received(world, token, url)
        assert total == accepted
        assert completed is (total == cap)
        # Accepted credits ran one at a time: their receivedAmounts are distinct running sums.
        running = sorted(seen for _, (status, _c, seen, _d) in mine if status == 200)
        assert len(set(running)) == len(running) and (not running or running[-1] == total)

    replays = await credit_all(world, credits)
    assert [outcome(response) for response in replays] == outcomes
    assert [response.json() for response in replays] == [response.json() for response in first]
    for url, cap in zip(urls, caps):
        total, _ = await received(world, token, url)
        assert total == sum(amount for (u, amount, _), (status, *_r) in zip(credits, outcomes) if u == url and status == 200)


async def test_one_capped_payment_under_1000_concurrent_credits(server) -> None:
    async with httpx.AsyncClient(timeout=60, limits=LIMITS) as http:
        world = await make_world(server, http)
        # Random amounts 1..20 average 10.5: about 10,500 offered against a cap of 5,000.
        await check_capped_payments(world, [5000], CREDITS, random.Random(1))


async def test_several_capped_payments_at_once(server) -> None:
    async with httpx.AsyncClient(timeout=60, limits=LIMITS) as http:
        world = await make_world(server, http)
        # 8 payments x 150 credits, mixed in one stream: batches carry many entities.
        await check_capped_payments(world, [777, 1000, 1200, 1500, 900, 1111, 1300, 1000], 150, random.Random(2))
