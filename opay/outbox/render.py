"""An event's JSON body: {id, type, createdAt, data}, data being the resource's API view."""

from __future__ import annotations

import msgspec

from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.times import format_ms
from opay.http import wire
from opay.outbox.events import Event


def render(event: Event, resource_server_url: str) -> bytes:
    if isinstance(event.state, IncomingPayment):
        data = wire.incoming_payment(event.state, resource_server_url)
    elif isinstance(event.state, OutgoingPayment):
        data = wire.outgoing_payment(event.state, resource_server_url)
    else:
        raise ValueError(f"no webhook view for {type(event.state).__name__}")
    return msgspec.json.encode({"id": event.id, "type": event.type, "createdAt": format_ms(event.created_at_ms), "data": data})
