"""Answers as the official specs give them, authentication judged first (issue 7, item 7).

- Token management (POST/DELETE /auth/token/{id}) refuses with the code the spec lists
  for 401, invalid_client.
- A protected route answers 401 before it judges the id in its path.
- Ids holding an encoded slash reach their route: a JSON 401 without a token, 404 with
  one; a method no route takes is a JSON 405 with Allow, an unknown path a JSON 404.
- {wallet}/did.json is a wallet's did:web document, not "no such wallet address".
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import INCOMING_ALL
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio


def assert_401(response, world, code: str | None = None) -> dict:
    error = assert_error(response, 401, code)
    assert response.headers.get("www-authenticate") == f"GNAP as_uri={world.receiver['authServer']}", response.headers
    return error


async def test_token_management_refuses_with_the_specs_401_code(world):
    grant = await world.client.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": ["read"]}])
    token = grant["access_token"]
    auth = world.receiver["authServer"]
    for method in ("POST", "DELETE"):
        # A token id that is not ours, a malformed one, one with an encoded slash; no Authorization at all.
        for url in (f"{auth}/token/{uuid.uuid4()}", f"{auth}/token/0", f"{auth}/token/a%2Fb"):
            assert_error(await world.client.request(method, url, token=token["value"]), 401, "invalid_client")
        assert_error(await world.client.request(method, token["manage"]), 401, "invalid_client")
        assert_error(await world.client.request(method, token["manage"], token="not-a-token"), 401, "invalid_client")
    # The real one still works, and once revoked is refused the same way.
    assert (await world.client.request("DELETE", token["manage"], token=token["value"])).status_code == 204
    assert_error(await world.client.request("POST", token["manage"], token=token["value"]), 401, "invalid_client")


async def test_a_protected_route_answers_401_before_it_judges_the_id(world):
    base = world.server.public_url
    for method, path in (("GET", "/quotes/0"), ("GET", "/outgoing-payments/0"), ("POST", "/incoming-payments/0/complete")):
        assert_401(await world.client.request(method, base + path, sign=False), world, "missing_token")
        # A token that authenticates no one is judged before the id too.
        assert_401(await world.client.request(method, base + path, token="not-a-token"), world)
    token = await world.token(
        [
            {"type": "incoming-payment", "actions": INCOMING_ALL},
            {"type": "quote", "actions": ["create", "read"]},
        ]
    )
    assert_error(await world.client.request("GET", base + "/quotes/0", token=token), 404, "not_found")
    assert_error(await world.client.request("POST", base + "/incoming-payments/0/complete", token=token), 404, "not_found")
    outgoing = await world.outgoing_token()
    assert_error(await world.client.request("GET", base + "/outgoing-payments/0", token=outgoing), 404, "not_found")
    # The incoming payment's public view needs no token: there an unknown id is 404 at once.
    assert_error(await world.client.request("GET", base + "/incoming-payments/0", sign=False), 404, "not_found")


async def test_ids_with_an_encoded_slash_reach_their_route(world):
    base = world.server.public_url
    token = await world.token([{"type": "incoming-payment", "actions": INCOMING_ALL}, {"type": "quote", "actions": ["read"]}])
    for method, path in (
        ("POST", "/incoming-payments/a%2Fb/complete"),
        ("POST", "/incoming-payments/a/b/complete"),
        ("GET", "/quotes/a%2Fb"),
        ("GET", "/outgoing-payments/a%2Fb"),
    ):
        assert_401(await world.client.request(method, base + path, sign=False), world, "missing_token")
    assert_error(await world.client.request("POST", base + "/incoming-payments/a%2Fb/complete", token=token), 404, "not_found")
    assert_error(await world.client.request("GET", base + "/quotes/a%2Fb", token=token), 404, "not_found")
    assert_error(await world.client.request("GET", base + "/incoming-payments/a%2Fb", token=token), 404, "not_found")
    assert_error(await world.client.request("POST", base + "/auth/continue/a%2Fb", token="x"), 401, "invalid_continuation")


async def test_unrouted_requests_get_json_405_or_404(world):
    base = world.server.public_url
    for method, url, allow in (
        ("POST", world.receiver["id"], "GET, HEAD"),
        ("DELETE", base + "/quotes/0", "GET, HEAD"),
        ("PUT", base + "/incoming-payments", "GET, HEAD, POST"),
    ):
        answer = await world.client.request(method, url, sign=False)
        assert_error(answer, 405, "method_not_allowed")
        assert answer.headers["allow"] == allow
    for method in ("POST", "DELETE"):
        assert_error(await world.client.request(method, f"{base}/nowhere-{uuid.uuid4().hex}/x", sign=False), 404, "not_found")


async def test_did_document_of_an_existing_wallet(world):
    wallet = world.client.wallet_address
    answer = await world.http.get(wallet + "/did.json")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    host = world.server.public_url.removeprefix("http://").replace(":", "%3A")
    did = f"did:web:{host}:{wallet.rsplit('/', 1)[1]}"
    assert document["id"] == did
    jwks = (await world.http.get(wallet + "/jwks.json")).json()["keys"]
    assert [m["publicKeyJwk"]["x"] for m in document["verificationMethod"]] == [k["x"] for k in jwks]
    assert document["verificationMethod"][0] == {
        "id": f"{did}#key-1",
        "type": "JsonWebKey2020",
        "controller": did,
        "publicKeyJwk": {"kid": "key-1", "kty": "OKP", "crv": "Ed25519", "x": jwks[0]["x"]},
    }
    assert document["authentication"] == document["assertionMethod"] == [f"{did}#key-1"]
    # A wallet without keys has a document without methods; an unknown one is 404.
    bare = (await world.http.get(world.receiver["id"] + "/did.json")).json()
    assert bare["verificationMethod"] == [] and bare["id"].startswith("did:web:")
    missing = await world.http.get(f"{world.server.public_url}/nobody-{uuid.uuid4().hex}/did.json")
    assert assert_error(missing, 404, "not_found")["description"] == "no such wallet address"


async def test_a_page_size_that_is_a_unicode_digit_is_bad_input(world):
    # Found by the spec fuzz: "¹" passes str.isdigit() but not int(), which answered 500.
    token = await world.token()
    for first in ("%C2%B9", "%D9%A3", "1%C2%B9"):  # ¹, Arabic-Indic three, 1¹
        url = f"{world.server.public_url}/incoming-payments?wallet-address={world.receiver['id']}&first={first}"
        assert_error(await world.client.request("GET", url, token=token), 400, "invalid_request")
