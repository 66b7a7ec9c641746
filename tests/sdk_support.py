"""Running a tests/sdk script of the official Node SDK (@interledger/open-payments) against a real server.

`make test` runs `npm ci` in tests/sdk first; run it by hand if node_modules is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from opay.client import SignedClient
from tests.support import OpayServer

SDK_DIR = Path(__file__).parent / "sdk"
SDK_PACKAGE = SDK_DIR / "node_modules" / "@interledger" / "open-payments" / "package.json"
SDK_VERSION = "7.4.0"


def require_sdk() -> str:
    node = shutil.which("node")
    assert node, "node is not on PATH: the official SDK test needs Node >= 18"
    assert SDK_PACKAGE.exists(), f"{SDK_PACKAGE.parent} is missing: run `cd tests/sdk && npm ci` (or `make test`, which does it)"
    installed = json.loads(SDK_PACKAGE.read_text())["version"]
    assert installed == SDK_VERSION, f"tests/sdk has @interledger/open-payments {installed}, expected {SDK_VERSION}: run npm ci"
    return node


def client_config(client: SignedClient) -> dict:
    """What a script needs to sign as `client`."""
    pem = client.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return {"clientWalletAddress": client.wallet_address, "keyId": client.keyid, "privateKeyPem": pem}


@dataclass
class SdkRun:
    returncode: int
    lines: list[dict]  # the JSON lines the script printed, one a step
    passed: list[str]
    failed: list[dict]
    context: str  # for failure messages: exit code, output and the server's log


async def run_script(node: str, script: Path, config: dict, server: OpayServer, timeout: float) -> SdkRun:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, str(script), json.dumps(config)], check=False, cwd=SDK_DIR, capture_output=True, text=True, timeout=timeout
        )

    try:
        result = await anyio.to_thread.run_sync(run)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the SDK flow did not finish in {timeout}s\nstdout:\n{error.stdout}\nstderr:\n{error.stderr}\nserver log:\n{server.log()}")

    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return SdkRun(
        returncode=result.returncode,
        lines=lines,
        passed=[line["step"] for line in lines if line.get("ok") is True],
        failed=[line for line in lines if line.get("ok") is False],
        context=f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}\nserver log:\n{server.log()}",
    )
