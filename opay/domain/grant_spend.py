"""What an outgoing-payment grant has spent, against the limits the user consented to.

One ledger per grant, changed one payment at a time by its entity actor, so payments
under one grant can never together pass its limits. With an interval, spending counts
per repetition: a payment in a new repetition starts from zero.

A reservation is tentative until its payment is opened. The front end reserves, then
opens the payment; a crash (or a 503) between the two would leave a share counted with
no payment to ever give it back. So the ledger keeps every unconfirmed reservation with
the time to ask about it: the payment entity confirms it once opened, and if it has not
by then the grant asks the payment entity, which settles the race for good (it either
holds the payment, or writes a tombstone that no late create can get past).

What the ledger holds, and for how long. Its snapshot (rewritten on every change) holds
only the current repetition's totals, exact integers, and the reservations still
tentative (at most MAX_RESERVATIONS): a confirmed share is folded into the totals, a
released one taken out of them, and a new repetition starts from zero, so nothing of a
past repetition stays. Beside it, the grant's journal keeps each payment id's
Reservation (~35 bytes) for good, in Redis: it is what answers a retried reservation
exactly (counted once, or refused once given back) and what a release gives back, and
its entity host reads it per key, never whole (opay.actors.entity). A bounded set of
"recently settled" ids would not do: a retry arriving after its id left the set would
count a payment twice, and nothing in a retry says how old it is.
"""

from __future__ import annotations

import msgspec

from opay.domain.amounts import Asset
from opay.domain.errors import Conflict, DomainError, Forbidden, Invalid
from opay.domain.intervals import RepeatingInterval, window_at

# At most this many reservations wait for their payment per grant. Each one lives in
# the grant's snapshot (~50 bytes; the snapshot is rewritten on every change), so the
# bound keeps that write under ~50 KiB; past it the grant refuses new payments (503
# `grant_busy`, retryable) until the payment entities have answered. Payments confirm
# within milliseconds of their reservation, so only a burst of creates cut off at once
# (a front end killed mid-load) ever comes near it.
MAX_RESERVATIONS = 1_000


class Busy(DomainError):
    """Too much waits on other entities right now; retrying shortly succeeds."""

    kind = "unavailable"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    debit: int | None = None
    debit_asset: Asset | None = None
    receive: int | None = None
    receive_asset: Asset | None = None
    receiver: str | None = None
    interval: RepeatingInterval | None = None


class GrantSpend(msgspec.Struct, frozen=True, kw_only=True, tag="grant"):
    id: str
    window: int = -1  # repetition the spent amounts belong to; -1 without an interval
    spent_debit: int = 0
    spent_receive: int = 0
    # Unconfirmed reservations: payment id -> when to ask that payment whether it was
    # opened. An entry leaves when the payment confirms, or when asking settles it.
    unconfirmed: dict[str, int] = {}


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """One payment's share, kept per payment id so a retry or a release is exact."""

    debit: int
    receive: int
    window: int
    released: bool = False


def current_window(limits: Limits, now_ms: int) -> int:
    if limits.interval is None:
        return -1
    window = window_at(limits.interval, now_ms)
    if window is None:
        raise Forbidden("grant_interval_inactive", "the grant's interval has not started or has ended")
    return window.index


def spent_now(state: GrantSpend, limits: Limits, now_ms: int) -> GrantSpend:
    """The ledger as of now: a new repetition starts from zero."""
    window = current_window(limits, now_ms)
    if window != state.window:
        return msgspec.structs.replace(state, window=window, spent_debit=0, spent_receive=0)
    return state


def reserve(
    state: GrantSpend,
    limits: Limits,
    *,
    debit: int,
    debit_asset: Asset,
    receive: int,
    receive_asset: Asset,
    receiver: str,
    now_ms: int,
) -> tuple[GrantSpend, Reservation]:
    if limits.receiver is not None and limits.receiver != receiver:
        raise Forbidden("insufficient_grant", "the grant does not allow paying this receiver")
    state = spent_now(state, limits, now_ms)
    _within("debitAmount", limits.debit, limits.debit_asset, state.spent_debit, debit, debit_asset)
    _within("receiveAmount", limits.receive, limits.receive_asset, state.spent_receive, receive, receive_asset)
    after = msgspec.structs.replace(state, spent_debit=state.spent_debit + debit, spent_receive=state.spent_receive + receive)
    return after, Reservation(debit=debit, receive=receive, window=state.window)


def reserve_once(
    state: GrantSpend,
    limits: Limits,
    payment_id: str,
    prior: Reservation | None,
    *,
    debit: int,
    debit_asset: Asset,
    receive: int,
    receive_asset: Asset,
    receiver: str,
    now_ms: int,
    check_at_ms: int,
) -> tuple[GrantSpend, Reservation | None]:
    """Reserve a payment's share at most once per payment id. `prior` is what the grant's
    journal holds for the id. Returns the ledger and the reservation to journal; None when
    the id was reserved before (a retry after a lost reply): nothing more is counted, and
    the ledger returned is only the current view of it (nothing to write)."""
    if prior is not None:
        if prior.released:
            # Its share was given back: the payment failed, or it was never opened and is
            # a tombstone now. Counting it as reserved again would let spending pass the
            # limits if anything opened it. Only a quote's payment id is ever reserved
            # twice (a quote-less create draws a fresh id), hence the quote's code.
            raise Conflict("quote_used", "the quote already backed a payment under this grant")
        return spent_now(state, limits, now_ms), None
    after, reservation = reserve(
        state,
        limits,
        debit=debit,
        debit_asset=debit_asset,
        receive=receive,
        receive_asset=receive_asset,
        receiver=receiver,
        now_ms=now_ms,
    )
    return hold(after, payment_id, check_at_ms), reservation


def _within(name: str, limit: int | None, limit_asset: Asset | None, spent: int, amount: int, asset: Asset) -> None:
    if limit is None:
        return
    if limit_asset != asset:
        raise Invalid("invalid_asset", f"the payment's asset differs from the grant's {name} limit")
    if spent + amount > limit:
        raise Forbidden(
            "grant_limit_exceeded",
            f"the payment would spend past the grant's {name} limit",
            {"spent": str(spent), "limit": str(limit), "limitOn": name},
        )


def release(state: GrantSpend, reservation: Reservation, kept_debit: int = 0, kept_receive: int = 0) -> tuple[GrantSpend, Reservation]:
    """Give a failed payment's share back, if it still counts in the current repetition:
    all of it, or what it did not spend (a remote payment that failed part-way keeps what
    it sent, `kept_debit`, and what was delivered, `kept_receive`)."""
    if reservation.released:
        return state, reservation
    kept_debit = min(max(0, kept_debit), reservation.debit)
    kept_receive = min(max(0, kept_receive), reservation.receive)
    if reservation.window == state.window:
        state = msgspec.structs.replace(
            state,
            spent_debit=state.spent_debit - (reservation.debit - kept_debit),
            spent_receive=state.spent_receive - (reservation.receive - kept_receive),
        )
    assert state.spent_debit >= 0 and state.spent_receive >= 0
    return state, msgspec.structs.replace(reservation, released=True)


def hold(state: GrantSpend, payment_id: str, check_at_ms: int) -> GrantSpend:
    """Keep a new reservation tentative until its payment confirms it."""
    if payment_id in state.unconfirmed:
        return state
    if len(state.unconfirmed) >= MAX_RESERVATIONS:
        raise Busy("grant_busy", "too many payments under this grant are still being created; retry shortly")
    after = msgspec.structs.replace(state, unconfirmed={**state.unconfirmed, payment_id: check_at_ms})
    assert len(after.unconfirmed) <= MAX_RESERVATIONS
    return after


def resolved(state: GrantSpend, payment_id: str) -> GrantSpend:
    """The reservation no longer waits: its payment confirmed it, or it was given back."""
    if payment_id not in state.unconfirmed:
        return state
    unconfirmed = dict(state.unconfirmed)
    del unconfirmed[payment_id]
    return msgspec.structs.replace(state, unconfirmed=unconfirmed)


def next_check(state: GrantSpend) -> int | None:
    """When the ledger next needs to ask about a reservation (None: nothing waits)."""
    return min(state.unconfirmed.values()) if state.unconfirmed else None


def overdue(state: GrantSpend, now_ms: int, limit: int) -> list[str]:
    """The payments to ask about now, longest waiting first, at most `limit` of them."""
    due = sorted((at, payment_id) for payment_id, at in state.unconfirmed.items() if at <= now_ms)
    return [payment_id for _, payment_id in due[:limit]]


def asked(state: GrantSpend, payment_ids: list[str], again_at_ms: int) -> GrantSpend:
    """Asked about these: ask again at `again_at_ms` if no answer has settled them."""
    if not payment_ids:
        return state
    return msgspec.structs.replace(
        state, unconfirmed={**state.unconfirmed, **{p: again_at_ms for p in payment_ids if p in state.unconfirmed}}
    )
