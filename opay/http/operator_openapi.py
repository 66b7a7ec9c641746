"""`GET /openapi.json` on the operator port: the operator API's own OpenAPI 3.1 document.

Its operations are one table, OPERATIONS: (method, path) -> what the operation takes and
answers. Its schemas are generated from the msgspec Structs the handlers decode and
encode (msgspec.json.schema_components), so a field renamed in a Struct is renamed here.
tests/test_operator_openapi.py holds the table and OPERATOR_ROUTES to each other (a route
missing here, or a path here that no route serves, fails it) and fuzzes a server with it.

Served without the operator token, as /healthz is: it describes routes, never data.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Generic, TypeVar, get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.auth.grant_states import Introspection
from opay.domain import incoming_payment, quote
from opay.domain.outgoing_payment import Phase
from opay.http import operator, operator_grants, operator_resources, operator_webhooks, wire
from opay.http.consent import GrantDecision
from opay.http.errors import ErrorBody
from opay.http.health import Readiness
from opay.http.pagination import PAGE_MAX, PageInfo
from opay.http.wallet_addresses import Jwks
from opay.persistence.wallet_addresses import Jwk

T = TypeVar("T")
VERSION = "1"


class ListPage(msgspec.Struct, Generic[T], frozen=True):
    """pagination.Page with its items' type, for the document."""

    pagination: PageInfo
    result: list[T]


# POST /peers and its views are built as dicts (http/peers.py, ilp/peers.parse_peer): these
# Structs state them for the document, and the fuzz test checks the answers against them.
class PeerBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    name: str
    url: str
    outgoing_token: str
    incoming_token: str
    asset_code: str
    asset_scale: int
    routes: list[str]
    max_packet_amount: str | None = None


class PeerView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    name: str
    url: str
    asset_code: str
    asset_scale: int
    routes: list[str]
    max_packet_amount: str | None = None
    created_at: str
    sent_amount: wire.Amount
    received_amount: wire.Amount


class PeerList(msgspec.Struct, frozen=True):
    result: list[PeerView]


class Answer(msgspec.Struct, frozen=True):
    status: int
    type: Any = None  # what the body decodes as; None: no body
    media: str = "application/json"


class Param(msgspec.Struct, frozen=True):
    name: str
    schema: dict
    description: str
    required: bool = False


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    tag: str
    summary: str
    answers: tuple[Answer, ...]
    body: Any = None  # the request body's type
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # besides 401 (unless `open`) and any other as `default`
    open: bool = False  # no operator token needed


def _enum(values: tuple[str, ...]) -> dict:
    return {"type": "string", "enum": list(values)}


_COUNT = {"type": "integer", "minimum": 1, "maximum": PAGE_MAX}
PAGE = (
    Param("first", _COUNT, "how many from the start, or after `cursor`"),
    Param("last", _COUNT, "how many from the end, or before `cursor` (not with `first`)"),
    Param("cursor", {"type": "string", "minLength": 1}, "a startCursor or endCursor of this list"),
)
WALLET = Param("wallet-address", {"type": "string", "minLength": 1}, "the wallet address's URL", required=True)


def _state(values: tuple[str, ...]) -> Param:
    return Param("state", _enum(values), "only the items in this state")


def _resources(path: str, what: str, view: type, states: tuple[str, ...]) -> dict[tuple[str, str], Operation]:
    return {
        ("GET", path): Operation(
            tag="payments",
            summary=f"A wallet address's {what}s, every client's, in creation order",
            answers=(Answer(200, ListPage[view]),),  # type: ignore[valid-type]
            query=(WALLET, *PAGE, _state(states)),
            errors=(400, 404),
        ),
        ("GET", path + "/{resource_id}"): Operation(tag="payments", summary=f"One {what}", answers=(Answer(200, view),), errors=(404,)),
    }


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/healthz"): Operation(tag="probes", summary="The process is up (liveness)", answers=(Answer(200, operator.Health),), open=True),
    ("GET", "/readyz"): Operation(
        tag="probes",
        summary="Redis and every shard answer within OPAY_READINESS_TIMEOUT_SECONDS (readiness)",
        answers=(Answer(200, Readiness), Answer(503, Readiness)),
        open=True,
    ),
    ("GET", "/metrics"): Operation(
        tag="probes", summary="Prometheus metrics", answers=(Answer(200, None, "text/plain"),), open=True
    ),
    ("GET", "/openapi.json"): Operation(tag="probes", summary="This document", answers=(Answer(200, dict),), open=True),
    ("GET", "/health"): Operation(tag="probes", summary="The operator token works", answers=(Answer(200, operator.Health),)),
    ("POST", "/wallet-addresses"): Operation(
        tag="wallet addresses",
        summary="Create a wallet address",
        body=operator.WalletAddressBody,
        answers=(Answer(201, operator.OperatorWalletAddressView),),
        errors=(400, 409),
    ),
    ("GET", "/wallet-addresses"): Operation(
        tag="wallet addresses", summary="Every wallet address (at most 1000)", answers=(Answer(200, operator.WalletAddressList),)
    ),
    ("GET", "/wallet-addresses/{path}"): Operation(
        tag="wallet addresses", summary="One wallet address (`path` may hold slashes)", answers=(Answer(200, operator.OperatorWalletAddressView),), errors=(404,)
    ),
    ("PATCH", "/wallet-addresses/{path}"): Operation(
        tag="wallet addresses",
        summary="Change its public name, owner, or whether it is active",
        body=operator.WalletAddressPatch,
        answers=(Answer(200, operator.OperatorWalletAddressView),),
        errors=(400, 404, 409),
    ),
    ("GET", "/wallet-addresses/{path}/keys"): Operation(
        tag="wallet addresses", summary="Its client keys", answers=(Answer(200, Jwks),), errors=(404,)
    ),
    ("POST", "/wallet-addresses/{path}/keys"): Operation(
        tag="wallet addresses", summary="Register a client key (Ed25519 JWK)", body=operator.KeyBody, answers=(Answer(201, Jwk),), errors=(400, 404, 409)
    ),
    ("DELETE", "/wallet-addresses/{path}/keys/{kid}"): Operation(
        tag="wallet addresses", summary="Revoke a client key", answers=(Answer(204),), errors=(404,)
    ),
    ("POST", "/credits"): Operation(
        tag="payments",
        summary="Credit an incoming payment (idempotent by idempotencyKey)",
        body=operator.CreditBody,
        answers=(Answer(200, operator.CreditView),),
        errors=(400, 404, 409),
    ),
    ("POST", "/incoming-payments"): Operation(
        tag="payments",
        summary="Create an incoming payment without a client's grant (an invoice)",
        body=wire.CreateIncomingPaymentBody,
        answers=(Answer(201, operator_resources.OperatorIncomingPayment),),
        errors=(400, 404),
    ),
    **_resources("/incoming-payments", "incoming payment", operator_resources.OperatorIncomingPayment, incoming_payment.STATUSES),
    **_resources("/outgoing-payments", "outgoing payment", operator_resources.OperatorOutgoingPayment, get_args(Phase)),
    **_resources("/quotes", "quote", operator_resources.OperatorQuote, quote.STATUSES),
    ("POST", "/outgoing-payments/{payment_id}/fund"): Operation(
        tag="payments", summary="The sender is debited: settlement may start", answers=(Answer(200, wire.OutgoingPaymentView),), errors=(404, 409)
    ),
    ("POST", "/outgoing-payments/{payment_id}/cancel"): Operation(
        tag="payments",
        summary="Fail an unfunded payment with a reason",
        body=operator.CancelBody,
        answers=(Answer(200, wire.OutgoingPaymentView),),
        errors=(400, 404, 409),
    ),
    ("GET", "/rates"): Operation(tag="pricing", summary="Every rates table set here", answers=(Answer(200, operator.RatesList),)),
    ("GET", "/rates/{base}"): Operation(tag="pricing", summary="The rates table from one base", answers=(Answer(200, operator.RatesView),), errors=(400, 404)),
    ("PUT", "/rates/{base}"): Operation(
        tag="pricing",
        summary="Replace the rates table from one base (decimal strings)",
        body=dict[str, str],
        answers=(Answer(200, operator.RatesView),),
        errors=(400,),
    ),
    ("GET", "/fees"): Operation(tag="pricing", summary="Every asset's sending fees set here", answers=(Answer(200, operator.FeesList),)),
    ("GET", "/fees/{asset_code}"): Operation(tag="pricing", summary="One asset's sending fees", answers=(Answer(200, operator.FeesView),), errors=(400,)),
    ("PUT", "/fees/{asset_code}"): Operation(
        tag="pricing", summary="Set one asset's sending fees", body=operator.FeesBody, answers=(Answer(200, operator.FeesView),), errors=(400,)
    ),
    ("POST", "/introspect"): Operation(
        tag="grants", summary="Token introspection (Rafiki's contract)", body=operator.IntrospectBody, answers=(Answer(200, Introspection),), errors=(400,)
    ),
    ("GET", "/grants"): Operation(
        tag="grants",
        summary="A client's grants, or those naming a wallet address, in creation order",
        answers=(Answer(200, operator_grants.GrantList),),
        query=(
            Param("client", {"type": "string", "minLength": 1}, "the client's wallet address URL, or jwk:<thumbprint> (not with wallet-address)"),
            Param("wallet-address", {"type": "string", "minLength": 1}, "a wallet address URL that access items name"),
            *PAGE,
            _state(operator_grants.STATES),
        ),
        errors=(400,),
    ),
    ("GET", "/grants/{grant_id}"): Operation(tag="grants", summary="One grant", answers=(Answer(200, operator_grants.GrantView),), errors=(404,)),
    ("POST", "/grants/{grant_id}/revoke"): Operation(
        tag="grants", summary="End a grant and every token issued under it", answers=(Answer(200, operator_grants.RevokedGrant),), errors=(404,)
    ),
    ("POST", "/grants/{grant_id}/approve"): Operation(
        tag="grants", summary="Approve a pending interactive grant", answers=(Answer(200, GrantDecision),), errors=(404, 409)
    ),
    ("POST", "/grants/{grant_id}/deny"): Operation(
        tag="grants", summary="Deny a pending interactive grant", answers=(Answer(200, GrantDecision),), errors=(404, 409)
    ),
    ("GET", "/webhook-events"): Operation(
        tag="webhooks",
        summary="Pending events in due order, or dead ones in order of death",
        answers=(Answer(200, operator_webhooks.WebhookEventList),),
        query=(Param("status", _enum(operator_webhooks.STATUSES), "which queue", required=True), *PAGE),
        errors=(400,),
    ),
    ("DELETE", "/webhook-events"): Operation(
        tag="webhooks",
        summary="Purge every dead event (status=dead is required)",
        answers=(Answer(200, operator_webhooks.Purged),),
        query=(Param("status", _enum(("dead",)), "dead: only dead events are purged", required=True),),
        errors=(400,),
    ),
    ("GET", "/webhook-events/{event_id}"): Operation(
        tag="webhooks", summary="One pending or dead event", answers=(Answer(200, operator_webhooks.WebhookEventView),), errors=(404,)
    ),
    ("DELETE", "/webhook-events/{event_id}"): Operation(
        tag="webhooks", summary="Purge one dead event", answers=(Answer(204),), errors=(404, 409)
    ),
    ("POST", "/webhook-events/{event_id}/retry"): Operation(
        tag="webhooks",
        summary="A dead event back in the queue, due now, attempts from zero",
        answers=(Answer(200, operator_webhooks.WebhookEventView),),
        errors=(404, 409),
    ),
    ("POST", "/peers"): Operation(tag="peers", summary="Add an ILP peer", body=PeerBody, answers=(Answer(201, PeerView),), errors=(400, 409, 503)),
    ("GET", "/peers"): Operation(tag="peers", summary="Every ILP peer with its totals", answers=(Answer(200, PeerList),)),
    ("GET", "/peers/{name}"): Operation(tag="peers", summary="One ILP peer", answers=(Answer(200, PeerView),), errors=(404,)),
    ("DELETE", "/peers/{name}"): Operation(tag="peers", summary="Remove an ILP peer (its totals stay)", answers=(Answer(204),), errors=(404,)),
}

_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad input", 401: "No or wrong operator token", 404: "Not found",
            409: "Conflict with the current state", 503: "Unavailable"}  # fmt: skip


def _types() -> list[Any]:
    found: list[Any] = [ErrorBody]
    for operation in OPERATIONS.values():
        found += [answer.type for answer in operation.answers if answer.type not in (None, dict)]
        if operation.body is not None:
            found.append(operation.body)
    return list(dict.fromkeys(found))


def _described(kind: Any) -> Any:
    """`kind` as msgspec can describe it: a body's JSON kept raw (metadata, whose default,
    an empty Raw, has no JSON form) is stated as the optional object the handler takes."""
    if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
        return kind
    fields = msgspec.structs.fields(kind)
    if not any(isinstance(field.default, msgspec.Raw) for field in fields):
        return kind
    config = kind.__struct_config__
    described = msgspec.defstruct(
        kind.__name__,
        [
            (field.name, dict[str, Any] | None, None) if isinstance(field.default, msgspec.Raw)
            else (field.name, field.type) if field.required else (field.name, field.type, field.default)
            for field in fields
        ],
        kw_only=True,
        frozen=config.frozen,
        forbid_unknown_fields=config.forbid_unknown_fields,
        rename={field.name: field.encode_name for field in fields},
    )
    described.__doc__ = kind.__doc__
    return described


def _content(schema: dict, media: str = "application/json") -> dict:
    return {media: {"schema": schema}}


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.strip("/").replace(".", "-").split("/")]
    return method.lower() + "".join(word.replace("-", " ").title().replace(" ", "") for word in words)


@cache
def document() -> dict:
    types = _types()
    schemas, components = msgspec.json.schema_components([_described(kind) for kind in types], ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(types, schemas))
    error = schema_of[ErrorBody]
    paths: dict[str, dict] = {}
    for (method, path), operation in OPERATIONS.items():
        responses: dict[str, dict] = {}
        for answer in operation.answers:
            response: dict = {"description": _REASONS.get(answer.status, "")}
            if answer.type is dict:
                response["content"] = _content({"type": "object"})
            elif answer.type is not None:
                response["content"] = _content(schema_of[answer.type])
            elif answer.media != "application/json":
                response["content"] = _content({"type": "string"}, answer.media)
            responses[str(answer.status)] = response
        for status in (*(() if operation.open else (401,)), *operation.errors):
            responses.setdefault(str(status), {"description": _REASONS[status], "content": _content(error)})
        responses["default"] = {"description": "Any other error", "content": _content(error)}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in (part[1:-1] for part in path.split("/") if part.startswith("{"))
        ]
        parameters += [
            {"name": p.name, "in": "query", "required": p.required, "description": p.description, "schema": p.schema} for p in operation.query
        ]
        entry: dict = {"tags": [operation.tag], "summary": operation.summary, "operationId": _operation_id(method, path), "responses": responses}
        if parameters:
            entry["parameters"] = parameters
        if operation.body is not None:
            entry["requestBody"] = {"required": True, "content": _content(schema_of[operation.body])}
        if operation.open:
            entry["security"] = []
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opay operator API",
            "version": VERSION,
            "description": "The account servicing entity's side of opay, on its own port. Errors are "
            '{"error": {"code", "description", "details"?}}.',
        },
        "security": [{"operatorToken": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer", "description": "OPAY_OPERATOR_TOKEN"}},
        },
    }


async def openapi(request: Request) -> Response:
    return Response(msgspec.json.encode(document()), media_type="application/json")


ROUTES = [Route("/openapi.json", openapi, methods=["GET"], name="openapi")]
