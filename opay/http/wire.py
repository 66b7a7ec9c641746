"""Request bodies as declared Structs, decoded and validated at the edge; resources as JSON views."""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec

from opay.domain.amounts import Asset, parse_uint64
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.quote import Quote
from opay.domain.times import format_ms
from opay.http.errors import ApiError

T = TypeVar("T")


class AmountBody(msgspec.Struct, frozen=True):
    value: str
    assetCode: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    assetScale: Annotated[int, msgspec.Meta(ge=0, le=255)]

    def parse(self, field: str) -> tuple[int, Asset]:
        return parse_uint64(self.value, f"{field}.value"), Asset(self.assetCode, self.assetScale)


class CreateIncomingPaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    walletAddress: str
    incomingAmount: AmountBody | None = None
    expiresAt: str | None = None
    metadata: dict | None = None


class CreateQuoteBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    walletAddress: str
    receiver: str
    method: str
    debitAmount: AmountBody | None = None
    receiveAmount: AmountBody | None = None


class CreateOutgoingPaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Both spec shapes in one: {quoteId} or {incomingPayment, debitAmount}; checked after decoding."""

    walletAddress: str
    quoteId: str | None = None
    incomingPayment: str | None = None
    debitAmount: AmountBody | None = None
    metadata: dict | None = None


def decode_body(body: bytes, body_type: type[T], *, allow_empty: bool = False) -> T:
    if not body.strip():
        if allow_empty:
            return msgspec.json.decode(b"{}", type=body_type)
        raise ApiError(400, "invalid_request", "a JSON body is required")
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_request", f"invalid body: {error}") from None
    except msgspec.DecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None


def encode(value: object) -> bytes:
    return msgspec.json.encode(value)


def amount(value: int, asset: Asset) -> dict:
    return {"value": str(value), "assetCode": asset.code, "assetScale": asset.scale}


def incoming_payment(payment: IncomingPayment, resource_server: str) -> dict:
    view: dict = {
        "id": f"{resource_server}/incoming-payments/{payment.id}",
        "walletAddress": payment.wallet_address,
        "completed": payment.completed,
    }
    if payment.incoming_amount is not None:
        view["incomingAmount"] = amount(payment.incoming_amount, payment.asset)
    view["receivedAmount"] = amount(payment.received, payment.asset)
    view["expiresAt"] = format_ms(payment.expires_at_ms)
    if payment.metadata is not None:
        view["metadata"] = payment.metadata
    view["createdAt"] = format_ms(payment.created_at_ms)
    return view


def quote(value: Quote, resource_server: str) -> dict:
    return {
        "id": f"{resource_server}/quotes/{value.id}",
        "walletAddress": value.wallet_address,
        "receiver": value.receiver,
        "receiveAmount": amount(value.receive, value.receive_asset),
        "debitAmount": amount(value.debit, value.debit_asset),
        "method": "ilp",
        "expiresAt": format_ms(value.expires_at_ms),
        "createdAt": format_ms(value.created_at_ms),
    }


def outgoing_payment(payment: OutgoingPayment, resource_server: str) -> dict:
    """Exactly the spec's fields: get and list allow no others."""
    view: dict = {"id": f"{resource_server}/outgoing-payments/{payment.id}", "walletAddress": payment.wallet_address}
    if payment.quote_id is not None:
        view["quoteId"] = f"{resource_server}/quotes/{payment.quote_id}"
    view["failed"] = payment.failed
    view["receiver"] = payment.receiver
    view["receiveAmount"] = amount(payment.receive, payment.receive_asset)
    view["debitAmount"] = amount(payment.debit, payment.debit_asset)
    view["sentAmount"] = amount(payment.sent, payment.debit_asset)
    if payment.metadata is not None:
        view["metadata"] = payment.metadata
    view["createdAt"] = format_ms(payment.created_at_ms)
    return view
