"""The STREAM receiver over synchronous ILP-over-HTTP, driven by hand-built packets.

A real `opay serve` with ILP peers configured; Prepares are built with opay.ilp codecs the
way a sender builds them, from the credentials the Open Payments API hands out. Every
check that money did or did not arrive reads receivedAmount through the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from opay.ilp.credentials import CredentialMint
from opay.ilp.oer import U64_MAX, Reader
from opay.ilp.packet import Fulfill, Prepare, Reject, decode_packet
from opay.ilp.stream import (
    ConnectionAssetDetails,
    ConnectionClose,
    ConnectionNewAddress,
    StreamErrorCode,
    StreamMaxMoney,
    StreamMoney,
)
from tests.conftest import make_world
from tests.ilp_support import (
    OTHER_PEER_TOKEN,
    PEER_TOKEN,
    STREAM_SECRET,
    Connection,
    b64url_decode,
    ilp_env,
    ilp_method,
    received,
)
from tests.support import OpayServer
from tests.test_authentication import listening_pid

pytestmark = pytest.mark.anyio

MAX_PACKET = 1_000_000
USD = {"assetCode": "USD", "assetScale": 2}


def usd(value: int) -> dict:
    return {"value": str(value), **USD}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """Overrides the session server for this module: ILP peers, a known secret, a packet limit."""
    process = OpayServer(
        Path(tmp_path_factory.mktemp("ilp")),
        extra_env=ilp_env(OPAY_STREAM_SECRET=STREAM_SECRET, OPAY_ILP_MAX_PACKET_AMOUNT=str(MAX_PACKET)),
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def token(world) -> str:
    return await world.token()


async def new_payment(world, token: str, **body) -> dict:
    created = await world.create_payment(token, **body)
    assert created.status_code == 201, created.text
    return created.json()


def connect(world, payment: dict, **kw) -> Connection:
    return Connection.to(world.http, world.server.public_url, payment, **kw)


async def test_ildcp_answers_peer_config(world) -> None:
    conn = Connection(world.http, f"{world.server.public_url}/ilp", "peer.config", b"")
    prepare = Prepare(0, datetime.now(timezone.utc) + timedelta(seconds=30), hashlib.sha256(bytes(32)).digest(), "peer.config")
    for bearer in (PEER_TOKEN, OTHER_PEER_TOKEN):
        response = await conn.post(prepare.encode(), bearer=bearer)
        assert response.status_code == 200
        fulfill = decode_packet(response.content)
        assert isinstance(fulfill, Fulfill) and fulfill.fulfillment == bytes(32)
        r = Reader(fulfill.data)
        address = r.read_var_octets().decode()
        assert address.startswith("test.opay.") and len(address) > len("test.opay.")
        assert PEER_TOKEN not in address  # the address names the peer without revealing its token
        assert (r.read_uint8(), r.read_var_octets().decode()) == (2, "USD")
    # A different token gets a different (stable) address.
    one = decode_packet((await conn.post(prepare.encode(), bearer=PEER_TOKEN)).content)
    two = decode_packet((await conn.post(prepare.encode(), bearer=OTHER_PEER_TOKEN)).content)
    assert one.data != two.data


async def test_bearer_token_missing_or_wrong_is_401_and_credits_nothing(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    sent = conn.build(10)
    url = f"{world.server.public_url}/ilp"
    for headers in (
        {},
        {"authorization": "Bearer wrong-token"},
        {"authorization": f"Bearer {PEER_TOKEN}x"},
        {"authorization": f"Basic {PEER_TOKEN}"},
        {"authorization": PEER_TOKEN},
        {"authorization": "Bearer"},
    ):
        response = await world.http.post(url, content=sent.raw, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
    assert await received(world, payment, token) == (0, False)
    # The same packet with the right token goes through: nothing above consumed it.
    assert (await conn.deliver(sent)).code == "fulfill"
    assert await received(world, payment, token) == (10, False)


async def test_fulfil_credits_and_replies_with_room_and_asset(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    answer = await conn.send(300, min_amount=300, frames=(ConnectionNewAddress("test.sender.abc"), StreamMoney(1, 1)))
    assert answer.code == "fulfill"
    assert answer.frames(ConnectionAssetDetails) == [ConnectionAssetDetails("USD", 2)]
    assert answer.max_money() == StreamMaxMoney(1, 1000, 300)
    assert await received(world, payment, token) == (300, False)

    # An operator credit and ILP packets move the same total: one code path.
    credited = await world.operator.credit(payment["id"], "100", "op-1")
    assert credited.status_code == 200, credited.text
    answer = await conn.send(250)
    assert answer.code == "fulfill" and answer.max_money() == StreamMaxMoney(1, 1000, 650)
    answer = await conn.send(350)
    assert answer.code == "fulfill" and answer.max_money() == StreamMaxMoney(1, 1000, 1000)
    assert await received(world, payment, token) == (1000, True)
    public = await world.http.get(payment["id"])
    assert public.json()["receivedAmount"] == usd(1000)


async def test_money_split_over_streams_each_get_room(world, token) -> None:
    payment = await new_payment(world, token)  # no incomingAmount: uncapped
    conn = connect(world, payment)
    answer = await conn.send(90, frames=(StreamMoney(1, 2), StreamMoney(3, 1)))
    assert answer.code == "fulfill"
    assert answer.frames(StreamMaxMoney) == [StreamMaxMoney(1, U64_MAX, 90), StreamMaxMoney(3, U64_MAX, 90)]
    assert await received(world, payment, token) == (90, False)


async def test_resent_prepare_gets_the_same_fulfill_and_never_credits_twice(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    first = conn.build(120)
    assert (await conn.deliver(first)).code == "fulfill"
    for _ in range(3):
        again = await conn.deliver(first)  # deliver checks the fulfillment against the condition
        assert again.code == "fulfill"
        assert again.max_money() == StreamMaxMoney(1, 1000, 120)
    # The same condition with another amount (a connector changed it): refused, no credit.
    other = Prepare(50, first.prepare.expires_at, first.prepare.execution_condition, conn.destination, first.prepare.data)
    assert decode_packet((await conn.post(other.encode())).content).code == "F99"
    # Concurrent copies of one fresh packet: all fulfilled, one credit.
    fresh = conn.build(7)
    answers = await asyncio.gather(*(conn.deliver(fresh) for _ in range(8)))
    assert [a.code for a in answers] == ["fulfill"] * 8
    assert await received(world, payment, token) == (127, False)
    # A new packet that reuses a sequence number is a new packet: credited.
    assert (await conn.send(3, sequence=first.sequence)).code == "fulfill"
    assert await received(world, payment, token) == (130, False)


async def test_tampered_or_foreign_address_credits_nothing(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    prefix, segment = conn.destination.rsplit(".", 1)
    flipped = segment[:10] + ("A" if segment[10] != "A" else "B") + segment[11:]
    for destination in (
        f"{prefix}.{flipped}",
        f"{prefix}.{segment[:-2]}",
        f"test.elsewhere.{segment}",
        f"{prefix}.{segment[:16]}",
        f"{prefix}.",
        "test.opay",
    ):
        answer = await conn.send(40, destination=destination)
        assert answer.code == "F02", destination
        assert answer.stream is None
    assert await received(world, payment, token) == (0, False)
    # Extra segments after the token still reach the payment (senders may append).
    assert (await conn.send(40, destination=f"{conn.destination}.sub")).code == "fulfill"
    assert await received(world, payment, token) == (40, False)


async def test_wrong_shared_secret_is_f06_and_credits_nothing(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    answer = await conn.send(40, secret=os.urandom(32))
    assert answer.code == "F06" and answer.stream is None
    # Another payment's secret opens nothing either.
    other = await new_payment(world, token, incomingAmount=usd(1000))
    answer = await conn.send(40, secret=b64url_decode(ilp_method(other)["sharedSecret"]))
    assert answer.code == "F06"
    # Garbage data.
    sent = conn.build(40)
    garbage = Prepare(40, sent.prepare.expires_at, sent.prepare.execution_condition, conn.destination, os.urandom(64)).encode()
    assert decode_packet((await conn.post(garbage)).content).code == "F06"
    assert await received(world, payment, token) == (0, False)
    assert await received(world, other, token) == (0, False)


async def test_expired_prepare_is_r00(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    answer = await conn.send(40, expires_in=-1)
    assert answer.code == "R00"
    assert await received(world, payment, token) == (0, False)


async def test_not_an_ilp_prepare_is_f01(world) -> None:
    conn = Connection(world.http, f"{world.server.public_url}/ilp", "x", b"")
    for body in (b"", b"\x0c\x05abc", Reject("F00").encode(), os.urandom(100)):
        response = await conn.post(body)
        assert response.status_code == 200
        assert decode_packet(response.content).code == "F01"
    too_big = await conn.post(bytes(64 * 1024))
    assert too_big.status_code == 413


async def test_packet_above_max_is_f08_with_amounts(world, token) -> None:
    payment = await new_payment(world, token)
    conn = connect(world, payment)
    answer = await conn.send(MAX_PACKET + 1)
    assert answer.code == "F08"
    r = Reader(answer.packet.data)
    assert (r.read_uint64(), r.read_uint64()) == (MAX_PACKET + 1, MAX_PACKET)
    assert (await conn.send(MAX_PACKET)).code == "fulfill"
    assert await received(world, payment, token) == (MAX_PACKET, False)


async def test_probes_and_short_amounts_are_f99_with_arrived_amount(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    for amount in (0, 1, 999, 5000, MAX_PACKET):  # rate probes: unfulfillable conditions
        answer = await conn.send(amount, fulfillable=False)
        assert answer.code == "F99" and answer.stream.prepare_amount == amount
        assert answer.frames(ConnectionAssetDetails) == [ConnectionAssetDetails("USD", 2)]
        assert answer.max_money() == StreamMaxMoney(1, 1000, 0)
    answer = await conn.send(50, min_amount=51)  # less arrived than the sender's minimum
    assert answer.code == "F99" and answer.max_money() == StreamMaxMoney(1, 1000, 0)
    # Zero-amount fulfillable packets (control frames only) are fulfilled and credit nothing.
    answer = await conn.send(0, frames=(ConnectionNewAddress("test.sender"),))
    assert answer.code == "fulfill" and answer.frames(ConnectionAssetDetails)
    # A closing sender gets a close back, and money with it is not taken.
    answer = await conn.send(10, frames=(StreamMoney(1, 1), ConnectionClose(StreamErrorCode.NO_ERROR, "")))
    assert answer.code == "F99" and answer.frames(ConnectionClose)
    assert await received(world, payment, token) == (0, False)


async def test_over_cap_is_refused_whole_and_cap_is_exact(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    assert (await conn.send(600)).code == "fulfill"
    refused = await conn.send(401)
    assert refused.code == "F99"
    assert refused.max_money() == StreamMaxMoney(1, 1000, 600)
    assert await received(world, payment, token) == (600, False)
    exact = await conn.send(400)
    assert exact.code == "fulfill" and exact.max_money() == StreamMaxMoney(1, 1000, 1000)
    assert await received(world, payment, token) == (1000, True)
    after = await conn.send(1)
    assert after.code == "F99" and after.max_money() == StreamMaxMoney(1, 1000, 1000)
    assert after.frames(ConnectionClose)[0].code == StreamErrorCode.NO_ERROR
    assert await received(world, payment, token) == (1000, True)


async def test_concurrent_packets_never_pass_the_cap(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conns = [connect(world, (await world.client.request("GET", payment["id"], token=token)).json()) for _ in range(4)]
    answers = await asyncio.gather(*(c.send(30) for c in conns for _ in range(15)))  # 1800 offered
    fulfilled = [a for a in answers if a.code == "fulfill"]
    assert len(fulfilled) == 33  # 990: one more 30 would pass 1000
    assert all(a.code == "F99" for a in answers if a.code != "fulfill")
    assert {a.max_money().receive_max for a in answers} == {1000}  # never lowered
    assert await received(world, payment, token) == (990, False)
    assert (await conns[0].send(10)).code == "fulfill"
    assert await received(world, payment, token) == (1000, True)


async def test_completed_payment_rejects_and_credits_nothing(world, token) -> None:
    payment = await new_payment(world, token, incomingAmount=usd(1000))
    conn = connect(world, payment)
    assert (await conn.send(100)).code == "fulfill"  # the receiver now knows this payment
    done = await world.client.request("POST", f"{payment['id']}/complete", token=token)
    assert done.status_code == 200, done.text
    for answer in (await conn.send(100), await conn.send(0, fulfillable=False), await conn.send(0)):
        assert answer.code == "F99"
        assert answer.frames(ConnectionClose)
    assert await received(world, payment, token) == (100, True)
    # Credentials fetched afterwards: none are offered, and the old ones still get nothing.
    fetched = await world.client.request("GET", payment["id"], token=token)
    assert fetched.json()["methods"] == []
    fresh = await new_payment(world, token, incomingAmount=usd(1000))
    await world.client.request("POST", f"{fresh['id']}/complete", token=token)
    assert (await connect(world, fresh).send(5)).code == "F99"  # first sight of it: a lookup
    assert await received(world, fresh, token) == (0, True)


async def test_expired_payment_rejects_and_credits_nothing(world, token) -> None:
    expires = datetime.now(timezone.utc) + timedelta(seconds=3)
    at = expires.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires.microsecond // 1000:03d}Z"
    known = await new_payment(world, token, incomingAmount=usd(1000), expiresAt=at)
    unseen = await new_payment(world, token, incomingAmount=usd(1000), expiresAt=at)
    conn = connect(world, known)
    assert (await conn.send(100)).code == "fulfill"
    while datetime.now(timezone.utc) <= expires + timedelta(milliseconds=50):
        await asyncio.sleep(0.1)
    for c in (conn, connect(world, unseen)):
        answer = await c.send(100)
        assert answer.code == "F99"
        assert answer.frames(ConnectionClose)[0].code == StreamErrorCode.APPLICATION_ERROR
    assert (await received(world, known, token))[0] == 100
    assert (await received(world, unseen, token))[0] == 0


async def test_unknown_payment_and_other_asset_are_f02(world, token) -> None:
    mint = CredentialMint(b64url_decode(STREAM_SECRET), "test.opay")
    ghost = mint.issue(str(uuid.uuid4()))
    conn = Connection(world.http, f"{world.server.public_url}/ilp", ghost.ilp_address, ghost.shared_secret)
    assert (await conn.send(10)).code == "F02"
    assert (await conn.send(10, fulfillable=False)).code == "F02"
    # A wallet address in EUR: its amounts are not in the link's USD, so ILP refuses them.
    eur = await world.operator.wallet_address(f"eur-{uuid.uuid4().hex[:8]}", "EUR", 2)
    created = await world.client.request(
        "POST", f"{world.server.public_url}/incoming-payments", json={"walletAddress": eur["id"]}, token=await world.token(
            [{"type": "incoming-payment", "actions": ["create", "read"], "identifier": eur["id"]}]
        )
    )
    assert created.status_code == 201, created.text
    assert created.json()["methods"] == [], "no usable ILP credentials for another asset"
    # Credentials minted for it anyway (as a stale client might hold) are refused.
    minted = mint.issue(created.json()["id"].rsplit("/", 1)[1])
    answer = await Connection(world.http, f"{world.server.public_url}/ilp", minted.ilp_address, minted.shared_secret).send(10)
    assert answer.code == "F02"


async def test_fresh_credentials_on_every_create_and_get(world, token) -> None:
    mint = CredentialMint(b64url_decode(STREAM_SECRET), "test.opay")
    seen_addresses: set[str] = set()
    seen_secrets: set[str] = set()
    for _ in range(3):
        payment = await new_payment(world, token, incomingAmount=usd(1000))
        payment_uuid = payment["id"].rsplit("/", 1)[1]
        views = [payment] + [(await world.client.request("GET", payment["id"], token=token)).json() for _ in range(2)]
        for view in views:
            method = ilp_method(view)
            assert method["ilpAddress"] not in seen_addresses and method["sharedSecret"] not in seen_secrets
            seen_addresses.add(method["ilpAddress"])
            seen_secrets.add(method["sharedSecret"])
            opened = mint.open(method["ilpAddress"])
            assert opened is not None and opened[0] == payment_uuid
            assert mint.shared_secret_for(opened[1]) == b64url_decode(method["sharedSecret"])
        # Every set of credentials handed out pays into this payment.
        for view in views:
            assert (await connect(world, view).send(10)).code == "fulfill"
        assert await received(world, payment, token) == (30, False)
    # The unauthenticated public view never shows credentials.
    public = await world.http.get(payment["id"])
    assert "methods" not in public.json()


# ---------------------------------------------------------------- dedicated servers


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory):
    """Restarted and then has its Redis killed; the stream secret is the one kept in Redis."""
    process = OpayServer(Path(tmp_path_factory.mktemp("ilp-own")), extra_env=ilp_env())
    process.start()
    yield process
    process.stop()


async def test_credentials_survive_a_restart(own_server) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        world = await make_world(own_server, http)
        token = await world.token()
        payment = await new_payment(world, token, incomingAmount=usd(1000))
        conn = connect(world, payment)
        assert (await conn.send(100)).code == "fulfill"
        before = conn.build(200, expires_in=600)
        replay = conn.sent[0]
        own_server.stop()
        own_server.start()
        assert (await conn.deliver(before)).code == "fulfill"  # built before the restart
        assert (await conn.deliver(replay)).code == "fulfill"  # its credit is remembered: no second one
        assert (await conn.send(300)).code == "fulfill"
        assert await received(world, payment, token) == (600, False)


async def test_redis_down_is_t00_never_fulfill(own_server) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        world = await make_world(own_server, http)
        token = await world.token()
        payment = await new_payment(world, token, incomingAmount=usd(1000))
        known = connect(world, payment)
        assert (await known.send(100)).code == "fulfill"
        unseen = connect(world, await new_payment(world, token, incomingAmount=usd(1000)))

        assert own_server.process is not None
        pid = listening_pid(own_server.redis_port, own_server.process.pid)
        assert b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "redis-server did not die"
            await asyncio.sleep(0.05)

        for answer in (
            await known.send(100),  # straight to the actor: its write fails
            await known.send(100, fulfillable=False),  # a probe needs the payment's state
            await unseen.send(100),
        ):
            assert answer.code == "T00", answer
            assert answer.stream is None


async def test_a_long_connection_keeps_crediting_and_never_credits_a_resend(world, token) -> None:
    """Many packets on one connection: every fresh one is fulfilled and credited once, and
    resends of recent and old ones alike are fulfilled again and credit nothing."""
    payment = await new_payment(world, token)
    conn = connect(world, payment)
    answers = [await conn.send(1) for _ in range(300)]
    assert [answer.code for answer in answers] == ["fulfill"] * 300
    for sent in (conn.sent[-1], conn.sent[-10], conn.sent[5]):
        assert (await conn.deliver(sent)).code == "fulfill"
    assert await received(world, payment, token) == (300, False)
