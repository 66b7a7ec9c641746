"""The operator API's own OpenAPI document (GET /openapi.json, opay/http/operator_openapi.py):
it and OPERATOR_ROUTES name the same operations, it is valid OpenAPI 3.1, and the
session's real server answers as it says: a bounded schemathesis run over a few
operations, with real ids and URLs in part of the requests, with and without the
operator token, valid and invalid input: no 5xx, every answer valid for its operation,
invalid input refused with a 4xx.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import negative_data_rejection, response_schema_conformance
from starlette.routing import Mount, Route

from opay.http.app import OPERATOR_ROUTES
from opay.http.operator_openapi import OPERATIONS, document

EXAMPLES = 10
FUZZED = (
    ("GET", "/grants"),
    ("GET", "/grants/{grant_id}"),
    ("POST", "/grants/{grant_id}/revoke"),
    ("GET", "/webhook-events"),
    ("GET", "/webhook-events/{event_id}"),
    ("POST", "/webhook-events/{event_id}/retry"),
    ("GET", "/wallet-addresses/{path}"),
    ("GET", "/incoming-payments"),
    ("GET", "/fees/{asset_code}"),
    ("POST", "/introspect"),
    ("GET", "/peers"),
    ("GET", "/healthz"),
)


def served(routes, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path template) of every route, mounted ones included; HEAD goes with GET."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= served(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            found |= {(method, prefix + route.path_format) for method in route.methods or () if method != "HEAD"}
    return found


def test_the_document_and_the_routes_name_the_same_operations() -> None:
    routes, documented = served(OPERATOR_ROUTES), set(OPERATIONS)
    assert not routes - documented, f"routes the document lacks: {sorted(routes - documented)}"
    assert not documented - routes, f"documented operations no route serves: {sorted(documented - routes)}"
    paths = document()["paths"]
    assert {(method.upper(), path) for path, item in paths.items() for method in item} == documented


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(OPERATIONS)
    for name, component in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(component)
    # Every reference resolves to a component.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in doc["components"]["schemas"], ref


def test_the_server_serves_it_without_a_token(server) -> None:
    answer = httpx.get(f"{server.operator_url}/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == json.loads(json.dumps(document()))


class Fuzz:
    def __init__(self, http: httpx.Client, server, real: dict[str, str]) -> None:
        self.http, self.server, self.real = http, server, real
        self.statuses: Counter = Counter()
        self.reached: Counter = Counter()
        self.failures: list[str] = []

    def run(self, operation, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(operation.as_strategy(generation_mode=mode), st.integers(0, 3))
        def each(case, choice: int) -> None:
            self.send(operation, case, mode, with_token=choice > 0, realistic=choice > 1)

        each()

    def send(self, operation, case, mode: GenerationMode, *, with_token: bool, realistic: bool) -> None:
        if realistic and mode is GenerationMode.POSITIVE:
            for name in ("client", "wallet-address"):
                if case.query and name in case.query:
                    case.query[name] = self.real[name]
            if case.path_parameters:
                for name in ("grant_id", "path"):
                    if name in case.path_parameters and operation.method.upper() == "GET":
                        case.path_parameters[name] = self.real[name]
        headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
        if mode is GenerationMode.NEGATIVE and operation.schema.is_security_param_negated(case):
            with_token = False  # the invalid part is the token itself: send it as generated
        if with_token:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["authorization"] = f"Bearer {self.server.operator_token}"
        has_body = case.body is not None and type(case.body).__name__ != "NotSet"
        try:
            raw = json.dumps(case.body).encode() if has_body else b""
        except (TypeError, ValueError):
            return  # not JSON at all (generated bytes): nothing this API's clients send
        if raw:
            headers["content-type"] = "application/json"
        url = self.server.operator_url + case.formatted_path
        query = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in (case.query or {}).items()}
        try:
            response = self.http.request(case.method, url, params=query, content=raw, headers=headers)
        except (httpx.LocalProtocolError, httpx.InvalidURL, UnicodeEncodeError, ValueError):
            return  # nothing an HTTP client can send
        label = f"{operation.method.upper()} {operation.path} {mode.value}"
        self.reached[label] += 1
        self.statuses[response.status_code] += 1
        checks = [not_a_server_error, response_schema_conformance]
        if mode is GenerationMode.NEGATIVE and with_token:
            checks.append(negative_data_rejection)
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            for failure in group.exceptions:
                self.failures.append(f"{label} -> {response.status_code} {response.request.url}: {failure.title}: {failure.message[:400]}")


@pytest.fixture
async def real(world) -> dict[str, str]:
    """What realistic requests name: a wallet address, and a client with a grant naming it."""
    access = [{"type": "incoming-payment", "actions": ["read"], "identifier": world.receiver["id"]}]
    grant = await world.client.grant(world.receiver["authServer"], access)
    return {
        "client": world.client.wallet_address,
        "wallet-address": world.receiver["id"],
        "path": world.receiver["id"].rsplit("/", 1)[1],
        "grant_id": grant["continue"]["uri"].rsplit("/", 1)[1],
    }


@pytest.mark.anyio
async def test_the_server_answers_as_its_document_says(server, real) -> None:
    await anyio.to_thread.run_sync(fuzz_all, server, real)


def fuzz_all(server, real: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_dict(document())
    operations = {(op.method.upper(), op.path): op for op in (result.ok() for result in schema.get_all_operations())}
    with httpx.Client(timeout=30) as http:
        fuzz = Fuzz(http, server, real)
        for key in FUZZED:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzz.run(operations[key], mode)
                except Unsatisfiable:  # nothing to negate (GET /healthz takes no input)
                    pass
    print(dict(fuzz.statuses), dict(fuzz.reached))
    assert not fuzz.failures, "\n".join(fuzz.failures[:20])
    assert len({label.rsplit(" ", 1)[0] for label in fuzz.reached}) == len(FUZZED)
    assert fuzz.statuses[200] > 0 and fuzz.statuses[400] > 0 and fuzz.statuses[401] > 0 and fuzz.statuses[404] > 0
