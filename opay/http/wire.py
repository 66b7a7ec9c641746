"""Request bodies as declared Structs, decoded and validated at the edge; resources as JSON views."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec

from opay.domain.amounts import Asset, parse_uint64
from opay.domain.incoming_payment import IncomingPayment
from opay.domain.outgoing_payment import OutgoingPayment
from opay.domain.quote import Quote
from opay.domain.times import format_ms
from opay.http import urls
from opay.http.errors import ApiError

T = TypeVar("T")

# Bounds of the free-form strings a client sends: a clear 400 at decoding, nothing stored.
URL_MAX = 2048
Url = Annotated[str, msgspec.Meta(max_length=URL_MAX)]
DateTimeText = Annotated[str, msgspec.Meta(max_length=64)]
# How deeply containers may nest in metadata (the top-level object counts as 1).
METADATA_MAX_DEPTH = 16


class AmountBody(msgspec.Struct, frozen=True):
    value: str
    assetCode: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    assetScale: Annotated[int, msgspec.Meta(ge=0, le=255)]

    def parse(self, field: str) -> tuple[int, Asset]:
        return parse_uint64(self.value, f"{field}.value"), Asset(self.assetCode, self.assetScale)


class CreateIncomingPaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    walletAddress: Url
    incomingAmount: AmountBody | None = None
    expiresAt: DateTimeText | None = None
    # The JSON text as sent (empty when absent); only metadata_json() makes it usable.
    metadata: msgspec.Raw = msgspec.Raw()


class CreateQuoteBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    walletAddress: Url
    receiver: Url
    method: Annotated[str, msgspec.Meta(max_length=16)]
    debitAmount: AmountBody | None = None
    receiveAmount: AmountBody | None = None


class CreateOutgoingPaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Both spec shapes in one: {quoteId} or {incomingPayment, debitAmount}; checked after decoding."""

    walletAddress: Url
    quoteId: Url | None = None
    incomingPayment: Url | None = None
    debitAmount: AmountBody | None = None
    metadata: msgspec.Raw = msgspec.Raw()


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def metadata_json(raw: msgspec.Raw, max_bytes: int) -> bytes | None:
    """The one check of a client's metadata: a JSON object of at most `max_bytes` bytes and
    METADATA_MAX_DEPTH levels, kept as its JSON text so nothing downstream re-encodes
    arbitrary values (a number stays exactly as written, however large). None when absent
    or null. The decoder has already checked that the text is well-formed JSON."""
    text = bytes(raw).strip()
    if not text or text == b"null":
        return None
    if len(text) > max_bytes:
        raise ApiError(
            400, "invalid_request", f"metadata must be at most {max_bytes} bytes of JSON", {"field": "metadata", "maxBytes": max_bytes}
        )
    if not text.startswith(b"{"):
        raise ApiError(400, "invalid_request", "metadata must be a JSON object", {"field": "metadata"})
    try:
        text.decode("utf-8")  # the decoder skips over it without checking its strings' encoding
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_request", "metadata must be UTF-8 text", {"field": "metadata"}) from None
    if _depth(text) > METADATA_MAX_DEPTH:
        raise ApiError(
            400,
            "invalid_request",
            f"metadata must nest at most {METADATA_MAX_DEPTH} levels deep",
            {"field": "metadata", "maxDepth": METADATA_MAX_DEPTH},
        )
    return text


def _depth(text: bytes) -> int:
    """How deeply a well-formed JSON text's objects and arrays nest (brackets in strings aside)."""
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_A_BRACKET)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


# One decoder per body type, built on first use and reused.
_decoders: dict[object, msgspec.json.Decoder] = {}


def decoder(body_type: type[T]) -> msgspec.json.Decoder[T]:
    found = _decoders.get(body_type)
    if found is None:
        found = _decoders[body_type] = msgspec.json.Decoder(body_type)
    return found


def decode_body(body: bytes, body_type: type[T], *, allow_empty: bool = False) -> T:
    if not body.strip():
        if allow_empty:
            return decoder(body_type).decode(b"{}")
        raise ApiError(400, "invalid_request", "a JSON body is required")
    try:
        return decoder(body_type).decode(body)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_request", f"invalid body: {error}") from None
    except msgspec.DecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_request", "the body nests too deeply") from None


_encoder = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def amount(value: int, asset: Asset) -> dict:
    return {"value": str(value), "assetCode": asset.code, "assetScale": asset.scale}


def incoming_payment(payment: IncomingPayment, resource_server: str) -> dict:
    view: dict = {
        "id": urls.incoming_payment(resource_server, payment.id),
        "walletAddress": payment.wallet_address,
        "completed": payment.completed,
    }
    if payment.incoming_amount is not None:
        view["incomingAmount"] = amount(payment.incoming_amount, payment.asset)
    view["receivedAmount"] = amount(payment.received, payment.asset)
    view["expiresAt"] = format_ms(payment.expires_at_ms)
    if payment.metadata is not None:
        view["metadata"] = msgspec.Raw(payment.metadata)  # the validated JSON text, as sent
    view["createdAt"] = format_ms(payment.created_at_ms)
    return view


def quote(value: Quote, resource_server: str) -> dict:
    return {
        "id": urls.quote(resource_server, value.id),
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
    view: dict = {"id": urls.outgoing_payment(resource_server, payment.id), "walletAddress": payment.wallet_address}
    if payment.quote_id is not None:
        view["quoteId"] = urls.quote(resource_server, payment.quote_id)
    view["failed"] = payment.failed
    view["receiver"] = payment.receiver
    view["receiveAmount"] = amount(payment.receive, payment.receive_asset)
    view["debitAmount"] = amount(payment.debit, payment.debit_asset)
    view["sentAmount"] = amount(payment.sent, payment.debit_asset)
    if payment.metadata is not None:
        view["metadata"] = msgspec.Raw(payment.metadata)  # the validated JSON text, as sent
    view["createdAt"] = format_ms(payment.created_at_ms)
    return view
