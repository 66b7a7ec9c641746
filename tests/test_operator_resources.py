"""The operator asks about resources and wallets (issue 11, item 4, first half): payments and
quotes per wallet address, paged and filtered by state; a wallet address read, deactivated
(refusing new grants and payments while what is already moving settles) and reactivated;
its keys; the rates and fees; invoices made without a client grant. All on the session server."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import anyio
import httpx
import pytest

from opay.actors import ids as entity_ids
from opay.actors.registry import codec
from opay.client import Operator
from opay.domain.amounts import Asset
from opay.domain.incoming_payment import IncomingPayment
from opay.persistence import keys
from opay.persistence.clients import ShardClients
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.persistence.queries import SCAN_MAX, Queries
from tests.test_outgoing_payments import make_payer, rfc3339, usd

pytestmark = pytest.mark.anyio

LISTS = ("/incoming-payments", "/outgoing-payments", "/quotes")


def path_of(wallet: dict) -> str:
    return wallet["id"].rsplit("/", 1)[1]


def last_segment(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def pages(operator: Operator, route: str, **params: str) -> list[list[dict]]:
    """Every page of an operator list, following endCursor (or startCursor with `last`)."""
    backwards = "last" in params
    found: list[list[dict]] = []
    cursor = None
    while True:
        answer = await operator.get(route, {**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found.append(page["result"])
        info = page["pagination"]
        if not (info["hasPreviousPage"] if backwards else info["hasNextPage"]):
            return found
        cursor = info["startCursor"] if backwards else info["endCursor"]


def ids(found: list[list[dict]]) -> list[str]:
    return [item["id"] for page in found for item in page]


async def error(answer: httpx.Response, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()["error"]
    assert body["code"] == code and body["description"], body
    return body


async def invoice(world, **body) -> httpx.Response:
    return await world.operator.post("/incoming-payments", {"walletAddress": world.receiver["id"], **body})


async def test_incoming_payments_paged_by_state(world) -> None:
    token = await world.token()
    made = []
    for _ in range(3):
        created = await world.create_payment(token, incomingAmount=usd(500))
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    expiring = (await world.create_payment(token, expiresAt=rfc3339(soon))).json()["id"]
    billed = await invoice(world, incomingAmount=usd(700), metadata={"invoice": "INV-1"})
    assert billed.status_code == 201, billed.text
    made.append(billed.json()["id"])
    paid = (await world.operator.credit(made[1], "500", f"pay-{uuid.uuid4()}")).json()
    assert paid["completed"] is True
    with anyio.fail_after(15):  # the server's clock decides when it has expired
        while (await world.operator.get(f"/incoming-payments/{last_segment(expiring)}")).json()["state"] != "expired":
            await anyio.sleep(0.1)

    wallet = world.receiver["id"]
    everything = await pages(world.operator, "/incoming-payments", **{"wallet-address": wallet, "first": "2"})
    assert ids(everything) == [made[0], made[1], made[2], expiring, made[3]]  # creation order, every client's
    assert all(len(page) <= 2 for page in everything)
    pending = await pages(world.operator, "/incoming-payments", **{"wallet-address": wallet, "first": "1", "state": "pending"})
    assert ids(pending) == [made[0], made[2], made[3]] and len(pending) >= 3
    backwards = await pages(world.operator, "/incoming-payments", **{"wallet-address": wallet, "last": "1", "state": "pending"})
    assert ids(backwards) == [made[3], made[2], made[0]]
    for state, expected in (("completed", [made[1]]), ("expired", [expiring])):
        assert ids(await pages(world.operator, "/incoming-payments", **{"wallet-address": wallet, "state": state})) == expected

    [item] = [i for i in everything[0] if i["id"] == made[1]]
    assert item["state"] == "completed" and item["client"] == world.client.wallet_address and "methods" not in item
    assert item["receivedAmount"] == usd(500)
    one = (await world.operator.get(f"/incoming-payments/{last_segment(made[0])}")).json()
    assert one["state"] == "pending" and one["methods"][0]["type"] == "ilp" and one["methods"][0]["sharedSecret"]
    # The invoice: no client, its metadata as sent, payable at once with the credentials it came with.
    bill = billed.json()
    assert bill["client"] is None and bill["metadata"] == {"invoice": "INV-1"} and bill["state"] == "pending"
    assert bill["incomingAmount"] == usd(700) and bill["methods"][0]["ilpAddress"]
    assert (await world.operator.credit(bill["id"], "700", f"pay-{uuid.uuid4()}")).json()["completed"] is True
    assert (await world.operator.get(f"/incoming-payments/{last_segment(bill['id'])}")).json()["state"] == "completed"
    # A client with read access sees the invoice as any incoming payment.
    read = await world.client.request("GET", bill["id"], token=await world.token([{"type": "incoming-payment", "actions": ["read-all"]}]))
    assert read.status_code == 200 and read.json()["id"] == bill["id"]


async def test_quotes_and_outgoing_payments_by_state(world) -> None:
    payer = await make_payer(world)
    receiver = await payer.incoming()
    token = await world.outgoing_token({"debitAmount": usd(1000)}, wallet=payer.sender)
    used = await payer.quote(receiver["id"], debitAmount=usd(100))
    spare = await payer.quote(receiver["id"], debitAmount=usd(50))
    paid = await payer.pay(token, quoteId=used["id"])
    assert paid.status_code == 201, paid.text
    settled = await payer.settled(token, paid.json()["id"])
    assert settled["failed"] is False

    sender = payer.sender["id"]
    quotes = await pages(world.operator, "/quotes", **{"wallet-address": sender, "first": "1"})
    assert ids(quotes) == [used["id"], spare["id"]]
    assert ids(await pages(world.operator, "/quotes", **{"wallet-address": sender, "state": "used"})) == [used["id"]]
    assert ids(await pages(world.operator, "/quotes", **{"wallet-address": sender, "state": "open"})) == [spare["id"]]
    assert await pages(world.operator, "/quotes", **{"wallet-address": sender, "state": "expired"}) == [[]]
    quote = (await world.operator.get(f"/quotes/{last_segment(spare['id'])}")).json()
    assert quote["state"] == "open" and quote["client"] == world.client.wallet_address
    assert {k: quote[k] for k in spare} == spare  # the client's view, and more

    with anyio.fail_after(15):
        while (await world.operator.get(f"/outgoing-payments/{last_segment(settled['id'])}")).json()["state"] != "completed":
            await anyio.sleep(0.05)
    completed = await pages(world.operator, "/outgoing-payments", **{"wallet-address": sender, "state": "completed"})
    [[payment]] = completed
    assert payment["id"] == settled["id"] and payment["failure"] is None and payment["grantId"]
    assert payment["client"] == world.client.wallet_address and payment["sentAmount"] == settled["sentAmount"]
    assert await pages(world.operator, "/outgoing-payments", **{"wallet-address": sender, "state": "failed"}) == [[]]


async def test_bad_list_and_get_requests_are_clear_and_change_nothing(world) -> None:
    token = await world.token()
    created = (await world.create_payment(token)).json()
    wallet = world.receiver["id"]
    for route in LISTS:
        base = {"wallet-address": wallet}
        await error(await world.operator.get(route, {**base, "state": "paid"}), 400, "invalid_state")
        await error(await world.operator.get(route, {**base, "cursor": str(uuid.uuid4())}), 400, "invalid_cursor")
        for bad in ({"first": "0"}, {"first": "101"}, {"last": "x"}, {"first": "1", "last": "1"}, {"cursor": ""}):
            await error(await world.operator.get(route, {**base, **bad}), 400, "invalid_request")
        await error(await world.operator.get(route, {}), 400, "invalid_request")
        await error(await world.operator.get(route, {"wallet-address": f"{world.server.public_url}/nobody-{uuid.uuid4().hex}"}), 404, "unknown_wallet_address")
        await error(await world.operator.get(route, {"wallet-address": "https://elsewhere.example/alice"}), 404, "unknown_wallet_address")
        for bad_id in (str(uuid.uuid4()), "not-a-uuid", created["id"].rsplit("/", 1)[1].upper()):
            await error(await world.operator.get(f"{route}/{bad_id}"), 404, "not_found")
    # The wrong kind by id is absent too.
    await error(await world.operator.get(f"/quotes/{last_segment(created['id'])}"), 404, "not_found")
    listed = await pages(world.operator, "/incoming-payments", **{"wallet-address": wallet})
    assert ids(listed) == [created["id"]]


async def test_invoice_bad_input_changes_nothing(world) -> None:
    past = rfc3339(datetime.now(timezone.utc) - timedelta(minutes=1))
    refusals = [
        ({"incomingAmount": {"value": "5", "assetCode": "EUR", "assetScale": 2}}, "invalid_asset"),
        ({"incomingAmount": usd(0)}, "invalid_amount"),
        ({"expiresAt": past}, "invalid_expires_at"),
        ({"metadata": [1, 2]}, "invalid_request"),
        ({"color": "red"}, "invalid_request"),
        ({"walletAddress": f"{world.server.public_url}/nobody-{uuid.uuid4().hex}"}, "unknown_wallet_address"),
    ]
    for body, code in refusals:
        await error(await invoice(world, **body), 400, code)
    await error(await world.http.post(world.server.operator_url + "/incoming-payments", content=b"{", headers=world.operator.headers), 400, "invalid_json")
    assert await pages(world.operator, "/incoming-payments", **{"wallet-address": world.receiver["id"]}) == [[]]


async def test_every_new_route_needs_the_operator_token(world) -> None:
    path = path_of(world.receiver)
    asked = [
        *(("GET", route + f"?wallet-address={world.receiver['id']}") for route in LISTS),
        *(("GET", f"{route}/{uuid.uuid4()}") for route in LISTS),
        ("POST", "/incoming-payments"),
        ("GET", f"/wallet-addresses/{path}"),
        ("GET", f"/wallet-addresses/{path}/keys"),
        ("PATCH", f"/wallet-addresses/{path}"),
        ("GET", "/rates"),
        ("GET", "/rates/USD"),
        ("GET", "/fees"),
        ("GET", "/fees/USD"),
    ]
    for method, route in asked:
        for headers in ({}, {"authorization": "Bearer wrong"}):
            answer = await world.http.request(method, world.server.operator_url + route, headers=headers, json={"active": False})
            await error(answer, 401, "unauthorized")
    # Nothing of it landed: the wallet is active, nothing was invoiced.
    assert (await world.operator.get(f"/wallet-addresses/{path}")).json()["active"] is True
    assert await pages(world.operator, "/incoming-payments", **{"wallet-address": world.receiver["id"]}) == [[]]


async def test_wallet_address_read_patched_and_its_keys(world) -> None:
    path = path_of(world.client_wallet)
    seen = (await world.operator.get(f"/wallet-addresses/{path}")).json()
    assert seen["id"] == world.client.wallet_address and seen["active"] is True and seen["createdAt"].endswith("Z")
    assert (seen["assetCode"], seen["assetScale"]) == ("USD", 2)
    keys = await world.operator.get(f"/wallet-addresses/{path}/keys")
    assert keys.status_code == 200 and [key["kid"] for key in keys.json()["keys"]] == ["key-1"]
    await error(await world.operator.get(f"/wallet-addresses/nobody-{uuid.uuid4().hex}"), 404, "not_found")
    await error(await world.operator.get(f"/wallet-addresses/nobody-{uuid.uuid4().hex}/keys"), 404, "not_found")
    for bad in ({"active": "no"}, {"active": None}, {"active": 0}, {"enabled": False}):
        await error(await world.operator.patch(f"/wallet-addresses/{path}", bad), 400, "invalid_request")
    # The server's own client identity cannot be switched off (other servers verify it).
    await error(await world.operator.patch("/wallet-addresses/ase", {"active": False}), 409, "client_identity")
    assert (await world.operator.get("/wallet-addresses/ase")).json()["active"] is True
    assert (await world.operator.get(f"/wallet-addresses/{path}")).json() == seen

    off = await world.operator.patch(f"/wallet-addresses/{path}", {"active": False, "publicName": "Gone"})
    assert off.status_code == 200 and off.json()["active"] is False and off.json()["publicName"] == "Gone"
    listed = (await world.operator.get("/wallet-addresses")).json()["result"]
    assert next(w for w in listed if w["id"] == world.client.wallet_address)["active"] is False
    # Gone for the public (document, keys, DID), still there for the operator.
    for suffix in ("", "/jwks.json", "/did.json"):
        await error(await world.http.get(world.client.wallet_address + suffix), 404, "not_found")
    assert [key["kid"] for key in (await world.operator.get(f"/wallet-addresses/{path}/keys")).json()["keys"]] == ["key-1"]
    on = await world.operator.patch(f"/wallet-addresses/{path}", {"active": True})
    assert on.json()["active"] is True and on.json()["publicName"] == "Gone"
    assert (await world.http.get(world.client.wallet_address)).status_code == 200


async def test_deactivated_wallet_refuses_new_grants_and_payments_while_money_moving_settles(world) -> None:
    payer = await make_payer(world)
    sender, receiver = payer.sender, world.receiver
    incoming_token = await world.token()
    outgoing_token = await world.outgoing_token({"debitAmount": usd(1000)}, wallet=sender)
    # Made before the deactivations: an incoming payment on the receiver and a quote of the sender's.
    existing = await payer.incoming(incomingAmount=usd(300))
    early_quote = await payer.quote(existing["id"], debitAmount=usd(100))
    spent_before = (await world.client.request("GET", f"{world.server.public_url}/outgoing-payment-grant", token=outgoing_token)).json()

    for wallet in (sender, receiver):
        assert (await world.operator.patch(f"/wallet-addresses/{path_of(wallet)}", {"active": False})).status_code == 200
    # New grants naming either one, as an access item's identifier.
    for wallet in (sender, receiver):
        access = [{"type": "incoming-payment", "actions": ["read"], "identifier": wallet["id"]}]
        refused = await error(await world.client.request("POST", receiver["authServer"], json=world.client.grant_body(access)), 400, "invalid_request")
        assert refused["details"]["reason"] == "inactive_wallet_address"
    # New payments on them: an incoming payment (a client's, and an invoice), a quote, an outgoing payment.
    await error(await world.create_payment(incoming_token), 400, "inactive_wallet_address")
    await error(await invoice(world), 400, "inactive_wallet_address")
    quote = await world.client.request(
        "POST",
        f"{world.server.public_url}/quotes",
        json={"walletAddress": sender["id"], "receiver": existing["id"], "method": "ilp", "debitAmount": usd(10)},
        token=payer.quote_token,
    )
    await error(quote, 400, "inactive_wallet_address")
    await error(await payer.pay(outgoing_token, quoteId=early_quote["id"]), 400, "inactive_wallet_address")
    await error(await payer.pay(outgoing_token, incomingPayment=existing["id"], debitAmount=usd(10)), 400, "inactive_wallet_address")
    # Nothing of it landed: the grant spent nothing more, nothing new is listed, the quote is unused.
    spent = (await world.client.request("GET", f"{world.server.public_url}/outgoing-payment-grant", token=outgoing_token)).json()
    assert spent == spent_before
    assert ids(await pages(world.operator, "/incoming-payments", **{"wallet-address": receiver["id"]})) == [existing["id"]]
    assert await pages(world.operator, "/outgoing-payments", **{"wallet-address": sender["id"]}) == [[]]
    assert (await world.operator.get(f"/quotes/{last_segment(early_quote['id'])}")).json()["state"] == "open"

    # Money already on its way still lands: another, active sender pays the existing
    # incoming payment of the deactivated receiver, and the ASE credits it too.
    other = await make_payer(world)
    other_token = await world.outgoing_token({"debitAmount": usd(1000)}, wallet=other.sender)
    other_quote = await other.quote(existing["id"], receiveAmount=usd(200))
    paid = await other.pay(other_token, quoteId=other_quote["id"])
    assert paid.status_code == 201, paid.text
    assert (await other.settled(other_token, paid.json()["id"]))["failed"] is False
    credited = await world.operator.credit(existing["id"], "100", f"bank-{uuid.uuid4()}")
    assert credited.status_code == 200 and credited.json()["completed"] is True
    done = (await world.operator.get(f"/incoming-payments/{last_segment(existing['id'])}")).json()
    assert done["receivedAmount"] == usd(300) and done["state"] == "completed"

    # Reactivated: service is back.
    for wallet in (sender, receiver):
        assert (await world.operator.patch(f"/wallet-addresses/{path_of(wallet)}", {"active": True})).json()["active"] is True
    assert (await world.create_payment(incoming_token)).status_code == 201
    paid = await payer.pay(outgoing_token, quoteId=early_quote["id"])
    assert paid.status_code == 201, paid.text
    assert await world.token([{"type": "incoming-payment", "actions": ["read"], "identifier": receiver["id"]}])


async def test_deactivated_client_wallet_cannot_ask_for_grants(world) -> None:
    token = await world.token()
    path = path_of(world.client_wallet)
    assert (await world.operator.patch(f"/wallet-addresses/{path}", {"active": False})).status_code == 200
    access = [{"type": "incoming-payment", "actions": ["read"]}]
    refused = await error(await world.client.request("POST", world.receiver["authServer"], json=world.client.grant_body(access)), 400, "invalid_client")
    assert refused["details"]["reason"] == "inactive_wallet_address"
    # Its keys sign nothing more: its existing token is refused by the resource server.
    await error(await world.create_payment(token), 401, "invalid_client")
    assert (await world.operator.patch(f"/wallet-addresses/{path}", {"active": True})).status_code == 200
    assert (await world.create_payment(token)).status_code == 201
    assert await world.token(access)


async def test_rates_and_fees_read_back(world) -> None:
    base, other = f"T{uuid.uuid4().hex[:8].upper()}", f"F{uuid.uuid4().hex[:8].upper()}"
    put = await world.http.put(world.server.operator_url + f"/rates/{base}", json={"EUR": "0.9137", "GBP": "0.79"}, headers=world.operator.headers)
    assert put.status_code == 200, put.text
    assert (await world.operator.get(f"/rates/{base}")).json() == {"base": base, "rates": {"EUR": "0.9137", "GBP": "0.79"}}
    tables = (await world.operator.get("/rates")).json()["result"]
    assert {"base": base, "rates": {"EUR": "0.9137", "GBP": "0.79"}} in tables
    await error(await world.operator.get(f"/rates/{other}"), 404, "not_found")
    await error(await world.operator.get("/rates/U$D"), 400, "invalid_asset")
    # Emptied: it is no table any more.
    assert (await world.http.put(world.server.operator_url + f"/rates/{base}", json={}, headers=world.operator.headers)).status_code == 200
    await error(await world.operator.get(f"/rates/{base}"), 404, "not_found")
    assert base not in [t["base"] for t in (await world.operator.get("/rates")).json()["result"]]

    fees = await world.http.put(world.server.operator_url + f"/fees/{other}", json={"fixed": "10", "basisPoints": 50}, headers=world.operator.headers)
    assert fees.status_code == 200
    assert (await world.operator.get(f"/fees/{other}")).json() == {"assetCode": other, "fixed": "10", "basisPoints": 50}
    assert {"assetCode": other, "fixed": "10", "basisPoints": 50} in (await world.operator.get("/fees")).json()["result"]
    assert (await world.operator.get(f"/fees/{base}")).json() == {"assetCode": base, "fixed": "0", "basisPoints": 0}
    await error(await world.operator.get("/fees/U$D"), 400, "invalid_asset")
    # A bad PUT changes nothing: read back.
    bad = await world.http.put(world.server.operator_url + f"/fees/{other}", json={"fixed": "-1"}, headers=world.operator.headers)
    await error(bad, 400, "invalid_amount")
    assert (await world.operator.get(f"/fees/{other}")).json()["fixed"] == "10"


async def test_a_rare_state_is_found_past_the_scan_bound(embedded: EmbeddedRedis) -> None:
    """A filtered page reads at most SCAN_MAX snapshots: it ends there with a cursor to go
    on from, and the next page finds what lies beyond (a bare Redis, the real page script)."""
    shards = ShardClients(embedded.url, 5, 1)  # one shard: the whole list is one sorted set, as the page script saw it
    client = shards.of(0)
    index = lambda shard: keys.index("ip", shard, "https://w.example/x")  # noqa: E731
    members = []
    pipe = client.pipeline(transaction=False)
    for n in range(SCAN_MAX + 100):
        payment_id = str(uuid.UUID(int=n + 1))
        state = IncomingPayment(
            id=payment_id, wallet_address="https://w.example/x", client=None, asset=Asset("USD", 2),
            incoming_amount=None, expires_at_ms=10**13, created_at_ms=n, completed=n in (0, SCAN_MAX + 50),
        )
        members.append(entity_ids.INCOMING_PAYMENT(payment_id))
        pipe.hset(keys.entity(members[-1], 0), mapping={"v": 1, "s": codec.encode_state(state)})
        pipe.zadd(index(0), {members[-1]: n})
    await pipe.execute()
    queries = Queries(shards, codec)
    completed = lambda state: state.completed  # noqa: E731

    first = await queries.page(index, None, "first", 10, completed)
    assert [p.id for p in first.items] == [str(uuid.UUID(int=1))]
    assert first.has_next and first.end == members[SCAN_MAX - 1] and not first.has_previous
    second = await queries.page(index, first.end, "first", 10, completed)
    assert [p.id for p in second.items] == [str(uuid.UUID(int=SCAN_MAX + 51))]
    assert not second.has_next and second.has_previous and second.end == members[SCAN_MAX + 50]
    # Backwards, the same from the other end.
    last = await queries.page(index, None, "last", 10, completed)
    assert [p.id for p in last.items] == [str(uuid.UUID(int=SCAN_MAX + 51))] and last.start == members[100]
    assert last.has_previous and not last.has_next
    before = await queries.page(index, last.start, "last", 10, completed)
    assert [p.id for p in before.items] == [str(uuid.UUID(int=1))] and not before.has_previous
    # Unfiltered: one page of exactly what was asked, as the public lists have it.
    plain = await queries.page(index, None, "first", 3)
    assert [p.created_at_ms for p in plain.items] == [0, 1, 2] and plain.has_next and plain.end == members[2]
    await shards.aclose()
