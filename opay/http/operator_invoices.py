"""Invoices: the operator creates an incoming payment on one of its wallet addresses,
without any client's grant, to hand to a payer (POST /incoming-payments, operator API).

The same body, rules and entity command as a client's create (http/incoming_payments.py),
with no client: only the wallet address's index lists it, and a client sees it only with
list-all or read-all access. The answer carries its ILP credentials (`methods`). The public
create takes no Idempotency-Key, nor does this one: a retry after a lost answer makes a
second invoice, which expires unpaid.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.clock import now_ms
from opay.http import wire
from opay.http.incoming_payments import open_incoming_payment
from opay.http.operator import _operator
from opay.http.operator_resources import incoming_payment_view
from opay.http.resources import json
from opay.http.services import read_body


async def create_invoice(request: Request) -> Response:
    s = _operator(request)
    body = wire.decode_body(await read_body(request, s.settings.body_max_bytes), wire.CreateIncomingPaymentBody)
    metadata = wire.metadata_json(body.metadata, s.settings.metadata_max_bytes)
    payment = await open_incoming_payment(s, body, metadata, client=None)
    return json(201, incoming_payment_view(s, payment, now_ms(), True))


ROUTES = [Route("/incoming-payments", create_invoice, methods=["POST"], name="create-incoming-payment")]
