"""Interactive grants: consent page, finish redirect and hash, continuation, polling, operator decisions.

Everything is driven over HTTP against the real server: the client signs like the SDK,
the "user" is a plain HTTP client on the consent page, the ASE uses the operator API.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
import uuid

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay.client import SignedClient, public_jwk
from tests.conftest import make_world
from tests.support import OpayServer
from tests.test_authentication import Store
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio

LIMITS = {
    "debitAmount": {"value": "1234", "assetCode": "USD", "assetScale": 2},
    "receiver": "https://elsewhere.example/bob/incoming-payments/48884225-b393-4872-90de-1b737e2491c2",
    "interval": "R12/2019-08-24T14:15:22Z/P1M",
}
FINISH_URI = "https://client.example/callback?state=xyz"


@pytest.fixture
async def store(server):
    probe = Store(server.redis_url)
    try:
        yield probe
    finally:
        await probe.redis.aclose()


def outgoing(world, limits: dict | None = LIMITS, **extra) -> dict:
    item = {"type": "outgoing-payment", "actions": ["create", "read", "list"], "identifier": world.receiver["id"], **extra}
    if limits is not None:
        item["limits"] = limits
    return item


def interactive(client: SignedClient, access: list[dict], finish: dict | None = None, client_field=None) -> dict:
    interact: dict = {"start": ["redirect"]}
    if finish is not None:
        interact["finish"] = finish
    return {"access_token": {"access": access}, "client": client_field or client.wallet_address, "interact": interact}


async def request_grant(world, body: dict, client: SignedClient | None = None):
    return await (client or world.client).request("POST", world.receiver["authServer"], json=body)


async def start(world, access: list[dict] | None = None, *, nonce: str | None = None, client: SignedClient | None = None) -> dict:
    client = client or world.client
    finish = None if nonce is None else {"method": "redirect", "uri": FINISH_URI, "nonce": nonce}
    response = await request_grant(world, interactive(client, access or [outgoing(world)], finish), client)
    assert response.status_code == 200, response.text
    return response.json()


async def cont(client: SignedClient, pending: dict, token: str | None = None, interact_ref: str | None = None):
    body = None if interact_ref is None else {"interact_ref": interact_ref}
    return await client.request("POST", pending["continue"]["uri"], json=body, token=token or pending["continue"]["access_token"]["value"])


def grant_id(pending: dict) -> str:
    return pending["continue"]["uri"].rsplit("/", 1)[1]


def expected_hash(client_nonce: str, finish_nonce: str, interact_ref: str, grant_endpoint: str) -> str:
    data = f"{client_nonce}\n{finish_nonce}\n{interact_ref}\n{grant_endpoint}".encode()
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


async def introspect(world, value: str) -> dict:
    response = await world.operator.post("/introspect", {"access_token": value})
    assert response.status_code == 200, response.text
    return response.json()


async def named_client(world, public_name: str) -> SignedClient:
    wallet = await world.operator.wallet_address(f"shop-{uuid.uuid4().hex[:10]}", public_name=public_name)
    key = Ed25519PrivateKey.generate()
    (await world.operator.add_key(wallet["id"].rsplit("/", 1)[1], public_jwk(key, "key-1"))).raise_for_status()
    return SignedClient(world.http, wallet["id"], key, "key-1")


# --- the redirect flow ------------------------------------------------------------------


async def test_the_full_redirect_flow_issues_a_token_with_the_approved_limits(world) -> None:
    shop = await named_client(world, "Shop <App> & Co")
    nonce = uuid.uuid4().hex
    pending = await start(world, nonce=nonce, client=shop)
    auth = world.receiver["authServer"]
    assert set(pending) == {"interact", "continue"}
    assert pending["interact"]["redirect"].startswith(f"{auth}/interact/{grant_id(pending)}/")
    assert isinstance(pending["interact"]["finish"], str) and len(pending["interact"]["finish"]) >= 20
    assert pending["continue"]["uri"] == f"{auth}/continue/{grant_id(pending)}"
    assert pending["continue"]["wait"] == 1

    # The user opens the consent page: it names the client, the wallet address and the limits.
    page = await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    html = page.text
    assert "Shop &lt;App&gt; &amp; Co" in html and "Shop <App>" not in html
    assert shop.wallet_address in html
    assert world.receiver["id"] in html and "Alice" in html
    assert "12.34 USD" in html
    assert LIMITS["receiver"] in html
    assert LIMITS["interval"] in html and "every month" in html and "12 times" in html
    assert "send payments from this wallet address" in html
    assert f'action="{pending["interact"]["redirect"]}/approve"' in html
    assert f'action="{pending["interact"]["redirect"]}/deny"' in html
    assert "<script" not in html.lower()

    # The user approves: back to the client with interact_ref and a hash the client can check.
    approved = await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)
    assert approved.status_code == 302, approved.text
    location = approved.headers["location"]
    assert location.startswith("https://client.example/callback?state=xyz&")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    interact_ref = query["interact_ref"][0]
    assert query["hash"] == [expected_hash(nonce, pending["interact"]["finish"], interact_ref, auth)]
    assert "=" not in query["hash"][0] and "+" not in query["hash"][0] and "/" not in query["hash"][0]

    # The first decision stands.
    again = await world.http.post(pending["interact"]["redirect"] + "/deny", headers=world.owner_headers)
    assert again.status_code == 409 and again.headers["content-type"].startswith("text/html")
    assert (await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)).status_code == 409
    shown = await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)
    assert shown.status_code == 200 and "already approved" in shown.text and "/approve" not in shown.text

    # Continuation: the wrong interact_ref, another client's signature and the wrong token are refused.
    assert_error(await cont(shop, pending, interact_ref="not-the-ref"), 401, "invalid_continuation")
    assert_error(await cont(world.client, pending, interact_ref=interact_ref), 401, "invalid_client")
    assert_error(await cont(shop, pending, token="wrong", interact_ref=interact_ref), 401, "invalid_continuation")

    done = await cont(shop, pending, interact_ref=interact_ref)
    assert done.status_code == 200, done.text
    body = done.json()
    assert set(body) == {"access_token", "continue"}
    token = body["access_token"]
    assert set(token) == {"value", "manage", "expires_in", "access"}
    assert token["access"] == [outgoing(world)]
    assert token["manage"].startswith(f"{auth}/token/") and 0 < token["expires_in"] <= 3600
    new_continue = body["continue"]["access_token"]["value"]
    assert new_continue != pending["continue"]["access_token"]["value"]
    assert body["continue"]["uri"] == pending["continue"]["uri"] and "wait" not in body["continue"]

    # Finalized once: a second continuation, with the old or the new continue token, is refused.
    assert_error(await cont(shop, pending, interact_ref=interact_ref), 401, "invalid_continuation")
    assert_error(await cont(shop, pending, token=new_continue, interact_ref=interact_ref), 401, "invalid_continuation")
    assert_error(await cont(shop, pending, token=new_continue), 401, "invalid_continuation")

    # Introspection gives the resource server the limits exactly as approved.
    seen = await introspect(world, token["value"])
    assert seen["active"] is True and seen["grant"] == grant_id(pending)
    assert seen["access"] == [outgoing(world)] and seen["access"][0]["limits"] == LIMITS
    assert seen["client"] == {"walletAddress": shop.wallet_address}

    # The new continue token manages the grant: cancelling it ends the token.
    cancelled = await shop.request("DELETE", pending["continue"]["uri"], token=new_continue)
    assert cancelled.status_code == 204, cancelled.text
    assert (await introspect(world, token["value"])) == {"active": False}
    assert (await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).status_code == 404


async def test_only_one_of_racing_continuations_gets_the_token(world) -> None:
    pending = await start(world, nonce="n-" + uuid.uuid4().hex)
    approved = await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)
    interact_ref = urllib.parse.parse_qs(urllib.parse.urlsplit(approved.headers["location"]).query)["interact_ref"][0]
    results = []

    async def one() -> None:
        results.append(await cont(world.client, pending, interact_ref=interact_ref))

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(one)
    assert sorted(r.status_code for r in results) == [200] + [401] * 7, [r.text for r in results]


async def test_a_finish_uri_without_a_query_gets_one(world) -> None:
    body = interactive(world.client, [outgoing(world)], {"method": "redirect", "uri": "myapp://done", "nonce": "abc"})
    pending = (await request_grant(world, body)).json()
    approved = await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)
    assert approved.status_code == 302
    assert approved.headers["location"].startswith("myapp://done?hash=")


# --- denial ---------------------------------------------------------------------------


async def test_deny_redirects_with_grant_rejected_and_the_grant_is_refused(world) -> None:
    pending = await start(world, nonce="client-nonce")
    denied = await world.http.post(pending["interact"]["redirect"] + "/deny", headers=world.owner_headers)
    assert denied.status_code == 302, denied.text
    assert denied.headers["location"] == FINISH_URI + "&result=grant_rejected"
    assert (await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)).status_code == 409
    assert "already denied" in (await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).text
    assert_error(await cont(world.client, pending, interact_ref="anything"), 401, "request_denied")
    assert_error(await cont(world.client, pending), 401, "request_denied")
    assert (await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})).status_code == 409


async def test_without_a_finish_uri_the_decision_is_an_html_page(world) -> None:
    first, second = await start(world), await start(world)
    approved = await world.http.post(first["interact"]["redirect"] + "/approve", headers=world.owner_headers)
    assert approved.status_code == 200 and approved.headers["content-type"].startswith("text/html") and "Approved" in approved.text
    denied = await world.http.post(second["interact"]["redirect"] + "/deny", headers=world.owner_headers)
    assert denied.status_code == 200 and "Denied" in denied.text
    assert (await cont(world.client, first)).json()["access_token"]["access"] == [outgoing(world)]
    assert_error(await cont(world.client, second), 401, "request_denied")


async def test_the_consent_page_of_an_unknown_grant_or_with_the_wrong_nonce_is_404(world) -> None:
    pending = await start(world)
    redirect = pending["interact"]["redirect"]
    base = redirect.rsplit("/", 1)[0]
    for url in (f"{base}/wrong-nonce", f"{world.receiver['authServer']}/interact/{uuid.uuid4()}/x"):
        page = await world.http.get(url, headers=world.owner_headers)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert (await world.http.post(url + "/approve", headers=world.owner_headers)).status_code == 404
    # Nothing was decided by those attempts.
    assert "/approve" in (await world.http.get(redirect, headers=world.owner_headers)).text


# --- polling and the operator ---------------------------------------------------------


async def test_polling_respects_wait_and_gets_the_token_after_operator_approval(world) -> None:
    pending = await start(world)
    assert_error(await cont(world.client, pending), 400, "too_fast")
    await anyio.sleep(1.05)
    polled = await cont(world.client, pending)
    assert polled.status_code == 200, polled.text
    assert polled.json() == {
        "continue": {"access_token": pending["continue"]["access_token"], "uri": pending["continue"]["uri"], "wait": 1}
    }
    assert_error(await cont(world.client, pending), 400, "too_fast")

    approved = await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})
    assert approved.status_code == 200, approved.text
    view = approved.json()
    assert view["id"] == grant_id(pending) and view["state"] == "approved" and view["interactRef"]
    assert "finishRedirect" not in view

    # Decided: the next poll gets the answer at once.
    done = await cont(world.client, pending)
    assert done.status_code == 200, done.text
    token = done.json()["access_token"]
    assert token["access"] == [outgoing(world)]
    assert (await introspect(world, token["value"]))["access"][0]["limits"] == LIMITS

    again = await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})
    assert again.status_code == 200 and again.json()["state"] == "finalized"
    assert_error(await world.operator.post(f"/grants/{grant_id(pending)}/deny", {}), 409, "grant_decided")


async def test_operator_deny_and_the_operator_s_own_errors(world) -> None:
    pending = await start(world, nonce="n1")
    assert_error(await world.http.post(f"{world.server.operator_url}/grants/{grant_id(pending)}/deny"), 401)
    denied = await world.operator.post(f"/grants/{grant_id(pending)}/deny", {})
    assert denied.status_code == 200 and denied.json() == {
        "id": grant_id(pending),
        "state": "denied",
        "finishRedirect": FINISH_URI + "&result=grant_rejected",
    }
    assert_error(await cont(world.client, pending), 401, "request_denied")
    assert_error(await world.operator.post(f"/grants/{uuid.uuid4()}/approve", {}), 404, "not_found")
    # A non-interactive grant has nothing to decide.
    plain = await world.client.grant(world.receiver["authServer"], [{"type": "quote", "actions": ["create"]}])
    assert_error(await world.operator.post(f"/grants/{grant_id(plain)}/approve", {}), 404, "not_found")


async def test_operator_approval_with_a_finish_uri_gives_the_redirect_for_the_user(world) -> None:
    nonce = "client-nonce-" + uuid.uuid4().hex
    pending = await start(world, nonce=nonce)
    view = (await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})).json()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(view["finishRedirect"]).query)
    assert query["interact_ref"] == [view["interactRef"]]
    assert query["hash"] == [expected_hash(nonce, pending["interact"]["finish"], view["interactRef"], world.receiver["authServer"])]
    assert (await cont(world.client, pending, interact_ref=view["interactRef"])).status_code == 200


async def test_an_interactive_incoming_payment_grant_also_waits_for_consent(world) -> None:
    pending = await start(world, [{"type": "incoming-payment", "actions": ["create", "read"]}])
    assert "access_token" not in pending
    page = (await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).text
    assert "request payments into this wallet address" in page and "any of your wallet addresses" in page
    await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)
    token = (await cont(world.client, pending)).json()["access_token"]["value"]
    assert (await world.create_payment(token)).status_code == 201


# --- cancellation ---------------------------------------------------------------------


async def test_a_cancelled_pending_grant_cannot_be_continued_or_decided(world) -> None:
    pending = await start(world, nonce="n2")
    cancelled = await world.client.request("DELETE", pending["continue"]["uri"], token=pending["continue"]["access_token"]["value"])
    assert cancelled.status_code == 204, cancelled.text
    assert_error(await cont(world.client, pending), 401, "invalid_continuation")
    assert (await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).status_code == 404
    assert (await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)).status_code == 404
    assert_error(await world.operator.post(f"/grants/{grant_id(pending)}/approve", {}), 404)


# --- refused requests -----------------------------------------------------------------


async def test_directed_identity_is_refused_for_interactive_grants(world, store) -> None:
    key = Ed25519PrivateKey.generate()
    holder = SignedClient(world.http, world.client.wallet_address, key, "directed")
    body = interactive(holder, [outgoing(world)], client_field={"jwk": public_jwk(key, "directed")})
    async with store.unchanged():
        assert_error(await request_grant(world, body, holder), 400, "invalid_client")


async def test_outgoing_payment_access_without_interaction_is_refused(world, store) -> None:
    body = {"access_token": {"access": [outgoing(world)]}, "client": world.client.wallet_address}
    async with store.unchanged():
        assert_error(await request_grant(world, body), 400, "invalid_request")


USD = {"value": "100", "assetCode": "USD", "assetScale": 2}


@pytest.mark.parametrize(
    "change",
    [
        {"limits": {"debitAmount": USD, "receiveAmount": USD}},
        {"limits": {"debitAmount": {"value": "100", "assetCode": "EUR", "assetScale": 2}}},
        {"limits": {"debitAmount": {"value": "100", "assetCode": "USD", "assetScale": 3}}},
        {"limits": {"debitAmount": {"value": "-1", "assetCode": "USD", "assetScale": 2}}},
        {"limits": {"debitAmount": {"value": "18446744073709551616", "assetCode": "USD", "assetScale": 2}}},
        {"limits": {"interval": "P1M"}},
        {"limits": {"interval": "R12/not-a-date/P1M"}},
        {"limits": {"receiver": "not a url"}},
        {"limits": {"debitAmount": USD, "extra": 1}},
        {"limits": "lots"},
        {"identifier": None},
        {"identifier": "https://elsewhere.example/alice"},
        {"type": "incoming-payment", "actions": ["create"], "limits": {"debitAmount": USD}},
    ],
    ids=[
        "debit-and-receive",
        "debit-other-asset",
        "debit-other-scale",
        "negative",
        "over-uint64",
        "interval-no-start",
        "interval-bad-date",
        "receiver-not-url",
        "unknown-limit",
        "limits-not-object",
        "no-identifier",
        "foreign-identifier",
        "limits-on-incoming",
    ],
)
async def test_bad_limits_or_access_are_400(world, store, change) -> None:
    item = {**outgoing(world, limits=None), **change}
    item = {k: v for k, v in item.items() if v is not None}
    async with store.unchanged():
        assert_error(await request_grant(world, interactive(world.client, [item])), 400, "invalid_request")


@pytest.mark.parametrize(
    "interact",
    [
        {"start": ["user_code"]},
        {"start": []},
        {"start": ["redirect"], "finish": {"method": "push", "uri": "https://c.example/", "nonce": "n"}},
        {"start": ["redirect"], "finish": {"method": "redirect", "uri": "javascript:alert(1)", "nonce": "n"}},
        {"start": ["redirect"], "finish": {"method": "redirect", "uri": "/relative", "nonce": "n"}},
        {"start": ["redirect"], "finish": {"method": "redirect", "uri": "https://c.example/a b", "nonce": "n"}},
        {"start": ["redirect"], "finish": {"method": "redirect", "uri": "https://c.example/", "nonce": ""}},
        {"start": ["redirect"], "finish": {"method": "redirect", "uri": "https://c.example/"}},
        {"finish": {"method": "redirect", "uri": "https://c.example/", "nonce": "n"}},
    ],
    ids=["no-redirect", "no-start", "push", "javascript", "relative", "space", "empty-nonce", "no-nonce", "start-missing"],
)
async def test_a_bad_interact_request_is_400(world, store, interact) -> None:
    body = {"access_token": {"access": [outgoing(world)]}, "client": world.client.wallet_address, "interact": interact}
    async with store.unchanged():
        assert_error(await request_grant(world, body), 400, "invalid_request")


async def test_unlimited_outgoing_access_is_allowed_and_the_page_says_so(world) -> None:
    pending = await start(world, [outgoing(world, limits=None)])
    page = (await world.http.get(pending["interact"]["redirect"], headers=world.owner_headers)).text
    assert "No amount limit" in page and "anyone" in page


async def test_on_defaults_the_client_cannot_approve_its_own_consent_page(tmp_path) -> None:
    """Without OPAY_CONSENT_USER_HEADER (the default) only the operator API decides: the
    client that received the link cannot approve its own grant, and gets no token."""
    server = OpayServer(tmp_path, extra_env={"OPAY_CONSENT_USER_HEADER": ""}).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            world = await make_world(server, http)
            item = {"type": "outgoing-payment", "actions": ["create"], "identifier": world.receiver["id"]}
            body = {"access_token": {"access": [item]}, "client": world.client.wallet_address, "interact": {"start": ["redirect"]}}
            pending = (await world.client.request("POST", world.receiver["authServer"], json=body)).json()
            redirect = pending["interact"]["redirect"]
            page = await http.get(redirect, headers=world.owner_headers)
            assert page.status_code == 200 and "/approve" not in page.text and "provider will decide" in page.text
            for decision in ("/approve", "/deny"):
                # Not even with a header a proxy would set: the server trusts none.
                for headers in ({}, world.owner_headers):
                    refused = await http.post(redirect + decision, headers=headers, follow_redirects=False)
                    assert refused.status_code == 403, refused.text
            await anyio.sleep(pending["continue"]["wait"] + 0.05)
            poll = await world.client.request("POST", pending["continue"]["uri"], token=pending["continue"]["access_token"]["value"])
            assert poll.status_code == 200 and set(poll.json()) == {"continue"}, poll.text  # still pending
            grant_id = pending["continue"]["uri"].rsplit("/", 1)[1]
            assert (await world.operator.post(f"/grants/{grant_id}/approve", {})).status_code == 200
    finally:
        server.stop()


async def test_a_grant_pending_when_its_wallet_address_is_deactivated_is_approved_by_neither_way(world) -> None:
    """Asked for before the deactivation, decided after it: approved neither on the consent
    page nor through the operator API, as a new request naming it would be refused; it stays
    pending, and once the wallet address is active again it can be approved."""
    pending = await start(world)
    path = world.receiver["id"].rsplit("/", 1)[1]
    assert (await world.operator.patch(f"/wallet-addresses/{path}", {"active": False})).status_code == 200
    on_page = await world.http.post(pending["interact"]["redirect"] + "/approve", headers=world.owner_headers)
    assert on_page.status_code == 409 and "deactivated" in on_page.text
    refused = await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})
    assert_error(refused, 409, "inactive_wallet_address")
    assert refused.json()["error"]["details"] == {"walletAddress": world.receiver["id"]}
    assert (await world.operator.get(f"/grants/{grant_id(pending)}")).json()["state"] == "pending"
    assert (await cont(world.client, pending)).status_code != 200, "no token for a grant not approved"
    assert (await world.operator.patch(f"/wallet-addresses/{path}", {"active": True})).status_code == 200
    approved = await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})
    assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text
