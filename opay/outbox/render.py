"""An event's JSON body: {id, type, createdAt, data}, data being the resource's API view."""

from __future__ import annotations

import msgspec

from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.times import format_ms
from opay.http import wire
from opay.outbox.events import Event


class EventBody(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    type: str
    created_at: str
    data: wire.IncomingPaymentView | wire.OutgoingPaymentView


_encoder = msgspec.json.Encoder()


def render(event: Event, state: object, public_url: str) -> bytes:
    """The body of `event`, which holds `state`, its resource URLs built from `public_url` (OPAY_PUBLIC_URL)."""
    if isinstance(state, IncomingPayment):
        data: wire.IncomingPaymentView | wire.OutgoingPaymentView = wire.incoming_payment(state, public_url)
    elif isinstance(state, OutgoingPayment):
        data = wire.outgoing_payment(state, public_url)
    else:
        raise ValueError(f"no webhook view for {type(state).__name__}")
    return _encoder.encode(EventBody(id=event.id, type=event.type, created_at=format_ms(event.created_at_ms), data=data))
