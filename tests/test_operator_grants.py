"""The operator's grants (GET /grants, GET /grants/{id}, POST /grants/{id}/revoke) on the
session's real server: lists per client and per wallet address, with state, paged by
position; a revoke ends the grant and its tokens at once, at introspection and at the
resource server (whose cache held the token); bad input changes nothing.
"""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from opay.persistence import keys
from opay.persistence.positions import Position, Positions, parse_cursor
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio

INCOMING = [{"type": "incoming-payment", "actions": ["create", "read", "list"]}]


def for_wallet(world) -> list[dict]:
    return [{"type": "incoming-payment", "actions": ["create", "read", "list"], "identifier": world.receiver["id"]}]


async def get(world, path: str, **params):
    return await world.http.get(world.server.operator_url + path, params=params, headers=world.operator.headers)


async def listing(world, **params) -> list[dict]:
    """Every grant of a list, page by page (first=1: every page boundary is crossed)."""
    return await world.operator_list("/grants", first="1", **params)


async def pending_grant(world, access: list[dict]) -> dict:
    body = {"access_token": {"access": access}, "client": world.client.wallet_address, "interact": {"start": ["redirect"]}}
    answer = await world.client.request("POST", world.receiver["authServer"], json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def grant_id(grant_answer: dict) -> str:
    return grant_answer["continue"]["uri"].rsplit("/", 1)[1]


def outgoing(world) -> dict:
    return {"type": "outgoing-payment", "actions": ["create", "read"], "identifier": world.receiver["id"]}


async def test_grants_are_listed_per_client_and_per_wallet_with_their_state(world) -> None:
    plain = await world.client.grant(world.receiver["authServer"], INCOMING)
    named = await world.client.grant(world.receiver["authServer"], for_wallet(world))
    pending = await pending_grant(world, [outgoing(world)])
    denied = await pending_grant(world, [outgoing(world)])
    assert (await world.operator.post(f"/grants/{grant_id(denied)}/deny", {})).status_code == 200
    ids = [grant_id(g) for g in (plain, named, pending, denied)]

    by_client = await listing(world, client=world.client.wallet_address)
    assert [g["id"] for g in by_client] == ids  # creation order, every page crossed
    assert [g["state"] for g in by_client] == ["finalized", "finalized", "pending", "denied"]
    assert all(g["client"] == {"walletAddress": world.client.wallet_address} for g in by_client)
    assert by_client[1]["access"] == for_wallet(world)
    assert "expiresAt" in by_client[2] and "decidedAt" in by_client[3] and "expiresAt" not in by_client[0]

    # Per wallet address: the grants whose access names it; `plain` names none.
    assert [g["id"] for g in await listing(world, **{"wallet-address": world.receiver["id"]})] == ids[1:]
    assert [g["id"] for g in await listing(world, client=world.client.wallet_address, state="pending")] == [ids[2]]
    assert await listing(world, client=world.client.wallet_address, state="approved") == []
    other = await world.new_client("other")
    assert await listing(world, client=other.wallet_address) == []

    # Backwards from the end: the last two, and the page before them.
    answer = (await get(world, "/grants", client=world.client.wallet_address, last="2")).json()
    assert [g["id"] for g in answer["result"]] == ids[2:]
    assert answer["pagination"]["hasPreviousPage"] and not answer["pagination"]["hasNextPage"]
    before = (await get(world, "/grants", client=world.client.wallet_address, last="5", cursor=answer["pagination"]["startCursor"])).json()
    assert [g["id"] for g in before["result"]] == ids[:2] and not before["pagination"]["hasPreviousPage"]

    one = await get(world, f"/grants/{ids[2]}")
    assert one.status_code == 200 and one.json() == by_client[2]
    assert not {"continue_token_digest", "interaction", "nonce"} & set(one.json())


async def test_a_revoke_ends_the_grant_and_its_tokens_at_once(world) -> None:
    first = await world.client.grant(world.receiver["authServer"], for_wallet(world))
    second = await world.client.grant(world.receiver["authServer"], for_wallet(world))
    token = first["access_token"]["value"]
    url = f"{world.server.public_url}/incoming-payments?wallet-address={world.receiver['id']}"
    assert (await world.client.request("GET", url, token=token)).status_code == 200  # now in the introspection cache

    page = (await get(world, "/grants", client=world.client.wallet_address, first="1")).json()
    assert [g["id"] for g in page["result"]] == [grant_id(first)]

    revoked = await world.operator.post(f"/grants/{grant_id(first)}/revoke", {})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revokedTokens"] == 1 and revoked.json()["grant"]["id"] == grant_id(first)

    assert (await world.client.request("GET", url, token=token)).status_code == 401
    introspected = await world.operator.post("/introspect", {"access_token": token})
    assert introspected.json() == {"active": False}
    assert (await world.client.request("GET", url, token=second["access_token"]["value"])).status_code == 200

    # Gone from the lists; the cursor of the page that showed it still leads on.
    after = (await get(world, "/grants", client=world.client.wallet_address, first="1", cursor=page["pagination"]["endCursor"])).json()
    assert [g["id"] for g in after["result"]] == [grant_id(second)]
    assert [g["id"] for g in await listing(world, **{"wallet-address": world.receiver["id"]})] == [grant_id(second)]
    assert_error(await get(world, f"/grants/{grant_id(first)}"), 404, "not_found")
    assert_error(await world.operator.post(f"/grants/{grant_id(first)}/revoke", {}), 404, "not_found")


async def test_a_pending_grant_revoked_can_no_longer_be_approved(world) -> None:
    pending = await pending_grant(world, [outgoing(world)])
    revoked = await world.operator.post(f"/grants/{grant_id(pending)}/revoke", {})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revokedTokens"] == 0 and revoked.json()["grant"]["state"] == "pending"
    assert_error(await world.operator.post(f"/grants/{grant_id(pending)}/approve", {}), 404)
    assert await listing(world, client=world.client.wallet_address) == []


async def test_a_cancelled_grant_leaves_the_lists_and_an_expired_one_is_dropped_when_met(world) -> None:
    cancelled = await world.client.grant(world.receiver["authServer"], for_wallet(world))
    expired = await pending_grant(world, [outgoing(world)])
    kept = await world.client.grant(world.receiver["authServer"], for_wallet(world))
    answer = await world.client.request("DELETE", cancelled["continue"]["uri"], token=cancelled["continue"]["access_token"]["value"])
    assert answer.status_code == 204, answer.text
    client = aioredis.Redis.from_url(world.server.redis_url)
    try:
        index = keys.grants_of_wallet(world.receiver["id"])
        assert await client.zscore(index, grant_id(cancelled)) is None  # taken out in the cancel's own write
        await client.delete(keys.grant(grant_id(expired)))  # as its TTL would
        assert [g["id"] for g in await listing(world, **{"wallet-address": world.receiver["id"]})] == [grant_id(kept)]
        assert await client.zscore(index, grant_id(expired)) is None
        assert await client.zscore(keys.grants_of_client(world.client.wallet_address), grant_id(expired)) is not None  # not yet met there
    finally:
        await client.aclose()


async def test_bad_input_is_refused_and_changes_nothing(world) -> None:
    grant = await world.client.grant(world.receiver["authServer"], for_wallet(world))
    client = world.client.wallet_address
    for params in (
        {},
        {"client": client, "wallet-address": world.receiver["id"]},
        {"client": ""},
        {"client": "x" * 3000},
        {"client": client, "state": "revoked"},
        {"client": client, "first": "0"},
        {"client": client, "first": "101"},
        {"client": client, "first": "1", "last": "1"},
        {"client": client, "cursor": grant_id(grant)},
        {"client": client, "cursor": ""},
    ):
        assert_error(await get(world, "/grants", **params), 400)
    for bad in ("not-a-uuid", grant_id(grant).upper(), str(uuid.uuid4())):
        assert_error(await get(world, f"/grants/{bad}"), 404, "not_found")
        assert_error(await world.operator.post(f"/grants/{bad}/revoke", {}), 404, "not_found")
    assert_error(await world.http.put(f"{world.server.operator_url}/grants/{grant_id(grant)}", headers=world.operator.headers), 405)
    assert [g["id"] for g in await listing(world, client=client)] == [grant_id(grant)]
    introspected = await world.operator.post("/introspect", {"access_token": grant["access_token"]["value"]})
    assert introspected.json()["active"] is True


async def test_every_grant_route_needs_the_operator_token(world) -> None:
    grant = await world.client.grant(world.receiver["authServer"], INCOMING)
    base = world.server.operator_url
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {world.server.operator_token}"}):
        for method, path in (
            ("GET", f"/grants?client={world.client.wallet_address}"),
            ("GET", f"/grants/{grant_id(grant)}"),
            ("POST", f"/grants/{grant_id(grant)}/revoke"),
            ("POST", "/grants/not-a-uuid/revoke"),
        ):
            assert_error(await world.http.request(method, base + path, headers=headers), 401, "unauthorized")
    assert (await world.operator.post("/introspect", {"access_token": grant["access_token"]["value"]})).json()["active"] is True


async def test_a_position_cursor_holds_when_its_member_is_gone_among_ties(embedded) -> None:
    """The pages of opay/persistence/positions.py: a cursor is (score, member), ties in
    member order, so the next page starts right after it whether it is there or not."""
    client = aioredis.Redis(port=embedded.port)
    try:
        members = sorted(str(uuid.uuid4()) for _ in range(6))
        await client.zadd("set", {m: score for m, score in zip(members, (5, 5, 5, 5, 7, 9))})
        positions = Positions(client)
        page = await positions.page("set", None, "first", 2)
        assert [e.member for e in page.entries] == members[:2] and not page.has_previous and page.has_next
        await client.zrem("set", members[1])
        after = await positions.page("set", parse_cursor(page.entries[-1].cursor()), "first", 3)
        assert [e.member for e in after.entries] == members[2:5] and after.has_previous and after.has_next
        before = await positions.page("set", Position(5, members[1]), "last", 3)
        assert [e.member for e in before.entries] == members[:1] and not before.has_previous and before.has_next
        await client.zadd("set", {members[2]: 8})  # moved: its old position still leads on
        moved = await positions.page("set", Position(5, members[2]), "first", 10)
        assert [e.member for e in moved.entries] == [members[3], members[4], members[2], members[5]]
    finally:
        await client.aclose()
