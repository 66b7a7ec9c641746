"""Every bad input gets a clear, spec-shaped error and stores nothing.

Covers the public create endpoint and the operator's credit endpoint, against the real
session server. "Stores nothing" is checked twice: through the API (a list-all listing
of the receiver's payments) and in Redis (entity, index and journal keys by count).
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.anyio

USD2 = {"assetCode": "USD", "assetScale": 2}
def list_all(world) -> list[dict]:
    # Listing every client's payments is consented (interactive) and names the wallet address.
    return [{"type": "incoming-payment", "actions": ["list-all", "read-all"], "identifier": world.receiver["id"]}]


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The status, and a body that is exactly {"error": {code, description, details?}}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "description"} <= set(error) <= {"code", "description", "details"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["description"], str) and error["description"], error
    if "details" in error:
        assert isinstance(error["details"], dict), error
    if code is not None:
        assert error["code"] == code, error
    return error


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def in_seconds(seconds: float) -> str:
    return rfc3339(datetime.now(timezone.utc) + timedelta(seconds=seconds))


class Footprint:
    """What the server holds: the receiver's payments as the API lists them, and Redis key counts."""

    def __init__(self, world, list_token: str, redis_client: aioredis.Redis) -> None:
        self.world = world
        self.list_token = list_token
        self.redis = redis_client

    async def listed(self) -> list[dict]:
        wallet = urllib.parse.quote(self.world.receiver["id"], safe="")
        url = f"{self.world.server.public_url}/incoming-payments?wallet-address={wallet}&first=100"
        response = await self.world.client.request("GET", url, token=self.list_token)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    async def keys(self, pattern: str) -> int:
        return len([key async for key in self.redis.scan_iter(match=pattern, count=1000)])

    async def snapshot(self) -> dict:
        return {
            "listed": [p["id"] for p in await self.listed()],
            **{pattern: await self.keys(pattern) for pattern in ("opay:e:*", "opay:ix:*", "opay:j:*")},
        }

    @asynccontextmanager
    async def unchanged(self):
        before = await self.snapshot()
        yield
        assert await self.snapshot() == before


@pytest.fixture
async def store(world, server):
    client = aioredis.Redis.from_url(server.redis_url)
    try:
        yield Footprint(world, await world.consented_token(list_all(world)), client)
    finally:
        await client.aclose()


@pytest.fixture
async def token(world) -> str:
    return await world.token()


def amount(value) -> dict:
    return {"value": value, **USD2}


# --- create incoming payment -------------------------------------------------------


async def post_raw(world, token: str, body: bytes):
    return await world.client.request("POST", f"{world.server.public_url}/incoming-payments", body=body, token=token)


@pytest.mark.parametrize(
    "body",
    [
        b'{"walletAddress": ',
        b"not json at all",
        b"\xff\xfe{}",
        b"",
        b"[]",
        b"null",
        b'"a string"',
    ],
    ids=["truncated", "text", "not-utf8", "empty", "array", "null", "string"],
)
async def test_create_rejects_a_body_that_is_not_a_json_object(world, token, store, body) -> None:
    async with store.unchanged():
        assert_error(await post_raw(world, token, body), 400)


async def test_create_rejects_malformed_json_with_invalid_json(world, token, store) -> None:
    async with store.unchanged():
        assert_error(await post_raw(world, token, b'{"walletAddress": "x",}'), 400, "invalid_json")


async def test_create_rejects_an_unknown_top_level_field(world, token, store) -> None:
    async with store.unchanged():
        error = assert_error(await world.create_payment(token, receiver="http://elsewhere/x"), 400, "invalid_request")
    assert "receiver" in error["description"]


@pytest.mark.parametrize(
    "value",
    ["-5", "abc", "1.5", "", " 5", "+5", "05", "1e3", "0x10", "18446744073709551616", "99999999999999999999999"],
)
async def test_create_rejects_an_incoming_amount_that_is_not_a_uint64_string(world, token, store, value) -> None:
    async with store.unchanged():
        error = assert_error(await world.create_payment(token, incomingAmount=amount(value)), 400, "invalid_amount")
    assert error["details"]["field"] == "incomingAmount.value"


@pytest.mark.parametrize("value", [100, 1.5, -5, None, True, ["100"]], ids=["int", "float", "negative", "null", "bool", "list"])
async def test_create_rejects_a_non_string_amount_value(world, token, store, value) -> None:
    async with store.unchanged():
        error = assert_error(await world.create_payment(token, incomingAmount=amount(value)), 400, "invalid_request")
    assert "value" in error["description"]


async def test_create_rejects_a_zero_incoming_amount(world, token, store) -> None:
    async with store.unchanged():
        error = assert_error(await world.create_payment(token, incomingAmount=amount("0")), 400, "invalid_amount")
    assert error["details"]["field"] == "incomingAmount"


async def test_create_accepts_the_uint64_maximum(world, token) -> None:
    """The boundary next to the refusals above: 2**64 - 1 is a valid amount."""
    created = await world.create_payment(token, incomingAmount=amount(str(2**64 - 1)))
    assert created.status_code == 201, created.text
    assert created.json()["incomingAmount"]["value"] == str(2**64 - 1)


@pytest.mark.parametrize(
    "asset",
    [{"assetCode": "EUR", "assetScale": 2}, {"assetCode": "USD", "assetScale": 3}, {"assetCode": "usd", "assetScale": 2}],
    ids=["code", "scale", "code-case"],
)
async def test_create_rejects_an_amount_in_another_asset(world, token, store, asset) -> None:
    async with store.unchanged():
        error = assert_error(
            await world.create_payment(token, incomingAmount={"value": "100", **asset}), 400, "invalid_asset"
        )
    assert error["details"] == {"field": "incomingAmount", "assetCode": "USD", "assetScale": 2}


@pytest.mark.parametrize(
    "incoming_amount",
    [
        {"value": "100", "assetCode": "USD", "assetScale": 256},
        {"value": "100", "assetCode": "USD", "assetScale": -1},
        {"value": "100", "assetCode": "USD", "assetScale": "2"},
        {"value": "100", "assetCode": "", "assetScale": 2},
        {"value": "100", "assetScale": 2},
        {"value": "100", "assetCode": "USD"},
        {"assetCode": "USD", "assetScale": 2},
        "100",
    ],
    ids=["scale-256", "scale-negative", "scale-string", "code-empty", "no-code", "no-scale", "no-value", "not-object"],
)
async def test_create_rejects_a_malformed_amount(world, token, store, incoming_amount) -> None:
    async with store.unchanged():
        assert_error(await world.create_payment(token, incomingAmount=incoming_amount), 400, "invalid_request")


async def test_create_rejects_expires_at_in_the_past(world, token, store) -> None:
    async with store.unchanged():
        error = assert_error(await world.create_payment(token, expiresAt=in_seconds(-60)), 400, "invalid_expires_at")
    assert error["details"]["field"] == "expiresAt"


async def test_create_rejects_expires_at_beyond_the_maximum(world, token, store) -> None:
    async with store.unchanged():
        error = assert_error(
            await world.create_payment(token, expiresAt=in_seconds(30 * 24 * 3600 + 3600)), 400, "invalid_expires_at"
        )
    assert error["details"] == {"field": "expiresAt", "maxSeconds": 30 * 24 * 3600}


@pytest.mark.parametrize(
    "expires_at",
    [
        "tomorrow",
        "2030-01-01",
        "2030-01-01T00:00:00",
        "2030-13-01T00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-01-01T25:00:00Z",
        "2030-01-01T00:00Z",
        "20300101T000000Z",
        "2030-W01-1T00:00:00Z",
        "2030-01-01T00:00:00+0100",
        "2030-01-01T00:00:00+24:00",
        "2030-01-01 00:00:00Z",
        "",
        "9999999999",
    ],
    ids=[
        "word", "date-only", "no-offset", "month-13", "feb-30", "hour-25", "no-seconds",
        "iso-basic", "iso-week", "offset-no-colon", "offset-24h", "space", "empty", "digits",
    ],
)
async def test_create_rejects_expires_at_that_is_not_a_date_time(world, token, store, expires_at) -> None:
    async with store.unchanged():
        error = assert_error(await world.create_payment(token, expiresAt=expires_at), 400, "invalid_date_time")
    assert error["details"]["field"] == "expiresAt"


async def test_create_accepts_rfc3339_forms_with_any_offset(world, token) -> None:
    """The boundary next to the refusals above: offsets, lowercase and long fractions are RFC 3339."""
    moment = datetime.now(timezone.utc) + timedelta(hours=1)
    for text in (
        moment.astimezone(timezone(timedelta(hours=-5))).isoformat(timespec="milliseconds"),
        rfc3339(moment).replace("T", "t").replace("Z", "z"),
        moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z",
    ):
        created = await world.create_payment(token, expiresAt=text)
        assert created.status_code == 201, (text, created.text)
        assert created.json()["expiresAt"] == rfc3339(moment), text


async def test_create_rejects_a_numeric_expires_at(world, token, store) -> None:
    async with store.unchanged():
        assert_error(await world.create_payment(token, expiresAt=1893456000), 400, "invalid_request")


async def test_create_rejects_a_missing_wallet_address(world, token, store) -> None:
    async with store.unchanged():
        response = await world.client.request(
            "POST", f"{world.server.public_url}/incoming-payments", json={"incomingAmount": amount("100")}, token=token
        )
        error = assert_error(response, 400, "invalid_request")
    assert "walletAddress" in error["description"]


@pytest.mark.parametrize(
    "wallet_address",
    ["https://elsewhere.example/alice", "{public}/nobody-{rand}", "{public}", "{public}/", "not a url"],
    ids=["foreign", "unknown-path", "bare-origin", "origin-slash", "not-url"],
)
async def test_create_rejects_a_wallet_address_that_is_not_ours(world, token, store, wallet_address) -> None:
    wallet_address = wallet_address.format(public=world.server.public_url, rand=uuid.uuid4().hex)
    async with store.unchanged():
        assert_error(await world.create_payment(token, walletAddress=wallet_address), 400, "unknown_wallet_address")


async def test_create_rejects_a_wallet_address_that_is_not_a_string(world, token, store) -> None:
    async with store.unchanged():
        assert_error(await world.create_payment(token, walletAddress=42), 400, "invalid_request")


async def test_create_rejects_metadata_that_is_not_an_object(world, token, store) -> None:
    async with store.unchanged():
        assert_error(await world.create_payment(token, metadata=["a"]), 400, "invalid_request")


async def test_create_rejects_a_body_over_the_size_limit(world, token, store) -> None:
    big = {"walletAddress": world.receiver["id"], "metadata": {"pad": "x" * (64 * 1024)}}
    async with store.unchanged():
        response = await world.client.request("POST", f"{world.server.public_url}/incoming-payments", json=big, token=token)
        assert_error(response, 413, "body_too_large")


# --- operator credits -----------------------------------------------------------------


async def open_payment(world, token: str, **body) -> dict:
    created = await world.create_payment(token, **body)
    assert created.status_code == 201, created.text
    return created.json()


async def received(world, token: str, payment: dict) -> tuple[str, bool]:
    fetched = await world.client.request("GET", payment["id"], token=token)
    assert fetched.status_code == 200, fetched.text
    return fetched.json()["receivedAmount"]["value"], fetched.json()["completed"]


async def credit_raw(world, body: dict):
    return await world.operator.post("/credits", body)


@pytest.mark.parametrize(
    "value",
    ["-5", "abc", "1.5", "", "05", "18446744073709551616", 100, None, 1.5],
    ids=["negative", "word", "decimal", "empty", "leading-zero", "over-uint64", "int", "null", "float"],
)
async def test_credit_rejects_a_bad_amount(world, token, store, value) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"))
    async with store.unchanged():
        response = await credit_raw(world, {"incomingPayment": payment["id"], "amount": value, "idempotencyKey": "k"})
        assert_error(response, 400, "invalid_amount" if isinstance(value, str) else "invalid_request")
    assert await received(world, token, payment) == ("0", False)


async def test_credit_rejects_a_zero_amount(world, token, store) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"))
    async with store.unchanged():
        assert_error(await world.operator.credit(payment["id"], "0", "zero"), 400, "invalid_amount")
    assert await received(world, token, payment) == ("0", False)
    # The refused key was not consumed: it still takes a real credit.
    assert (await world.operator.credit(payment["id"], "5", "zero")).status_code == 200


async def test_credit_to_an_unknown_incoming_payment_is_404(world, store) -> None:
    unknown = f"{world.server.public_url}/incoming-payments/{uuid.uuid4()}"
    async with store.unchanged():
        assert_error(await world.operator.credit(unknown, "5", "k"), 404, "not_found")


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "",
        "{public}/incoming-payments/",
        "{public}/incoming-payments/not-a-uuid",
        "{public}/incoming-payments/{uuid}/complete",
        "{public}/quotes/{uuid}",
        "http://elsewhere.example/incoming-payments/{uuid}",
        "{public}/incoming-payments/------------------------------------",
    ],
    ids=["text", "empty", "no-id", "not-uuid", "suffix", "quote", "foreign", "dashes"],
)
async def test_credit_rejects_a_malformed_incoming_payment_url(world, store, url) -> None:
    url = url.format(public=world.server.public_url, uuid=uuid.uuid4())
    async with store.unchanged():
        assert_error(await world.operator.credit(url, "5", "k"), 400, "invalid_incoming_payment")


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "5"},
        {"amount": "5", "idempotencyKey": ""},
        {"amount": "5", "idempotencyKey": "k" * 257},
        {"amount": "5", "idempotencyKey": 7},
        {"idempotencyKey": "k"},
        {"amount": "5", "idempotencyKey": "k", "extra": 1},
    ],
    ids=["no-key", "empty-key", "long-key", "numeric-key", "no-amount", "unknown-field"],
)
async def test_credit_rejects_a_malformed_body(world, token, store, body) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"))
    async with store.unchanged():
        assert_error(await credit_raw(world, {"incomingPayment": payment["id"], **body}), 400, "invalid_request")
    assert await received(world, token, payment) == ("0", False)


async def test_credit_rejects_malformed_json(world, store) -> None:
    async with store.unchanged():
        response = await world.operator.http.post(
            f"{world.server.operator_url}/credits", content=b'{"amount": "5",', headers=world.operator.headers
        )
        assert_error(response, 400, "invalid_json")


async def test_credit_without_the_operator_token_is_401(world, token, store) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"))
    async with store.unchanged():
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"GNAP {world.server.operator_token}"}):
            response = await world.operator.http.post(
                f"{world.server.operator_url}/credits",
                json={"incomingPayment": payment["id"], "amount": "5", "idempotencyKey": "k"},
                headers=headers,
            )
            assert_error(response, 401)
    assert await received(world, token, payment) == ("0", False)


async def test_credit_over_the_cap_is_refused_whole(world, token, store) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"))
    assert (await world.operator.credit(payment["id"], "60", "first")).status_code == 200
    refused = await world.operator.credit(payment["id"], "41", "second")
    error = assert_error(refused, 409, "cap_exceeded")
    assert error["details"]["receivedAmount"]["value"] == "60"
    assert await received(world, token, payment) == ("60", False)
    # A replay of the refused key answers the same refusal and still moves nothing.
    assert_error(await world.operator.credit(payment["id"], "41", "second"), 409, "cap_exceeded")
    assert await received(world, token, payment) == ("60", False)


async def test_credit_after_expiry_is_refused(world, token, store) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"), expiresAt=in_seconds(1.5))
    deadline = datetime.fromisoformat(payment["expiresAt"].replace("Z", "+00:00"))
    await asyncio.sleep(max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds()) + 0.1)
    error = assert_error(await world.operator.credit(payment["id"], "5", "late"), 409, "expired")
    assert error["details"]["receivedAmount"]["value"] == "0"
    assert await received(world, token, payment) == ("0", False)


async def test_credit_after_completion_is_refused(world, token, store) -> None:
    full = await open_payment(world, token, incomingAmount=amount("100"))
    assert (await world.operator.credit(full["id"], "100", "all")).json()["completed"] is True
    assert_error(await world.operator.credit(full["id"], "1", "more"), 409, "completed")
    assert await received(world, token, full) == ("100", True)

    closed = await open_payment(world, token)  # no incomingAmount: completed by the client
    completed = await world.client.request("POST", f"{closed['id']}/complete", token=token)
    assert completed.status_code == 200, completed.text
    assert_error(await world.operator.credit(closed["id"], "1", "after-complete"), 409, "completed")
    assert await received(world, token, closed) == ("0", True)


async def test_reused_idempotency_key_with_another_amount_is_409(world, token, store) -> None:
    payment = await open_payment(world, token, incomingAmount=amount("100"))
    assert (await world.operator.credit(payment["id"], "10", "key")).status_code == 200
    error = assert_error(await world.operator.credit(payment["id"], "20", "key"), 409, "idempotency_key_reused")
    assert error["details"] == {"amount": "10"}
    assert await received(world, token, payment) == ("10", False)
    # The same amount under the same key is a replay: answered, not applied again.
    replay = await world.operator.credit(payment["id"], "10", "key")
    assert replay.status_code == 200 and replay.json()["receivedAmount"]["value"] == "10"
    assert await received(world, token, payment) == ("10", False)


# --- listing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "first=5",
        "wallet-address=",
        "wallet-address={wa}&first=0",
        "wallet-address={wa}&first=101",
        "wallet-address={wa}&first=-1",
        "wallet-address={wa}&first=abc",
        "wallet-address={wa}&first=1.5",
        "wallet-address={wa}&last=0",
        "wallet-address={wa}&first=1&last=1",
        "wallet-address={wa}&cursor=",
    ],
    ids=["no-wallet", "empty-wallet", "first-0", "first-101", "first-negative", "first-word", "first-decimal", "last-0", "both", "empty-cursor"],
)
async def test_list_rejects_a_bad_query(world, token, query) -> None:
    wallet = urllib.parse.quote(world.receiver["id"], safe="")
    url = f"{world.server.public_url}/incoming-payments?{query.format(wa=wallet)}"
    assert_error(await world.client.request("GET", url, token=token), 400, "invalid_request")


async def test_list_rejects_a_cursor_that_is_not_in_the_list(world, token) -> None:
    await open_payment(world, token)
    wallet = urllib.parse.quote(world.receiver["id"], safe="")
    url = f"{world.server.public_url}/incoming-payments?wallet-address={wallet}&cursor={uuid.uuid4()}"
    assert_error(await world.client.request("GET", url, token=token), 400, "invalid_cursor")
