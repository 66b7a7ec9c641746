"""Replay protection for a sequence of packets in bounded space (as IPsec does it).

A STREAM sender numbers its packets on a connection and never reuses a number, so a
number seen before is a replay. Remembering every number would grow without bound; a
window remembers the highest number seen and which of the WINDOW numbers below it were
seen. Anything older than the window counts as seen: a sender has only a few packets in
flight; an honest packet overtaken by WINDOW later ones is refused and the sender sends
its money again under a new number, so nothing is lost.
"""

from __future__ import annotations

import msgspec

WINDOW = 64  # the bitmask must fit msgpack's uint64
_MASK = (1 << WINDOW) - 1


class ReplayWindow(msgspec.Struct, frozen=True, array_like=True):
    top: int = -1  # the highest sequence seen; -1: none yet
    seen: int = 0  # bit i set: sequence top - i was seen


def was_seen(window: ReplayWindow, sequence: int) -> bool:
    if sequence > window.top:
        return False
    behind = window.top - sequence
    return behind >= WINDOW or bool(window.seen >> behind & 1)


def mark(window: ReplayWindow, sequence: int) -> ReplayWindow:
    assert sequence >= 0 and not was_seen(window, sequence)
    if sequence > window.top:
        shift = sequence - window.top
        return ReplayWindow(top=sequence, seen=((window.seen << shift) | 1) & _MASK if shift < WINDOW else 1)
    return ReplayWindow(top=window.top, seen=window.seen | 1 << (window.top - sequence))
