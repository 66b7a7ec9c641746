"""Remote payments through the API (issue 10, items 3 and 5): a client of A quotes B's
incoming payment at A, gets an interactive outgoing-payment grant at A (approved through
A's operator API) and pays from the quote; and the Web Monetization case (incomingPayment
on B + debitAmount at A, no quote). Two real opay servers peered both ways
(tests/test_remote_payments.py).
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_world
from tests.ilp_support import received
from tests.test_remote_payments import incoming_at_b, servers, settled, totals  # noqa: F401  (servers: a fixture)

pytestmark = pytest.mark.anyio

QUOTE_ACCESS = [{"type": "quote", "actions": ["create", "read"]}]


def usd(value: int) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


@pytest.fixture
async def worlds(servers):  # noqa: F811
    async with httpx.AsyncClient(timeout=30) as http:
        yield await make_world(servers[0], http), await make_world(servers[1], http)


async def test_a_client_of_a_pays_b_from_a_quote(servers, worlds) -> None:  # noqa: F811
    a, b = servers
    at_a, at_b = worlds
    before_a, before_b = totals(a, "b"), totals(b, "a")
    incoming = await incoming_at_b(at_b, 1234)
    quoted = await at_a.client.request(
        "POST", f"{a.public_url}/quotes", json={"method": "ilp", "walletAddress": at_a.receiver["id"], "receiver": incoming["id"], "receiveAmount": usd(1234)},
        token=await at_a.token(QUOTE_ACCESS),
    )
    assert quoted.status_code == 201, quoted.text
    quote = quoted.json()
    token = await at_a.outgoing_token()
    created = await at_a.client.request(
        "POST", f"{a.public_url}/outgoing-payments", json={"walletAddress": at_a.receiver["id"], "quoteId": quote["id"]}, token=token
    )
    assert created.status_code == 201, created.text
    entity_id = "op:" + created.json()["id"].rsplit("/", 1)[1]
    payment = await settled(a, entity_id)
    assert payment.phase == "completed", payment.failure
    assert await received(at_b, incoming, await at_b.token()) == (1234, True)
    view = await at_a.client.request("GET", created.json()["id"], token=token)
    assert view.status_code == 200, view.text
    sent = int(view.json()["sentAmount"]["value"])
    assert view.json()["failed"] is False and 1234 <= sent <= int(quote["debitAmount"]["value"])
    assert totals(a, "b")[0] - before_a[0] == sent and totals(b, "a")[1] - before_b[1] == sent  # one to one on a USD link


async def test_web_monetization_incoming_payment_and_debit_amount(servers, worlds) -> None:  # noqa: F811
    a, b = servers
    at_a, at_b = worlds
    made = await at_b.create_payment(await at_b.token())
    assert made.status_code == 201, made.text
    incoming = made.json()
    token = await at_a.outgoing_token()
    created = await at_a.client.request(
        "POST", f"{a.public_url}/outgoing-payments",
        json={"walletAddress": at_a.receiver["id"], "incomingPayment": incoming["id"], "debitAmount": usd(500)}, token=token,
    )
    assert created.status_code == 201, created.text
    entity_id = "op:" + created.json()["id"].rsplit("/", 1)[1]
    payment = await settled(a, entity_id)
    assert payment.phase == "completed", payment.failure
    assert payment.sent == 500
    assert (await received(at_b, incoming, await at_b.token()))[0] == payment.delivered


async def test_cross_currency_a_eur_like_sender_pays_usd_at_b_over_a_usd_link(servers, worlds) -> None:  # noqa: F811
    import uuid

    a, b = servers
    at_a, at_b = worlds
    before_a, before_b = totals(a, "b"), totals(b, "a")
    code = f"E{uuid.uuid4().hex[:5].upper()}"
    sender = await at_a.operator.wallet_address(f"payer-{uuid.uuid4().hex[:8]}", code, 2)
    rated = await at_a.http.put(f"{a.operator_url}/rates/{code}", json={"USD": "1.0837"}, headers=a.operator_headers)
    assert rated.status_code == 200, rated.text
    incoming = await incoming_at_b(at_b, 2345)
    quoted = await at_a.client.request(
        "POST", f"{a.public_url}/quotes", json={"method": "ilp", "walletAddress": sender["id"], "receiver": incoming["id"], "receiveAmount": usd(2345)},
        token=await at_a.token(QUOTE_ACCESS),
    )
    assert quoted.status_code == 201, quoted.text
    debit = int(quoted.json()["debitAmount"]["value"])
    token = await at_a.outgoing_token(wallet=sender)
    created = await at_a.client.request(
        "POST", f"{a.public_url}/outgoing-payments", json={"walletAddress": sender["id"], "quoteId": quoted.json()["id"]}, token=token
    )
    assert created.status_code == 201, created.text
    payment = await settled(a, "op:" + created.json()["id"].rsplit("/", 1)[1])
    assert payment.phase == "completed", payment.failure
    assert await received(at_b, incoming, await at_b.token()) == (2345, True)
    view = (await at_a.client.request("GET", created.json()["id"], token=token)).json()
    assert view["sentAmount"]["assetCode"] == code and 0 < int(view["sentAmount"]["value"]) <= debit
    # The link is USD: both peers count the same USD units, what B credited.
    assert totals(a, "b")[0] - before_a[0] == totals(b, "a")[1] - before_b[1] == 2345


async def test_a_remote_payment_acknowledged_201_survives_a_kill_of_its_server(servers, worlds) -> None:  # noqa: F811
    """201 means stored and delivery started: A is killed (kill -9, its Redis and Ray with
    it) right after the 201 and restarted; the payment completes, B gets the amount once."""
    a, b = servers
    at_a, at_b = worlds
    incoming = await incoming_at_b(at_b, 4321)
    quoted = await at_a.client.request(
        "POST", f"{a.public_url}/quotes", json={"method": "ilp", "walletAddress": at_a.receiver["id"], "receiver": incoming["id"], "receiveAmount": usd(4321)},
        token=await at_a.token(QUOTE_ACCESS),
    )
    assert quoted.status_code == 201, quoted.text
    token = await at_a.outgoing_token()
    created = await at_a.client.request(
        "POST", f"{a.public_url}/outgoing-payments", json={"walletAddress": at_a.receiver["id"], "quoteId": quoted.json()["id"]}, token=token
    )
    assert created.status_code == 201, created.text
    a.kill9()
    a.start()
    payment = await settled(a, "op:" + created.json()["id"].rsplit("/", 1)[1])
    assert payment.phase == "completed", payment.failure
    assert await received(at_b, incoming, await at_b.token()) == (4321, True)
