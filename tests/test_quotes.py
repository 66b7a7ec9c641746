"""Quotes through the public API: pricing, exchange, fees, expiry, visibility, bad input."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest

from opay.domain import exchange, quote
from opay.domain.amounts import Asset

pytestmark = pytest.mark.anyio

QUOTE_ACCESS = [{"type": "quote", "actions": ["create", "read"]}]


def usd(value: int | str) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def receiver_payment(world, **body) -> dict:
    created = await world.create_payment(await world.token(), **body)
    assert created.status_code == 201, created.text
    return created.json()


async def post_quote(world, token: str, **body):
    return await world.client.request("POST", f"{world.server.public_url}/quotes", json={"method": "ilp", **body}, token=token)


async def test_same_asset_quotes_fixed_send_fixed_receive_and_remainder(world) -> None:
    payment = await receiver_payment(world, incomingAmount=usd(100))
    assert (await world.operator.credit(payment["id"], "30", "part")).status_code == 200
    token = await world.token(QUOTE_ACCESS)
    sender = world.receiver["id"]

    remainder = await post_quote(world, token, walletAddress=sender, receiver=payment["id"])
    assert remainder.status_code == 201, remainder.text
    body = remainder.json()
    assert set(body) == {"id", "walletAddress", "receiver", "receiveAmount", "debitAmount", "method", "expiresAt", "createdAt"}
    assert body["receiveAmount"] == usd(70) and body["debitAmount"] == usd(70)
    assert body["id"].startswith(f"{world.server.public_url}/quotes/")

    fixed_send = await post_quote(world, token, walletAddress=sender, receiver=payment["id"], debitAmount=usd(25))
    assert fixed_send.json()["debitAmount"] == usd(25) and fixed_send.json()["receiveAmount"] == usd(25)
    fixed_receive = await post_quote(world, token, walletAddress=sender, receiver=payment["id"], receiveAmount=usd(40))
    assert fixed_receive.json()["receiveAmount"] == usd(40)

    fetched = await world.client.request("GET", body["id"], token=token)
    assert fetched.status_code == 200 and fetched.json() == body


async def test_cross_currency_with_fees_is_exact(world) -> None:
    code = f"X{uuid.uuid4().hex[:6].upper()}"  # a sender asset of this test's own, so rates and fees are ours alone
    sender = await world.operator.wallet_address(f"payer-{uuid.uuid4().hex[:8]}", code, 3)
    assert (await world.http.put(f"{world.server.operator_url}/rates/{code}", json={"USD": "0.9137"}, headers=world.server.operator_headers)).status_code == 200
    fees = await world.http.put(f"{world.server.operator_url}/fees/{code}", json={"fixed": "7", "basisPoints": 125}, headers=world.server.operator_headers)
    assert fees.status_code == 200, fees.text
    payment = await receiver_payment(world)
    token = await world.token(QUOTE_ACCESS)
    schedule = exchange.FeeSchedule(fixed=7, basis_points=125)
    source, destination = Asset(code, 3), Asset("USD", 2)

    for debit in (1_000, 123_457, 10**15):
        answer = await post_quote(world, token, walletAddress=sender["id"], receiver=payment["id"], debitAmount={"value": str(debit), "assetCode": code, "assetScale": 3})
        assert answer.status_code == 201, answer.text
        expected = quote.price(debit=debit, receive=None, rate=Fraction(9137, 10000), sender=source, receiver=destination, fees=schedule, remaining=None)
        assert answer.json()["debitAmount"]["value"] == str(debit)
        assert answer.json()["receiveAmount"] == usd(expected.receive)

    answer = await post_quote(world, token, walletAddress=sender["id"], receiver=payment["id"], receiveAmount=usd(5_000))
    expected = quote.price(debit=None, receive=5_000, rate=Fraction(9137, 10000), sender=source, receiver=destination, fees=schedule, remaining=None)
    assert answer.json()["debitAmount"] == {"value": str(expected.debit), "assetCode": code, "assetScale": 3}

    # The inverse direction is read from the same table, as the exact reciprocal.
    into_code = await world.client.request(
        "POST", f"{world.server.public_url}/incoming-payments", json={"walletAddress": sender["id"]}, token=await world.token()
    )
    assert into_code.status_code == 201, into_code.text
    answer = await post_quote(world, token, walletAddress=world.receiver["id"], receiver=into_code.json()["id"], debitAmount=usd(10_000))
    expected = quote.price(debit=10_000, receive=None, rate=Fraction(10000, 9137), sender=destination, receiver=source, fees=exchange.FeeSchedule(), remaining=None)
    assert answer.json()["receiveAmount"] == {"value": str(expected.receive), "assetCode": code, "assetScale": 3}
    missing = await world.operator.wallet_address(f"nowhere-{uuid.uuid4().hex[:8]}", f"Y{uuid.uuid4().hex[:6].upper()}", 2)
    into_missing = await world.client.request(
        "POST", f"{world.server.public_url}/incoming-payments", json={"walletAddress": missing["id"]}, token=await world.token()
    )
    no_rate = await post_quote(world, token, walletAddress=world.receiver["id"], receiver=into_missing.json()["id"], debitAmount=usd(100))
    assert no_rate.status_code == 400 and no_rate.json()["error"]["code"] == "no_exchange_rate"


async def test_quote_expiry_is_bounded_by_the_window_and_the_receiver(world) -> None:
    soon = (datetime.now(timezone.utc) + timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    payment = await receiver_payment(world, expiresAt=soon)
    token = await world.token(QUOTE_ACCESS)
    answer = await post_quote(world, token, walletAddress=world.receiver["id"], receiver=payment["id"], receiveAmount=usd(1))
    assert parse(answer.json()["expiresAt"]) == parse(payment["expiresAt"])
    later = await receiver_payment(world)
    answer = await post_quote(world, token, walletAddress=world.receiver["id"], receiver=later["id"], receiveAmount=usd(1))
    window = parse(answer.json()["expiresAt"]) - parse(answer.json()["createdAt"])
    assert window == timedelta(seconds=300)


async def test_only_the_client_that_quoted_sees_the_quote_unless_read_all(world) -> None:
    payment = await receiver_payment(world)
    token = await world.token(QUOTE_ACCESS)
    created = (await post_quote(world, token, walletAddress=world.receiver["id"], receiver=payment["id"], receiveAmount=usd(5))).json()
    other = await world.new_client("other")
    other_token = await world.token(QUOTE_ACCESS, client=other)
    assert (await other.request("GET", created["id"], token=other_token)).status_code == 404
    read_all = await world.token([{"type": "quote", "actions": ["read-all"]}], client=other)
    assert (await other.request("GET", created["id"], token=read_all)).status_code == 200


@pytest.mark.parametrize(
    "change, status, code",
    [
        ({"debitAmount": usd(5), "receiveAmount": usd(5)}, 400, "invalid_request"),
        ({"debitAmount": {"value": "5", "assetCode": "EUR", "assetScale": 2}}, 400, "invalid_asset"),
        ({"receiveAmount": {"value": "5", "assetCode": "USD", "assetScale": 3}}, 400, "invalid_asset"),
        ({"receiveAmount": usd(0)}, 400, "invalid_amount"),
        ({"receiveAmount": usd(101)}, 400, "invalid_amount"),
        ({"debitAmount": usd("-1")}, 400, "invalid_amount"),
        ({"method": "card"}, 400, "invalid_request"),
        ({"receiver": "https://elsewhere.example/incoming-payments/1"}, 400, "invalid_receiver"),  # resolved there: no such host
        ({"receiver": "https://elsewhere.example/alice"}, 400, "invalid_receiver"),
        ({"receiver": "RECEIVER/../x"}, 400, "invalid_receiver"),
        ({"walletAddress": "https://elsewhere.example/alice"}, 400, "unknown_wallet_address"),
        ({"surprise": 1}, 400, "invalid_request"),
    ],
)
async def test_bad_quote_requests(world, change, status, code) -> None:
    payment = await receiver_payment(world, incomingAmount=usd(100))
    token = await world.token(QUOTE_ACCESS)
    body = {"walletAddress": world.receiver["id"], "receiver": payment["id"], **change}
    if body["receiver"] == "RECEIVER/../x":
        body["receiver"] = payment["id"] + "/../x"
    answer = await post_quote(world, token, **body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


async def test_receiver_that_no_longer_accepts_money_cannot_be_quoted(world) -> None:
    payment = await receiver_payment(world, incomingAmount=usd(10))
    assert (await world.operator.credit(payment["id"], "10", "all")).json()["completed"] is True
    token = await world.token(QUOTE_ACCESS)
    answer = await post_quote(world, token, walletAddress=world.receiver["id"], receiver=payment["id"], debitAmount=usd(1))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_receiver"
