"""The official Node SDK (@interledger/open-payments 7.4.0, validateResponses on) against a real server.

`make test` runs `npm ci` in tests/sdk first; run it by hand if node_modules is missing.
"""

from __future__ import annotations

import pytest

from tests.sdk_support import SDK_DIR, client_config, require_sdk, run_script

pytestmark = pytest.mark.anyio

SCRIPT = SDK_DIR / "incoming-flow.mjs"
TIMEOUT_SECONDS = 120

EXPECTED_STEPS = [
    "walletAddress.get",
    "walletAddress.getKeys",
    "grant.request",
    "incomingPayment.create.withAmount",
    "incomingPayment.create.withoutAmount",
    "incomingPayment.get",
    "incomingPayment.getPublic",
    "incomingPayment.list",
    "incomingPayment.complete",
    "token.rotate",
    "token.revoke",
    "grant.cancel",
    "grant.insufficientAccess",
    "signature.wrongKey",
    "grant.request.directedIdentity",
    "done",
]


async def test_official_sdk_incoming_payment_flow(server, world) -> None:
    node = require_sdk()
    config = {"receiverWalletAddress": world.receiver["id"], **client_config(world.client)}
    run = await run_script(node, SCRIPT, config, server, TIMEOUT_SECONDS)
    assert run.returncode == 0 and not run.failed, f"the SDK flow failed at {run.failed}\n{run.context}"
    assert run.passed == EXPECTED_STEPS, f"steps run {run.passed}, expected {EXPECTED_STEPS}\n{run.context}"
