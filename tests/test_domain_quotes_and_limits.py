"""Property tests: exchange and fee arithmetic, repeating intervals, grant limits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from opay.domain import exchange, grant_spend, quote
from opay.domain.amounts import Asset
from opay.domain.errors import Conflict, Forbidden, Invalid
from opay.domain.intervals import parse_interval, repetition_start, window_at
from opay.domain.times import format_ms

USD, EUR, JPY = Asset("USD", 2), Asset("EUR", 2), Asset("JPY", 0)
rates = st.fractions(min_value=Fraction(1, 1000), max_value=Fraction(1000), max_denominator=10_000)
fee_schedules = st.builds(exchange.FeeSchedule, fixed=st.integers(0, 500), basis_points=st.integers(0, 2_000))


@given(debit=st.integers(1, 10**12), rate=rates, fees=fee_schedules, assets=st.sampled_from([(USD, EUR), (USD, JPY), (JPY, USD)]))
def test_fixed_send_never_debits_more_and_never_overpromises(debit, rate, fees, assets) -> None:
    sender, receiver = assets
    try:
        priced = quote.price(debit=debit, receive=None, rate=rate, sender=sender, receiver=receiver, fees=fees, remaining=None)
    except Invalid as error:
        assert error.code == "amount_too_small"
        return
    assert priced.debit == debit
    principal = priced.debit - priced.fee
    assert principal + exchange.fee(principal, fees) <= debit
    # The receive amount is the floor of the exact value of the principal: never more.
    exact = principal * exchange.unit_rate(rate, sender, receiver)
    assert priced.receive <= exact < priced.receive + 1
    # And the principal is the largest one the debit can pay for.
    assert (principal + 1) + exchange.fee(principal + 1, fees) > debit


@given(receive=st.integers(1, 10**12), rate=rates, fees=fee_schedules, assets=st.sampled_from([(USD, EUR), (USD, JPY), (JPY, USD)]))
def test_fixed_receive_delivers_exactly_with_the_least_principal(receive, rate, fees, assets) -> None:
    sender, receiver = assets
    priced = quote.price(debit=None, receive=receive, rate=rate, sender=sender, receiver=receiver, fees=fees, remaining=None)
    per_unit = exchange.unit_rate(rate, sender, receiver)
    principal = priced.debit - priced.fee
    assert priced.receive == receive
    assert principal * per_unit >= receive
    assert principal == 0 or (principal - 1) * per_unit < receive
    assert priced.fee == exchange.fee(principal, fees)


def test_quote_amount_rules() -> None:
    same = dict(rate=Fraction(1), sender=USD, receiver=USD, fees=exchange.FeeSchedule())
    assert quote.price(debit=None, receive=None, remaining=70, **same).receive == 70
    with pytest.raises(Invalid):
        quote.price(debit=5, receive=5, remaining=None, **same)
    with pytest.raises(Invalid):
        quote.price(debit=None, receive=None, remaining=None, **same)
    with pytest.raises(Invalid):
        quote.price(debit=None, receive=71, remaining=70, **same)
    with pytest.raises(Invalid) as small:
        quote.price(debit=3, receive=None, remaining=None, **{**same, "fees": exchange.FeeSchedule(fixed=3)})
    assert small.value.details == {"minSendAmount": "4"}
    assert exchange.parse_rate("0.9137") == Fraction(9137, 10000)
    for bad in ("0", "-1", "x", 0.5, "NaN"):
        with pytest.raises(Invalid):
            exchange.parse_rate(bad)


def ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


instants = st.integers(ms("2020-01-01T00:00:00Z"), ms("2040-01-01T00:00:00Z"))
durations = st.sampled_from(["PT1S", "PT90M", "P1D", "P1W", "P1M", "P2M", "P1Y", "P1M15D", "P1DT12H", "P3M"])


@given(start=instants, duration=durations, offset=st.integers(0, 10 * 365 * 86_400_000), count=st.one_of(st.none(), st.integers(0, 200)))
def test_window_holds_the_instant_and_is_consistent_with_repetitions(start, duration, offset, count) -> None:
    interval = parse_interval(f"R{'' if count is None else count}/{format_ms(start)}/{duration}")
    instant = start + offset
    window = window_at(interval, instant)
    if window is None:
        assert count is not None and instant >= repetition_start(interval, count)
        return
    assert window.start_ms <= instant < window.end_ms
    assert window.start_ms == repetition_start(interval, window.index)
    assert count is None or window.index < count


@given(start=instants, duration=durations, offset=st.integers(1, 5 * 365 * 86_400_000))
def test_a_new_repetition_starts_spending_from_zero(start, duration, offset) -> None:
    interval = parse_interval(f"R/{format_ms(start)}/{duration}")
    limits = grant_spend.Limits(debit=100, debit_asset=USD, interval=interval)
    state = grant_spend.GrantSpend(id="g")
    state, _ = grant_spend.reserve(state, limits, debit=100, debit_asset=USD, receive=1, receive_asset=USD, receiver="r", now_ms=start)
    with pytest.raises(Forbidden):
        grant_spend.reserve(state, limits, debit=1, debit_asset=USD, receive=1, receive_asset=USD, receiver="r", now_ms=start)
    boundary = window_at(interval, start).end_ms
    later = boundary + offset % (window_at(interval, boundary).end_ms - boundary)
    assume(window_at(interval, later).index == 1)
    after, reservation = grant_spend.reserve(
        state, limits, debit=100, debit_asset=USD, receive=1, receive_asset=USD, receiver="r", now_ms=later
    )
    assert after.spent_debit == 100 and reservation.window == 1


def test_month_end_repetitions_do_not_drift() -> None:
    interval = parse_interval("R/2025-01-31T00:00:00Z/P1M")
    starts = [format_ms(repetition_start(interval, n))[:10] for n in range(4)]
    assert starts == ["2025-01-31", "2025-02-28", "2025-03-31", "2025-04-30"]
    assert window_at(interval, ms("2025-03-30T23:59:59Z")).index == 1


@given(payments=st.lists(st.integers(1, 60), max_size=40), limit=st.integers(1, 500))
def test_reservations_never_pass_the_limit_and_release_gives_back(payments, limit) -> None:
    limits = grant_spend.Limits(debit=limit, debit_asset=USD)
    state = grant_spend.GrantSpend(id="g")
    held = []
    for amount in payments:
        try:
            state, reservation = grant_spend.reserve(
                state, limits, debit=amount, debit_asset=USD, receive=amount, receive_asset=EUR, receiver="r", now_ms=0
            )
            held.append(reservation)
        except Forbidden:
            pass
        assert state.spent_debit <= limit
    assert state.spent_debit == sum(r.debit for r in held)
    for reservation in held:
        state, released = grant_spend.release(state, reservation)
        assert grant_spend.release(state, released) == (state, released)
    assert state.spent_debit == 0


# One operation on a grant's ledger: a new payment, a retry of an earlier one's
# reservation, its confirmation, its release (failed, or found abandoned), or time moving.
ledger_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(1, 60), st.integers(0, 40)),
        st.tuples(st.just("retry"), st.integers(0, 30)),
        st.tuples(st.just("confirm"), st.integers(0, 30)),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("wait"), st.integers(1, 90_000)),
    ),
    max_size=60,
)


@given(ops=ledger_ops, debit_limit=st.integers(1, 400), receive_limit=st.integers(1, 400), interval=st.booleans())
def test_a_ledger_that_keeps_only_open_reservations_still_holds_every_limit(ops, debit_limit, receive_limit, interval) -> None:
    """The ledger's snapshot keeps only the current repetition's totals and its tentative
    reservations; each payment id's Reservation lives in the journal (a dict here), looked
    up per id. Whatever the order of reserves, retries, confirmations, releases and
    repetitions: the totals are exactly what is reserved and not given back in the current
    repetition, never past a limit; a retry counts nothing more; a released id stays refused."""
    start = ms("2025-01-01T00:00:00Z")
    limits = grant_spend.Limits(
        debit=debit_limit,
        debit_asset=USD,
        receive=receive_limit,
        receive_asset=EUR,
        interval=parse_interval("R/2025-01-01T00:00:00Z/PT1M") if interval else None,
    )
    state, journal, ids, now = grant_spend.GrantSpend(id="g"), {}, [], start
    for op in ops:
        if op[0] == "reserve":
            payment_id, receive = f"p{len(ids)}", op[2]
            ids.append(payment_id)
            try:
                state, made = grant_spend.reserve_once(
                    state, limits, payment_id, journal.get(payment_id), debit=op[1], debit_asset=USD,
                    receive=receive, receive_asset=EUR, receiver="r", now_ms=now, check_at_ms=now + 10_000,
                )
            except Forbidden as refused:
                assert refused.code == "grant_limit_exceeded"
            else:
                assert made is not None and made.window == state.window
                journal[payment_id] = made
        elif ids and op[0] == "retry":
            payment_id = ids[op[1] % len(ids)]
            before = grant_spend.spent_now(state, limits, now)
            try:
                state_after, made = grant_spend.reserve_once(
                    state, limits, payment_id, journal.get(payment_id), debit=1, debit_asset=USD,
                    receive=1, receive_asset=EUR, receiver="r", now_ms=now, check_at_ms=now + 10_000,
                )
            except Conflict as refused:
                assert refused.code == "quote_used" and journal[payment_id].released
                continue
            except Forbidden:
                assert payment_id not in journal  # refused the first time, refused now: never counted
                continue
            if payment_id in journal:
                assert made is None, "a retry of a counted id counts nothing more"
                assert (state_after.spent_debit, state_after.spent_receive) == (before.spent_debit, before.spent_receive)
            else:
                journal[payment_id] = made  # first refused, now within the limits: counted once
                state = state_after
        elif ids and op[0] == "confirm":
            state = grant_spend.resolved(state, ids[op[1] % len(ids)])
        elif ids and op[0] == "release":
            payment_id = ids[op[1] % len(ids)]
            if payment_id in journal:
                state, journal[payment_id] = grant_spend.release(state, journal[payment_id])
                assert grant_spend.release(state, journal[payment_id]) == (state, journal[payment_id]), "released once"
            state = grant_spend.resolved(state, payment_id)
        elif op[0] == "wait":
            now += op[1]

        view = grant_spend.spent_now(state, limits, now)
        counted = [r for r in journal.values() if r.window == view.window and not r.released]
        assert view.spent_debit == sum(r.debit for r in counted) <= debit_limit
        assert view.spent_receive == sum(r.receive for r in counted) <= receive_limit
        # Only what may still be given back without a word from its payment stays in the snapshot.
        assert set(state.unconfirmed) <= {p for p, r in journal.items() if not r.released}
        assert len(state.unconfirmed) <= grant_spend.MAX_RESERVATIONS


@pytest.mark.parametrize("bad", ["P1M", "R5/P1M/2025-01-01T00:00:00Z", "Rx/2025-01-01T00:00:00Z/P1M", "R/2025-01-01T00:00:00Z/P", "R/2025-01-01T00:00:00Z/PT0S", "R/not-a-date/P1D"])
def test_bad_intervals_are_refused(bad: str) -> None:
    with pytest.raises(Invalid):
        parse_interval(bad)
