"""Tokens and grants change atomically: rotate, revoke and cancel are compare-and-set, and
a token whose grant is gone introspects as inactive (issue 7, item 5).

The store-level tests drive the exact interleavings a race produces (a rotation that read
its token before a cancel ran); the HTTP tests fire the races for real at the server.
"""

from __future__ import annotations

import anyio
import pytest

from opay.auth.access import AccessItem
from opay.auth.grant_states import ClientRef
from opay.auth.grants import GrantStore
from opay.persistence import clients, keys
from tests.conftest import INCOMING_ALL

pytestmark = pytest.mark.anyio

ACCESS = [AccessItem(type="incoming-payment", actions=["create", "read"])]
CLIENT = ClientRef(walletAddress="https://wallet.example/app")
NOW = 1_700_000_000_000


@pytest.fixture
async def store(embedded):
    client = clients.asynchronous(embedded.url, 5.0)
    yield GrantStore(client, token_seconds=3600)
    await client.aclose()


async def test_a_rotation_that_read_its_token_before_a_cancel_resurrects_nothing(store) -> None:
    grant, value, token, continue_token = await store.issue(CLIENT, ACCESS, NOW)
    assert await store.cancel(grant, continue_token)
    # The rotation looked the token up before the cancel ran; it must not bring it back.
    assert await store.rotate(token, value, NOW) is None
    assert await store._client.scard(f"{keys.grant(grant.id)}:tokens") == 0
    assert not [k async for k in store._client.scan_iter(match=keys.token("*"))]


async def test_two_rotations_of_one_token_leave_one_successor(store) -> None:
    _, value, token, _ = await store.issue(CLIENT, ACCESS, NOW)
    first = await store.rotate(token, value, NOW)
    second = await store.rotate(token, value, NOW)  # read the same token before the first rotated it
    assert first is not None and second is None
    assert (await store.introspect(first[0], NOW)).active
    assert not (await store.introspect(value, NOW)).active


async def test_a_revoke_after_a_rotation_of_the_same_token_changes_nothing(store) -> None:
    _, value, token, _ = await store.issue(CLIENT, ACCESS, NOW)
    successor = await store.rotate(token, value, NOW)
    assert successor is not None
    assert not await store.revoke(token, value)
    assert (await store.introspect(successor[0], NOW)).active


async def test_a_token_whose_grant_is_gone_is_inactive(store) -> None:
    grant, value, _, _ = await store.issue(CLIENT, ACCESS, NOW)
    assert (await store.introspect(value, NOW)).active
    await store._client.delete(keys.grant(grant.id))
    assert not (await store.introspect(value, NOW)).active


async def test_a_cancel_with_a_replaced_continue_token_cancels_nothing(store) -> None:
    grant, value, _, continue_token = await store.issue(CLIENT, ACCESS, NOW)
    assert not await store.cancel(grant, "not-the-continue-token")
    assert (await store.introspect(value, NOW)).active
    assert await store.cancel(grant, continue_token)
    assert not await store.cancel(grant, continue_token)  # already gone


async def _grant(world) -> dict:
    return await world.client.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": INCOMING_ALL}])


async def test_concurrent_rotations_over_http_never_fork_the_chain(world) -> None:
    grant = await _grant(world)
    value, manage = grant["access_token"]["value"], grant["access_token"]["manage"]
    answers: list = []

    async def rotate() -> None:
        answers.append(await world.client.request("POST", manage, token=value))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(rotate)
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 1, [a.status_code for a in answers]
    assert all(a.status_code == 401 for a in answers if a.status_code != 200)
    assert (await world.create_payment(ok[0].json()["access_token"]["value"])).status_code == 201
    assert (await world.create_payment(value)).status_code == 401


async def test_rotations_racing_a_cancel_over_http_leave_no_live_token(world) -> None:
    for _ in range(10):
        grant = await _grant(world)
        value, manage = grant["access_token"]["value"], grant["access_token"]["manage"]
        rotated: list[str] = []

        async def rotate() -> None:
            answer = await world.client.request("POST", manage, token=value)
            if answer.status_code == 200:
                rotated.append(answer.json()["access_token"]["value"])

        async def cancel() -> None:
            answer = await world.client.request("DELETE", grant["continue"]["uri"], token=grant["continue"]["access_token"]["value"])
            assert answer.status_code == 204, answer.text

        async with anyio.create_task_group() as group:
            group.start_soon(cancel)
            for _ in range(3):
                group.start_soon(rotate)
        for live in [value, *rotated]:
            introspected = await world.operator.post("/introspect", {"access_token": live})
            assert introspected.json() == {"active": False}
