"""A remote payment with the official Node SDK (@interledger/open-payments 7.4.0, validateResponses
on), issue 10's first "Show" item: two real opay servers on loopback, A (test.a) and B (test.b), each
with its own redis-server and Ray, peered both ways through POST /peers (the `servers` fixture of
tests/test_remote_payments.py). A client of A (a wallet address of A with its key registered at A;
B fetches A's jwks.json, loopback fetches allowed) creates an incoming payment on B with a grant
from B's authorization server, quotes it at A, gets an interactive outgoing-payment grant at A
through A's consent page (as the sender's logged-in owner) and pays. See tests/sdk/remote-flow.mjs.

Then, read back through the APIs: B's receivedAmount is exactly the quote's receiveAmount, A's
outgoing payment completed with that sentAmount, and GET /peers on A and B count the same amount.

`make test` runs `npm ci` in tests/sdk first; run it by hand if node_modules is missing.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import make_world
from tests.ilp_support import received
from tests.sdk_support import SDK_DIR, client_config, require_sdk, run_script
from tests.support import CONSENT_USER_HEADER
from tests.test_remote_payments import servers, settled, totals  # noqa: F401  (servers: a fixture)

pytestmark = pytest.mark.anyio

SCRIPT = SDK_DIR / "remote-flow.mjs"
TIMEOUT_SECONDS = 240
INCOMING_VALUE = 1234  # 25 packets on the fixture's link (maxPacketAmount 50)

EXPECTED_STEPS = [
    "walletAddress.get",
    "grant.request.incomingPayment.atB",
    "incomingPayment.create.atB",
    "grant.request.quote.atA",
    "quote.create.atA",
    "quote.get.atA",
    "grant.request.outgoingPayment.interactive.atA",
    "consent.approve.atA",
    "grant.continue.atA",
    "outgoingPayment.create.atA",
    "outgoingPayment.get.atA",
    "incomingPayment.get.atB",
    "outgoingPayment.getGrantSpentAmounts.atA",
    "done",
]


async def test_official_sdk_pays_an_incoming_payment_on_another_opay_server(servers) -> None:  # noqa: F811
    node = require_sdk()
    a, b = servers
    async with httpx.AsyncClient(timeout=30) as http:
        at_a, at_b = await make_world(a, http), await make_world(b, http)
        sender = await at_a.operator.wallet_address(f"carol-{uuid.uuid4().hex[:10]}", "USD", 2, "Carol", owner=f"carol-{uuid.uuid4().hex[:6]}")
        before_a, before_b = totals(a, "b"), totals(b, "a")

        config = {
            "receiverWalletAddress": at_b.receiver["id"],
            "senderWalletAddress": sender["id"],
            **client_config(at_a.client),  # a client of A: B's authorization server fetches its key from A
            "consentUserHeader": CONSENT_USER_HEADER,
            "consentUser": sender["owner"],
            "incomingValue": str(INCOMING_VALUE),
        }
        run = await run_script(node, SCRIPT, config, a, TIMEOUT_SECONDS)
        context = f"{run.context}\nB's log:\n{b.log()}"
        assert run.returncode == 0 and not run.failed, f"the SDK remote flow failed at {run.failed}\n{context}"
        assert run.passed == EXPECTED_STEPS, f"steps run {run.passed}, expected {EXPECTED_STEPS}\n{context}"

        by_step = {line["step"]: line for line in run.lines}
        quote = by_step["quote.create.atA"]
        receive = int(quote["receiveAmount"]["value"])
        assert receive == INCOMING_VALUE, context

        # B, read by the same client of A with a grant of its own at B: exactly the quoted amount, completed.
        incoming = {"id": by_step["incomingPayment.create.atB"]["id"]}
        assert await received(at_a, incoming, await at_b.token(client=at_a.client)) == (receive, True), context

        # A: the payment completed, sending exactly what was delivered (USD on a one-to-one USD link).
        payment_id = by_step["outgoingPayment.create.atA"]["id"]
        payment = await settled(a, "op:" + payment_id.rsplit("/", 1)[1])
        assert payment.phase == "completed", f"{payment.failure}\n{context}"
        assert (payment.sent, payment.delivered) == (receive, receive), context
        assert payment.sent <= int(quote["debitAmount"]["value"]), context
        assert by_step["outgoingPayment.get.atA"]["sentAmount"] == {"value": str(receive), "assetCode": "USD", "assetScale": 2}, context

        # Both peers count the same amount, once: A sent to B what B received from A.
        sent_a, received_a = totals(a, "b")
        sent_b, received_b = totals(b, "a")
        assert sent_a - before_a[0] == receive == received_b - before_b[1], context
        assert (received_a, sent_b) == (before_a[1], before_b[0]), "nothing flowed back from B to A"
