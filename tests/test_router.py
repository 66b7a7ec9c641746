"""The router never hangs (issue 8, item 3), and a dead shard handle is looked up again
(item 1): a real Ray of this test's own, real shard actors, a real redis-server.

- a command that cannot be encoded is refused alone; its batch-mates are answered;
- every ask has a deadline: commands behind a stopped shard hear 503 at the deadline,
  and those still queued then are never sent;
- a shard killed for good is re-created by name on the next failure, and serves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
import ray
import redis

from opay.actors.cluster import NAMESPACE, ShardDirectory
from opay.actors.messages import CreditIncomingPayment, Credited, Failed, OpenIncomingPayment, State
from opay.actors.router import DEADLINE, ShardRouter
from opay.clock import now_ms
from opay.domain import incoming_payment as rules
from opay.domain.amounts import Asset
from opay.persistence import codec, keys
from opay.settings import Settings

pytestmark = pytest.mark.anyio
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, namespace=NAMESPACE, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def directory(local_ray, embedded):
    shards = ShardDirectory(Settings(), embedded.url, 1)
    yield shards
    ray.kill(shards.handle(0), no_restart=True)


def _payment() -> tuple[str, rules.IncomingPayment]:
    payment_id = str(uuid.uuid4())
    now = now_ms()
    payment = rules.open_payment(
        payment_id=payment_id,
        wallet_address="http://127.0.0.1/alice",
        client=None,
        asset=Asset("USD", 2),
        incoming_amount=None,
        expires_at_ms=None,
        metadata=None,
        now_ms=now,
        expiry=rules.ExpiryPolicy(HOUR_MS, 24 * HOUR_MS),
    )
    return f"ip:{payment_id}", payment


def _credit(entity_id: str, amount: int, key: str) -> CreditIncomingPayment:
    return CreditIncomingPayment(entity_id, amount, source="operator", idempotency_key=key)


async def test_an_unencodable_command_is_refused_alone(directory) -> None:
    router = ShardRouter(directory, batch_max=256, in_flight=2, deadline_seconds=10)
    try:
        payments = [_payment() for _ in range(50)]
        with pytest.raises(OverflowError):  # the premise: msgpack holds no such integer
            codec.encode(_credit("ip:x", 10**30, "k"))
        async with asyncio.timeout(30):  # the old router hung here for ever
            replies = await asyncio.gather(
                *(router.ask(OpenIncomingPayment(entity_id, payment)) for entity_id, payment in payments),
                router.ask(_credit(payments[0][0], 10**30, "too-big")),
            )
        assert all(isinstance(reply, State) for reply in replies[:-1]), replies[:-1]
        assert isinstance(replies[-1], Failed) and replies[-1].kind == "invalid"
    finally:
        await router.close()


async def test_commands_behind_a_stopped_shard_hear_503_at_the_deadline(directory, embedded) -> None:
    router = ShardRouter(directory, batch_max=1, in_flight=1, deadline_seconds=2)
    pid = ray.get(directory.handle(0).stats.remote())["pid"]
    entity_id, payment = _payment()
    try:
        assert isinstance(await router.ask(OpenIncomingPayment(entity_id, payment)), State)
        os.kill(pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(15):  # the old router waited as long as the shard was stopped
                sent, queued = await asyncio.gather(router.ask(_credit(entity_id, 1, "sent")), router.ask(_credit(entity_id, 2, "queued")))
            assert sent == DEADLINE and queued == DEADLINE
        finally:
            os.kill(pid, signal.SIGCONT)
        # The batch already sent may land (its outcome was unknown); the one still queued
        # at its deadline was never sent.
        after = await router.ask(_credit(entity_id, 4, "after"))
        assert isinstance(after, Credited) and after.outcome.received in (4, 5), after
        journal = redis.Redis.from_url(embedded.url).hkeys(keys.journal(entity_id, 0))  # the directory has one shard
        assert not any(b"queued" in key for key in journal), journal
    finally:
        await router.close()


async def test_a_shard_killed_for_good_is_found_again_by_name(directory) -> None:
    router = ShardRouter(directory, batch_max=256, in_flight=2, deadline_seconds=10)
    entity_id, payment = _payment()
    try:
        assert isinstance(await router.ask(OpenIncomingPayment(entity_id, payment)), State)
        ray.kill(directory.handle(0), no_restart=True)  # as a lost owner or node would leave it
        answers = []
        for attempt in range(20):
            answers.append(await router.ask(_credit(entity_id, 1, "after-kill")))
            if isinstance(answers[-1], Credited):
                break
            await asyncio.sleep(0.5)
        assert isinstance(answers[-1], Credited) and answers[-1].outcome.received == 1, answers
        assert all(isinstance(a, Failed) and a.kind == "unavailable" for a in answers[:-1])
    finally:
        await router.close()
