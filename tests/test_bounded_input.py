"""Free-form input is bounded at the edge and cannot break the pipeline; internal journals
cannot be named from outside (issue 7, items 3 and 4).

Metadata is kept as the JSON text the client sent: a number too large for any internal
codec (10**30) is stored and shown exactly, and never hangs the commands batched with it.
Every refusal is a 400 that stores nothing (Redis key counts, as in test_bad_input).
A credit's journal entry is named by its source (operator, settlement, ILP), so no
operator idempotency key can stand for a settlement or an ILP packet's entry.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid

import anyio
import httpx
import pytest

from opay.actors.incoming_payments import journal_key
from opay.actors.messages import CreditIncomingPayment, Credited
from opay.domain import packet_dedupe
from opay.http.wire import METADATA_MAX_DEPTH
from opay.persistence import keys
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.settings import Settings
from tests.test_bad_input import assert_error, store, token  # noqa: F401 (fixtures: Redis key counts, a token)
from tests.test_entity_host import client_for, handle, host_for, open_on
from tests.test_outgoing_payments import Payer, make_payer, usd

pytestmark = pytest.mark.anyio

METADATA_MAX = Settings().metadata_max_bytes  # the session server runs on the defaults
HUGE = "1" + "0" * 30  # 10**30: past int64 and uint64, so no msgpack integer holds it
# Exact as written: a float would read 0.1 and a 64-bit integer could not hold HUGE.
EXACT = ('{"x":' + HUGE + ',"y":0.1000000000000000000001,"z":[-' + HUGE + ',{"deep":"\\u00e9"}]}').encode()


def incoming_body(world, metadata: bytes) -> bytes:
    return b'{"walletAddress":"' + world.receiver["id"].encode() + b'","metadata":' + metadata + b"}"


async def post_incoming(world, token: str, body: bytes) -> httpx.Response:
    return await world.client.request("POST", f"{world.server.public_url}/incoming-payments", body=body, token=token)


def metadata_of(response: httpx.Response) -> bytes:
    """The metadata's JSON text exactly as the server wrote it (views are compact JSON)."""
    content = response.content
    start = content.index(b'"metadata":') + len(b'"metadata":')
    return content[start : start + len(EXACT)]


def nested(depth: int) -> bytes:
    """A metadata object whose containers nest `depth` levels (the object itself is one)."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def padded(size: int) -> bytes:
    """A metadata object of exactly `size` bytes of JSON."""
    return b'{"pad":"' + b"x" * (size - len(b'{"pad":""}')) + b'"}'


# --- item 3: metadata -------------------------------------------------------------------


async def test_huge_number_in_metadata_is_kept_exactly_and_hangs_nothing(world, token) -> None:
    """The reproduced hang: 10**30 used to make the router's batch unencodable, so every
    create batched with it waited forever. Now it is a 201 and its batch-mates too."""
    answers: list[httpx.Response | None] = [None] * 51

    async def create(n: int) -> None:
        body = incoming_body(world, EXACT if n == 0 else b'{"n":' + str(n).encode() + b"}")
        answers[n] = await post_incoming(world, token, body)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for n in range(len(answers)):
                group.start_soon(create, n)
    assert all(answer is not None and answer.status_code == 201 for answer in answers), [
        answer.text for answer in answers if answer is not None and answer.status_code != 201
    ]
    created = answers[0]
    assert created is not None and metadata_of(created) == EXACT
    assert created.json()["metadata"]["x"] == 10**30

    fetched = await world.client.request("GET", created.json()["id"], token=token)
    assert fetched.status_code == 200 and metadata_of(fetched) == EXACT
    wallet = urllib.parse.quote(world.receiver["id"], safe="")
    listed = await world.client.request(
        "GET", f"{world.server.public_url}/incoming-payments?wallet-address={wallet}&first=100", token=token
    )
    assert listed.status_code == 200, listed.text
    mine = [item for item in listed.json()["result"] if item["id"] == created.json()["id"]]
    assert mine and mine[0]["metadata"] == created.json()["metadata"]
    assert EXACT in listed.content
    others = {answer.json()["metadata"]["n"] for answer in answers[1:] if answer is not None}
    assert others == set(range(1, 51))


async def test_metadata_at_the_size_limit_is_accepted_and_one_byte_more_refused(world, token, store) -> None:
    at_limit = await post_incoming(world, token, incoming_body(world, padded(METADATA_MAX)))
    assert at_limit.status_code == 201, at_limit.text
    async with store.unchanged():
        error = assert_error(await post_incoming(world, token, incoming_body(world, padded(METADATA_MAX + 1))), 400, "invalid_request")
        assert "metadata" in error["description"] and error["details"] == {"field": "metadata", "maxBytes": METADATA_MAX}


async def test_metadata_nested_too_deeply_is_refused(world, token, store) -> None:
    assert (await post_incoming(world, token, incoming_body(world, nested(METADATA_MAX_DEPTH)))).status_code == 201
    async with store.unchanged():
        error = assert_error(await post_incoming(world, token, incoming_body(world, nested(METADATA_MAX_DEPTH + 1))), 400, "invalid_request")
        assert "metadata" in error["description"] and error["details"]["maxDepth"] == METADATA_MAX_DEPTH
        # Nesting deep enough to exhaust the decoder's recursion (within the body limit): a 400, never a 500.
        abyss = b"[" * 20_000 + b"]" * 20_000
        assert_error(await post_incoming(world, token, incoming_body(world, abyss)), 400, "invalid_request")
    # Brackets inside strings are text, not nesting.
    shallow = b'{"a":"' + b"[" * 100 + b'{{\\"[["}'  # an escaped quote does not end the string
    assert (await post_incoming(world, token, incoming_body(world, shallow))).status_code == 201


@pytest.mark.parametrize("metadata", [b'"text"', b"42", b"true", b'["a"]', b"[]"], ids=["string", "number", "bool", "array", "empty-array"])
async def test_metadata_that_is_not_an_object_is_refused(world, token, store, metadata) -> None:
    """The request struct takes any JSON text now, so the edge check is what refuses these."""
    async with store.unchanged():
        error = assert_error(await post_incoming(world, token, incoming_body(world, metadata)), 400, "invalid_request")
        assert "metadata" in error["description"]


async def test_metadata_with_invalid_utf8_is_refused(world, token, store) -> None:
    async with store.unchanged():
        error = assert_error(await post_incoming(world, token, incoming_body(world, b'{"x":"\xff"}')), 400, "invalid_request")
        assert "metadata" in error["description"]


async def test_null_or_absent_metadata_is_no_metadata(world, token) -> None:
    for body in (incoming_body(world, b"null"), b'{"walletAddress":"' + world.receiver["id"].encode() + b'"}'):
        created = await post_incoming(world, token, body)
        assert created.status_code == 201, created.text
        assert "metadata" not in created.json()


# --- item 3: outgoing-payment metadata ----------------------------------------------------


async def pay_raw(payer: Payer, token: str, fields: bytes) -> httpx.Response:
    body = b'{"walletAddress":"' + payer.sender["id"].encode() + b'",' + fields + b"}"
    return await payer.world.client.request("POST", f"{payer.world.server.public_url}/outgoing-payments", body=body, token=token)


async def test_outgoing_payment_metadata_is_kept_exactly_and_bounded(world, store) -> None:
    payer = await make_payer(world)
    incoming = await payer.incoming()
    token = await world.outgoing_token(None, wallet=payer.sender)
    quote = await payer.quote(incoming["id"], debitAmount=usd(100))
    quote_field = b'"quoteId":"' + quote["id"].encode() + b'"'

    async with store.unchanged():
        too_big = await pay_raw(payer, token, quote_field + b',"metadata":' + padded(METADATA_MAX + 1))
        assert "metadata" in assert_error(too_big, 400, "invalid_request")["description"]
        too_deep = await pay_raw(payer, token, quote_field + b',"metadata":' + nested(METADATA_MAX_DEPTH + 1))
        assert "metadata" in assert_error(too_deep, 400, "invalid_request")["description"]
        not_object = await pay_raw(payer, token, quote_field + b',"metadata":["a"]')
        assert "metadata" in assert_error(not_object, 400, "invalid_request")["description"]

    # The quote is still unbound: the refused creates touched nothing.
    with anyio.fail_after(60):
        created = await pay_raw(payer, token, quote_field + b',"metadata":' + EXACT)
    assert created.status_code == 201, created.text
    assert metadata_of(created) == EXACT
    done = await payer.settled(token, created.json()["id"])
    assert not done["failed"] and done["metadata"]["x"] == 10**30
    fetched = await world.client.request("GET", created.json()["id"], token=token)
    assert fetched.status_code == 200 and metadata_of(fetched) == EXACT
    listed = await world.client.request(
        "GET", f"{world.server.public_url}/outgoing-payments?wallet-address={payer.sender['id']}&first=10", token=token
    )
    assert listed.status_code == 200 and EXACT in listed.content


# --- item 3: over-long strings --------------------------------------------------------------


async def test_over_long_strings_are_refused_and_store_nothing(world, token, store) -> None:
    long_url = world.receiver["id"] + "/" + "a" * 2048
    payer = await make_payer(world)
    incoming = await payer.incoming()
    out_token = await world.outgoing_token(None, wallet=payer.sender)
    async with store.unchanged():
        assert_error(await world.create_payment(token, walletAddress=long_url), 400, "invalid_request")
        assert_error(await world.create_payment(token, expiresAt="2100-01-01T00:00:00" + "0" * 100 + "Z"), 400, "invalid_request")
        quote = lambda **body: world.client.request(  # noqa: E731
            "POST", f"{world.server.public_url}/quotes", json={"walletAddress": payer.sender["id"], "receiver": incoming["id"], "method": "ilp", **body}, token=payer.quote_token
        )
        assert_error(await quote(receiver=incoming["id"] + "x" * 2048), 400, "invalid_request")
        assert_error(await quote(walletAddress=long_url), 400, "invalid_request")
        assert_error(await quote(method="ilp" * 100), 400, "invalid_request")
        assert_error(await payer.pay(out_token, quoteId=f"{world.server.public_url}/quotes/" + "q" * 2048), 400, "invalid_request")
        assert_error(await payer.pay(out_token, incomingPayment=incoming["id"] + "x" * 2048, debitAmount=usd(5)), 400, "invalid_request")
        assert_error(await payer.pay(out_token, walletAddress=long_url, quoteId=incoming["id"]), 400, "invalid_request")


# --- item 3: a priced amount past uint64 ----------------------------------------------------


async def test_fixed_debit_quote_delivering_past_uint64_is_400_and_stores_nothing(world, store) -> None:
    """USD -> JPY at 150: a debit near 2^64 cents converts to about 1.5 * 2^64 yen."""
    code = f"U{uuid.uuid4().hex[:6].upper()}"  # a dollar of this test's own (scale 2), so the rate is ours alone
    sender = await world.operator.wallet_address(f"payer-{uuid.uuid4().hex[:8]}", code, 2)
    jpy = await world.operator.wallet_address(f"yen-{uuid.uuid4().hex[:8]}", "JPY", 0)
    rates = await world.http.put(f"{world.server.operator_url}/rates/{code}", json={"JPY": "150"}, headers=world.server.operator_headers)
    assert rates.status_code == 200, rates.text
    created = await world.create_payment(await world.token(), walletAddress=jpy["id"])  # no incomingAmount: no cap
    assert created.status_code == 201, created.text
    receiver = created.json()["id"]
    quote_token = await world.token([{"type": "quote", "actions": ["create", "read"]}])
    debit = {"value": str(2**64 - 1), "assetCode": code, "assetScale": 2}

    async def post_quote(**amounts) -> httpx.Response:
        with anyio.fail_after(60):
            return await world.client.request(
                "POST",
                f"{world.server.public_url}/quotes",
                json={"walletAddress": sender["id"], "receiver": receiver, "method": "ilp", **amounts},
                token=quote_token,
            )

    out_token = await world.outgoing_token(None, wallet=sender)
    async with store.unchanged():
        error = assert_error(await post_quote(debitAmount=debit), 400, "invalid_amount")
        assert "uint64" in error["description"] and error["details"] == {"field": "receiveAmount"}
        # The same price without a quote (an outgoing payment priced on the spot) is refused alike.
        with anyio.fail_after(60):
            paid = await world.client.request(
                "POST",
                f"{world.server.public_url}/outgoing-payments",
                json={"walletAddress": sender["id"], "incomingPayment": receiver, "debitAmount": debit},
                token=out_token,
            )
        assert_error(paid, 400, "invalid_amount")
    # Just inside the range still prices: (2^64 - 1) * 100 // 150 cents deliver 2^64 - 1 yen at most.
    fits = await post_quote(debitAmount={**debit, "value": str((2**64 - 1) * 100 // 150)})
    assert fits.status_code == 201, fits.text
    assert int(fits.json()["receiveAmount"]["value"]) <= 2**64 - 1


# --- item 4: journal namespaces ---------------------------------------------------------------


async def test_operator_keys_cannot_stand_for_a_settlement(world) -> None:
    """An operator credit keyed `op:<payment>` (the old settlement key) or with the exact
    journal key the settlement now uses cannot make the settlement read as done."""
    payer = await make_payer(world)
    incoming = await payer.incoming()  # no cap, so every credit below fits
    quote = await payer.quote(incoming["id"], receiveAmount=usd(500))
    payment_uuid = quote["id"].rsplit("/", 1)[1]  # a payment made from a quote takes its id
    for key in (f"op:{payment_uuid}", journal_key("settlement", payment_uuid)):
        credited = await world.operator.credit(incoming["id"], "500", key)
        assert credited.status_code == 200, credited.text
    # The same operator key again is a replay: answered with the first outcome, not applied.
    replay = await world.operator.credit(incoming["id"], "500", f"op:{payment_uuid}")
    assert replay.status_code == 200 and replay.json()["receivedAmount"] == usd(500)
    read_token = await world.token()
    assert (await world.client.request("GET", incoming["id"], token=read_token)).json()["receivedAmount"] == usd(1000)

    token = await world.outgoing_token(None, wallet=payer.sender)
    created = await payer.pay(token, quoteId=quote["id"])
    assert created.status_code == 201, created.text
    assert created.json()["id"].endswith(payment_uuid)
    done = await payer.settled(token, created.json()["id"])
    assert not done["failed"] and done["sentAmount"] == quote["debitAmount"], done
    after = (await world.client.request("GET", incoming["id"], token=read_token)).json()
    assert after["receivedAmount"] == usd(1500), after


def test_operator_keys_cannot_disturb_an_ilp_packet_entry(embedded: EmbeddedRedis) -> None:
    host = host_for(embedded)
    entity_id = open_on(host, incoming_amount=None)
    condition = os.urandom(32)
    expires_at_ms = int(time.time() * 1000) + 60_000
    bucket = journal_key("ilp", packet_dedupe.bucket_name(condition))

    def ilp(amount: int = 10) -> Credited:
        [reply] = handle(host, [CreditIncomingPayment(entity_id, amount, "ilp", condition=condition, expires_at_ms=expires_at_ms)])
        assert isinstance(reply, Credited), reply
        return reply

    assert ilp().outcome.accepted
    for key in (f"ilpc:{bucket}", bucket, packet_dedupe.bucket_name(condition)):
        [reply] = handle(host, [CreditIncomingPayment(entity_id, 7, "operator", key)])
        assert isinstance(reply, Credited) and reply.outcome.accepted and not reply.replayed, reply
    # A fresh host reads the journal from Redis: the packet's entry is intact beside the operator's.
    host = host_for(embedded)
    again = ilp()
    assert again.replayed and again.outcome.accepted and again.received_now == 31
    journal = client_for(embedded).hgetall(keys.journal(entity_id, 0))  # host_for: shard 0
    names = {name.decode() for name in journal}
    assert names == {
        bucket,
        journal_key("operator", f"ilpc:{bucket}"),
        journal_key("operator", bucket),
        journal_key("operator", packet_dedupe.bucket_name(condition)),
    }