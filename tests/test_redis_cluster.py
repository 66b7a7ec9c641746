"""opay on a 3-master Redis Cluster (each master with a replica, `appendfsync always` on
every node, all on loopback): the flows as on one Redis, lists merged across shards that
live on different masters, and a master killed under credit load, failed over to its
replica, with no acknowledged credit lost and no payment past its cap; the same for the
control plane's master and the tokens it issued; and a master whose replica is gone
acknowledges no write at all, since a failover would lose it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from opay.persistence.keys import shard_of
from opay.http.incoming_payments import entity_id
from opay.persistence import keys
from tests.conftest import make_world
from tests.credit_load import CreditLoad
from tests.redis_cluster import RedisCluster
from tests.support import OpayServer

# The flows of one Redis, run again here against this module's `server` (pytest collects
# what a module imports; `world` and `payer` then take the cluster-backed server).
from tests.test_incoming_payments_flow import test_create_credit_complete  # noqa: F401
from tests.test_outgoing_payments import (  # noqa: F401
    payer,
    test_concurrent_creations_never_pass_the_grant_limit,
    test_interval_limit_resets_at_the_next_repetition,
    test_limits_on_receiver_and_amount,
    test_pay_from_a_quote_and_settle_locally,
    test_pay_without_a_quote,
    test_quote_rules,
    test_settlement_failure_fails_the_payment_and_gives_the_grant_share_back,
)

pytestmark = pytest.mark.anyio

SHARDS = 4
RECOVERY_BOUND_SECONDS = 90  # a bound of the polls below, never asserted as a duration
CAPS = [300, 1000, 10**12]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("redis-cluster"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def server(redis_cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory):
    process = OpayServer(
        Path(tmp_path_factory.mktemp("opay-on-cluster")),
        extra_env={"OPAY_REDIS_URL": redis_cluster.url, "OPAY_SHARDS": str(SHARDS), "OPAY_SHARD_CALL_TIMEOUT_SECONDS": "4"},
    )
    process.start()
    yield process
    process.stop()


def usd(value: int) -> dict:
    return {"value": str(value), "assetCode": "USD", "assetScale": 2}


async def make_payments(http: httpx.AsyncClient, server: OpayServer, wallet_path: str, count: int) -> tuple[str, list[tuple[str, int]]]:
    """A wallet address and `count` incoming payments on it: (wallet URL, [(payment URL, cap)])."""
    created = await http.post(f"{server.operator_url}/wallet-addresses", json={"path": wallet_path, "assetCode": "USD", "assetScale": 2})
    assert created.status_code == 201, created.text
    wallet = created.json()["id"]
    payments = []
    for n in range(count):
        cap = CAPS[n % len(CAPS)]
        made = await http.post(f"{server.operator_url}/incoming-payments", json={"walletAddress": wallet, "incomingAmount": usd(cap)})
        assert made.status_code == 201, made.text
        payments.append((made.json()["id"], cap))
    return wallet, payments


def stored_on(cluster: RedisCluster, payment_url: str) -> int:
    """The master holding the payment's snapshot, checked there."""
    entity = entity_id(payment_url.rsplit("/", 1)[1])
    key = keys.entity(entity, shard_of(entity, SHARDS))
    master = cluster.master_of(key)
    assert cluster.client(master).exists(key) == 1, f"{key} is not on the master serving its slot"
    return master


async def test_a_list_is_merged_in_order_from_shards_on_different_masters(server: OpayServer, redis_cluster: RedisCluster) -> None:
    async with httpx.AsyncClient(timeout=30, headers=server.operator_headers) as http:
        wallet, payments = await make_payments(http, server, "merged", 23)
        masters = {stored_on(redis_cluster, url) for url, _ in payments}
        assert len(masters) >= 2, f"every payment on one master ({masters}): the list would not cross nodes"
        read = [(await http.get(f"{server.operator_url}/incoming-payments/{url.rsplit('/', 1)[1]}")).json() for url, _ in payments]
        expected = [item["id"] for item in sorted(read, key=lambda item: (item["createdAt"], entity_id(item["id"].rsplit("/", 1)[1])))]

        async def page(**params: str) -> dict:
            answer = await http.get(f"{server.operator_url}/incoming-payments", params={"wallet-address": wallet, **params})
            assert answer.status_code == 200, answer.text
            return answer.json()

        forwards: list[str] = []
        cursor = None
        while True:
            body = await page(first="4", **({"cursor": cursor} if cursor else {}))
            forwards += [item["id"] for item in body["result"]]
            assert body["pagination"]["hasPreviousPage"] is (cursor is not None)
            if not body["pagination"]["hasNextPage"]:
                break
            cursor = body["pagination"]["endCursor"]
        assert forwards == expected

        cursor = expected[-1].rsplit("/", 1)[1]
        backwards = [expected[-1]]
        while True:
            body = await page(last="5", cursor=cursor)
            backwards = [item["id"] for item in body["result"]] + backwards
            assert body["pagination"]["hasNextPage"] is True
            if not body["pagination"]["hasPreviousPage"]:
                break
            cursor = body["pagination"]["startCursor"]
        assert backwards == expected

        unknown = await http.get(
            f"{server.operator_url}/incoming-payments",
            params={"wallet-address": wallet, "first": "3", "cursor": "00000000-0000-4000-8000-000000000000"},
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_cursor", unknown.text


async def test_a_master_fails_over_under_credit_load_and_nothing_acknowledged_is_lost(server: OpayServer, redis_cluster: RedisCluster) -> None:
    async with httpx.AsyncClient(timeout=60, headers=server.operator_headers, limits=httpx.Limits(max_connections=50)) as http:
        _, made = await make_payments(http, server, "failover", 18)
        homes = {url: stored_on(redis_cluster, url) for url, _ in made}
        assert len(set(homes.values())) >= 2, homes
        victim = homes[made[0][0]]
        moved = [url for url, master in homes.items() if master == victim]
        load = CreditLoad(http, server.operator_url, dict(made), seed=7)
        promoted: list[int] = []

        async def fail_over() -> None:
            redis_cluster.kill9(victim)
            load.faulted()
            promoted.append(await asyncio.to_thread(redis_cluster.wait_promoted, victim))
            # The promoted replica has no replica of its own, so opay acknowledges no write
            # there (redis_wait_replicas=1) until one is back: the killed node, rejoining.
            await asyncio.to_thread(redis_cluster.rejoin, victim)

        await load.around(fail_over, moved, RECOVERY_BOUND_SECONDS, server.log)
        await load.settle_and_check()
        for url in moved:
            assert stored_on(redis_cluster, url) == promoted[0]
    print(f"\nmaster {victim} killed, {promoted[0]} promoted; {load.summary()}")


async def test_the_control_plane_s_master_fails_over_and_no_issued_token_is_lost(server: OpayServer, redis_cluster: RedisCluster) -> None:
    """Grants are the control plane ({o}): a token answered 200 must still be honoured after
    the master holding it is killed and its replica has taken over."""
    async with httpx.AsyncClient(timeout=60) as http:
        world = await make_world(server, http)
        access = [{"type": "incoming-payment", "actions": ["create", "read", "list"]}]
        victim = redis_cluster.master_of(keys.SHARD_COUNT)
        issued: list[str] = []
        refused: list[int] = []
        fault: list[float] = []
        after: list[str] = []  # tokens asked for after the kill and issued
        stop = asyncio.Event()

        async def ask_for_tokens() -> None:
            while not stop.is_set():
                asked_at = time.monotonic()
                answer = await world.client.request("POST", world.receiver["authServer"], json=world.client.grant_body(access))
                if answer.status_code == 200:
                    issued.append(answer.json()["access_token"]["value"])
                    if fault and asked_at > fault[0]:
                        after.append(issued[-1])
                else:
                    assert answer.status_code == 503, answer.text
                    refused.append(answer.status_code)
                    await asyncio.sleep(0.1)

        workers = [asyncio.create_task(ask_for_tokens()) for _ in range(6)]
        try:
            await asyncio.sleep(2)
            redis_cluster.kill9(victim)
            fault.append(time.monotonic())
            promoted = await asyncio.to_thread(redis_cluster.wait_promoted, victim)
            await asyncio.to_thread(redis_cluster.rejoin, victim)  # a replica again, for the promoted master's WAITs
            while len(after) < 3:
                assert time.monotonic() - fault[0] < RECOVERY_BOUND_SECONDS, f"no token issued after the failover:\n{server.log()}"
                assert not any(w.done() for w in workers), [w.exception() for w in workers if w.done()]
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert redis_cluster.master_of(keys.SHARD_COUNT) == promoted
        url = f"{server.public_url}/incoming-payments?wallet-address={world.receiver['id']}&first=1"
        for token in issued:
            listed = await world.client.request("GET", url, token=token)
            assert listed.status_code == 200, (token, listed.text)
    print(f"\ncontrol-plane master {victim} killed, {promoted} promoted; {len(issued)} tokens issued and honoured after, {len(refused)} answers 503")


async def test_a_master_without_its_replica_acknowledges_no_write(server: OpayServer, redis_cluster: RedisCluster) -> None:
    """Replication lag on loopback is too short for a failover test to catch a write held by
    the master alone; a master with no replica holds every write alone, so it shows it.
    Neither a shard's writes nor the control plane's are acknowledged there, and both are
    once the replica is back; a credit answered 503 meanwhile is settled by its key."""
    async with httpx.AsyncClient(timeout=60) as http, httpx.AsyncClient(timeout=60, headers=server.operator_headers) as operator:
        world = await make_world(server, http)
        _, made = await make_payments(operator, server, "no-replica", 12)
        control = redis_cluster.master_of(keys.SHARD_COUNT)
        on_other = [url for url, _ in made if stored_on(redis_cluster, url) != control]
        assert on_other, "every payment's shard on the control plane's master"
        shard_master = stored_on(redis_cluster, on_other[0])
        access = [{"type": "incoming-payment", "actions": ["create", "read", "list"]}]
        credit = {"incomingPayment": on_other[0], "amount": "5", "idempotencyKey": "alone-1"}
        for master in (control, shard_master):
            replica = redis_cluster.replica_of(master)
            redis_cluster.kill9(replica)
            try:
                if master == control:
                    answer = await world.client.request("POST", world.receiver["authServer"], json=world.client.grant_body(access))
                else:
                    answer = await operator.post(f"{server.operator_url}/credits", json=credit)
                assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
            finally:
                await asyncio.to_thread(redis_cluster.rejoin, replica)
        granted = await world.client.request("POST", world.receiver["authServer"], json=world.client.grant_body(access))
        assert granted.status_code == 200, granted.text
        settled = await operator.post(f"{server.operator_url}/credits", json=credit)
        assert settled.status_code == 200 and settled.json()["receivedAmount"]["value"] == "5", settled.text
