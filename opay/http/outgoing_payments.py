"""Resource server: outgoing payments (create, get, list) and the grant's spent amounts.

Creating one touches three entities, each serial on its own: the quote (bound to this
payment, before its expiresAt), the grant's spend ledger (reserved within the consented
limits, once per payment id), then the payment itself. A reservation stays tentative until
its payment confirms it; if the payment never opens (a crash between the steps), the
grant's timer asks the payment's entity, which answers "absent" by becoming a tombstone
that no late create can open, and only then is the share given back.

A retry after a lost reply is the same payment. Its id is what the client names it by:
the quote's id, or, without a quote, derived from the grant and the `Idempotency-Key`
header (without one, a fresh id: every create is a new payment). So a retry finds what its
first attempt left, and gets:

- the payment, if it is open under the same grant, client and request (wallet address,
  quote or receiver and debit amount, metadata as sent): 201 with the first answer's body,
  the payment as created and the grant's spending as it was then (kept in its state);
  whatever happened to it since (settled, failed, the quote expired) is for GET to say;
- 409 `quote_used` if the quote backs another grant's payment or another request's;
  422 `idempotency_key_reused` if the key named another request;
- 409 `payment_abandoned` if its create was cut off and given up (a tombstone, or a
  reservation given back): nothing was paid; create it again with a new quote or key;
- 409 `quote_expired` at or after the quote's expiresAt when no attempt opened it. The
  expiry is checked at every attempt: by this front end's clock and the quote entity's
  (binding), and decisively by the payment entity's when it opens, so a retry and its
  first attempt cannot disagree: one opened the payment before expiresAt, or none ever
  will. An attempt past expiresAt reserves nothing and only asks the payment entity.

Each step is idempotent per payment id, so a retry that finds nothing yet (its first
attempt cut off mid-way) simply runs them again: binding again is a no-op, reserving again
counts nothing more, and the open answers whichever attempt came first.
"""

from __future__ import annotations

import re
import uuid

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.actors import ids
from opay.actors.messages import BindQuote, Failed, OpenOutgoingPayment, ReadSpend, ReserveSpend, Spent, State, UnbindQuote
from opay.auth.access import parse_limits
from opay.clock import now_ms
from opay.domain import outgoing_payment as rules
from opay.domain.errors import DomainError
from opay.domain.outgoing_payment import Abandoned, Attempt, OutgoingPayment
from opay.domain.quote import Quote
from opay.http import routing, wire  # noqa: F401  (routing registers the path convertors of ROUTES)
from opay.http.errors import ApiError
from opay.http.pagination import list_resources
from opay.http.quotes import price_quote
from opay.http.resources import authenticated, create_request, json, readable, uuid_in_url
from opay.http.services import expected, services
from opay.http.wallet_state import known_wallet, require_active
from opay.ilp.links import remote_delivery

KIND = "op"
PATH = "/outgoing-payments"


# Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): an sf-string or a token.
IDEMPOTENCY_KEY_MAX = 255
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*")
_STRING_CHARS = re.compile(r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*')
# The namespace of payment ids derived from (grant, Idempotency-Key). Never change it:
# a retry must land on the id its first attempt drew.
_KEYED_PAYMENTS = uuid.UUID("0d1f6c8e-3b55-5b7e-9a57-2a1f7c0e4d21")


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key, or None without one. Bad syntax is 400, not ignored:
    a client that sent a key counts on it."""
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    text = values[0].strip()
    if len(values) == 1 and len(text) >= 2 and text[0] == text[-1] == '"' and _STRING_CHARS.fullmatch(text[1:-1]):
        key = re.sub(r"\\(.)", r"\1", text[1:-1])
    elif len(values) == 1 and _TOKEN.fullmatch(text):
        key = text
    else:
        raise ApiError(400, "invalid_request", "Idempotency-Key must be one quoted string (or token)", {"field": "Idempotency-Key"})
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            400,
            "invalid_request",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
            {"field": "Idempotency-Key", "maxLength": IDEMPOTENCY_KEY_MAX},
        )
    return key


def keyed_payment_id(grant_id: str, key: str) -> str:
    """The payment id a (grant, Idempotency-Key) names: the same on every retry, anywhere."""
    return str(uuid.uuid5(_KEYED_PAYMENTS, f"{grant_id}\n{key}"))


async def create(request: Request) -> Response:
    asked = await create_request(request, "outgoing-payment", wire.CreateOutgoingPaymentBody)
    s, caller, parsed, principal, metadata = asked.s, asked.caller, asked.body, asked.principal, asked.metadata
    by_quote = parsed.quoteId is not None
    if by_quote == (parsed.incomingPayment is not None or parsed.debitAmount is not None) or (
        not by_quote and (parsed.incomingPayment is None or parsed.debitAmount is None)
    ):
        raise ApiError(400, "invalid_request", "give quoteId, or incomingPayment with debitAmount")
    key = None if by_quote else idempotency_key(request)  # with a quote, the quote is the key
    limits = parse_limits(principal.permit.item.limits)
    sender = await known_wallet(s, parsed.walletAddress)
    now = now_ms()
    client = principal.client.identity
    quote: Quote | None = None
    if by_quote:
        assert parsed.quoteId is not None
        quote_uuid = uuid_in_url(s, parsed.quoteId, "quotes")
        found = None if quote_uuid is None else await s.queries.entity(ids.QUOTE(quote_uuid))
        if not isinstance(found, Quote):
            raise ApiError(404, "unknown_quote", "no such quote")
        quote = found
        if quote.wallet_address != parsed.walletAddress:
            raise ApiError(400, "invalid_quote", "the quote belongs to another wallet address")
        payment_id = quote.id
        attempt = Attempt(
            wallet_address=parsed.walletAddress,
            client=client,
            grant_id=caller.grant,
            quote_id=quote.id,
            receiver=quote.receiver,
            debit=quote.debit,
            debit_asset=quote.debit_asset,
            metadata=metadata,
            quote_expires_at_ms=quote.expires_at_ms,
        )
    else:
        assert parsed.incomingPayment is not None and parsed.debitAmount is not None
        debit_value, debit_asset = parsed.debitAmount.parse("debitAmount")
        payment_id = str(uuid.uuid4()) if key is None else keyed_payment_id(caller.grant, key)
        attempt = Attempt(
            wallet_address=parsed.walletAddress,
            client=client,
            grant_id=caller.grant,
            quote_id=None,
            receiver=parsed.incomingPayment,
            debit=debit_value,
            debit_asset=debit_asset,
            metadata=metadata,
        )
    if by_quote or key is not None:
        # Maybe a retry after a lost reply: the payment its first attempt made answers it.
        existing = await s.queries.entity(ids.OUTGOING_PAYMENT(payment_id))
        if isinstance(existing, (OutgoingPayment, Abandoned)):
            return await _created(s, rules.retried(existing, attempt, now), limits, caller.grant)
    # Only now: a retry of a payment made before its wallet address was deactivated gets it.
    require_active(sender, parsed.walletAddress)
    # A receiver on another server: read now (its ILP address, shared secret and room),
    # before anything is bound or reserved, so an unreachable one costs nothing.
    remote_terms = None if quote is None else quote.remote
    found_remote = None
    if remote_terms is not None:
        if s.remote_receivers is None:
            raise ApiError(400, "unsupported_receiver", "this server does not pay receivers on other servers")
        found_remote = await s.remote_receivers.resolve(quote.receiver)
    # Whether a share of the grant is reserved for this attempt: without one, the payment
    # entity only answers a payment an earlier attempt opened, and never opens one.
    expired = quote is not None and now >= quote.expires_at_ms
    if quote is not None and not expired:
        try:
            await s.ask(BindQuote(ids.QUOTE(quote.id), payment_id, parsed.walletAddress), expect=State)
        except ApiError as error:
            if error.code != "quote_expired":
                raise
            expired = True  # by the quote entity's clock
    if quote is not None:
        terms = (quote.receiver, quote.receive_asset, quote.debit, quote.receive, quote.fee)
    else:
        receiver, priced = await price_quote(
            s, sender=sender, receiver_url=attempt.receiver, debit=parsed.debitAmount, receive=None, remote=True
        )
        terms = (attempt.receiver, receiver.asset, priced.debit, priced.receive, priced.fee)
        remote_terms, found_remote = priced.remote, receiver.remote
    receiver_url, receive_asset, debit, receive, fee = terms
    delivery = None
    if remote_terms is not None:
        assert found_remote is not None
        delivery = remote_delivery(
            ilp_address=found_remote.ilp_address,
            shared_secret=found_remote.shared_secret,
            remaining=found_remote.remaining,
            peer=remote_terms.peer,
            # From a quote: exactly its receiveAmount; incomingPayment + debitAmount: the debit, spent.
            receive=receive if quote is not None else None,
            max_source=remote_terms.max_source,
            min_rate=remote_terms.min_rate.value,
            rate_bounds=(remote_terms.rate_low.value, remote_terms.rate_high.value),
            debit_units=remote_terms.link_asset == sender.asset,
            packets_in_flight=s.settings.stream_packets_in_flight,
            packet_expiry_ms=s.settings.ilp_packet_expiry_seconds * 1000,
        )
    spent: Spent | None = None
    reserved = not expired
    if reserved:
        try:
            spent = await s.ask(
                ReserveSpend(ids.GRANT_SPEND(caller.grant), payment_id, limits, debit, sender.asset, receive, receive_asset, receiver_url),
                expect=Spent,
            )
        except (ApiError, DomainError) as error:
            if not isinstance(error, ApiError) or (error.status, error.code) != (409, "quote_used"):
                if quote is not None:
                    # The quote may still serve under a grant that allows it.
                    await s.router.ask(UnbindQuote(ids.QUOTE(payment_id), payment_id))
                raise
            # This id's share was given back (its payment failed, or its create was cut off
            # and given up): only the payment entity can say which. Ask it, reserving nothing.
            reserved = False
    payment = OutgoingPayment(
        id=payment_id,
        wallet_address=parsed.walletAddress,
        client=client,
        grant_id=caller.grant,
        by_quote=by_quote,
        receiver=receiver_url,
        debit_asset=sender.asset,
        receive_asset=receive_asset,
        debit=debit,
        receive=receive,
        fee=fee,
        metadata=metadata,
        created_at_ms=now,
        grant_spent_debit=None if spent is None else spent.debit,
        grant_spent_receive=None if spent is None else spent.receive,
        remote=delivery,
    )
    open_payment = OpenOutgoingPayment(
        ids.OUTGOING_PAYMENT(payment_id),
        payment,
        s.settings.auto_fund,
        quote_expires_at_ms=None if quote is None else quote.expires_at_ms,
        reserved=reserved,
    )
    opened = await s.router.ask(open_payment)
    if isinstance(opened, Failed) and opened.kind == "unavailable":
        # The open's outcome is unknown (a deadline, a shard restarting): ask again before
        # answering 503, as it may have landed.
        existing = await s.queries.entity(ids.OUTGOING_PAYMENT(payment_id))
        if isinstance(existing, OutgoingPayment):
            return await _created(s, rules.retried(existing, attempt, now), limits, caller.grant)
    if isinstance(opened, Failed):
        if opened.kind == "not_found":  # nothing reserved, and no earlier attempt opened it
            raise ApiError.from_domain(rules.expired() if expired else rules.abandoned(by_quote))
        raise ApiError.of(opened.kind, opened.code, opened.description, opened.details)
    created = expected(open_payment, opened, State).state
    return await _created(s, expected(open_payment, created, OutgoingPayment), limits, caller.grant)


async def _created(s, payment: OutgoingPayment, limits, grant_id: str) -> Response:
    """The 201 of a create, the same for the first attempt and every retry: the payment as
    created, with the grant's spending as it was then."""
    view = wire.outgoing_payment(rules.as_created(payment), s.settings.public_url)
    spent = (payment.grant_spent_debit, payment.grant_spent_receive)
    if spent[0] is None or spent[1] is None:  # a payment stored before these were kept
        now_spent = await s.ask(ReadSpend(ids.GRANT_SPEND(grant_id), limits), expect=Spent)
        spent = (now_spent.debit, now_spent.receive)
    return json(
        201,
        msgspec.structs.replace(
            view,
            grant_spent_debit_amount=wire.amount(spent[0], payment.debit_asset),
            grant_spent_receive_amount=wire.amount(spent[1], payment.receive_asset),
        ),
    )


async def get(request: Request) -> Response:
    s = services(request)
    payment = await readable(request, s, "outgoing-payment", "outgoing payment", ids.OUTGOING_PAYMENT, OutgoingPayment)
    return json(200, wire.outgoing_payment(payment, s.settings.public_url))


async def list_payments(request: Request) -> Response:
    return json(200, await list_resources(request, "outgoing-payment", KIND, wire.outgoing_payment))


async def grant_spent(request: Request) -> Response:
    s = services(request)
    caller = await authenticated(request, s, b"")
    principal = caller.require("outgoing-payment", "create", None)
    limits = parse_limits(principal.permit.item.limits)
    spent = await s.ask(ReadSpend(ids.GRANT_SPEND(caller.grant), limits), expect=Spent)
    return json(
        200,
        wire.GrantSpentView(
            spent_receive_amount=None if limits.receive_asset is None else wire.amount(spent.receive, limits.receive_asset),
            spent_debit_amount=None if limits.debit_asset is None else wire.amount(spent.debit, limits.debit_asset),
        ),
    )


ROUTES = [
    Route(PATH, create, methods=["POST"], name="create-outgoing-payment"),
    Route(PATH, list_payments, methods=["GET"], name="outgoing-payments"),
    # An id of ours takes the first route of each pair; any other, slashes and newlines included,
    # the second, to the same handler: authentication is judged before the id.
    Route(PATH + "/{resource_id:canonical_uuid}", get, methods=["GET"], name="outgoing-payment"),
    Route(PATH + "/{resource_id:any}", get, methods=["GET"], name="outgoing-payment-any"),
    Route("/outgoing-payment-grant", grant_spent, methods=["GET"], name="outgoing-payment-grant"),
]
