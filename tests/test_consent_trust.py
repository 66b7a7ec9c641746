"""The trust boundary of consent (issue 7, items 1 and 6): a client never decides its own grant.

The built-in page decides only for the wallet address's owner as the ASE's login proxy
names them (OPAY_CONSENT_USER_HEADER; the session server sets it, as a proxy would);
on defaults it only informs. OPAY_CONSENT_URL hands the user to the ASE's own app. The
operator API always decides. Enumerating another client's resources (list-all) needs
such consent and an identifier; reading one by its URL (read-all) does not.
Everything runs against real servers; the "login proxy" is the header a test sends.
"""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opay.auth.consent import may_decide
from opay.client import SignedClient, public_jwk
from opay.http.consent import consent_app_url
from opay.settings import from_environment
from tests.conftest import make_world
from tests.support import CONSENT_USER_HEADER, OpayServer
from tests.test_bad_input import assert_error

pytestmark = pytest.mark.anyio

CONSENT_APP = "https://consent.example/approve?tenant=t1"


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory):
    """A server on opay's defaults: no login header, no consent app."""
    process = OpayServer(Path(tmp_path_factory.mktemp("defaults")), extra_env={"OPAY_CONSENT_USER_HEADER": ""})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def consent_app_server(tmp_path_factory: pytest.TempPathFactory):
    """The ASE's own consent app decides; the login header is set too, and changes nothing."""
    process = OpayServer(Path(tmp_path_factory.mktemp("consent-app")), extra_env={"OPAY_CONSENT_URL": CONSENT_APP})
    process.start()
    yield process
    process.stop()


def as_user(user: str) -> dict[str, str]:
    return {CONSENT_USER_HEADER: user}


def outgoing_item(wallet: dict) -> dict:
    return {"type": "outgoing-payment", "actions": ["create", "read"], "identifier": wallet["id"]}


async def start(world, access: list[dict], client: SignedClient | None = None) -> dict:
    client = client or world.client
    body = {"access_token": {"access": access}, "client": client.wallet_address, "interact": {"start": ["redirect"]}}
    response = await client.request("POST", world.receiver["authServer"], json=body)
    assert response.status_code == 200, response.text
    return response.json()


def grant_id(pending: dict) -> str:
    return pending["continue"]["uri"].rsplit("/", 1)[1]


async def poll(world, pending: dict, client: SignedClient | None = None) -> httpx.Response:
    """A continuation without interact_ref, after the wait the server asked for."""
    await anyio.sleep(pending["continue"]["wait"] + 0.05)
    return await (client or world.client).request("POST", pending["continue"]["uri"], token=pending["continue"]["access_token"]["value"])


async def assert_still_pending(world, pending: dict, client: SignedClient | None = None) -> None:
    polled = await poll(world, pending, client)
    assert polled.status_code == 200, polled.text
    assert set(polled.json()) == {"continue"}, polled.json()  # no access_token


async def assert_page_refuses(world, redirect: str, headers) -> None:
    for decision in ("/approve", "/deny"):
        refused = await world.http.post(redirect + decision, headers=headers, follow_redirects=False)
        assert refused.status_code == 403, (headers, refused.status_code, refused.text)
        assert refused.headers["content-type"].startswith("text/html")


async def assert_page_informs(world, redirect: str, headers) -> None:
    page = await world.http.get(redirect, headers=headers)
    assert page.status_code == 200, page.text
    assert "provider will decide" in page.text
    assert "<form" not in page.text and "/approve" not in page.text and "/deny" not in page.text


async def wallet_of(world, owner: str | None, public_name: str | None = None) -> dict:
    return await world.operator.wallet_address(f"w-{uuid.uuid4().hex[:10]}", "USD", 2, public_name, owner=owner)


async def patch(world, wallet: dict, body: dict) -> httpx.Response:
    path = wallet["id"].rsplit("/", 1)[1]
    return await world.http.patch(f"{world.server.operator_url}/wallet-addresses/{path}", json=body, headers=world.server.operator_headers)


# --- the rule, as a pure function ---------------------------------------------------------


def test_who_may_decide() -> None:
    assert may_decide(b"alice", ["alice"]) and may_decide(b"alice", ["alice", "alice"])
    assert not may_decide(None, ["alice"]) and not may_decide(b"", ["alice"])
    assert not may_decide(b"bob", ["alice"]) and not may_decide(b"alic", ["alice"]) and not may_decide(b"alice ", ["alice"])
    assert not may_decide(b"alice", [None]) and not may_decide(b"alice", ["alice", None]) and not may_decide(b"alice", ["alice", "bob"])
    # Naming no wallet address (only what a non-interactive grant gets): any logged-in user, nobody else.
    assert may_decide(b"anyone", []) and not may_decide(None, [])
    assert may_decide("zoë".encode(), ["zoë"])


def test_consent_app_url_joins_the_query() -> None:
    assert consent_app_url("https://c.example/consent", "g-1", "n 2") == "https://c.example/consent?grantId=g-1&nonce=n+2"
    assert consent_app_url(CONSENT_APP, "g", "n") == "https://consent.example/approve?tenant=t1&grantId=g&nonce=n"


def test_the_old_setting_cannot_silently_mean_less() -> None:
    with pytest.raises(ValueError, match="OPAY_CONSENT_PAGE_DECIDES"):
        from_environment({"OPAY_CONSENT_PAGE_DECIDES": "true"})
    settings = from_environment({"OPAY_CONSENT_PAGE_DECIDES": "false"})
    assert (settings.consent_user_header, settings.consent_url) == ("", "")
    with pytest.raises(ValueError, match="OPAY_CONSENT_URL"):
        from_environment({"OPAY_CONSENT_URL": "javascript:alert(1)"})


# --- defaults: the page only informs ------------------------------------------------------


async def test_on_defaults_a_client_approving_its_own_page_gets_403_and_no_token(default_server) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        world = await make_world(default_server, http)
        pending = await start(world, [outgoing_item(world.receiver)])
        redirect = pending["interact"]["redirect"]
        assert redirect.startswith(f"{world.receiver['authServer']}/interact/{grant_id(pending)}/")
        # The client holds the link, and even a header naming the owner is no login here.
        for headers in ({}, world.owner_headers, as_user("anyone")):
            await assert_page_informs(world, redirect, headers)
            await assert_page_refuses(world, redirect, headers)
        await assert_still_pending(world, pending)
        # The operator API always decides.
        approved = await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})
        assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text
        done = await poll(world, pending)
        assert done.status_code == 200 and done.json()["access_token"]["access"] == [outgoing_item(world.receiver)], done.text


# --- behind a login: the owner decides ---------------------------------------------------


async def test_the_page_decides_only_for_the_wallet_s_owner(world) -> None:
    pending = await start(world, [outgoing_item(world.receiver)])
    redirect = pending["interact"]["redirect"]
    owner = world.receiver["owner"]
    strangers = [
        {},  # not logged in
        as_user(""),
        as_user("someone-else"),
        as_user(owner + "x"),
        as_user(owner.upper()),
        [(CONSENT_USER_HEADER, owner), (CONSENT_USER_HEADER, owner)],  # repeated: ambiguous
    ]
    for headers in strangers:
        await assert_page_informs(world, redirect, headers)
        await assert_page_refuses(world, redirect, headers)
    # The owner's browser, on a form another site planted (the login cookie rides along).
    await assert_page_refuses(world, redirect, {**world.owner_headers, "origin": "https://client.example"})
    await assert_still_pending(world, pending)

    page = await world.http.get(redirect, headers=world.owner_headers)
    assert f'action="{redirect}/approve"' in page.text and f'action="{redirect}/deny"' in page.text
    approved = await world.http.post(redirect + "/approve", headers={**world.owner_headers, "origin": world.server.public_url})
    assert approved.status_code == 200 and "Approved" in approved.text, approved.text
    done = await poll(world, pending)
    assert done.status_code == 200 and "access_token" in done.json(), done.text


async def test_a_wallet_without_an_owner_cannot_be_decided_on_the_page(world) -> None:
    ownerless = await wallet_of(world, owner=None)
    assert "owner" not in ownerless
    pending = await start(world, [outgoing_item(ownerless)])
    redirect = pending["interact"]["redirect"]
    for headers in (world.owner_headers, as_user("None"), as_user("null")):
        await assert_page_informs(world, redirect, headers)
        await assert_page_refuses(world, redirect, headers)
    await assert_still_pending(world, pending)
    assert (await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})).status_code == 200


async def test_a_grant_on_two_wallets_needs_their_one_owner(world) -> None:
    theirs = await wallet_of(world, owner="mallory")
    pending = await start(world, [outgoing_item(world.receiver), outgoing_item(theirs)])
    for headers in (world.owner_headers, as_user("mallory")):
        await assert_page_refuses(world, pending["interact"]["redirect"], headers)
    await assert_still_pending(world, pending)
    mine = await wallet_of(world, owner=world.receiver["owner"])
    both = await start(world, [outgoing_item(world.receiver), outgoing_item(mine)])
    assert (await world.http.post(both["interact"]["redirect"] + "/approve", headers=world.owner_headers)).status_code == 200


async def test_patching_the_owner_moves_who_may_decide_at_once(world) -> None:
    wallet = await wallet_of(world, owner="first-owner", public_name="Before")
    assert wallet["owner"] == "first-owner"
    pending = await start(world, [outgoing_item(wallet)])
    redirect = pending["interact"]["redirect"]
    assert "Before" in (await world.http.get(redirect, headers=as_user("first-owner"))).text  # and the cache holds it

    patched = await patch(world, wallet, {"owner": "second-owner", "publicName": "After"})
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**wallet, "owner": "second-owner", "publicName": "After"}
    await assert_page_refuses(world, redirect, as_user("first-owner"))
    page = await world.http.get(redirect, headers=as_user("second-owner"))
    assert "After" in page.text and "/approve" in page.text
    public = (await world.http.get(wallet["id"])).json()
    assert public["publicName"] == "After" and "owner" not in public
    listed = (await world.http.get(world.server.operator_url + "/wallet-addresses", headers=world.server.operator_headers)).json()
    assert {"owner": "second-owner", "publicName": "After"}.items() <= next(w for w in listed["result"] if w["id"] == wallet["id"]).items()

    # Absent fields stay; null clears: without an owner nobody decides on the page.
    assert (await patch(world, wallet, {})).json()["owner"] == "second-owner"
    cleared = await patch(world, wallet, {"owner": None})
    assert cleared.status_code == 200 and "owner" not in cleared.json() and cleared.json()["publicName"] == "After"
    await assert_page_refuses(world, redirect, as_user("second-owner"))
    assert (await patch(world, wallet, {"owner": "third"})).status_code == 200
    assert (await world.http.post(redirect + "/approve", headers=as_user("third"))).status_code == 200


async def test_concurrent_patches_of_different_fields_both_stand(world) -> None:
    wallet = await wallet_of(world, owner="o-0", public_name="n-0")
    async with anyio.create_task_group() as group:
        for i in range(1, 6):
            group.start_soon(patch, world, wallet, {"owner": f"o-{i}"})
            group.start_soon(patch, world, wallet, {"publicName": f"n-{i}"})
    final = (await patch(world, wallet, {})).json()
    assert final["owner"] != "o-0" and final["publicName"] != "n-0", final


@pytest.mark.parametrize(
    "body",
    [{"owner": ""}, {"owner": " padded"}, {"owner": "padded "}, {"owner": "a\nb"}, {"owner": "x" * 257}, {"owner": 7}, {"assetCode": "EUR"}],
    ids=["empty", "leading-space", "trailing-space", "newline", "too-long", "not-a-string", "asset"],
)
async def test_bad_owner_edits_are_400_and_change_nothing(world, body) -> None:
    assert_error(await patch(world, world.receiver, body), 400)
    if "owner" in body:
        created = await world.operator.post("/wallet-addresses", {"path": f"b-{uuid.uuid4().hex[:8]}", "assetCode": "USD", "assetScale": 2, **body})
        assert created.status_code == 400, created.text
    assert (await patch(world, world.receiver, {})).json()["owner"] == world.receiver["owner"]


async def test_patching_needs_the_operator_and_a_wallet(world) -> None:
    path = world.receiver["id"].rsplit("/", 1)[1]
    url = f"{world.server.operator_url}/wallet-addresses/{path}"
    assert (await world.http.patch(url, json={"owner": "me"})).status_code == 401
    assert (await world.http.patch(url, json={"owner": "me"}, headers={"authorization": "Bearer wrong"})).status_code == 401
    assert_error(await patch(world, {"id": "x/nobody-here"}, {"owner": "me"}), 404, "not_found")


# --- the ASE's own consent app ------------------------------------------------------------


async def test_consent_url_sends_the_user_to_the_ase_s_app_and_the_page_never_decides(consent_app_server) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        world = await make_world(consent_app_server, http)
        pending = await start(world, [outgoing_item(world.receiver)])
        redirect = pending["interact"]["redirect"]
        parts = urllib.parse.urlsplit(redirect)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://consent.example/approve"
        query = urllib.parse.parse_qs(parts.query)
        assert set(query) == {"tenant", "grantId", "nonce"} and query["tenant"] == ["t1"]
        assert query["grantId"] == [grant_id(pending)]
        # The nonce is the one of opay's own page, which informs but never decides here,
        # not even for the owner behind the login header.
        page = f"{world.receiver['authServer']}/interact/{grant_id(pending)}/{query['nonce'][0]}"
        await assert_page_informs(world, page, world.owner_headers)
        await assert_page_refuses(world, page, world.owner_headers)
        await assert_still_pending(world, pending)
        # The app decides through the operator API.
        approved = await world.operator.post(f"/grants/{grant_id(pending)}/approve", {})
        assert approved.status_code == 200, approved.text
        done = await poll(world, pending)
        assert done.status_code == 200 and "access_token" in done.json(), done.text


# --- item 6: enumeration is consented, reading by URL is not ------------------------------


async def new_payment(world) -> dict:
    created = await world.create_payment(await world.token())
    assert created.status_code == 201, created.text
    return created.json()


def list_url(world, wallet: dict | None = None) -> str:
    return f"{world.server.public_url}/incoming-payments?wallet-address={urllib.parse.quote((wallet or world.receiver)['id'], safe='')}"


async def auditor(world) -> SignedClient:
    wallet = await world.operator.wallet_address(f"auditor-{uuid.uuid4().hex[:10]}")
    key = Ed25519PrivateKey.generate()
    (await world.operator.add_key(wallet["id"].rsplit("/", 1)[1], public_jwk(key, "key-1"))).raise_for_status()
    return SignedClient(world.http, wallet["id"], key, "key-1")


@pytest.mark.parametrize(
    "item",
    [
        {"type": "incoming-payment", "actions": ["list-all"]},
        {"type": "incoming-payment", "actions": ["read-all", "list-all"]},
        {"type": "incoming-payment", "actions": ["list-all"], "identifier": "RECEIVER"},
    ],
    ids=["list-all", "with-read-all", "with-identifier"],
)
async def test_list_all_without_interaction_is_400(world, item) -> None:
    # (Outgoing-payment access of any action already needed both interaction and an identifier.)
    item = {**item, "identifier": world.receiver["id"]} if item.get("identifier") == "RECEIVER" else item
    body = {"access_token": {"access": [item]}, "client": world.client.wallet_address}
    assert_error(await world.client.request("POST", world.receiver["authServer"], json=body), 400, "invalid_request")


async def test_list_all_without_an_identifier_is_400_even_interactive(world) -> None:
    body = {
        "access_token": {"access": [{"type": "incoming-payment", "actions": ["list-all"]}]},
        "client": world.client.wallet_address,
        "interact": {"start": ["redirect"]},
    }
    answer = await world.client.request("POST", world.receiver["authServer"], json=body)
    assert_error(answer, 400, "invalid_request")
    assert "identifier" in answer.json()["error"]["description"]


async def test_an_owner_approved_list_all_lists_other_clients_payments(world) -> None:
    theirs = await new_payment(world)  # world.client's, not the auditor's
    other = await auditor(world)
    item = {"type": "incoming-payment", "actions": ["list-all"], "identifier": world.receiver["id"]}
    pending = await start(world, [item], client=other)
    redirect = pending["interact"]["redirect"]
    await assert_page_refuses(world, redirect, {})  # the auditor cannot consent for the owner
    page = await world.http.get(redirect, headers=world.owner_headers)
    assert "list every payment request of this wallet address, also other apps&#x27;" in page.text
    assert (await world.http.post(redirect + "/approve", headers=world.owner_headers)).status_code == 200
    token = (await poll(world, pending, other)).json()["access_token"]["value"]

    listed = await other.request("GET", list_url(world), token=token)
    assert listed.status_code == 200, listed.text
    assert theirs["id"] in [p["id"] for p in listed.json()["result"]]
    # The consent covers the wallet address it named, no other.
    elsewhere = await wallet_of(world, owner="someone")
    assert_error(await other.request("GET", list_url(world, elsewhere), token=token), 403)


async def test_read_all_by_url_stays_open_without_interaction_and_list_shows_only_own(world) -> None:
    theirs = await new_payment(world)
    other = await auditor(world)
    grant = await other.grant(world.receiver["authServer"], [{"type": "incoming-payment", "actions": ["read-all", "list"]}])
    token = grant["access_token"]["value"]
    read = await other.request("GET", theirs["id"], token=token)
    assert read.status_code == 200 and read.json()["id"] == theirs["id"], read.text
    assert "incomingAmount" in read.json() or "receivedAmount" in read.json()
    listed = await other.request("GET", list_url(world), token=token)
    assert listed.status_code == 200 and listed.json()["result"] == [], listed.text
    # Asking for list-all beside it is what needs consent.
    body = {"access_token": {"access": [{"type": "incoming-payment", "actions": ["read-all", "list-all"]}]}, "client": other.wallet_address}
    assert_error(await other.request("POST", world.receiver["authServer"], json=body), 400, "invalid_request")
