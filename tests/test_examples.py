"""A first payment in five minutes (issue 11, item 6): `opay keys new` against the session
server, then both examples (opay.client and the official Node SDK) run as a person would
run them, to a completed outgoing payment."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from opay.client import public_jwk
from opay.commands import keys
from tests.sdk_support import SDK_DIR, SDK_VERSION, require_sdk
from tests.support import OpayServer, free_port

ROOT = Path(__file__).parent.parent
# An asset of these tests only: fees or rates other tests set for USD on the shared server
# cannot change what the examples pay.
ASSET = "EXM"


def client_env(server: OpayServer, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAY_")}
    env.update(
        {
            "OPAY_PUBLIC_URL": server.public_url,
            "OPAY_OPERATOR_URL": server.operator_url,
            "OPAY_OPERATOR_TOKEN": server.operator_token,
            "OPAY_DATA_DIR": str(data_dir),
        }
    )
    return {**env, **extra}


def create_wallet(server: OpayServer, path: str) -> None:
    body = {"path": path, "assetCode": ASSET, "assetScale": 2}
    httpx.post(f"{server.operator_url}/wallet-addresses", json=body, headers=server.operator_headers).raise_for_status()


@dataclass
class Made:
    alice: str
    bob: str
    output: str
    kid: str
    key_file: Path
    data_dir: Path


@pytest.fixture(scope="module")
def made(server: OpayServer, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """Two fresh wallet addresses, and a key for alice made by `opay keys new`."""
    suffix = uuid.uuid4().hex[:10]
    alice, bob = f"alice-{suffix}", f"bob-{suffix}"
    create_wallet(server, alice)
    create_wallet(server, bob)
    data_dir = tmp_path_factory.mktemp("keys-new")
    result = subprocess.run(
        [sys.executable, "-m", "opay.cli", "keys", "new", alice],
        env=client_env(server, data_dir), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result
    match = re.search(r"export CLIENT_WALLET_ADDRESS=(\S+) KEY_ID=(\S+) PRIVATE_KEY_FILE=(\S+)", result.stdout)
    assert match, result.stdout
    assert match[1] == f"{server.public_url}/{alice}"
    return Made(alice, bob, result.stdout, match[2], Path(match[3]), data_dir)


def test_keys_new_saves_a_private_key_and_registers_its_public_jwk(server: OpayServer, made: Made) -> None:
    assert made.key_file == made.data_dir / "keys" / f"{made.alice}-{made.kid}.pem"
    assert stat.S_IMODE(made.key_file.stat().st_mode) == 0o600
    assert f"private key saved to {made.key_file}" in made.output
    key = load_pem_private_key(made.key_file.read_bytes(), password=None)
    published = httpx.get(f"{server.public_url}/{made.alice}/jwks.json").json()["keys"]
    assert public_jwk(key, made.kid) in [{k: v for k, v in jwk.items() if k != "use"} for jwk in published]  # type: ignore[arg-type]


def run_keys_new(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], wallet: str, out: Path | None = None) -> int:
    """`opay keys new` in this process (cheaper than a new interpreter), with env as its OPAY_* variables."""
    for key in [k for k in os.environ if k.startswith("OPAY_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("OPAY_"):
            monkeypatch.setenv(key, value)
    return keys.new(wallet, str(out) if out else None)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown wallet", r"^opay: no wallet address 'nobody-\w+' on this server; create it first: curl .* -d '\{\"path\": \"nobody-\w+\""),
        ("bad token", r"^opay: the operator API refused the token: set OPAY_OPERATOR_TOKEN to the one `opay serve` uses$"),
        ("unreachable", r"^opay: the operator API at http://127\.0\.0\.1:\d+ does not answer \(ConnectError\): is `opay serve` running\?"),
        ("no token", r"^opay: OPAY_OPERATOR_TOKEN is not set"),
    ],
    ids=["unknown-wallet", "bad-token", "unreachable", "no-token"],
)
def test_keys_new_fails_in_one_line_and_leaves_no_key(
    server: OpayServer, made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    env = client_env(server, tmp_path)
    wallet = made.alice
    if case == "unknown wallet":
        wallet = f"nobody-{uuid.uuid4().hex[:8]}"
    elif case == "bad token":
        env["OPAY_OPERATOR_TOKEN"] = "not-the-token"
    elif case == "unreachable":
        env["OPAY_OPERATOR_URL"] = f"http://127.0.0.1:{free_port()}"
    else:
        del env["OPAY_OPERATOR_TOKEN"]
    code = run_keys_new(monkeypatch, env, wallet)
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(err.splitlines()) == 1 and re.search(expected, err), err
    assert not list(tmp_path.rglob("*.pem")), "a refused key is not left on disk"


def test_keys_new_never_overwrites(server: OpayServer, made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    existing = tmp_path / "mine.pem"
    existing.write_text("keep me")
    code = run_keys_new(monkeypatch, client_env(server, tmp_path), made.alice, existing)
    assert code == 1
    assert "exists: a key is never overwritten" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def example_env(server: OpayServer, made: Made) -> dict[str, str]:
    return client_env(
        server,
        made.data_dir,
        CLIENT_WALLET_ADDRESS=f"{server.public_url}/{made.alice}",
        KEY_ID=made.kid,
        PRIVATE_KEY_FILE=str(made.key_file),
        RECEIVER_WALLET_ADDRESS=f"{server.public_url}/{made.bob}",
    )


def assert_paid(result: subprocess.CompletedProcess[str], server: OpayServer) -> None:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nserver log:\n{server.log()[-5000:]}"
    steps = [line.split()[0] for line in result.stdout.splitlines()]
    assert steps == ["wallet", "grant", "incoming", "credit", "quote", "consent", "consent", "outgoing", "done"], result.stdout
    assert re.search(r"^credit +received 2\.50 EXM of 10\.00 EXM$", result.stdout, re.M), result.stdout
    assert re.search(r"^done +sent 7\.50 EXM; Bob received 10\.00 EXM of 10\.00 EXM$", result.stdout, re.M), result.stdout


def test_python_example_pays(server: OpayServer, made: Made) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "first_payment.py")],
        env=example_env(server, made), capture_output=True, text=True, timeout=120,
    )
    assert_paid(result, server)


def test_node_example_pays(server: OpayServer, made: Made, tmp_path: Path) -> None:
    node = require_sdk()
    # The example as a person has it after `npm ci` in examples/node: the same SDK version
    # as tests/sdk, whose node_modules it borrows instead of a second install.
    package = ROOT / "examples" / "node"
    assert json.loads((package / "package.json").read_text())["dependencies"] == {"@interledger/open-payments": SDK_VERSION}
    for name in ("first-payment.mjs", "package.json"):
        shutil.copy(package / name, tmp_path / name)
    (tmp_path / "node_modules").symlink_to(SDK_DIR / "node_modules")
    result = subprocess.run(
        [node, "first-payment.mjs"], cwd=tmp_path, env=example_env(server, made), capture_output=True, text=True, timeout=120
    )
    assert_paid(result, server)
