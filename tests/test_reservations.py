"""Tentative grant reservations, driven entity by entity through an EntityHost on a real
redis-server (no Ray): a reservation whose payment never opens is asked about, the payment
id becomes a tombstone and the share goes back; an opened payment confirms its share; a
late open after the tombstone is refused, and so is reserving that id again."""

from __future__ import annotations

import uuid

import pytest
import redis

from opay.actors import grant_spends, timers
from opay.actors.entity import EntityHost
from opay.actors.messages import (
    Answered,
    Checked,
    CheckReservation,
    ConfirmSpend,
    Failed,
    Nothing,
    OpenOutgoingPayment,
    ReleaseSpend,
    ReserveSpend,
    ResumeGrantSpend,
    Spent,
    State,
    Tell,
    tag_of,
)
from opay.actors.registry import HANDLERS, JOURNAL_KEYS
from opay.clock import now_ms
from opay.domain import grant_spend
from opay.domain.amounts import Asset
from opay.domain.grant_spend import GrantSpend, Limits, Reservation
from opay.domain.outgoing_payment import Abandoned, OutgoingPayment
from opay.actors.registry import codec
from opay.persistence import keys
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.persistence.snapshots import SnapshotStore

USD = Asset("USD", 2)
LIMITS = Limits(debit=1_000, debit_asset=USD)
RECEIVER = "http://127.0.0.1/incoming-payments/00000000-0000-4000-8000-000000000000"
CONFIRM = grant_spends.CONFIRM_AFTER_MS


class Cluster:
    """One host standing in for every shard, with a router's delivery of Tells made explicit,
    so a test can drop a Tell (a crashed front end) or move the clock (the timer)."""

    def __init__(self, server: EmbeddedRedis) -> None:
        self.raw = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        self.server = server
        self.host = self.restart()
        self.now = now_ms()

    def restart(self) -> EntityHost:
        self.host = EntityHost(SnapshotStore(redis.Redis.from_url(self.server.url, socket_timeout=2)), HANDLERS, 1000, journal_keys=JOURNAL_KEYS)
        return self.host

    def ask(self, command, *, deliver: bool = True) -> tuple[object, list[Tell]]:
        result = self.host.handle([command], self.now)
        [reply] = result.replies
        if deliver:
            self.deliver(result.tells)
            return reply, []
        return reply, result.tells

    def deliver(self, tells: list[Tell]) -> None:
        """What the router does: ask each told command, send the answer back, and so on."""
        queue = list(tells)
        for _ in range(1_000):
            if not queue:
                return
            tell = queue.pop(0)
            result = self.host.handle([tell.command], self.now)
            queue += result.tells
            if tell.reply_to is not None:
                queue.append(Tell(Answered(tell.reply_to, tag_of(tell.command), result.replies[0])))
        raise AssertionError("tells kept coming")

    def fire(self, grant: str, *, deliver: bool = True) -> list[Tell]:
        assert timers.FIRE["grant"] is ResumeGrantSpend
        reply, tells = self.ask(ResumeGrantSpend(grant), deliver=deliver)
        assert reply == Nothing(), reply
        return tells

    def ledger(self, grant: str) -> GrantSpend:
        state = codec.decode_state(self.raw.hget(keys.entity(grant, 0), "s"))
        assert isinstance(state, GrantSpend)
        return state

    def reservation(self, grant: str, payment_id: str) -> Reservation | None:
        raw = self.raw.hget(keys.journal(grant, 0), payment_id)
        return None if raw is None else codec.decode(raw, Reservation)

    def op_state(self, payment_id: str):
        raw = self.raw.hget(keys.entity(f"op:{payment_id}", 0), "s")
        return None if raw is None else codec.decode_state(raw)

    def due_at(self, entity_id: str) -> float | None:
        return self.raw.zscore(keys.due(0), entity_id)


@pytest.fixture
def cluster(embedded: EmbeddedRedis) -> Cluster:
    return Cluster(embedded)


def new_grant() -> tuple[str, str]:
    grant_id = str(uuid.uuid4())
    return grant_id, grant_spends_entity(grant_id)


def grant_spends_entity(grant_id: str) -> str:
    return f"grant:{grant_id}"


def reserve(cluster: Cluster, grant: str, payment_id: str, debit: int = 100):
    reply, _ = cluster.ask(ReserveSpend(grant, payment_id, LIMITS, debit, USD, debit, USD, RECEIVER))
    return reply


def open_command(grant_id: str, payment_id: str, debit: int = 100) -> OpenOutgoingPayment:
    payment = OutgoingPayment(
        id=payment_id,
        wallet_address="http://127.0.0.1/alice",
        client="http://127.0.0.1/app",
        grant_id=grant_id,
        by_quote=False,
        receiver=RECEIVER,
        debit_asset=USD,
        receive_asset=USD,
        debit=debit,
        receive=debit,
        fee=0,
        created_at_ms=now_ms(),
    )
    return OpenOutgoingPayment(f"op:{payment_id}", payment, False)


def test_a_reservation_without_a_payment_is_given_back_and_its_id_closed(cluster: Cluster) -> None:
    grant_id, grant = new_grant()
    kept, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    assert reserve(cluster, grant, kept, 300) == Spent(300, 300)
    opened, _ = cluster.ask(open_command(grant_id, kept, 300))
    assert isinstance(opened, State)
    # The front end dies after reserving `orphan`, before opening it.
    reserved_at = cluster.now
    assert reserve(cluster, grant, orphan, 200) == Spent(500, 500)
    assert cluster.ledger(grant).unconfirmed == {orphan: reserved_at + CONFIRM}
    assert cluster.due_at(grant) == reserved_at + CONFIRM

    # A restart in between: the ledger, its journal and its due time are all in Redis.
    cluster.restart()
    # Too early: the timer asks nothing (the front end may still be about to open it).
    cluster.now = reserved_at + CONFIRM - 1
    assert cluster.fire(grant, deliver=False) == []
    assert cluster.due_at(grant) == reserved_at + CONFIRM

    cluster.now = reserved_at + CONFIRM
    [check] = cluster.fire(grant, deliver=False)
    assert check == Tell(CheckReservation(f"op:{orphan}", grant_id), grant)
    assert cluster.ledger(grant).unconfirmed == {orphan: cluster.now + grant_spends.RETRY_MS}, "asked: ask again later if unanswered"

    # The payment entity answers, writing its tombstone first.
    answer, _ = cluster.ask(check.command)
    assert answer == Checked(orphan, False)
    assert cluster.op_state(orphan) == Abandoned(id=orphan, grant_id=grant_id, abandoned_at_ms=cluster.now)
    assert cluster.ask(check.command)[0] == Checked(orphan, False), "asking twice answers the same"
    assert cluster.raw.zcard(keys.index("op", 0, "http://127.0.0.1/alice")) == 1, "a tombstone is not listed"

    # The answer reaches the grant: the share goes back, once, and nothing is due any more.
    answered = Answered(grant, tag_of(check.command), answer)
    assert cluster.ask(answered)[0] == Nothing()
    assert cluster.ask(answered)[0] == Nothing()
    ledger = cluster.ledger(grant)
    assert (ledger.spent_debit, ledger.unconfirmed) == (300, {})
    assert cluster.reservation(grant, orphan) == Reservation(debit=200, receive=200, window=-1, released=True)
    assert cluster.reservation(grant, kept) == Reservation(debit=300, receive=300, window=-1)
    assert cluster.due_at(grant) is None

    # A create stalled all along finally opens: refused, as its share is no longer counted.
    late, _ = cluster.ask(open_command(grant_id, orphan, 200))
    assert isinstance(late, Failed) and (late.kind, late.code) == ("conflict", "payment_abandoned"), late
    assert isinstance(cluster.op_state(orphan), Abandoned)
    # Reserving that id again (a retried quote) is refused rather than taken as still reserved.
    again = reserve(cluster, grant, orphan, 200)
    assert isinstance(again, Failed) and again.kind == "conflict", again
    assert cluster.ledger(grant).spent_debit == 300 and cluster.ledger(grant).unconfirmed == {}


def test_an_opened_payment_confirms_its_reservation(cluster: Cluster) -> None:
    grant_id, grant = new_grant()
    payment_id = str(uuid.uuid4())
    assert reserve(cluster, grant, payment_id) == Spent(100, 100)
    opened, tells = cluster.ask(open_command(grant_id, payment_id), deliver=False)
    assert isinstance(opened, State)
    assert Tell(ConfirmSpend(grant, payment_id), None) in tells, "confirmed without waiting for an answer"
    cluster.deliver(tells)
    assert cluster.ledger(grant).unconfirmed == {} and cluster.due_at(grant) is None
    assert cluster.ledger(grant).spent_debit == 100
    assert cluster.ask(ConfirmSpend(grant, payment_id))[0] == Nothing()  # again: no change
    # A retried reservation (lost reply) still counts once and does not become tentative again.
    assert reserve(cluster, grant, payment_id) == Spent(100, 100)
    assert cluster.ledger(grant).unconfirmed == {}


def test_a_lost_confirmation_is_recovered_by_asking(cluster: Cluster) -> None:
    grant_id, grant = new_grant()
    payment_id = str(uuid.uuid4())
    assert reserve(cluster, grant, payment_id) == Spent(100, 100)
    opened, _lost = cluster.ask(open_command(grant_id, payment_id), deliver=False)
    assert isinstance(opened, State)  # ...and its ConfirmSpend is lost with the front end
    cluster.restart()
    cluster.now += CONFIRM
    [check] = cluster.fire(grant, deliver=False)
    # Unanswered (an unavailable shard): the next firing after RETRY_MS asks again.
    cluster.now += grant_spends.RETRY_MS
    [again] = cluster.fire(grant, deliver=False)
    assert again == check
    cluster.deliver([again])
    ledger = cluster.ledger(grant)
    assert (ledger.spent_debit, ledger.unconfirmed) == (100, {})
    assert isinstance(cluster.op_state(payment_id), OutgoingPayment)
    assert cluster.reservation(grant, payment_id).released is False and cluster.due_at(grant) is None
    # The late first answer changes nothing.
    assert cluster.ask(Answered(grant, tag_of(check.command), Checked(payment_id, False)))[0] == Nothing()
    assert cluster.ledger(grant).spent_debit == 100 and not cluster.reservation(grant, payment_id).released


def test_a_quote_opened_under_another_grant_frees_the_first(cluster: Cluster) -> None:
    """A quote's payment id is reserved under grant A, cut off, then created under grant B:
    A's reservation will never back a payment, so A gives it back; no tombstone is needed."""
    _, a = new_grant()
    b_id, b = new_grant()
    quote_id = str(uuid.uuid4())
    assert reserve(cluster, a, quote_id) == Spent(100, 100)
    assert reserve(cluster, b, quote_id) == Spent(100, 100)
    opened, _ = cluster.ask(open_command(b_id, quote_id))
    assert isinstance(opened, State)
    cluster.now += CONFIRM
    cluster.fire(a)
    cluster.fire(b)  # confirmed already: asks nothing
    assert (cluster.ledger(a).spent_debit, cluster.ledger(a).unconfirmed) == (0, {})
    assert (cluster.ledger(b).spent_debit, cluster.ledger(b).unconfirmed) == (100, {})
    assert isinstance(cluster.op_state(quote_id), OutgoingPayment)
    assert cluster.due_at(a) is None and cluster.due_at(b) is None


def test_a_failed_payments_release_settles_its_reservation_too(cluster: Cluster) -> None:
    _, grant = new_grant()
    payment_id = str(uuid.uuid4())
    assert reserve(cluster, grant, payment_id) == Spent(100, 100)
    assert cluster.ask(ReleaseSpend(grant, payment_id))[0] == Spent(0, 0)
    assert cluster.ledger(grant).unconfirmed == {} and cluster.due_at(grant) is None


def test_checks_are_bounded_per_firing_and_pending_reservations_are_bounded(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, grant = new_grant()
    monkeypatch.setattr(grant_spends, "CHECKS_PER_FIRE", 2)
    monkeypatch.setattr(grant_spend, "MAX_RESERVATIONS", 5)
    orphans = [str(uuid.uuid4()) for _ in range(5)]
    for n, payment_id in enumerate(orphans):
        cluster.now += 1
        assert reserve(cluster, grant, payment_id, 10) == Spent(10 * (n + 1), 10 * (n + 1))
    refused = reserve(cluster, grant, str(uuid.uuid4()), 10)
    assert isinstance(refused, Failed) and (refused.kind, refused.code) == ("unavailable", "grant_busy"), refused
    assert cluster.ledger(grant).spent_debit == 50, "a refused reservation counts nothing"

    cluster.now += CONFIRM
    asked: list[str] = []
    for _ in range(3):
        tells = cluster.fire(grant, deliver=False)
        assert len(tells) <= 2
        asked += [tell.command.entity_id.split(":", 1)[1] for tell in tells]
        cluster.deliver(tells)
        if len(asked) < len(orphans):
            assert cluster.due_at(grant) <= cluster.now, "the rest go on the very next firing"
    assert asked == orphans, "oldest first, each once"
    ledger = cluster.ledger(grant)
    assert (ledger.spent_debit, ledger.unconfirmed) == (0, {}) and cluster.due_at(grant) is None
    assert all(isinstance(cluster.op_state(p), Abandoned) for p in orphans)
    # Room again.
    assert reserve(cluster, grant, str(uuid.uuid4()), 10) == Spent(10, 10)


def test_a_timer_for_a_grant_that_does_not_exist_is_dropped(cluster: Cluster) -> None:
    reply, _ = cluster.ask(ResumeGrantSpend(f"grant:{uuid.uuid4()}"))
    assert isinstance(reply, Failed) and reply.kind == "not_found"
