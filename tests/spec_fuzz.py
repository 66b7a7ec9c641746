"""Fuzz a running opay against the official Open Payments specs with schemathesis.

Shared by tests/test_spec_fuzz.py (bounded, in `make test`) and bench/fuzz.py (longer).

Every operation of the four specs (resource server, authorization server, wallet address
server, and Rafiki's token introspection, which opay serves on its operator port) is
driven with generated requests, valid ones (positive) and invalid ones (negative), two ways:

- signed: the way opay's own client and the official SDK sign (`Authorization: GNAP`
  with a real token, an RFC 9421 signature by a registered client key, Content-Digest),
  with part of the generated wallet addresses, receivers, quote and resource ids
  replaced by real ones, so requests get past authentication and reach the handlers;
- unsigned: exactly what schemathesis generates (random Authorization and signature
  headers, or none), which must be refused with spec-shaped errors.

Each response is checked with schemathesis's `not_a_server_error` and
`response_schema_conformance`. Two schemas in the official resource-server spec are
defective: they put `additionalProperties: false` beside a `$ref`, which under OpenAPI
3.1 (JSON Schema 2020-12) forbids every property, so no incoming payment could ever be
valid there. They are corrected, by name, to what they mean (`unevaluatedProperties:
false`: the referenced schema and no other field) before fuzzing; see KNOWN_SPEC_DEFECTS.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from opay.client import public_jwk
from opay.http import signatures

SPEC_DIR = Path(__file__).parent / "fixtures" / "openapi"
SPECS = ("resource-server.yaml", "auth-server.yaml", "wallet-address-server.yaml", "token-introspection.yaml")

# (spec, JSON pointer of the defective schema): `additionalProperties: false` beside `$ref`
# in the official 1.3.0 resource-server spec. Listed in the README.
KNOWN_SPEC_DEFECTS = (
    (
        "resource-server.yaml",
        "/paths/~1incoming-payments/get/responses/200/content/application~1json/schema/properties/result/items",
    ),
    (
        "resource-server.yaml",
        "/paths/~1incoming-payments~1{id}~1complete/post/responses/200/content/application~1json/schema",
    ),
)


def load_spec(name: str) -> dict:
    raw = yaml.safe_load((SPEC_DIR / name).read_text())
    for spec, pointer in KNOWN_SPEC_DEFECTS:
        if spec != name:
            continue
        node = raw
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        # Fail loudly if a new spec version fixed (or moved) the defect.
        assert "$ref" in node and node.get("additionalProperties") is False, (spec, pointer, node)
        del node["additionalProperties"]
        node["unevaluatedProperties"] = False
    return raw


def schemas() -> dict[str, Any]:
    return {name: schemathesis.openapi.from_dict(load_spec(name)) for name in SPECS}


@dataclass
class Target:
    """A running opay and a client that holds tokens for every protected operation."""

    public_url: str
    operator_url: str
    operator_token: str
    wallet: str  # the wallet address the tokens are for (and the fuzzer's payments are on)
    client_wallet: str
    key: Ed25519PrivateKey
    keyid: str
    token: str  # incoming-payment, quote and outgoing-payment access for `wallet`
    continue_uri: str
    continue_token: str
    incoming_payment: str = ""
    quote: str = ""
    outgoing_payment: str = ""

    @property
    def auth_url(self) -> str:
        return self.public_url + "/auth"


def _sign(http: httpx.Client, key: Ed25519PrivateKey, keyid: str, method: str, url: str, body: Any = None, token: str | None = None) -> httpx.Response:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if raw else {}
    if token is not None:
        headers["authorization"] = f"GNAP {token}"
    headers = signatures.sign(method=method, url=url, headers=headers, body=raw, private_key=key, keyid=keyid)
    return http.request(method, url, content=raw, headers=headers)


def prepare(http: httpx.Client, public_url: str, operator_url: str, operator_token: str) -> Target:
    """A wallet address, a client with a key, one approved grant for everything, and one of each resource."""
    operator = {"authorization": f"Bearer {operator_token}"}
    suffix = uuid.uuid4().hex[:10]

    def wallet(name: str) -> str:
        answer = http.post(f"{operator_url}/wallet-addresses", json={"path": f"{name}-{suffix}", "assetCode": "USD", "assetScale": 2, "publicName": name}, headers=operator)
        answer.raise_for_status()
        return answer.json()["id"]

    payee, client_wallet = wallet("fuzz-payee"), wallet("fuzz-app")
    key = Ed25519PrivateKey.generate()
    http.post(f"{operator_url}/wallet-addresses/{client_wallet.rsplit('/', 1)[1]}/keys", json=public_jwk(key, "key-1"), headers=operator).raise_for_status()
    access = [
        {"type": "incoming-payment", "actions": ["create", "read", "list", "complete"]},
        {"type": "quote", "actions": ["create", "read"]},
        {"type": "outgoing-payment", "actions": ["create", "read", "list"], "identifier": payee},
    ]
    body = {"access_token": {"access": access}, "client": client_wallet, "interact": {"start": ["redirect"]}}
    pending = _sign(http, key, "key-1", "POST", public_url + "/auth", body)
    assert pending.status_code == 200, pending.text
    cont = pending.json()["continue"]
    http.post(f"{operator_url}/grants/{cont['uri'].rsplit('/', 1)[1]}/approve", json={}, headers=operator).raise_for_status()
    while True:
        continued = _sign(http, key, "key-1", "POST", cont["uri"], token=cont["access_token"]["value"])
        if continued.status_code == 400 and continued.json()["error"]["code"] == "too_fast":
            time.sleep(0.2)
            continue
        assert continued.status_code == 200, continued.text
        break
    granted = continued.json()
    t = Target(
        public_url, operator_url, operator_token, payee, client_wallet, key, "key-1",
        granted["access_token"]["value"], granted["continue"]["uri"], granted["continue"]["access_token"]["value"],
    )
    usd = {"value": "100000", "assetCode": "USD", "assetScale": 2}
    created = _sign(http, key, "key-1", "POST", public_url + "/incoming-payments", {"walletAddress": payee, "incomingAmount": usd}, t.token)
    assert created.status_code == 201, created.text
    t.incoming_payment = created.json()["id"]
    quoted = _sign(http, key, "key-1", "POST", public_url + "/quotes", {"walletAddress": payee, "receiver": t.incoming_payment, "method": "ilp", "debitAmount": {**usd, "value": "100"}}, t.token)
    assert quoted.status_code == 201, quoted.text
    t.quote = quoted.json()["id"]
    paid = _sign(http, key, "key-1", "POST", public_url + "/outgoing-payments", {"walletAddress": payee, "quoteId": t.quote}, t.token)
    assert paid.status_code == 201, paid.text
    t.outgoing_payment = paid.json()["id"]
    return t


def _unreachable_client(body: dict) -> None:
    """A generated client wallet address would make opay fetch its keys from wherever it
    points: keep the generated URL but move it to a host that never resolves (RFC 6761
    `.invalid`), so the fuzz sends nothing off this machine and waits on no one."""
    client = body.get("client")
    holder, key = (body, "client") if isinstance(client, str) else (client, "walletAddress") if isinstance(client, dict) else (None, None)
    if holder is None or not isinstance(holder.get(key), str):
        return
    try:
        url = httpx.URL(holder[key])
    except (httpx.InvalidURL, ValueError, TypeError):
        return
    if url.host and url.host not in ("127.0.0.1", "localhost"):
        try:
            holder[key] = str(url.copy_with(host="fuzz.invalid", port=None))
        except (httpx.InvalidURL, ValueError, TypeError):
            holder[key] = "https://fuzz.invalid/wallet"


@dataclass
class Tally:
    sent: int = 0
    skipped: int = 0  # generated requests no HTTP client can send (e.g. a newline in a header)
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    by_operation: Counter = field(default_factory=Counter)
    # Statuses the spec does not list for the operation (no schema to check them by);
    # the README lists the ones opay answers on purpose.
    undocumented: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return (
            f"requests sent: {self.sent}, server errors: {len(self.server_errors)}, violations: {len(self.violations)}, "
            f"unsendable skipped: {self.skipped}, statuses: {dict(sorted(self.statuses.items()))}, "
            f"statuses the spec does not list: {dict(sorted(self.undocumented.items()))}"
        )



class Fuzzer:
    def __init__(self, http: httpx.Client, target: Target) -> None:
        self.http = http
        self.t = target
        self.tally = Tally()

    def base_url(self, spec: str) -> str:
        return {
            "resource-server.yaml": self.t.public_url,
            "auth-server.yaml": self.t.auth_url,
            "wallet-address-server.yaml": self.t.wallet,
            "token-introspection.yaml": self.t.operator_url + "/introspect",
        }[spec]

    def run(self, max_examples: int, modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)) -> Tally:
        for spec, schema in schemas().items():
            for result in schema.get_all_operations():
                operation = result.ok()
                for mode in modes:
                    for signed in (True, False):
                        self._fuzz(spec, operation, mode, signed, max_examples)
        return self.tally

    def _fuzz(self, spec: str, operation: Any, mode: GenerationMode, signed: bool, max_examples: int) -> None:
        strategy = st.tuples(operation.as_strategy(generation_mode=mode), st.integers(0, 3))

        @settings(
            max_examples=max_examples,
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(strategy)
        def each(drawn: tuple) -> None:
            case, choice = drawn
            self._send(spec, operation, case, signed, real=choice > 0)

        try:
            each()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (e.g. a GET without parameters).
            pass

    # What a client would really send: ids and URLs of this server, for the handlers to judge.
    def _realistic(self, operation: Any, case: Any) -> None:
        t = self.t
        path = operation.path
        if case.path_parameters and "id" in case.path_parameters:
            resource = {"/incoming-payments/{id}": t.incoming_payment, "/incoming-payments/{id}/complete": t.incoming_payment,
                        "/quotes/{id}": t.quote, "/outgoing-payments/{id}": t.outgoing_payment}.get(path)
            if resource:
                case.path_parameters["id"] = resource.rsplit("/", 1)[1]
        if case.query is not None and "wallet-address" in (case.query or {}):
            case.query["wallet-address"] = t.wallet
        body = case.body
        if isinstance(body, dict):
            if "walletAddress" in body:
                body["walletAddress"] = t.wallet
            if "receiver" in body:
                body["receiver"] = t.incoming_payment
            if "incomingPayment" in body:
                body["incomingPayment"] = t.incoming_payment
            if "quoteId" in body:
                body["quoteId"] = t.quote
            if "client" in body and path == "/":
                body["client"] = t.client_wallet

    def _send(self, spec: str, operation: Any, case: Any, signed: bool, real: bool) -> None:
        if signed and real and spec != "token-introspection.yaml":
            self._realistic(operation, case)
        if spec == "auth-server.yaml" and operation.path == "/" and isinstance(case.body, dict):
            _unreachable_client(case.body)
        base = self.base_url(spec)
        path = case.formatted_path
        url = base if path == "/" else base.rstrip("/") + path
        if case.query:
            url = str(httpx.URL(url, params={k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in case.query.items()}))
        has_body = case.body is not None and type(case.body).__name__ != "NotSet"
        try:
            raw = json.dumps(case.body).encode() if has_body else b""
        except (TypeError, ValueError):
            self.tally.skipped += 1
            return
        headers: dict[str, str] = {}
        if spec == "token-introspection.yaml":
            # The operator port's introspection: the operator's bearer token, no signatures.
            headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
            if signed:
                headers = {"authorization": f"Bearer {self.t.operator_token}"}
            if raw:
                headers["content-type"] = "application/json"
        elif signed:
            if raw:
                headers["content-type"] = "application/json"
            token = self._token_for(spec, operation)
            if token is not None:
                headers["authorization"] = f"GNAP {token}"
            if spec != "wallet-address-server.yaml":
                headers = signatures.sign(method=case.method, url=url, headers=headers, body=raw, private_key=self.t.key, keyid=self.t.keyid)
        else:
            headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
            if raw:
                headers.setdefault("content-type", "application/json")
        try:
            response = self.http.request(case.method, url, content=raw, headers=headers)
        except (httpx.LocalProtocolError, httpx.InvalidURL, UnicodeEncodeError, ValueError):
            self.tally.skipped += 1
            return
        self._check(spec, operation, case, response, signed)

    def _token_for(self, spec: str, operation: Any) -> str | None:
        if spec == "wallet-address-server.yaml":
            return None
        if spec == "auth-server.yaml":
            if operation.path == "/":
                return None
            if operation.path.startswith("/continue"):
                return self.t.continue_token
        return self.t.token

    def _check(self, spec: str, operation: Any, case: Any, response: httpx.Response, signed: bool) -> None:
        tally = self.tally
        tally.sent += 1
        tally.statuses[response.status_code] += 1
        label = f"{spec} {operation.method.upper()} {operation.path} ({'signed' if signed else 'unsigned'})"
        tally.by_operation[label] += 1
        where = f"{label} -> {response.status_code} {case.method} {response.request.url}: {response.text[:300]}"
        if response.status_code >= 500:
            tally.server_errors.append(where)
        listed = operation.definition.raw.get("responses", {})
        if str(response.status_code) not in listed and "default" not in listed:
            tally.undocumented[f"{spec} {operation.method.upper()} {operation.path} {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except FailureGroup as group:
            for failure in group.exceptions:
                if type(failure).__name__ != "ServerError":
                    tally.violations.append(f"{where}\n  {failure.title}: {failure.message[:600]}")
