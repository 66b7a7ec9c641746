"""The official Node SDK (@interledger/open-payments 7.4.0, validateResponses on) against a real server.

`make test` runs `npm ci` in tests/sdk first; run it by hand if node_modules is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

pytestmark = pytest.mark.anyio

SDK_DIR = Path(__file__).parent / "sdk"
SCRIPT = SDK_DIR / "incoming-flow.mjs"
SDK_PACKAGE = SDK_DIR / "node_modules" / "@interledger" / "open-payments" / "package.json"
SDK_VERSION = "7.4.0"
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


def _require_sdk() -> str:
    node = shutil.which("node")
    assert node, "node is not on PATH: the official SDK test needs Node >= 18"
    assert SDK_PACKAGE.exists(), (
        f"{SDK_PACKAGE.parent} is missing: run `cd tests/sdk && npm ci` (or `make test`, which does it)"
    )
    installed = json.loads(SDK_PACKAGE.read_text())["version"]
    assert installed == SDK_VERSION, f"tests/sdk has @interledger/open-payments {installed}, expected {SDK_VERSION}: run npm ci"
    return node


async def test_official_sdk_incoming_payment_flow(server, world) -> None:
    node = _require_sdk()
    pem = world.client.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    config = {
        "receiverWalletAddress": world.receiver["id"],
        "clientWalletAddress": world.client.wallet_address,
        "keyId": world.client.keyid,
        "privateKeyPem": pem,
    }

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, str(SCRIPT), json.dumps(config)],
            cwd=SDK_DIR,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
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
