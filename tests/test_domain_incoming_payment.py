"""Property tests of the pure incoming-payment rules, amounts and times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opay.domain import incoming_payment as rules
from opay.domain.amounts import UINT64_MAX, Asset, parse_uint64
from opay.domain.errors import Conflict, Invalid
from opay.domain.times import format_ms, parse_rfc3339_ms

USD = Asset("USD", 2)
NOW = 1_800_000_000_000
POLICY = rules.ExpiryPolicy(default_ms=3_600_000, max_ms=86_400_000)


def payment(incoming_amount: int | None, expires_at_ms: int | None = None) -> rules.IncomingPayment:
    return rules.open_payment(
        payment_id="p",
        wallet_address="http://x/alice",
        client="http://x/app",
        asset=USD,
        incoming_amount=incoming_amount,
        expires_at_ms=expires_at_ms,
        metadata=None,
        now_ms=NOW,
        expiry=POLICY,
    )


@given(cap=st.integers(1, 10_000), amounts=st.lists(st.integers(1, 3_000), max_size=60))
def test_credits_never_pass_the_cap_and_add_up(cap: int, amounts: list[int]) -> None:
    state = payment(cap)
    accepted = 0
    for amount in amounts:
        before = state
        state, outcome = rules.credit(state, amount, NOW)
        if outcome.accepted:
            accepted += amount
        else:
            assert state is before, "a refused credit changes nothing"
            assert outcome.refused_code in (rules.REFUSED_CAP, rules.REFUSED_COMPLETED)
        assert state.received <= cap
        assert outcome.received == state.received
    assert state.received == accepted
    assert state.completed == (accepted == cap)


@given(amounts=st.lists(st.integers(1, UINT64_MAX), max_size=5))
def test_uncapped_payment_never_overflows_uint64(amounts: list[int]) -> None:
    state = payment(None)
    for amount in amounts:
        state, outcome = rules.credit(state, amount, NOW)
        assert state.received <= UINT64_MAX
        assert outcome.accepted or outcome.refused_code == rules.REFUSED_OVERFLOW


@given(late_by=st.integers(0, 10**9))
def test_expiry_is_checked_at_credit_time(late_by: int) -> None:
    state = payment(100, NOW + 1000)
    after, outcome = rules.credit(state, 1, NOW + 1000 + late_by)
    assert not outcome.accepted and outcome.refused_code == rules.REFUSED_EXPIRED
    assert after is state


def test_completed_payment_refuses_and_completion_is_idempotent() -> None:
    state = rules.complete(payment(None), NOW)
    assert state.completed and rules.complete(state, NOW) is state
    _, outcome = rules.credit(state, 5, NOW)
    assert outcome.refused_code == rules.REFUSED_COMPLETED
    with pytest.raises(Conflict):
        rules.complete(payment(None, NOW + 10), NOW + 10)


def test_expiry_window() -> None:
    assert payment(None).expires_at_ms == NOW + POLICY.default_ms
    assert payment(None, NOW + POLICY.max_ms).expires_at_ms == NOW + POLICY.max_ms
    for bad in (NOW, NOW - 1, NOW + POLICY.max_ms + 1):
        with pytest.raises(Invalid):
            payment(None, bad)
    with pytest.raises(Invalid):
        payment(0)


def test_timer_expires_only_when_due() -> None:
    state = payment(None, NOW + 50)
    assert rules.expire(state, NOW + 49) is None
    expired = rules.expire(state, NOW + 50)
    assert expired is not None and expired.expired
    assert rules.expire(expired, NOW + 60) is None


@given(st.integers(0, UINT64_MAX))
def test_uint64_strings_round_trip(value: int) -> None:
    assert parse_uint64(str(value), "v") == value


@pytest.mark.parametrize("bad", ["-1", "1.5", "abc", "", " 1", "01", "1e3", str(UINT64_MAX + 1), 5, None])
def test_non_canonical_amounts_are_refused(bad: object) -> None:
    with pytest.raises(Invalid):
        parse_uint64(bad, "v")


@given(st.integers(0, 253_402_300_799_999))
def test_times_round_trip_at_millisecond_precision(instant_ms: int) -> None:
    assert parse_rfc3339_ms(format_ms(instant_ms), "t") == instant_ms


def test_time_parsing_truncates_and_requires_an_offset() -> None:
    assert parse_rfc3339_ms("2027-01-01T00:00:00.0019Z", "t") == parse_rfc3339_ms("2027-01-01T00:00:00.001Z", "t")
    assert parse_rfc3339_ms("2027-01-01T01:00:00+01:00", "t") == parse_rfc3339_ms("2027-01-01T00:00:00Z", "t")
    for bad in ("2027-01-01T00:00:00", "tomorrow", "2027-13-01T00:00:00Z", 5):
        with pytest.raises(Invalid):
            parse_rfc3339_ms(bad, "t")


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 5), st.integers(1, 30)), max_size=300))
def test_packet_dedupe_credits_each_live_condition_once_and_stays_bounded(packets: list[tuple[int, int, int]]) -> None:
    """(condition, amount, ms until expiry), at a clock that moves on: a live condition is
    admitted once and then found with its amount; an expired one may be admitted anew;
    a bucket holds only live entries, never more than BUCKET_MAX."""
    from opay.domain import packet_dedupe as dd
    from opay.persistence import codec

    buckets: dict[str, dd.Bucket] = {}
    live: dict[bytes, tuple[int, int]] = {}  # the model: condition -> (amount, expires_at_ms)
    for now, (c, amount, ttl) in enumerate(packets):
        condition = bytes([c]) * 32
        name = dd.bucket_name(condition)
        bucket = buckets.get(name, dd.Bucket())
        found = dd.find(bucket, condition, now)
        model = live.get(condition)
        if model is not None and model[1] > now:
            assert found == dd.Seen(condition, model[0], model[1])
            continue
        assert found is None
        added = dd.add(bucket, dd.Seen(condition, amount, now + ttl), now)
        assert added is not None  # 41 conditions never fill a bucket
        assert all(s.expires_at_ms > now for s in added.seen) and len(added.seen) <= dd.BUCKET_MAX
        assert codec.decode(codec.encode(added), dd.Bucket) == added  # journaled after every packet
        buckets[name] = added
        live[condition] = (amount, now + ttl)


def test_a_full_dedupe_bucket_refuses_rather_than_grows() -> None:
    from opay.domain import packet_dedupe as dd

    bucket = dd.Bucket(tuple(dd.Seen(bytes([0, n % 256, n // 256]) + bytes(29), 1, 100) for n in range(dd.BUCKET_MAX)))
    assert dd.add(bucket, dd.Seen(bytes(32), 1, 100), 50) is None
    pruned = dd.add(bucket, dd.Seen(bytes(32), 1, 200), 100)  # all expired at 100: pruned
    assert pruned is not None and pruned.seen == (dd.Seen(bytes(32), 1, 200),)