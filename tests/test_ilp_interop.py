"""ILP senders written by others pay opay incoming payments over ILP-over-HTTP.

Senders: ilp-protocol-stream@2.7.2-alpha.3 and @interledger/pay@0.4.0-alpha.9, each over
ilp-plugin-http@1.6.1, driven by tests/interop/send.js (one JSON argument, one JSON line
out). Between Node and the server sits a small recording proxy, so the raw Prepares can be
replayed and the fulfilled amounts summed without any test hook in the product.

Needs `npm ci` in tests/interop (the Makefile's test target does it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest

from opay.ilp.packet import Fulfill, Reject, decode_packet
from opay.ilp.stream import condition_for, fulfillment_for
from tests.ilp_support import PEER_TOKEN, RecordingProxy, b64url_decode, ilp_env, ilp_method, received
from tests.support import OpayServer

pytestmark = pytest.mark.anyio

INTEROP = Path(__file__).resolve().parent / "interop"
SEND_JS = INTEROP / "send.js"
MAX_PACKET = 2000  # F08 above it: senders discover it and split; pay's 1500 still fits one packet
NODE_TIMEOUT_MS = 8000


def usd(value: int) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    assert found, "the ILP interop tests need Node.js (node on PATH)"
    assert (INTEROP / "node_modules" / "ilp-protocol-stream").is_dir(), (
        "tests/interop/node_modules is missing: run `npm ci` in tests/interop (make test does it)"
    )
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(
        Path(tmp_path_factory.mktemp("ilp-interop")), extra_env=ilp_env(OPAY_ILP_MAX_PACKET_AMOUNT=str(MAX_PACKET))
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxy(server):
    recording = RecordingProxy(f"{server.public_url}/ilp").start()
    yield recording
    recording.stop()


@pytest.fixture
async def token(world) -> str:
    return await world.token()


async def send(node: str, proxy: RecordingProxy, mode: str, credentials: dict, amount: int, **extra) -> dict:
    args = {
        "mode": mode,
        "url": proxy.url,
        "token": PEER_TOKEN,
        "ilpAddress": credentials["ilpAddress"],
        "sharedSecret": credentials["sharedSecret"],
        "amount": str(amount),
        "timeoutMs": NODE_TIMEOUT_MS,
        **extra,
    }
    process = await asyncio.create_subprocess_exec(
        node, str(SEND_JS), json.dumps(args), cwd=INTEROP, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    lines = stdout.decode().strip().splitlines()
    assert process.returncode == 0 and lines, f"send.js failed ({process.returncode}): {stdout.decode()} {stderr.decode()}"
    return json.loads(lines[-1])


async def new_payment(world, token: str, **body) -> tuple[dict, dict]:
    created = await world.create_payment(token, **body)
    assert created.status_code == 201, created.text
    payment = created.json()
    return payment, ilp_method(payment)


def fulfilled_sum(proxy: RecordingProxy, ilp_address: str) -> tuple[int, int]:
    """Σ amounts the server fulfilled for this address, and how many packets that took."""
    fulfilled = [e.prepare.amount for e in proxy.exchanges_to(ilp_address) if isinstance(e.reply, Fulfill)]
    return sum(fulfilled), len([a for a in fulfilled if a > 0])


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", ["stream", "pay"])
async def test_sender_pays_exactly_what_it_reports(node, proxy, world, token, mode) -> None:
    payment, credentials = await new_payment(world, token, incomingAmount=usd(5000))
    result = await send(node, proxy, mode, credentials, 1234)
    assert "error" not in result, result
    delivered = int(result["totalDelivered" if mode == "stream" else "amountDelivered"])
    assert delivered == 1234
    assert await received(world, payment, token) == (1234, False)
    assert fulfilled_sum(proxy, credentials["ilpAddress"])[0] == 1234


@pytest.mark.parametrize("mode", ["stream", "pay"])
async def test_many_packets_below_the_max_packet_amount(node, proxy, world, token, mode) -> None:
    payment, credentials = await new_payment(world, token)  # uncapped
    result = await send(node, proxy, mode, credentials, 9001)
    assert "error" not in result, result
    assert int(result["totalDelivered" if mode == "stream" else "amountDelivered"]) == 9001
    total, packets = fulfilled_sum(proxy, credentials["ilpAddress"])
    assert (total, await received(world, payment, token)) == (9001, (9001, False))
    assert packets >= 5
    exchanges = proxy.exchanges_to(credentials["ilpAddress"])
    assert all(e.prepare.amount <= MAX_PACKET for e in exchanges if isinstance(e.reply, Fulfill))
    assert any(isinstance(e.reply, Reject) and e.reply.code == "F08" for e in exchanges)  # probed the limit


async def test_stream_sender_stops_exactly_at_the_cap(node, proxy, world, token) -> None:
    payment, credentials = await new_payment(world, token, incomingAmount=usd(1000))
    result = await send(node, proxy, "stream", credentials, 1500, timeoutMs=3000)
    assert "error" in result, result  # it cannot send the whole 1500
    assert result["totalDelivered"] == "1000", result
    assert await received(world, payment, token) == (1000, True)
    assert fulfilled_sum(proxy, credentials["ilpAddress"])[0] == 1000
    refusals = [
        e for e in proxy.exchanges_to(credentials["ilpAddress"])
        if isinstance(e.reply, Reject) and e.reply.code == "F99" and e.prepare.amount > 1000
    ]
    assert refusals, "the first 1500 packet is refused over the cap"


async def test_pay_refuses_up_front_when_the_cap_is_too_small(node, proxy, world, token) -> None:
    payment, credentials = await new_payment(world, token, incomingAmount=usd(1000))
    result = await send(node, proxy, "pay", credentials, 1500)
    assert result.get("error") == "IncompatibleReceiveMax", result
    assert result["amountDelivered"] == "0"
    assert await received(world, payment, token) == (0, False)
    assert fulfilled_sum(proxy, credentials["ilpAddress"]) == (0, 0)


async def test_two_senders_at_once_never_pass_the_cap(node, proxy, world, token) -> None:
    payment, first = await new_payment(world, token, incomingAmount=usd(1000))
    second = ilp_method((await world.client.request("GET", payment["id"], token=token)).json())
    results = await asyncio.gather(
        send(node, proxy, "stream", first, 700, timeoutMs=4000),
        send(node, proxy, "stream", second, 700, timeoutMs=4000),
        send(node, proxy, "pay", ilp_method((await world.client.request("GET", payment["id"], token=token)).json()), 400),
    )
    delivered = int(results[0]["totalDelivered"]) + int(results[1]["totalDelivered"]) + int(results[2]["amountDelivered"])
    got, completed = await received(world, payment, token)
    assert got == delivered <= 1000, results
    assert completed == (got == 1000)
    fulfilled = sum(fulfilled_sum(proxy, c["ilpAddress"])[0] for c in (first, second))
    assert fulfilled + int(results[2]["amountDelivered"]) == got


@pytest.mark.parametrize("mode", ["stream", "pay"])
async def test_wrong_shared_secret_credits_nothing(node, proxy, world, token, mode) -> None:
    payment, credentials = await new_payment(world, token, incomingAmount=usd(1000))
    _, other = await new_payment(world, token, incomingAmount=usd(1000))
    wrong = {**credentials, "sharedSecret": other["sharedSecret"]}
    result = await send(node, proxy, mode, wrong, 500, timeoutMs=4000)
    assert "error" in result, result
    assert await received(world, payment, token) == (0, False)
    codes = {e.reply.code if isinstance(e.reply, Reject) else "fulfill" for e in proxy.exchanges_to(credentials["ilpAddress"])}
    assert "F06" in codes and codes <= {"F06", "F08"}, codes  # F08 (too large) is decided before decrypting


@pytest.mark.parametrize("mode", ["stream", "pay"])
async def test_tampered_address_credits_nothing(node, proxy, world, token, mode) -> None:
    payment, credentials = await new_payment(world, token, incomingAmount=usd(1000))
    prefix, segment = credentials["ilpAddress"].rsplit(".", 1)
    tampered = {**credentials, "ilpAddress": f"{prefix}.{segment[:12]}{'A' if segment[12] != 'A' else 'B'}{segment[13:]}"}
    result = await send(node, proxy, mode, tampered, 500, timeoutMs=4000)
    assert "error" in result, result
    assert await received(world, payment, token) == (0, False)
    codes = {e.reply.code if isinstance(e.reply, Reject) else "fulfill" for e in proxy.exchanges_to(tampered["ilpAddress"])}
    assert "F02" in codes and codes <= {"F02", "F08"}, codes


@pytest.mark.parametrize("mode", ["stream", "pay"])
async def test_resent_prepares_get_their_fulfill_again_and_credit_nothing(node, proxy, world, token, mode) -> None:
    payment, credentials = await new_payment(world, token)
    result = await send(node, proxy, mode, credentials, 4321)
    assert "error" not in result, result
    assert await received(world, payment, token) == (4321, False)
    recorded = [e for e in proxy.exchanges_to(credentials["ilpAddress"]) if e.prepare.amount > 0]
    fulfilled = [e for e in recorded if isinstance(e.reply, Fulfill)]
    assert fulfilled
    async with httpx.AsyncClient(timeout=30) as http:
        for exchange in recorded:
            answer = await http.post(
                f"{world.server.public_url}/ilp", content=exchange.request, headers={"authorization": f"Bearer {PEER_TOKEN}"}
            )
            assert answer.status_code == 200
            reply = decode_packet(answer.content)
            if isinstance(exchange.reply, Fulfill):
                # The sender that lost this Fulfill learns it paid: the same fulfillment.
                assert isinstance(reply, Fulfill) and reply.fulfillment == exchange.reply.fulfillment, reply
            else:
                assert isinstance(reply, Reject) and reply.code == exchange.reply.code, (reply, exchange.reply)
    assert await received(world, payment, token) == (4321, False)


async def test_pay_again_on_the_same_credentials_restarts_sequences_and_is_credited(node, proxy, world, token) -> None:
    """As Rafiki does for every quote and retry: each `pay` run on the same shared secret
    numbers its packets from 0 again. Each run is new money, credited in full."""
    payment, credentials = await new_payment(world, token)
    total = 0
    for amount in (1234, 1234, 4321):
        result = await send(node, proxy, "pay", credentials, amount)
        assert "error" not in result and result["amountDelivered"] == str(amount), result
        total += amount
        assert await received(world, payment, token) == (total, False)
    assert fulfilled_sum(proxy, credentials["ilpAddress"])[0] == total
    # No money packet was refused (a sequence-keyed window refuses each reused sequence
    # until the sender numbers past the last run's: F99 packet after packet).
    secret = b64url_decode(credentials["sharedSecret"])
    money = [
        e for e in proxy.exchanges_to(credentials["ilpAddress"])
        if e.prepare.amount > 0 and condition_for(fulfillment_for(secret, e.prepare.data)) == e.prepare.execution_condition
    ]
    assert money and not [e.reply for e in money if isinstance(e.reply, Reject) and e.reply.code == "F99"]


async def test_operator_credit_and_ilp_share_one_total(node, proxy, world, token) -> None:
    payment, credentials = await new_payment(world, token, incomingAmount=usd(1000))
    credited = await world.operator.credit(payment["id"], "600", f"op-{uuid.uuid4()}")
    assert credited.status_code == 200, credited.text
    result = await send(node, proxy, "pay", credentials, 400)
    assert "error" not in result and result["amountDelivered"] == "400", result
    assert await received(world, payment, token) == (1000, True)
