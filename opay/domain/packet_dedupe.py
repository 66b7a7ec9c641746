"""Which ILP packets a payment has already credited, in bounded space.

A Prepare is named by its executionCondition: STREAM derives it from the shared secret
and the packet's encrypted data (random IV), so an exact resend has the same condition
and a new packet has another, whatever its STREAM sequence says (senders do restart
sequences on the same credentials: Rafiki does for every quote and every retry).

A condition is kept with the amount it credited and its Prepare's expiry. A Prepare
cannot be fulfilled after its expiry (the entity refuses it), so an entry whose expiry
passed can never match again and is dropped. The entries of one payment are spread over
BUCKETS journal entries by condition, each pruned of expired entries whenever it is
written, so one packet's write costs one small bucket, never the whole set; a bucket
holds at most BUCKET_MAX live entries, and a packet that would need more is refused
(temporarily) rather than let the set grow.
"""

from __future__ import annotations

import msgspec

BUCKETS = 64
BUCKET_MAX = 256  # live entries per bucket: BUCKETS * BUCKET_MAX per payment at most


class Seen(msgspec.Struct, frozen=True, array_like=True):
    condition: bytes
    amount: int
    expires_at_ms: int


class Bucket(msgspec.Struct, frozen=True, array_like=True):
    seen: tuple[Seen, ...] = ()


def bucket_name(condition: bytes) -> str:
    """The journal name (within the "ilp" namespace) of the bucket that holds `condition`."""
    return f"seen:{condition[0] % BUCKETS}"


def find(bucket: Bucket, condition: bytes, now_ms: int) -> Seen | None:
    """The live entry for `condition`, if its packet was credited and has not expired."""
    for seen in bucket.seen:
        if seen.condition == condition and seen.expires_at_ms > now_ms:
            return seen
    return None


def add(bucket: Bucket, seen: Seen, now_ms: int) -> Bucket | None:
    """The bucket with `seen` added and every expired entry dropped; None when it is full."""
    live = [s for s in bucket.seen if s.expires_at_ms > now_ms]
    if len(live) >= BUCKET_MAX:
        return None
    live.append(seen)
    return Bucket(tuple(live))
