"""kill -9 mid-flow and restart: no outgoing payment acknowledged with 201 is lost, none is settled twice.

A dedicated server (its own Redis and Ray) takes concurrent outgoing payments, from quotes
and without, to uncapped and capped incoming payments, and is killed with SIGKILL (the
whole process group) in the middle of it. After a restart on the same data:

- every 201-acknowledged payment is there with identical terms;
- a client retrying a payment from its quote (the same request) gets the payment its
  first attempt made (201, and the very body of the first 201 if it got one), or it is
  created now, or it is told the create was given up (409 payment_abandoned), never a
  second payment and never `quote_used` for its own payment;
- the timers re-drive settlement: every payment ends completed or failed, none sending;
- each incoming payment received exactly the receive amounts of the completed payments
  paying it (nothing settled twice, nothing lost), and its credit journal agrees;
- the grant's spent amount is exactly the debits of the non-failed payments: one
  reservation per payment, given back once by each failed payment. A create cut off
  between reserving and opening (the client got no answer) leaves a tentative
  reservation: the grant's timer asks the payment id, which becomes a tombstone, and the
  share goes back. Within ORPHAN_SECONDS none is left (opay/actors/grant_spends.py).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aioredis

from opay.persistence.keys import shard_of
from opay.actors.incoming_payments import journal_key
from opay.domain.grant_spend import GrantSpend, Reservation
from opay.domain.incoming_payment import CreditOutcome
from opay.domain.outgoing_payment import Abandoned, OutgoingPayment
from opay.actors.registry import codec
from opay.persistence import keys
from tests.conftest import make_world
from tests.support import OpayServer

pytestmark = pytest.mark.anyio

LOAD_SECONDS = 2.5
SETTLE_SECONDS = 30  # the resume timer re-drives a sending payment every 5 s
ORPHAN_SECONDS = 30  # a grant asks about an unconfirmed reservation 10 s after it, again every 5 s
UNCAPPED = 3
CAPPED = 3
CAP = 400
QUOTE_WORKERS = 8
DIRECT_WORKERS = 8
QUOTE_ACCESS = [{"type": "quote", "actions": ["create", "read"]}]
# What may change after the 201; everything else is the payment's terms.
MOVING = {"sentAmount", "failed", "grantSpentDebitAmount", "grantSpentReceiveAmount"}
CUT_OFF = {"ConnectError", "ReadError", "RemoteProtocolError", "WriteError", "ReadTimeout", "503"}


def usd(value: int | str) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


def terms(view: dict) -> dict:
    return {name: value for name, value in view.items() if name not in MOVING}


def uuid_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def own_server(tmp_path: Path):
    server = OpayServer(tmp_path / "outgoing-crash")
    server.start()
    yield server
    if server.process is not None:
        server.stop()


# own_server runs 2 shards (tests/support.py): an entity's keys are shard_of(entity_id, 2)'s.


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))


async def snapshot(store: aioredis.Redis, entity_id: str):
    raw = await store.hget(keys.entity(entity_id, shard_of(entity_id, 2)), "s")
    return None if raw is None else codec.decode_state(raw)


async def crash_state(store: aioredis.Redis) -> dict[str, OutgoingPayment]:
    """Every outgoing payment snapshot, read as soon as the restarted Redis answers."""
    with anyio.fail_after(60):
        while True:
            try:
                await store.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                await anyio.sleep(0.05)
    found: dict[str, OutgoingPayment] = {}
    for shard in range(2):
        async for key in store.scan_iter(match=keys.entity("op:*", shard), count=500):
            state = codec.decode_state(await store.hget(key, "s"))
            if isinstance(state, Abandoned):
                continue  # a tombstone: a create given up (none expected this early, all the same)
            assert isinstance(state, OutgoingPayment)
            found[state.id] = state
    return found


async def test_kill9_mid_flow_loses_no_outgoing_payment_and_settles_none_twice(own_server: OpayServer) -> None:
    server = own_server
    rng = random.Random(20240)
    async with http_client() as http:
        world = await make_world(server, http)
        # A sending fee, so that debit, receive and sent all differ.
        fees = await http.put(f"{server.operator_url}/fees/USD", json={"fixed": "1", "basisPoints": 100}, headers=server.operator_headers)
        assert fees.status_code == 200, fees.text
        incoming_token = await world.token()
        receivers: list[dict] = []
        for n in range(UNCAPPED + CAPPED):
            body = {"incomingAmount": usd(CAP)} if n >= UNCAPPED else {}
            created = await world.create_payment(incoming_token, **body)
            assert created.status_code == 201, created.text
            receivers.append(created.json())
        sender = await world.operator.wallet_address(f"payer-{rng.getrandbits(40):x}", "USD", 2, "Payer")
        quote_token = await world.token(QUOTE_ACCESS)
        token = await world.outgoing_token({"debitAmount": usd(10**12)}, wallet=sender)

        sequence = itertools.count()
        statuses: Counter[str] = Counter()
        refusals: Counter[str] = Counter()
        acked: dict[str, dict] = {}  # payment id -> the 201 body
        quote_attempts: dict[str, dict] = {}  # quote id -> the quote, for every payment tried from a quote
        quote_bodies: dict[str, dict] = {}  # quote id -> the create's body, to retry it as it was
        direct_attempts = 0
        stop = False

        async def pay(body: dict) -> httpx.Response | None:
            try:
                answer = await world.client.request(
                    "POST", f"{server.public_url}/outgoing-payments", json={"walletAddress": sender["id"], **body}, token=token
                )
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1
                return None
            statuses[str(answer.status_code)] += 1
            if answer.status_code == 201:
                acked[answer.json()["id"]] = answer.json()
            elif answer.status_code != 503:
                refusals[answer.json()["error"]["code"]] += 1
            return answer

        async def quote_payer() -> None:
            while not stop:
                receiver = rng.choice(receivers)
                amounts = rng.choice([{"receiveAmount": usd(rng.randint(1, 40))}, {"debitAmount": usd(rng.randint(5, 50))}, {}])
                if not amounts and "incomingAmount" not in receiver:
                    amounts = {"receiveAmount": usd(rng.randint(1, 40))}
                try:
                    quoted = await world.client.request(
                        "POST",
                        f"{server.public_url}/quotes",
                        json={"walletAddress": sender["id"], "receiver": receiver["id"], "method": "ilp", **amounts},
                        token=quote_token,
                    )
                except httpx.HTTPError as error:
                    statuses[f"quote {type(error).__name__}"] += 1
                    continue
                if quoted.status_code != 201:
                    statuses[f"quote {quoted.status_code}"] += 1
                    if quoted.status_code != 503:
                        refusals[f"quote {quoted.json()['error']['code']}"] += 1
                    continue
                quote = quoted.json()
                quote_attempts[quote["id"]] = quote
                quote_bodies[quote["id"]] = {"quoteId": quote["id"], "metadata": {"n": next(sequence)}}
                await pay(quote_bodies[quote["id"]])

        async def direct_payer() -> None:
            nonlocal direct_attempts
            while not stop:
                direct_attempts += 1
                receiver = rng.choice(receivers)
                await pay({"incomingPayment": receiver["id"], "debitAmount": usd(rng.randint(5, 50)), "metadata": {"n": next(sequence)}})

        async def killer() -> None:
            nonlocal stop
            await anyio.sleep(LOAD_SECONDS)
            await anyio.to_thread.run_sync(server.kill9)
            stop = True

        await asyncio.gather(*(quote_payer() for _ in range(QUOTE_WORKERS)), *(direct_payer() for _ in range(DIRECT_WORKERS)), killer())

    summary = f"statuses {dict(statuses)}, refusals {dict(refusals)}"
    from_quotes = {pid for pid, body in acked.items() if "quoteId" in body}
    assert len(from_quotes) >= 10 and len(acked) - len(from_quotes) >= 10, summary
    # Before the kill only success or a refusal the request deserved; after it, only a cut-off.
    allowed = {"201", "400", "quote 201", "quote 400"} | CUT_OFF | {f"quote {cut}" for cut in CUT_OFF}
    assert set(statuses) <= allowed, summary
    assert set(refusals) <= {"invalid_receiver", "invalid_amount", "quote invalid_receiver", "quote invalid_amount"}, summary

    # Restart on the same data dir and ports: Redis replays its AOF. Redis is up seconds before
    # Ray and the timers are, so the state the crash left can be read before anything re-drives it.
    store = aioredis.Redis.from_url(server.redis_url)
    left: dict[str, OutgoingPayment] = {}
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, server.start)
            left = await crash_state(store)
        summary += f", phases the crash left {dict(Counter(p.phase for p in left.values()))}"
        async with http_client() as http:
            world.http = world.client.http = world.operator.http = http

            # 1. Every acknowledged payment is there, with the terms it was acknowledged with.
            fetched = await asyncio.gather(*(world.client.request("GET", pid, token=token) for pid in acked))
            for (pid, created), answer in zip(acked.items(), fetched):
                assert answer.status_code == 200, f"{pid}: {answer.status_code} {answer.text}"
                assert terms(answer.json()) == terms(created)

            # 2. The list holds every acknowledged payment, and nothing never attempted.
            list_url = f"{server.public_url}/outgoing-payments?wallet-address={sender['id']}&first=50"
            listed = {item["id"]: item for item in await world.list_all(list_url, token)}
            assert set(acked) <= set(listed)
            quote_ids = {uuid_of(q) for q in quote_attempts}
            listed_from_quotes = {pid for pid, item in listed.items() if "quoteId" in item}
            for pid in listed_from_quotes:
                assert uuid_of(pid) in quote_ids and uuid_of(listed[pid]["quoteId"]) == uuid_of(pid), pid
            assert len(listed) - len(listed_from_quotes) <= direct_attempts, summary
            assert {uuid_of(pid) for pid in listed} == set(left), "the list index and the snapshots disagree"

            # 3. A client retries (the same request): what was acknowledged gets its first 201
            # again; what it never got an answer for is created once, never twice. A retry may
            # come after the grant gave the cut-off create up (its reservation is over 10 s old
            # by now): then the payment id is a tombstone and the retry is told so.
            retried = Counter()

            def retry(quote_id: str):
                return world.client.request(
                    "POST", f"{server.public_url}/outgoing-payments", json={"walletAddress": sender["id"], **quote_bodies[quote_id]}, token=token
                )

            acked_quotes = [body for body in acked.values() if "quoteId" in body]
            for created, answer in zip(acked_quotes, await asyncio.gather(*(retry(body["quoteId"]) for body in acked_quotes))):
                assert answer.status_code == 201 and answer.json() == created, (created, answer.text)
                retried["acknowledged"] += 1
            unanswered = [quote for quote in quote_attempts.values() if uuid_of(quote["id"]) not in {uuid_of(p) for p in from_quotes}]
            answers = await asyncio.gather(*(retry(quote["id"]) for quote in unanswered))
            for quote, answer in zip(unanswered, answers):
                expected_id = f"{server.public_url}/outgoing-payments/{uuid_of(quote['id'])}"
                if expected_id in listed:
                    assert answer.status_code == 201, answer.text
                    assert terms(answer.json()) == terms(listed[expected_id])
                    retried["exists"] += 1
                elif answer.status_code != 201:
                    code = answer.json()["error"]["code"]
                    assert (answer.status_code, code) == (409, "payment_abandoned"), answer.text
                    assert isinstance(await snapshot(store, f"op:{uuid_of(quote['id'])}"), Abandoned), answer.text
                    retried[f"given up {answer.status_code}"] += 1
                else:
                    body = answer.json()
                    assert body["id"] == expected_id
                    assert (body["debitAmount"], body["receiveAmount"], body["receiver"]) == (
                        quote["debitAmount"],
                        quote["receiveAmount"],
                        quote["receiver"],
                    )
                    listed[body["id"]] = body
                    retried["created"] += 1
            summary += f", retried {dict(retried)}, payments {len(listed)}"

            # 4. The timers re-drive settlement: every payment ends completed or failed.
            entity_ids = [f"op:{uuid_of(pid)}" for pid in listed]
            deadline = time.monotonic() + SETTLE_SECONDS
            while True:
                states: list[OutgoingPayment] = [await snapshot(store, eid) for eid in entity_ids]  # type: ignore[misc]
                unsettled = [s.id for s in states if not s.settled or (s.failed and not s.grant_released)]
                if not unsettled:
                    break
                assert time.monotonic() < deadline, f"still unsettled after {SETTLE_SECONDS}s: {unsettled[:5]} ({len(unsettled)}); {summary}"
                await anyio.sleep(0.5)
            payments = {f"{server.public_url}/outgoing-payments/{s.id}": s for s in states}
            assert not any(m.decode().startswith("op:") for m in [*await store.zrange(keys.due(0), 0, -1), *await store.zrange(keys.due(1), 0, -1)]), "a settled payment is still due"
            completed = [p for p in payments.values() if p.phase == "completed"]
            failed = [p for p in payments.values() if p.phase == "failed"]
            assert completed, summary
            summary += f", completed {len(completed)}, failed {len(failed)}"

            views = await asyncio.gather(*(world.client.request("GET", pid, token=token) for pid in payments))
            for (pid, state), answer in zip(payments.items(), views):
                view = answer.json()
                assert answer.status_code == 200 and view["failed"] == state.failed, view
                expected_sent = 0 if state.failed else state.debit - state.fee
                assert view["sentAmount"] == usd(expected_sent), (view, state)
                assert terms(view) == terms(listed[pid]), pid

            # 5. Each incoming payment got exactly what the completed payments paying it deliver.
            for receiver in receivers:
                paying = [p for p in completed if p.receiver == receiver["id"]]
                refused = [p for p in failed if p.receiver == receiver["id"]]
                answer = await world.client.request("GET", receiver["id"], token=incoming_token)
                assert answer.status_code == 200, answer.text
                view = answer.json()
                received = int(view["receivedAmount"]["value"])
                assert received == sum(p.receive for p in paying), (receiver["id"], received, summary)
                if "incomingAmount" in receiver:
                    assert received <= CAP
                    assert view["completed"] == (received == CAP)
                receiver_entity = f"ip:{uuid_of(receiver['id'])}"
                journal = await store.hgetall(keys.journal(receiver_entity, shard_of(receiver_entity, 2)))
                outcomes = {k.decode(): codec.decode(v, CreditOutcome) for k, v in journal.items()}
                assert {k for k, o in outcomes.items() if o.accepted} == {journal_key("settlement", p.id) for p in paying}
                assert {k for k, o in outcomes.items() if not o.accepted} == {journal_key("settlement", p.id) for p in refused}

            # 6. The grant: one reservation per payment, released once by each failed one; every
            # reservation without a payment is given back once the grant's timer has asked about it.
            [grant_id] = {p.grant_id for p in payments.values()}
            grant = f"grant:{grant_id}"
            deadline = time.monotonic() + ORPHAN_SECONDS
            while True:
                reservations = {k.decode(): codec.decode(v, Reservation) for k, v in (await store.hgetall(keys.journal(grant, shard_of(grant, 2)))).items()}
                ledger = await snapshot(store, grant)
                assert isinstance(ledger, GrantSpend)
                orphans = {pid: r for pid, r in reservations.items() if f"{server.public_url}/outgoing-payments/{pid}" not in payments}
                waiting = {pid for pid, r in orphans.items() if not r.released}
                if not waiting and not ledger.unconfirmed and await store.zscore(keys.due(shard_of(grant, 2)), grant) is None:
                    break
                assert time.monotonic() < deadline, (
                    f"after {ORPHAN_SECONDS}s: {len(waiting)} reservation(s) without a payment still counted {sorted(waiting)[:5]}, "
                    f"{len(ledger.unconfirmed)} unconfirmed; {summary}"
                )
                await anyio.sleep(0.5)
            summary += f", given up {len(orphans)}"
            for p in payments.values():
                held = reservations.get(p.id)
                assert held is not None and (held.debit, held.receive) == (p.debit, p.receive), (p, held)
                assert held.released == p.failed, (p, held)
            # A reservation without a payment: the server died between reserving and opening a
            # payment nobody was told about (or a quote's retry came after it was given up).
            # Given back, and its id is a tombstone, so no late create can ever open it.
            assert len(orphans) <= direct_attempts + len(quote_attempts)
            for pid, held in orphans.items():
                assert held.released, (pid, held)
                assert isinstance(await snapshot(store, f"op:{pid}"), Abandoned), pid
            live = sum(p.debit for p in payments.values() if not p.failed)
            assert ledger.spent_debit == sum(r.debit for r in reservations.values() if not r.released) == live
            spent = await world.client.request("GET", f"{server.public_url}/outgoing-payment-grant", token=token)
            assert spent.status_code == 200, spent.text
            assert spent.json() == {"spentDebitAmount": usd(live), "spentReceiveAmount": None}, (summary, orphans)
            print(summary)
    finally:
        await store.aclose()
