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


@given(st.lists(st.integers(0, 3_000), max_size=300))
def test_replay_window_admits_each_sequence_once(sequences: list[int]) -> None:
    from opay.domain.replay_window import WINDOW, ReplayWindow, mark, was_seen
    from opay.persistence import codec

    window, admitted = ReplayWindow(), set()
    for sequence in sequences:
        if was_seen(window, sequence):
            # A replay, or too far behind the newest to judge: never admitted twice.
            assert sequence in admitted or window.top - sequence >= WINDOW
        else:
            assert sequence not in admitted
            admitted.add(sequence)
            window = mark(window, sequence)
            # It is journaled after every packet: it must always encode.
            assert codec.decode(codec.encode(window), ReplayWindow) == window
    assert window.seen < 1 << WINDOW
