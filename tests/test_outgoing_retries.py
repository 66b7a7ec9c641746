"""A create retried after a lost reply is the same payment (issue 8, item 5).

The reply to a create can be lost (a front end killed after the write, a client timeout):
the client retries. A retry from a quote, or without a quote under the same
`Idempotency-Key`, gets the payment its first attempt made, with the very 201 body of that
first answer; the grant's spending counts it once and the receiver is credited once. A
retry whose first attempt was cut off before the payment opened is told what became of it:
if the grant gave its share back, 409 `payment_abandoned` (create it again); after the
quote's expiresAt, 409 `quote_expired`. A front end cut off between reserving and opening
is played by a short Ray driver that sends the first two commands of the create flow to the
server's own shards, exactly as the front end does, and then stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from opay.domain.outgoing_payment import Abandoned, OutgoingPayment
from opay.http import signatures
from opay.http.outgoing_payments import keyed_payment_id
from opay.actors.registry import codec
from opay.persistence.keys import shard_of
from opay.persistence import keys
from tests.conftest import make_world
from tests.support import OpayServer, session_members
from tests.test_outgoing_payments import Payer, make_payer, rfc3339, usd

pytestmark = pytest.mark.anyio

ABANDON_SECONDS = 40  # a grant asks about an unconfirmed reservation 10 s after it (opay/actors/grant_spends.py)


@pytest.fixture
async def payer(world) -> Payer:
    return await make_payer(world)


async def signed_create(payer: Payer, token: str, body: dict, idempotency_key: str | None = None) -> tuple[bytes, dict[str, str]]:
    """One signed create, built once so that it can be sent again byte for byte (a retry)."""
    url = f"{payer.world.server.public_url}/outgoing-payments"
    content = msgspec.json.encode({"walletAddress": payer.sender["id"], **body})
    client = payer.world.client
    headers = signatures.sign(
        method="POST",
        url=url,
        headers={"content-type": "application/json", "authorization": f"GNAP {token}"},
        body=content,
        private_key=client.private_key,
        keyid=client.keyid,
    )
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    return content, headers


async def send(payer: Payer, request: tuple[bytes, dict[str, str]]) -> httpx.Response:
    content, headers = request
    return await payer.world.http.post(f"{payer.world.server.public_url}/outgoing-payments", content=content, headers=headers)


async def spent(payer: Payer, token: str) -> dict:
    answer = await payer.world.client.request("GET", f"{payer.world.server.public_url}/outgoing-payment-grant", token=token)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def received(payer: Payer, incoming: dict) -> dict:
    answer = await payer.world.client.request("GET", incoming["id"], token=await payer.world.token())
    assert answer.status_code == 200, answer.text
    return answer.json()["receivedAmount"]


async def listed(payer: Payer, token: str) -> list[str]:
    url = f"{payer.world.server.public_url}/outgoing-payments?wallet-address={payer.sender['id']}&first=50"
    return [item["id"] for item in await payer.world.list_all(url, token)]


async def test_the_same_signed_create_sent_twice_is_one_payment_with_one_answer(payer: Payer) -> None:
    incoming = await payer.incoming(incomingAmount=usd(500))
    quote = await payer.quote(incoming["id"], receiveAmount=usd(300))
    token = await payer.world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
    create = await signed_create(payer, token, {"quoteId": quote["id"], "metadata": {"order": "R-1"}})
    first = await send(payer, create)
    assert first.status_code == 201, first.text
    # The reply was lost: the client sends the very same request again.
    again = await send(payer, create)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert first.json()["grantSpentDebitAmount"] == quote["debitAmount"]

    # The payment settles, the grant spends more on another payment; a retry still gets the
    # first answer (GET tells what happened since), and nothing is counted twice.
    done = await payer.settled(token, first.json()["id"])
    assert not done["failed"] and done["sentAmount"] == quote["debitAmount"]
    other = await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(50))
    assert other.status_code == 201, other.text
    late = await send(payer, create)
    assert late.status_code == 201 and late.json() == first.json(), late.text
    assert await spent(payer, token) == {"spentDebitAmount": usd(350), "spentReceiveAmount": None}
    assert sorted(await listed(payer, token)) == sorted([first.json()["id"], other.json()["id"]])
    with anyio.fail_after(20):
        while await received(payer, incoming) != usd(350):
            await anyio.sleep(0.05)
    await anyio.sleep(0.3)
    assert await received(payer, incoming) == usd(350), "credited once per payment"

    # The same quote with another body is not a retry of this request.
    different = await payer.pay(token, quoteId=quote["id"], metadata={"order": "R-2"})
    assert different.status_code == 409 and different.json()["error"]["code"] == "quote_used", different.text


async def test_the_same_quote_under_another_grant_is_refused_without_counting(payer: Payer) -> None:
    incoming = await payer.incoming()
    quote = await payer.quote(incoming["id"], receiveAmount=usd(40))
    mine = await payer.world.outgoing_token({"debitAmount": usd(100)}, wallet=payer.sender)
    theirs = await payer.world.outgoing_token({"debitAmount": usd(100)}, wallet=payer.sender)
    first = await payer.pay(mine, quoteId=quote["id"])
    assert first.status_code == 201, first.text
    for _ in range(2):
        other = await payer.pay(theirs, quoteId=quote["id"])
        assert other.status_code == 409 and other.json()["error"]["code"] == "quote_used", other.text
    assert (await spent(payer, theirs))["spentDebitAmount"] == usd(0)
    assert (await spent(payer, mine))["spentDebitAmount"] == quote["debitAmount"]


async def test_a_retry_after_the_quote_expired_gets_the_payment_made_in_time(payer: Payer) -> None:
    soon = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=2))
    incoming = await payer.incoming(expiresAt=soon)
    quote = await payer.quote(incoming["id"], receiveAmount=usd(5))
    token = await payer.world.outgoing_token({"debitAmount": usd(100)}, wallet=payer.sender)
    create = await signed_create(payer, token, {"quoteId": quote["id"]})
    first = await send(payer, create)
    assert first.status_code == 201, first.text
    await anyio.sleep(2.2)
    again = await payer.pay(token, quoteId=quote["id"])
    assert again.status_code == 201 and again.json() == first.json(), again.text


async def test_an_idempotency_key_makes_a_quoteless_create_safe_to_retry(payer: Payer) -> None:
    incoming = await payer.incoming()
    token = await payer.world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
    body = {"incomingPayment": incoming["id"], "debitAmount": usd(120), "metadata": {"invoice": 7}}
    key = f'"{uuid.uuid4()}"'
    create = await signed_create(payer, token, body, key)
    first = await send(payer, create)
    assert first.status_code == 201, first.text
    again = await send(payer, create)
    assert again.status_code == 201 and again.json() == first.json(), again.text
    done = await payer.settled(token, first.json()["id"])
    assert not done["failed"]
    late = await send(payer, await signed_create(payer, token, body, key))  # signed anew: the same request
    assert late.status_code == 201 and late.json() == first.json(), late.text
    assert await spent(payer, token) == {"spentDebitAmount": usd(120), "spentReceiveAmount": None}
    assert await listed(payer, token) == [first.json()["id"]]
    await anyio.sleep(0.3)
    assert await received(payer, incoming) == first.json()["receiveAmount"], "credited once"

    # The same key for another request: 422, as the draft says; nothing is made or counted.
    for changed in ({**body, "debitAmount": usd(121)}, {**body, "metadata": {"invoice": 8}}, {k: v for k, v in body.items() if k != "metadata"}):
        reused = await send(payer, await signed_create(payer, token, changed, key))
        assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused", reused.text
    # A token is a key too; another key is another payment; no key keeps making new ones.
    other = await send(payer, await signed_create(payer, token, body, "order-7b"))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"], other.text
    keyless = [await payer.pay(token, **body) for _ in range(2)]
    assert all(answer.status_code == 201 for answer in keyless)
    assert keyless[0].json()["id"] != keyless[1].json()["id"]
    assert (await spent(payer, token))["spentDebitAmount"] == usd(480)
    for bad in ('"', '"unterminated', "two, keys", '"' + "k" * 256 + '"', '""'):
        refused = await send(payer, await signed_create(payer, token, body, bad))
        assert refused.status_code == 400 and refused.json()["error"]["details"]["field"] == "Idempotency-Key", (bad, refused.text)


async def test_a_create_acknowledged_just_before_a_kill9_is_answered_again_after_restart(tmp_path: Path) -> None:
    server = OpayServer(tmp_path / "retry-kill9").start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            payer = await make_payer(await make_world(server, http))
            incoming = await payer.incoming()
            quote = await payer.quote(incoming["id"], receiveAmount=usd(70))
            token = await payer.world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
            from_quote = await signed_create(payer, token, {"quoteId": quote["id"], "metadata": {"n": 1}})
            keyed = await signed_create(payer, token, {"incomingPayment": incoming["id"], "debitAmount": usd(30)}, '"k-1"')
            firsts = [await send(payer, from_quote), await send(payer, keyed)]
            assert [answer.status_code for answer in firsts] == [201, 201], [answer.text for answer in firsts]
        # The server acknowledged, and dies before the client read it: kill -9, then back.
        await anyio.to_thread.run_sync(server.kill9)
        await anyio.to_thread.run_sync(server.start)
        async with httpx.AsyncClient(timeout=30) as http:
            payer.world.http = payer.world.client.http = payer.world.operator.http = http
            for request, first in zip((from_quote, keyed), firsts):
                for _ in range(3):
                    again = await send(payer, await signed_create(payer, token, *_args_of(request)))
                    assert again.status_code == 201, again.text
                    assert again.json() == first.json()
            for first in firsts:
                assert not (await payer.settled(token, first.json()["id"]))["failed"]
            assert await spent(payer, token) == {"spentDebitAmount": usd(int(quote["debitAmount"]["value"]) + 30), "spentReceiveAmount": None}
            assert sorted(await listed(payer, token)) == sorted(first.json()["id"] for first in firsts)
            with anyio.fail_after(20):
                while await received(payer, incoming) != usd(100):
                    await anyio.sleep(0.05)
    finally:
        server.stop()


def _args_of(request: tuple[bytes, dict[str, str]]) -> tuple[dict, str | None]:
    """The body and Idempotency-Key of a built request, to sign it again (a retry is signed anew)."""
    content, headers = request
    body = json.loads(content)
    body.pop("walletAddress")
    return body, headers.get("idempotency-key")


# A front end that reserved a payment's share and died before opening it: the first two
# commands of the create flow (opay/http/outgoing_payments.py), sent to the server's shards.
CUT_OFF = """
import json, sys, ray
from opay.actors.messages import BindQuote, ReserveSpend, encode
from opay.actors.registry import decode_result
from opay.persistence.keys import shard_of
from opay.domain.amounts import Asset
from opay.domain.grant_spend import Limits
ray.init(address=sys.argv[1], namespace="opay", logging_level="ERROR")
print("ready", flush=True)
plan = json.loads(sys.stdin.readline())
usd = Asset("USD", 2)
for step in plan["steps"]:
    if step["quote"]:
        command = BindQuote("quote:" + step["payment_id"], step["payment_id"], step["wallet"])
    else:
        command = ReserveSpend(
            "grant:" + plan["grant"], step["payment_id"], Limits(debit=plan["limit"], debit_asset=usd),
            step["debit"], usd, step["receive"], usd, step["receiver"],
        )
    shard = ray.get_actor("opay-shard-%d" % shard_of(command.entity_id, 2))
    [reply] = decode_result(ray.get(shard.handle.remote(encode([command])), timeout=30)).replies
    print(type(reply).__name__, reply)
    assert type(reply).__name__ in ("State", "Spent"), reply
"""


def gcs_address(server: OpayServer) -> str:
    assert server.process is not None
    for pid in session_members(server.process.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and args[0].endswith("/raylet"):
            for arg in args:
                if arg.startswith("--gcs-address="):
                    return arg.split("=", 1)[1]
    raise RuntimeError("no raylet in the server's session")


class CutOff:
    """The driver, started (and connected to the server's Ray) before the quotes it binds
    exist, so that a quote expiring seconds later is bound and reserved in time."""

    def __init__(self, server: OpayServer) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}  # as serve's own Ray runs
        self.process = subprocess.Popen(
            [sys.executable, "-c", CUT_OFF, gcs_address(server)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )

    def ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "ready", line + self.process.communicate(timeout=30)[1][-3000:]

    def run(self, grant_id: str, limit: int, steps: list[dict]) -> None:
        out, err = self.process.communicate(json.dumps({"grant": grant_id, "limit": limit, "steps": steps}) + "\n", timeout=120)
        assert self.process.returncode == 0, out[-2000:] + err[-3000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def quote_steps(payer: Payer, quote: dict) -> list[dict]:
    payment_id = quote["id"].rsplit("/", 1)[1]
    value = int(quote["debitAmount"]["value"])
    return [
        {"quote": True, "payment_id": payment_id, "wallet": payer.sender["id"]},
        {"quote": False, "payment_id": payment_id, "debit": value, "receive": int(quote["receiveAmount"]["value"]), "receiver": quote["receiver"]},
    ]


async def test_a_retry_after_its_create_was_cut_off_learns_what_became_of_it(payer: Payer, server: OpayServer) -> None:
    incoming = await payer.incoming()
    limit = 1000
    token = await payer.world.outgoing_token({"debitAmount": usd(limit)}, wallet=payer.sender)
    # The grant's id, as the server knows it: from a payment it made under the grant.
    seed = await payer.pay(token, incomingPayment=incoming["id"], debitAmount=usd(10))
    assert seed.status_code == 201, seed.text
    store = aioredis.Redis.from_url(server.redis_url)
    driver = CutOff(server)
    try:
        await anyio.to_thread.run_sync(driver.ready)

        async def state(payment_id: str):
            raw = await store.hget(keys.entity(f"op:{payment_id}", shard_of(f"op:{payment_id}", 2)), "s")  # the server runs 2 shards
            return None if raw is None else codec.decode_state(raw)

        seeded = await state(seed.json()["id"].rsplit("/", 1)[1])
        assert isinstance(seeded, OutgoingPayment)
        grant_id = seeded.grant_id

        soon = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=4))
        expiring = await payer.incoming(expiresAt=soon)
        given_up = await payer.quote(incoming["id"], receiveAmount=usd(20))
        resumed = await payer.quote(incoming["id"], receiveAmount=usd(30))
        expired = await payer.quote(expiring["id"], receiveAmount=usd(40))
        key = "cut-off-1"
        keyed_id = keyed_payment_id(grant_id, key)
        keyed_body = {"incomingPayment": incoming["id"], "debitAmount": usd(50)}
        steps = quote_steps(payer, given_up) + quote_steps(payer, resumed) + quote_steps(payer, expired)
        steps.append({"quote": False, "payment_id": keyed_id, "debit": 50, "receive": 50, "receiver": incoming["id"]})
        await anyio.to_thread.run_sync(driver.run, grant_id, limit, steps)
        held = 10 + sum(int(q["debitAmount"]["value"]) for q in (given_up, resumed, expired)) + 50
        assert (await spent(payer, token))["spentDebitAmount"] == usd(held), "the cut-off creates hold their shares"

        # Retried soon enough, the create goes on: the payment is made once, counted once.
        again = await payer.pay(token, quoteId=resumed["id"])
        assert again.status_code == 201, again.text
        assert again.json()["grantSpentDebitAmount"] == usd(held)
        # After the quote's expiresAt, a create that never opened its payment never will.
        await anyio.sleep(max(0.0, (datetime.fromisoformat(soon.replace("Z", "+00:00")) - datetime.now(timezone.utc)).total_seconds()) + 0.2)
        assert await state(expired["id"].rsplit("/", 1)[1]) is None, "not given up yet: bound and reserved, never opened"
        late = await payer.pay(token, quoteId=expired["id"])
        assert late.status_code == 409 and late.json()["error"]["code"] == "quote_expired", late.text

        # The grant asks about the reservations still unconfirmed, finds no payment, and gives
        # their shares back; the ids become tombstones.
        with anyio.fail_after(ABANDON_SECONDS):
            for pid in (given_up["id"].rsplit("/", 1)[1], expired["id"].rsplit("/", 1)[1], keyed_id):
                while not isinstance(await state(pid), Abandoned):
                    await anyio.sleep(0.25)
        live = 10 + int(resumed["debitAmount"]["value"])
        with anyio.fail_after(10):
            while (await spent(payer, token))["spentDebitAmount"] != usd(live):
                await anyio.sleep(0.1)

        # Now a retry is told clearly: not made, create it again (not "quote_used").
        for _ in range(2):
            abandoned = await payer.pay(token, quoteId=given_up["id"])
            assert abandoned.status_code == 409, abandoned.text
            error = abandoned.json()["error"]
            assert error["code"] == "payment_abandoned" and "new quote" in error["description"], error
        keyed = await send(payer, await signed_create(payer, token, keyed_body, key))
        assert keyed.status_code == 409 and keyed.json()["error"]["code"] == "payment_abandoned", keyed.text
        assert "Idempotency-Key" in keyed.json()["error"]["description"]
        late = await payer.pay(token, quoteId=expired["id"])
        assert late.status_code == 409 and late.json()["error"]["code"] == "quote_expired", late.text
        assert (await spent(payer, token))["spentDebitAmount"] == usd(live)
        assert sorted(await listed(payer, token)) == sorted([seed.json()["id"], again.json()["id"]])
    finally:
        driver.close()
        await store.aclose()


# The same rules entity by entity, on a real redis-server without Ray (as tests/test_reservations.py).


@pytest.fixture
def cluster(embedded):
    from tests.test_reservations import Cluster

    return Cluster(embedded)


def test_the_payment_entity_answers_a_retry_with_the_payment_and_refuses_the_rest(cluster) -> None:
    from opay.actors.messages import BindQuote, Failed, OpenQuote, State
    from opay.domain.quote import Quote
    from tests.test_reservations import RECEIVER, USD, open_command, reserve

    grant_id, other_grant = str(uuid.uuid4()), str(uuid.uuid4())
    quote_id = str(uuid.uuid4())
    wallet = "http://127.0.0.1/alice"
    expires = cluster.now + 1_000
    quote = Quote(
        id=quote_id, wallet_address=wallet, client="http://127.0.0.1/app", receiver=RECEIVER, debit_asset=USD,
        receive_asset=USD, debit=100, receive=100, fee=0, expires_at_ms=expires, created_at_ms=cluster.now,
    )
    assert isinstance(cluster.ask(OpenQuote(f"quote:{quote_id}", quote))[0], State)
    assert isinstance(cluster.ask(BindQuote(f"quote:{quote_id}", quote_id, wallet))[0], State)
    assert reserve(cluster, f"grant:{grant_id}", quote_id) is not None
    base = open_command(grant_id, quote_id)
    payment = msgspec.structs.replace(base.payment, by_quote=True, grant_spent_debit=100, grant_spent_receive=100)
    command = msgspec.structs.replace(base, payment=payment, quote_expires_at_ms=expires)
    opened, _ = cluster.ask(command)
    assert isinstance(opened, State)
    written = cluster.raw.hget(keys.entity(f"op:{quote_id}", 0), "v")

    # The same request again (later, and after expiresAt too): the payment, unchanged, nothing written.
    cluster.now = expires + 1
    again, tells = cluster.ask(msgspec.structs.replace(command, payment=msgspec.structs.replace(payment, created_at_ms=cluster.now)))
    assert again == opened and tells == []
    assert cluster.raw.hget(keys.entity(f"op:{quote_id}", 0), "v") == written
    unreserved, _ = cluster.ask(msgspec.structs.replace(command, reserved=False))
    assert unreserved == opened
    # Another grant, or another body: not this request's payment.
    theirs = msgspec.structs.replace(command, payment=msgspec.structs.replace(payment, grant_id=other_grant))
    refused, _ = cluster.ask(theirs)
    assert isinstance(refused, Failed) and (refused.kind, refused.code) == ("conflict", "quote_used"), refused
    changed = msgspec.structs.replace(command, payment=msgspec.structs.replace(payment, metadata=b'{"n":2}'))
    refused, _ = cluster.ask(changed)
    assert isinstance(refused, Failed) and refused.code == "quote_used", refused
    keyed = open_command(grant_id, str(uuid.uuid4()))
    assert isinstance(cluster.ask(keyed)[0], State)
    refused, _ = cluster.ask(msgspec.structs.replace(keyed, payment=msgspec.structs.replace(keyed.payment, debit=101)))
    assert isinstance(refused, Failed) and (refused.kind, refused.code) == ("unprocessable", "idempotency_key_reused"), refused

    # After expiresAt, the quote binds no more, even to the payment it is bound to, and a
    # payment never opened stays unopened: refused, nothing written.
    rebound, _ = cluster.ask(BindQuote(f"quote:{quote_id}", quote_id, wallet))
    assert isinstance(rebound, Failed) and rebound.code == "quote_expired", rebound
    late_id = str(uuid.uuid4())
    late = open_command(grant_id, late_id)
    late = msgspec.structs.replace(late, payment=msgspec.structs.replace(late.payment, by_quote=True), quote_expires_at_ms=expires)
    refused, _ = cluster.ask(late)
    assert isinstance(refused, Failed) and refused.code == "quote_expired", refused
    assert cluster.op_state(late_id) is None
    unreserved, _ = cluster.ask(msgspec.structs.replace(open_command(grant_id, str(uuid.uuid4())), reserved=False))
    assert isinstance(unreserved, Failed) and unreserved.kind == "not_found", "nothing reserved: never opened"
