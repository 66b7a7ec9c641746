"""The whole flow with the official Node SDK (@interledger/open-payments 7.4.0, validateResponses on):
incoming payment, quote, interactive outgoing-payment grant through the consent page (as the sender's
logged-in owner), continuation, outgoing payment, local settlement, and the deny path.
See tests/sdk/full-flow.mjs.

`make test` runs `npm ci` in tests/sdk first; run it by hand if node_modules is missing.
"""

from __future__ import annotations

import uuid

import pytest

from tests.sdk_support import SDK_DIR, client_config, require_sdk, run_script
from tests.support import CONSENT_USER_HEADER

pytestmark = pytest.mark.anyio

SCRIPT = SDK_DIR / "full-flow.mjs"
TIMEOUT_SECONDS = 180

EXPECTED_STEPS = [
    "walletAddress.get",
    "grant.request.incomingPayment",
    "incomingPayment.create",
    "grant.request.quote",
    "quote.create",
    "quote.get",
    "grant.request.outgoingPayment.interactive",
    "consent.approve",
    "grant.continue",
    "outgoingPayment.create",
    "outgoingPayment.get",
    "incomingPayment.get",
    "outgoingPayment.list",
    "outgoingPayment.getGrantSpentAmounts",
    "outgoingPayment.create.quoteUsed",
    "outgoingPayment.create.overGrantLimit",
    "consent.deny",
    "done",
]


async def test_official_sdk_full_flow(server, world) -> None:
    node = require_sdk()
    # An asset of this test's own, so the sending fee set here touches no other test.
    asset = "F" + uuid.uuid4().hex[:6].upper()
    fees = await world.http.put(f"{server.operator_url}/fees/{asset}", json={"fixed": "3", "basisPoints": 150}, headers=server.operator_headers)
    assert fees.status_code == 200, fees.text
    receiver = await world.operator.wallet_address(f"bob-{uuid.uuid4().hex[:10]}", asset, 2, "Bob")
    sender = await world.operator.wallet_address(f"carol-{uuid.uuid4().hex[:10]}", asset, 2, "Carol", owner=f"carol-{uuid.uuid4().hex[:6]}")

    config = {
        "receiverWalletAddress": receiver["id"],
        "senderWalletAddress": sender["id"],
        **client_config(world.client),
        # The consent page decides for the sender's owner, as a login proxy names them.
        "consentUserHeader": CONSENT_USER_HEADER,
        "consentUser": sender["owner"],
    }
    run = await run_script(node, SCRIPT, config, server, TIMEOUT_SECONDS)
    assert run.returncode == 0 and not run.failed, f"the SDK flow failed at {run.failed}\n{run.context}"
    assert run.passed == EXPECTED_STEPS, f"steps run {run.passed}, expected {EXPECTED_STEPS}\n{run.context}"

    # The fee really was charged: the quote debits more than it delivers, and the payment sent debit less fee.
    by_step = {line["step"]: line for line in run.lines}
    quote = by_step["quote.create"]
    assert int(quote["debitAmount"]["value"]) > int(quote["receiveAmount"]["value"]), run.context
    sent = by_step["outgoingPayment.get"]
    assert sent["sentAmount"]["value"] == quote["receiveAmount"]["value"], run.context
    assert sent["debitAmount"] == quote["debitAmount"], run.context
