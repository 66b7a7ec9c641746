"""ILP peers (issue 10, item 2): the operator API, routing, tokens, and exact durable totals.

Against real servers (opay serve with its own Redis and Ray; two front ends on one Redis
and one Ray cluster for the cross-process check); packets are built the way a sender
builds them (tests/ilp_support.py) and every amount is read through the APIs.
"""

from __future__ import annotations

import hashlib
import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from opay.actors import ids
from opay.actors.entity import Active, Step
from opay.persistence.keys import shard_of
from opay.ilp.oer import Reader
from opay.ilp.packet import Fulfill, Prepare, decode_packet
from opay.ilp.peers import InvalidPeer, Peer, PeerStore, RoutingTable, is_ilp_address, parse_peer, record_received, record_sent, route
from opay.persistence import clients, keys
from opay.persistence.clients import ShardClients
from opay.persistence.snapshots import EntityWrite, SideEffect, SnapshotStore
from tests.conftest import make_world
from tests.ilp_support import PEER_TOKEN, Connection, ilp_env, received
from tests.support import OpayServer
from tests.test_front_ends import _front_end
from tests.test_ray_cluster import ray_head  # noqa: F401  (a fixture)

pytestmark = pytest.mark.anyio

USD = {"assetCode": "USD", "assetScale": 2}
PEER_URL = "http://127.0.0.1:9/ilp"  # allowed by the test servers' fetch policy; never called here


def usd(value: int) -> dict:
    return {"value": str(value), **USD}


def body(name: str, **changes) -> dict:
    base = {
        "name": name,
        "url": PEER_URL,
        "outgoingToken": f"out-{name}",
        "incomingToken": f"in-{name}-secret",
        "assetCode": "USD",
        "assetScale": 2,
        "routes": [f"test.{name}"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def peer(name: str, routes: tuple[str, ...], created: int = 0) -> Peer:
    return Peer(
        name=name, url=PEER_URL, outgoing_token="o", incoming_token_digest=name, asset_code="USD", asset_scale=2, routes=routes, created_at_ms=created
    )


# ---------------------------------------------------------------- pure rules


def test_routing_is_by_longest_matching_prefix_on_segment_boundaries() -> None:
    peers = [
        peer("wide", ("test",), 1),
        peer("b", ("test.b",), 2),
        peer("deep", ("test.b.eu", "g.x"), 3),
        peer("late", ("test.b",), 4),  # the same prefix as b, created later: b wins
    ]
    table = RoutingTable(peers)
    cases = {
        "test.b": "b",
        "test.b.alice": "b",
        "test.b.eu": "deep",
        "test.b.eu.bob.token": "deep",
        "test.bob": "wide",  # not test.b: prefixes match whole segments
        "test.c.x": "wide",
        "g.x.y": "deep",
        "g.xy": None,
        "g.y": None,
        "private.b": None,
    }
    for address, expected in cases.items():
        for found in (route(peers, address), table.route(address)):
            assert (found.name if found else None) == expected, address
    assert route([], "test.b") is None and RoutingTable([]).route("test.b") is None


def test_ilp_address_grammar() -> None:
    for good in ("test.b", "g.us-fed.ach.0.acmebank.swx0a0.acmecorp.sales.199.~ipr.cdfa5e16-e759-4ba3-88f6-ff3e6b9bd2fe.1", "private.a_b~c"):
        assert is_ilp_address(good), good
    for bad in ("test", "test.", "test..b", "nope.b", "test.b c", "test.b/", "", "test." + "a" * 1020):
        assert not is_ilp_address(bad), bad


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "Has-Upper"),
        ("name", "-leading"),
        ("name", "x" * 64),
        ("name", 7),
        ("url", "ftp://example.com/ilp"),
        ("url", "not a url"),
        ("url", None),
        ("outgoingToken", ""),
        ("outgoingToken", "has space"),
        ("incomingToken", "x" * 513),
        ("incomingToken", None),
        ("assetCode", ""),
        ("assetCode", "US D"),
        ("assetScale", 256),
        ("assetScale", -1),
        ("assetScale", "2"),
        ("assetScale", True),
        ("routes", []),
        ("routes", "test.b"),
        ("routes", ["test.b", "test.b"]),
        ("routes", ["nope.b"]),
        ("routes", ["test.b."]),
        ("routes", [3]),
        ("maxPacketAmount", "0"),
        ("maxPacketAmount", "18446744073709551616"),
        ("maxPacketAmount", "01"),
        ("maxPacketAmount", 100),
        ("maxPacketAmount", "-1"),
        ("extra", "x"),
    ],
)
def test_each_field_is_validated(field: str, value) -> None:
    candidate = body("v")
    if value is None:
        candidate.pop(field)
    else:
        candidate[field] = value
    with pytest.raises(InvalidPeer) as raised:
        parse_peer(candidate)
    assert raised.value.field == field


def test_a_valid_peer_keeps_only_a_digest_of_its_incoming_token() -> None:
    parsed, token = parse_peer(body("ok", maxPacketAmount="18446744073709551615", routes=["test", "g.a.b"]))
    assert token == "in-ok-secret"
    assert parsed.incoming_token_digest == hashlib.sha256(b"in-ok-secret").hexdigest()
    assert parsed.max_packet_amount == 2**64 - 1 and parsed.routes == ("test", "g.a.b")
    assert "in-ok-secret" not in repr(parsed)


# ---------------------------------------------------------------- totals: the write script


def test_totals_move_exactly_in_the_entity_write_and_a_bad_total_refuses_the_whole_write(embedded) -> None:
    client = clients.blocking(embedded.url, 2)
    store = SnapshotStore(client)  # shard 0's entities
    step = Step("op:sent", 0, None, Active(0, None, {}, True), {}, shard=store.shard)
    record_sent(step, "bob", 2**64 - 1)
    record_sent(step, "bob", 2**64 - 1)  # past 2^64 (and past HINCRBY's 2^63 - 1): still exact
    record_received(step, "bob", 5)
    record_sent(step, "", 7)  # no peer: nothing counted
    record_received(step, "bob", 0)  # nothing to count
    effects = step.effects
    assert len(effects) == 3
    assert store.write_many([EntityWrite("op:sent", 0, b"s1", effects)]) == ["landed"]
    assert client.hgetall(keys.peer_totals("bob", 0)) == {b"sent": str(2 * (2**64 - 1)).encode(), b"received": b"5"}

    # A write sent again after it landed (same write id) adds nothing.
    write = EntityWrite("op:sent", 1, b"s2", [SideEffect("hincrby", keys.peer_totals("bob", 0), "sent", "1")])
    assert store.write_many([write]) == ["landed"]
    assert store.write_many([write]) == ["landed"]
    assert client.hget(keys.peer_totals("bob", 0), "sent") == str(2 * (2**64 - 1) + 1).encode()

    # A total that is not decimal digits (hand-edited) refuses the write before anything is written.
    client.hset(keys.peer_totals("eve", 0), "sent", "12x")
    bad = EntityWrite("op:bad", 0, b"never", [SideEffect("zadd", "opay:test-z", 1, "m"), *_sent("eve", 3)])
    assert store.write_many([bad]) == ["unknown"]
    assert client.exists(keys.entity("op:bad", 0), "opay:test-z") == 0
    assert client.hget(keys.peer_totals("eve", 0), "sent") == b"12x"
    # So does an amount that is not a uint64 in decimal.
    for amount in ("-1", "1.5", "1" * 21, ""):
        assert store.write_many([EntityWrite("op:bad2", 0, b"never", [SideEffect("hincrby", keys.peer_totals("eve", 0), "received", amount)])]) == ["unknown"]
    assert client.exists(keys.entity("op:bad2", 0)) == 0


def _sent(name: str, amount: int) -> list[SideEffect]:
    step = Step("op:bad", 0, None, Active(0, None, {}, True), {}, shard=0)
    record_sent(step, name, amount)
    return step.effects


async def test_store_create_delete_and_cache_invalidation(embedded) -> None:
    client = clients.asynchronous(embedded.url, 2)
    shards = ShardClients(embedded.url, 2, 1)
    one, two = PeerStore(client, shards), PeerStore(client, shards)

    listening = [asyncio.create_task(one.listen()), asyncio.create_task(two.listen())]
    try:
        for _ in range(100):
            if one._live and two._live:
                break
            await asyncio.sleep(0.02)
        parsed, token = parse_peer(body("c", routes=["test.c"]), now_ms=1)
        assert await one.create(parsed) == "ok"
        assert await one.create(parsed) == "name"
        other, _ = parse_peer(body("d", incomingToken=token), now_ms=2)
        assert await one.create(other) == "token"
        assert (await two.peer_for_incoming_token(token)).name == "c"  # cached in `two` now
        assert (await two.route("test.c.x")).name == "c"
        assert await one.delete("c")  # returns once `two` has dropped its cache
        assert await two.peer_for_incoming_token(token) is None
        assert await two.route("test.c.x") is None
        assert not await one.delete("c")
    finally:
        for task in listening:
            task.cancel()
        await client.aclose()
        await shards.aclose()


# ---------------------------------------------------------------- the operator API on a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(
        Path(tmp_path_factory.mktemp("peers")), extra_env=ilp_env(OPAY_ALLOW_INSECURE_FETCH="true", OPAY_FETCH_ALLOW="127.0.0.1")
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def token(world) -> str:
    return await world.token()


async def peers_api(world, method: str, path: str = "", **kw) -> httpx.Response:
    return await world.http.request(method, f"{world.server.operator_url}/peers{path}", headers=world.server.operator_headers, **kw)


async def test_create_list_get_delete(world) -> None:
    created = await peers_api(world, "POST", json=body("alpha", maxPacketAmount="1000", routes=["test.alpha", "g.alpha"]))
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["name"] == "alpha" and view["url"] == PEER_URL and view["routes"] == ["test.alpha", "g.alpha"]
    assert view["maxPacketAmount"] == "1000" and (view["assetCode"], view["assetScale"]) == ("USD", 2)
    assert view["sentAmount"] == usd(0) and view["receivedAmount"] == usd(0)
    assert "outgoingToken" not in view and "incomingToken" not in view and "in-alpha-secret" not in created.text

    listed = await peers_api(world, "GET")
    assert listed.status_code == 200
    assert [p for p in listed.json()["result"] if p["name"] == "alpha"] == [view]
    assert (await peers_api(world, "GET", "/alpha")).json() == view

    duplicate = await peers_api(world, "POST", json=body("alpha", incomingToken="another-one"))
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "exists"
    assert duplicate.json()["error"]["details"] == {"field": "name"}
    token_reused = await peers_api(world, "POST", json=body("beta", incomingToken="in-alpha-secret"))
    assert token_reused.status_code == 409 and token_reused.json()["error"]["details"] == {"field": "incomingToken"}
    configured = await peers_api(world, "POST", json=body("gamma", incomingToken=PEER_TOKEN))
    assert configured.status_code == 409 and configured.json()["error"]["details"] == {"field": "incomingToken"}

    assert (await peers_api(world, "DELETE", "/alpha")).status_code == 204
    for answer in (await peers_api(world, "DELETE", "/alpha"), await peers_api(world, "GET", "/alpha"), await peers_api(world, "GET", "/No_Such")):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert all(p["name"] != "alpha" for p in (await peers_api(world, "GET")).json()["result"])
    unauthorized = await world.http.get(f"{world.server.operator_url}/peers")
    assert unauthorized.status_code == 401


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "Bad Name"),
        ("url", "ftp://x/ilp"),
        ("outgoingToken", ""),
        ("incomingToken", None),
        ("assetCode", "!"),
        ("assetScale", 300),
        ("routes", ["wrong.scheme"]),
        ("maxPacketAmount", "zero"),
    ],
)
async def test_invalid_fields_answer_400_invalid_peer_naming_the_field(world, field: str, value) -> None:
    candidate = body("inv")
    if value is None:
        candidate.pop(field)
    else:
        candidate[field] = value
    answer = await peers_api(world, "POST", json=candidate)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_peer" and answer.json()["error"]["details"] == {"field": field}


async def test_urls_opay_would_not_send_to_are_refused(world) -> None:
    own = world.server.public_url + "/ilp"  # a loop to ourselves
    for url in (own, "https://10.1.2.3/ilp", "http://user:pw@127.0.0.1:9/ilp"):
        answer = await peers_api(world, "POST", json=body("urls", url=url))
        assert answer.status_code == 400, (url, answer.text)
        assert answer.json()["error"]["details"] == {"field": "url"}
    bad_json = await world.http.post(f"{world.server.operator_url}/peers", content=b"{", headers=world.server.operator_headers)
    assert bad_json.status_code == 400


async def _totals(world, name: str) -> tuple[int, int]:
    answer = await peers_api(world, "GET", f"/{name}")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["sentAmount"]["value"]), int(answer.json()["receivedAmount"]["value"])


async def test_arrivals_on_a_peer_token_count_exactly_to_that_peer(world, token) -> None:
    created = await peers_api(world, "POST", json=body("payer", incomingToken="payer-incoming-token"))
    assert created.status_code == 201, created.text
    payment = (await world.create_payment(token, incomingAmount=usd(1000))).json()
    conn = Connection.to(world.http, world.server.public_url, payment, bearer="payer-incoming-token")

    first = conn.build(300)
    assert (await conn.deliver(first)).code == "fulfill"
    assert (await conn.send(200)).code == "fulfill"
    assert await received(world, payment, token) == (500, False)
    assert await _totals(world, "payer") == (0, 500)

    # An exact resend is fulfilled again and counts nothing, neither to the payment nor to the peer.
    assert (await conn.deliver(first)).code == "fulfill"
    # Refused packets count nothing: over the cap, and an unfulfillable probe.
    assert (await conn.send(501)).code == "F99"
    assert (await conn.send(10, fulfillable=False)).code == "F99"
    assert await received(world, payment, token) == (500, False)
    assert await _totals(world, "payer") == (0, 500)

    # A configured token's arrivals count to no peer.
    plain = Connection.to(world.http, world.server.public_url, payment)  # bearer: PEER_TOKEN
    assert (await plain.send(100)).code == "fulfill"
    assert await received(world, payment, token) == (600, False)
    assert await _totals(world, "payer") == (0, 500)

    # An unknown token is 401; IL-DCP on the peer's token names it and its asset.
    assert (await conn.post(conn.build(1).raw, bearer="payer-incoming-tokenX")).status_code == 401
    ildcp = Prepare(0, datetime.now(timezone.utc) + timedelta(seconds=30), hashlib.sha256(bytes(32)).digest(), "peer.config")
    fulfill = decode_packet((await conn.post(ildcp.encode())).content)
    assert isinstance(fulfill, Fulfill)
    r = Reader(fulfill.data)
    assert r.read_var_octets().decode().startswith("test.opay.peer-")
    assert (r.read_uint8(), r.read_var_octets().decode()) == (2, "USD")


async def test_a_peer_in_another_asset_credits_nothing_to_a_usd_payment(world, token) -> None:
    created = await peers_api(world, "POST", json=body("euros", assetCode="EUR", incomingToken="euro-incoming-token", maxPacketAmount="50"))
    assert created.status_code == 201, created.text
    payment = (await world.create_payment(token, incomingAmount=usd(1000))).json()
    conn = Connection.to(world.http, world.server.public_url, payment, bearer="euro-incoming-token")
    assert (await conn.send(51)).code == "F08"  # the peer's own packet limit
    assert (await conn.send(10)).code == "F02"  # amounts in EUR would be credited as USD
    assert await received(world, payment, token) == (0, False)
    assert await _totals(world, "euros") == (0, 0)


async def test_totals_survive_kill_9_and_a_deleted_peer_s_token_is_refused(world, token, server) -> None:
    created = await peers_api(world, "POST", json=body("durable", incomingToken="durable-incoming-token"))
    assert created.status_code == 201, created.text
    payment = (await world.create_payment(token, incomingAmount=usd(10_000))).json()
    conn = Connection.to(world.http, world.server.public_url, payment, bearer="durable-incoming-token")
    for amount in (1, 22, 333, 4444):
        assert (await conn.send(amount)).code == "fulfill"
    assert await _totals(world, "durable") == (0, 4800)

    server.kill9()
    server.start()
    assert await _totals(world, "durable") == (0, 4800)
    assert await received(world, payment, token) == (4800, False)
    assert (await conn.send(200)).code == "fulfill"  # the peer and its token came back with Redis
    assert await _totals(world, "durable") == (0, 5000)

    assert (await peers_api(world, "DELETE", "/durable")).status_code == 204
    assert (await conn.post(conn.build(1).raw)).status_code == 401
    assert await received(world, payment, token) == (5000, False)
    # Its totals are what was exchanged: created again under the name, it continues them.
    again = await peers_api(world, "POST", json=body("durable", incomingToken="durable-token-2"))
    assert again.status_code == 201 and again.json()["receivedAmount"] == usd(5000)


# ---------------------------------------------------------------- two front ends


async def test_a_deleted_peer_s_token_is_refused_at_once_on_every_front_end(ray_head, embedded, tmp_path: Path) -> None:  # noqa: F811
    env = ilp_env(OPAY_ALLOW_INSECURE_FETCH="true", OPAY_FETCH_ALLOW="127.0.0.1")
    b = _front_end(tmp_path, "b", ray_head, embedded.url)
    a = _front_end(tmp_path, "a", ray_head, embedded.url, public_url=b.public_url)
    for server in (a, b):
        server.extra_env.update(env)
    a.start()
    b.start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            world = await make_world(b, http)
            token = await world.token()
            payment = (await world.create_payment(token, incomingAmount=usd(1_000_000))).json()
            for round_ in range(5):
                name, secret = f"edge{round_}", f"edge-token-{round_}"
                via = a if round_ % 2 else b  # created and deleted on either front end
                made = await http.post(f"{via.operator_url}/peers", json=body(name, incomingToken=secret), headers=via.operator_headers)
                assert made.status_code == 201, made.text
                conns = [Connection.to(http, s.public_url, payment, bearer=secret) for s in (a, b)]
                for conn in conns:  # both front ends know the peer (and cache it)
                    assert (await conn.send(1)).code == "fulfill"
                gone = await http.delete(f"{via.operator_url}/peers/{name}", headers=via.operator_headers)
                assert gone.status_code == 204
                for conn in conns:  # refused on both from the 204 on, not after a TTL
                    assert (await conn.post(conn.build(1).raw)).status_code == 401
            total = 0
            client = clients.blocking(embedded.url, 2)
            credited = ids.INCOMING_PAYMENT(payment["id"].rsplit("/", 1)[1])
            shard = shard_of(credited, 2)  # _front_end runs OPAY_SHARDS=2: the totals are the credited payment's shard's
            for round_ in range(5):
                assert client.hget(keys.peer_totals(f"edge{round_}", shard), "received") == b"2"
                total += 2
            assert await received(world, payment, token) == (total, False)
    finally:
        for server in (a, b):
            if server.process is not None:
                server.stop()
