"""Outgoing payments: from a quote or not, grant limits under concurrency, settlement, funding."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import make_world
from tests.support import OpayServer

pytestmark = pytest.mark.anyio

QUOTE_ACCESS = [{"type": "quote", "actions": ["create", "read"]}]
OP_FIELDS = {"id", "walletAddress", "quoteId", "failed", "receiver", "receiveAmount", "debitAmount", "sentAmount", "metadata", "createdAt"}


def usd(value: int | str) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Payer:
    """A sending wallet with a quote token; the receiver is the world's own wallet."""

    def __init__(self, world, sender: dict, quote_token: str) -> None:
        self.world = world
        self.sender = sender
        self.quote_token = quote_token

    async def incoming(self, **body) -> dict:
        created = await self.world.create_payment(await self.world.token(), **body)
        assert created.status_code == 201, created.text
        return created.json()

    async def quote(self, receiver: str, **amounts) -> dict:
        answer = await self.world.client.request(
            "POST",
            f"{self.world.server.public_url}/quotes",
            json={"walletAddress": self.sender["id"], "receiver": receiver, "method": "ilp", **amounts},
            token=self.quote_token,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()

    async def pay(self, token: str, **body) -> httpx.Response:
        return await self.world.client.request(
            "POST", f"{self.world.server.public_url}/outgoing-payments", json={"walletAddress": self.sender["id"], **body}, token=token
        )

    async def settled(self, token: str, payment_id: str, timeout: float = 20.0) -> dict:
        with anyio.fail_after(timeout):
            while True:
                current = (await self.world.client.request("GET", payment_id, token=token)).json()
                if current["failed"] or current["sentAmount"]["value"] != "0":
                    return current
                await anyio.sleep(0.05)


async def make_payer(world) -> Payer:
    sender = await world.operator.wallet_address(f"sender-{uuid.uuid4().hex[:8]}", "USD", 2, "Sender")
    return Payer(world, sender, await world.token(QUOTE_ACCESS))


@pytest.fixture
async def payer(world) -> Payer:
    return await make_payer(world)


async def test_pay_from_a_quote_and_settle_locally(payer: Payer) -> None:
    incoming = await payer.incoming(incomingAmount=usd(500))
    quote = await payer.quote(incoming["id"], receiveAmount=usd(500))
    token = await payer.world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
    created = await payer.pay(token, quoteId=quote["id"], metadata={"order": "A-1"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["quoteId"] == quote["id"] and body["receiver"] == incoming["id"]
    assert body["debitAmount"] == quote["debitAmount"] and body["receiveAmount"] == quote["receiveAmount"]
    assert body["grantSpentDebitAmount"] == quote["debitAmount"]
    done = await payer.settled(token, body["id"])
    assert set(done) <= OP_FIELDS and not done["failed"]
    assert done["sentAmount"] == quote["debitAmount"]  # no fees configured for USD here
    received = await payer.world.client.request("GET", incoming["id"], token=await payer.world.token())
    assert received.json()["receivedAmount"] == quote["receiveAmount"] and received.json()["completed"] is True

    again = await payer.pay(token, quoteId=quote["id"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "quote_used"
    listed = await payer.world.client.request(
        "GET", f"{payer.world.server.public_url}/outgoing-payments?wallet-address={payer.sender['id']}&first=10", token=token
    )
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["result"]] == [body["id"]]
    assert set(listed.json()["result"][0]) <= OP_FIELDS


async def test_pay_without_a_quote(payer: Payer) -> None:
    incoming = await payer.incoming()
    token = await payer.world.outgoing_token({"debitAmount": usd(300)}, wallet=payer.sender)
    created = await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(120))
    assert created.status_code == 201, created.text
    assert "quoteId" not in created.json()
    done = await payer.settled(token, created.json()["id"])
    assert done["receiveAmount"] == usd(120) and not done["failed"]
    spent = await payer.world.client.request("GET", f"{payer.world.server.public_url}/outgoing-payment-grant", token=token)
    assert spent.status_code == 200 and spent.json() == {"spentDebitAmount": usd(120), "spentReceiveAmount": None}


async def test_concurrent_creations_never_pass_the_grant_limit(payer: Payer) -> None:
    incoming = await payer.incoming()
    limit = 2_000
    token = await payer.world.outgoing_token({"debitAmount": usd(limit)}, wallet=payer.sender)
    amounts = [random.randint(1, 40) for _ in range(200)]
    quotes = [await payer.quote(incoming["id"], debitAmount=usd(amount)) for amount in amounts]
    answers: list[httpx.Response] = [None] * len(quotes)  # type: ignore[list-item]

    async def create(n: int) -> None:
        answers[n] = await payer.pay(token, quoteId=quotes[n]["id"])

    async with anyio.create_task_group() as group:
        for n in range(len(quotes)):
            group.start_soon(create, n)
    accepted = [amounts[n] for n, answer in enumerate(answers) if answer.status_code == 201]
    refused = [answer for answer in answers if answer.status_code != 201]
    assert sum(accepted) <= limit
    assert sum(amounts) > limit and refused, "the test must push past the limit"
    assert all(answer.status_code == 403 and answer.json()["error"]["code"] == "grant_limit_exceeded" for answer in refused)
    spent = await payer.world.client.request("GET", f"{payer.world.server.public_url}/outgoing-payment-grant", token=token)
    assert spent.json()["spentDebitAmount"] == usd(sum(accepted))
    # A refused payment left its quote usable: it can still back a payment under a roomier grant.
    roomy = await payer.world.outgoing_token({"debitAmount": usd(10_000)}, wallet=payer.sender)
    refused_quote = next(quotes[n] for n, answer in enumerate(answers) if answer.status_code != 201)
    assert (await payer.pay(roomy, quoteId=refused_quote["id"])).status_code == 201


async def test_settlement_failure_fails_the_payment_and_gives_the_grant_share_back(payer: Payer) -> None:
    incoming = await payer.incoming(incomingAmount=usd(100))
    token = await payer.world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
    first = await payer.quote(incoming["id"], receiveAmount=usd(60))
    second = await payer.quote(incoming["id"], receiveAmount=usd(60))
    ok = await payer.pay(token, quoteId=first["id"])
    assert not (await payer.settled(token, ok.json()["id"]))["failed"]
    doomed = await payer.pay(token, quoteId=second["id"])
    assert doomed.status_code == 201
    result = await payer.settled(token, doomed.json()["id"])
    assert result["failed"] is True and result["sentAmount"]["value"] == "0"
    with anyio.fail_after(15):
        while True:
            spent = await payer.world.client.request("GET", f"{payer.world.server.public_url}/outgoing-payment-grant", token=token)
            if spent.json()["spentDebitAmount"] == usd(60):
                break
            await anyio.sleep(0.05)
    received = await payer.world.client.request("GET", incoming["id"], token=await payer.world.token())
    assert received.json()["receivedAmount"] == usd(60)


async def test_quote_rules(payer: Payer) -> None:
    soon = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=2))
    incoming = await payer.incoming(expiresAt=soon)
    quote = await payer.quote(incoming["id"], receiveAmount=usd(5))
    token = await payer.world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
    await anyio.sleep(2.2)
    expired = await payer.pay(token, quoteId=quote["id"])
    assert expired.status_code == 409 and expired.json()["error"]["code"] == "quote_expired"

    other = await payer.incoming()
    foreign_sender = await make_payer(payer.world)
    foreign_quote = await foreign_sender.quote(other["id"], receiveAmount=usd(5))
    wrong_wallet = await payer.pay(token, quoteId=foreign_quote["id"])
    assert wrong_wallet.status_code == 400 and wrong_wallet.json()["error"]["code"] == "invalid_quote"
    unknown = await payer.pay(token, quoteId=f"{payer.world.server.public_url}/quotes/{uuid.uuid4()}")
    assert unknown.status_code == 404
    both = await payer.pay(token, quoteId=foreign_quote["id"], incomingPayment=other["id"], debitAmount=usd(5))
    assert both.status_code == 400
    wrong_asset = await payer.pay(token, incomingPayment=other["id"], debitAmount={"value": "5", "assetCode": "EUR", "assetScale": 2})
    assert wrong_asset.status_code == 400 and wrong_asset.json()["error"]["code"] == "invalid_asset"
    not_ip = await payer.pay(token, incomingPayment=payer.sender["id"], debitAmount=usd(5))
    assert not_ip.status_code == 400 and not_ip.json()["error"]["code"] == "invalid_receiver"


async def test_limits_on_receiver_and_amount(payer: Payer) -> None:
    allowed = await payer.incoming()
    elsewhere = await payer.incoming()
    token = await payer.world.outgoing_token({"receiver": allowed["id"], "debitAmount": usd(50)}, wallet=payer.sender)
    wrong_receiver = await payer.pay(token, incomingPayment=elsewhere["id"], debitAmount=usd(5))
    assert wrong_receiver.status_code == 403
    too_much = await payer.pay(token, incomingPayment=allowed["id"], debitAmount=usd(51))
    assert too_much.status_code == 403 and too_much.json()["error"]["code"] == "grant_limit_exceeded"
    assert (await payer.pay(token, incomingPayment=allowed["id"], debitAmount=usd(50))).status_code == 201
    quote_token_only = await payer.world.token(QUOTE_ACCESS)
    assert (await payer.pay(quote_token_only, incomingPayment=allowed["id"], debitAmount=usd(1))).status_code == 403


async def test_interval_limit_resets_at_the_next_repetition(payer: Payer) -> None:
    incoming = await payer.incoming()
    start = rfc3339(datetime.now(timezone.utc) - timedelta(milliseconds=100))
    token = await payer.world.outgoing_token({"debitAmount": usd(10), "interval": f"R/{start}/PT2S"}, wallet=payer.sender)
    assert (await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(10))).status_code == 201
    refused = await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(1))
    assert refused.status_code == 403
    await anyio.sleep(2.0)
    assert (await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(10))).status_code == 201


async def test_operator_funds_or_cancels_when_auto_fund_is_off(tmp_path: Path) -> None:
    server = OpayServer(tmp_path, extra_env={"OPAY_AUTO_FUND": "false"}).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            payer = await make_payer(await make_world(server, http))
            incoming = await payer.incoming()
            token = await payer.world.outgoing_token({"debitAmount": usd(100)}, wallet=payer.sender)
            created = (await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(40))).json()
            await anyio.sleep(0.5)
            waiting = (await payer.world.client.request("GET", created["id"], token=token)).json()
            assert waiting["sentAmount"]["value"] == "0" and waiting["failed"] is False
            payment_uuid = created["id"].rsplit("/", 1)[1]
            funded = await payer.world.operator.post(f"/outgoing-payments/{payment_uuid}/fund", {})
            assert funded.status_code == 200, funded.text
            assert (await payer.settled(token, created["id"]))["sentAmount"] == usd(40)

            second = (await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(60))).json()
            cancelled = await payer.world.operator.post(f"/outgoing-payments/{second['id'].rsplit('/', 1)[1]}/cancel", {"reason": "insufficient funds"})
            assert cancelled.status_code == 200 and cancelled.json()["failed"] is True
            with anyio.fail_after(15):
                while (await payer.world.client.request("GET", f"{server.public_url}/outgoing-payment-grant", token=token)).json()["spentDebitAmount"] != usd(40):
                    await anyio.sleep(0.05)
            again = await payer.world.operator.post(f"/outgoing-payments/{payment_uuid}/cancel", {})
            assert again.status_code == 409
    finally:
        server.stop()
