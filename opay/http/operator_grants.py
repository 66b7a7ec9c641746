"""The operator's grants: list them per client or per wallet address, read one, revoke one.

`POST /grants/{id}/revoke` (beside approve and deny, the other things the ASE does to a
grant, rather than `DELETE /grants/{id}`): it ends a client's authorization, every token
issued under it with it, and answers what it ended. The grant and its tokens go in one
compare-and-set, as a client's own cancel does (opay/auth/grants.py), and every process's
introspection cache drops the tokens at once: from the answer on, they are inactive.
"""

from __future__ import annotations

from typing import get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.auth.access import AccessItem
from opay.auth.grant_states import ClientRef, Grant, GrantState
from opay.domain.times import format_ms
from opay.http.errors import ApiError
from opay.http.operator import _operator
from opay.http.operator_pages import page_info, parse_list_query
from opay.http.pagination import PageInfo
from opay.http.resources import canonical_uuid, json
from opay.http.routing import Prefix
from opay.http.wire import URL_MAX
from opay.persistence import keys

STATES = get_args(GrantState)


class GrantView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """A grant as the operator sees it: never its continue token or consent nonce."""

    id: str
    state: GrantState
    client: ClientRef
    access: list[AccessItem]
    created_at: str
    # An interactive grant not yet finalized: when it lapses undecided or unclaimed.
    expires_at: str | None = None
    decided_at: str | None = None


class GrantList(msgspec.Struct, frozen=True):
    pagination: PageInfo
    result: list[GrantView]


class RevokedGrant(msgspec.Struct, frozen=True, rename="camel"):
    grant: GrantView
    revoked_tokens: int


def view(grant: Grant) -> GrantView:
    interaction = grant.interaction
    return GrantView(
        id=grant.id,
        state=grant.state,
        client=grant.client,
        access=grant.access,
        created_at=format_ms(grant.created_at_ms),
        expires_at=None if interaction is None or grant.state == "finalized" else format_ms(interaction.expires_at_ms),
        decided_at=None if interaction is None or interaction.decided_at_ms is None else format_ms(interaction.decided_at_ms),
    )


def _index(request: Request) -> str:
    """?client=<wallet address URL, or jwk:<thumbprint>> or ?wallet-address=<URL>, one of them."""
    params = request.query_params
    client, wallet = params.get("client"), params.get("wallet-address")
    if (client is None) == (wallet is None):
        raise ApiError(400, "invalid_request", "give one of client (its wallet address URL) or wallet-address")
    value = client if client is not None else wallet
    assert value is not None
    if not value or len(value) > URL_MAX:
        raise ApiError(400, "invalid_request", f"client and wallet-address are 1 to {URL_MAX} characters")
    return keys.grants_of_client(value) if client is not None else keys.grants_of_wallet(value)


def _grant_id(request: Request) -> str:
    found = canonical_uuid(request.path_params["grant_id"])
    if found is None:
        raise ApiError(404, "not_found", "no such grant")
    return found


async def list_grants(request: Request) -> Response:
    """Creation order; `state` keeps one state. Grants stored before the indexes are in none."""
    s = _operator(request)
    index = _index(request)
    state = request.query_params.get("state")
    if state is not None and state not in STATES:
        raise ApiError(400, "invalid_request", f"state must be one of {', '.join(STATES)}")
    query = parse_list_query(request, s.settings.list_page_default)
    page = await s.grants.listed(index, query.cursor, query.direction, query.count, state)
    return json(200, GrantList(page_info(page), [view(grant) for grant in page.items]))


async def get_grant(request: Request) -> Response:
    s = _operator(request)
    grant = await s.grants.get(_grant_id(request))
    if grant is None:
        raise ApiError(404, "not_found", "no such grant")
    return json(200, view(grant))


async def revoke_grant(request: Request) -> Response:
    s = _operator(request)
    ended = await s.grants.revoke_grant(_grant_id(request))
    if ended is None:
        raise ApiError(404, "not_found", "no such grant")
    grant, tokens = ended
    return json(200, RevokedGrant(view(grant), tokens))


ROUTES = [
    Route("/grants", list_grants, methods=["GET"], name="grants"),
    Prefix(
        "/grants",
        name="grant-admin",
        routes=[
            Route("/{grant_id}", get_grant, methods=["GET"], name="get"),
            Route("/{grant_id}/revoke", revoke_grant, methods=["POST"], name="revoke"),
        ],
    ),
]
