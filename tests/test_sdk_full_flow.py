"""The whole flow with the official Node SDK (@interledger/open-payments 7.4.0, validateResponses on):
incoming payment, quote, interactive outgoing-payment grant through the consent page, continuation,
outgoing payment, local settlement, and the deny path. See tests/sdk/full-flow.mjs.

`make test` runs `npm ci` in tests/sdk first; run it by hand if node_modules is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

pytestmark = pytest.mark.anyio

SDK_DIR = Path(__file__).parent / "sdk"
SCRIPT = SDK_DIR / "full-flow.mjs"
SDK_PACKAGE = SDK_DIR / "node_modules" / "@interledger" / "open-payments" / "package.json"
SDK_VERSION = "7.4.0"
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


def require_sdk() -> str:
    node = shutil.which("node")
    assert node, "node is not on PATH: the official SDK test needs Node >= 18"
    assert SDK_PACKAGE.exists(), f"{SDK_PACKAGE.parent} is missing: run `cd tests/sdk && npm ci` (or `make test`, which does it)"
    installed = json.loads(SDK_PACKAGE.read_text())["version"]
    assert installed == SDK_VERSION, f"tests/sdk has @interledger/open-payments {installed}, expected {SDK_VERSION}: run npm ci"
    return node


async def test_official_sdk_full_flow(server, world) -> None:
    node = require_sdk()
    # An asset of this test's own, so the sending fee set here touches no other test.
    asset = "F" + uuid.uuid4().hex[:6].upper()
    fees = await world.http.put(f"{server.operator_url}/fees/{asset}", json={"fixed": "3", "basisPoints": 150}, headers=server.operator_headers)
    assert fees.status_code == 200, fees.text
    receiver = await world.operator.wallet_address(f"bob-{uuid.uuid4().hex[:10]}", asset, 2, "Bob")
    sender = await world.operator.wallet_address(f"carol-{uuid.uuid4().hex[:10]}", asset, 2, "Carol")

    pem = world.client.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    config = {
        "receiverWalletAddress": receiver["id"],
        "senderWalletAddress": sender["id"],
        "clientWalletAddress": world.client.wallet_address,
        "keyId": world.client.keyid,
        "privateKeyPem": pem,
    }

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, str(SCRIPT), json.dumps(config)], check=False, cwd=SDK_DIR, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
        )

    try:
        result = await anyio.to_thread.run_sync(run)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the SDK flow did not finish in {TIMEOUT_SECONDS}s\nstdout:\n{error.stdout}\nstderr:\n{error.stderr}\nserver log:\n{server.log()}")

    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    passed = [line["step"] for line in lines if line.get("ok") is True]
    failed = [line for line in lines if line.get("ok") is False]
    context = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}\nserver log:\n{server.log()}"
    assert result.returncode == 0 and not failed, f"the SDK flow failed at {failed}\n{context}"
    assert passed == EXPECTED_STEPS, f"steps run {passed}, expected {EXPECTED_STEPS}\n{context}"

    # The fee really was charged: the quote debits more than it delivers, and the payment sent debit less fee.
    by_step = {line["step"]: line for line in lines}
    quote = by_step["quote.create"]
    assert int(quote["debitAmount"]["value"]) > int(quote["receiveAmount"]["value"]), context
    sent = by_step["outgoingPayment.get"]
    assert sent["sentAmount"]["value"] == quote["receiveAmount"]["value"], context
    assert sent["debitAmount"] == quote["debitAmount"], context
