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
from opay.persistence.wallet_addresses import WalletAddress

T = TypeVar("T")

# Bounds of the free-form strings a client sends: a clear 400 at decoding, nothing stored.
URL_MAX = 2048
Url = Annotated[str, msgspec.Meta(max_length=URL_MAX)]
DateTimeText = Annotated[str, msgspec.Meta(max_length=64)]
# How deeply containers may nest in metadata (the top-level object counts as 1).
METADATA_MAX_DEPTH = 16


class Amount(msgspec.Struct, frozen=True, rename="camel"):
    """An amount on the wire, both ways: bounded when decoded, `amount()` when encoded."""

    value: str
    asset_code: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    asset_scale: Annotated[int, msgspec.Meta(ge=0, le=255)]

    def parse(self, field: str) -> tuple[int, Asset]:
        return parse_uint64(self.value, f"{field}.value"), Asset(self.asset_code, self.asset_scale)


class CreateIncomingPaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    walletAddress: Url
    incomingAmount: Amount | None = None
    expiresAt: DateTimeText | None = None
    # The JSON text as sent (empty when absent); only metadata_json() makes it usable.
    metadata: msgspec.Raw = msgspec.Raw()


class CreateQuoteBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    walletAddress: Url
    receiver: Url
    method: Annotated[str, msgspec.Meta(max_length=16)]
    debitAmount: Amount | None = None
    receiveAmount: Amount | None = None


class CreateOutgoingPaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Both spec shapes in one: {quoteId} or {incomingPayment, debitAmount}; checked after decoding."""

    walletAddress: Url
    quoteId: Url | None = None
    incomingPayment: Url | None = None
    debitAmount: Amount | None = None
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


def amount(value: int, asset: Asset) -> Amount:
    return Amount(str(value), asset.code, asset.scale)


# The resources' views, in the spec's field order. An optional field the body omits
# defaults to None (omit_defaults); `metadata` is the validated JSON text, as sent.


class IlpMethod(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    type: str = "ilp"
    ilp_address: str
    shared_secret: str


class IncomingPaymentView(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    id: str
    wallet_address: str
    completed: bool
    incoming_amount: Amount | None = None
    received_amount: Amount
    expires_at: str
    metadata: msgspec.Raw | None = None
    created_at: str
    methods: list[IlpMethod] | None = None  # the resource server's own views (create, get) only


class PublicIncomingPaymentView(msgspec.Struct, frozen=True, rename="camel"):
    received_amount: Amount
    auth_server: str


class QuoteView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    wallet_address: str
    receiver: str
    receive_amount: Amount
    debit_amount: Amount
    method: str
    expires_at: str
    created_at: str


class OutgoingPaymentView(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    id: str
    wallet_address: str
    quote_id: str | None = None
    failed: bool
    receiver: str
    receive_amount: Amount
    debit_amount: Amount
    sent_amount: Amount
    metadata: msgspec.Raw | None = None
    created_at: str
    # Only the create answer has these (get and list allow no other fields than the above).
    grant_spent_debit_amount: Amount | None = None
    grant_spent_receive_amount: Amount | None = None


class GrantSpentView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What the grant has spent, in the assets its limits name; null where it names none."""

    spent_receive_amount: Amount | None
    spent_debit_amount: Amount | None


class WalletAddressView(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    id: str
    public_name: str | None = None
    asset_code: str
    asset_scale: int
    auth_server: str
    resource_server: str
    owner: str | None = None  # only the operator API's view has it


def _metadata(text: bytes | None) -> msgspec.Raw | None:
    return None if text is None else msgspec.Raw(text)


def incoming_payment(payment: IncomingPayment, public_url: str, methods: list[IlpMethod] | None = None) -> IncomingPaymentView:
    return IncomingPaymentView(
        id=urls.incoming_payment(public_url, payment.id),
        wallet_address=payment.wallet_address,
        completed=payment.completed,
        incoming_amount=None if payment.incoming_amount is None else amount(payment.incoming_amount, payment.asset),
        received_amount=amount(payment.received, payment.asset),
        expires_at=format_ms(payment.expires_at_ms),
        metadata=_metadata(payment.metadata),
        created_at=format_ms(payment.created_at_ms),
        methods=methods,
    )


def public_incoming_payment(payment: IncomingPayment, public_url: str) -> PublicIncomingPaymentView:
    """Enough for a payer to find the authorization server."""
    return PublicIncomingPaymentView(amount(payment.received, payment.asset), urls.auth_server(public_url))


def quote(value: Quote, public_url: str) -> QuoteView:
    return QuoteView(
        id=urls.quote(public_url, value.id),
        wallet_address=value.wallet_address,
        receiver=value.receiver,
        receive_amount=amount(value.receive, value.receive_asset),
        debit_amount=amount(value.debit, value.debit_asset),
        method="ilp",
        expires_at=format_ms(value.expires_at_ms),
        created_at=format_ms(value.created_at_ms),
    )


def wallet_address(wallet: WalletAddress, public_url: str, *, with_owner: bool = False) -> WalletAddressView:
    """The wallet address document; `with_owner`: the operator's view, which adds the owner."""
    return WalletAddressView(
        id=urls.wallet_address(public_url, wallet.path),
        public_name=wallet.public_name,
        asset_code=wallet.asset.code,
        asset_scale=wallet.asset.scale,
        auth_server=urls.auth_server(public_url),
        resource_server=urls.resource_server(public_url),
        owner=wallet.owner if with_owner else None,
    )


def outgoing_payment(payment: OutgoingPayment, public_url: str) -> OutgoingPaymentView:
    """Exactly the spec's fields: get and list allow no others."""
    return OutgoingPaymentView(
        id=urls.outgoing_payment(public_url, payment.id),
        wallet_address=payment.wallet_address,
        quote_id=None if payment.quote_id is None else urls.quote(public_url, payment.quote_id),
        failed=payment.failed,
        receiver=payment.receiver,
        receive_amount=amount(payment.receive, payment.receive_asset),
        debit_amount=amount(payment.debit, payment.debit_asset),
        sent_amount=amount(payment.sent, payment.debit_asset),
        metadata=_metadata(payment.metadata),
        created_at=format_ms(payment.created_at_ms),
    )
