"""Cursor pagination as the spec states it: wallet-address, first or last (1-100), cursor.

Items come in creation order; a cursor is the id (uuid) of an item on the previous page.
"""

from __future__ import annotations

from typing import Callable

import msgspec
from starlette.requests import Request

from opay.http.errors import ApiError
from opay.http.resources import authenticated
from opay.http.services import services
from opay.persistence import keys
from opay.persistence.queries import CursorNotFound, Queries

PAGE_MAX = 100


class PageInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    startCursor: str | None = None
    endCursor: str | None = None
    hasNextPage: bool
    hasPreviousPage: bool


class Page(msgspec.Struct, frozen=True):
    pagination: PageInfo
    result: list


class PageQuery(msgspec.Struct, frozen=True):
    wallet_address: str
    direction: str
    count: int
    cursor: str | None


def _count(raw: str, name: str) -> int:
    # ASCII digits only: str.isdigit() also takes "¹", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= PAGE_MAX:
        raise ApiError(400, "invalid_request", f"{name} must be an integer from 1 to {PAGE_MAX}")
    return int(raw)


def parse_page_query(request: Request, default_count: int) -> PageQuery:
    params = request.query_params
    wallet_address = params.get("wallet-address")
    if not wallet_address:
        raise ApiError(400, "invalid_request", "the wallet-address query parameter is required")
    if "first" in params and "last" in params:
        raise ApiError(400, "invalid_request", "give first or last, not both")
    cursor = params.get("cursor")
    if cursor is not None and not cursor:
        raise ApiError(400, "invalid_request", "cursor must not be empty")
    if "last" in params:
        return PageQuery(wallet_address, "last", _count(params["last"], "last"), cursor)
    count = _count(params["first"], "first") if "first" in params else default_count
    return PageQuery(wallet_address, "first", count, cursor)


async def page_response(
    queries: Queries,
    index: Callable[[int], str],
    query: PageQuery,
    kind: str,
    view: Callable[[object], object],
    keep: Callable[[object], bool] | None = None,
) -> Page:
    """One page of a list (`index(n)`: its part on shard n) as the spec shapes it; `keep`: only the items it keeps (the
    operator's state filter, see Queries.page for what the page then promises)."""
    try:
        page = await queries.page(index, None if query.cursor is None else f"{kind}:{query.cursor}", query.direction, query.count, keep)
    except CursorNotFound:
        raise ApiError(400, "invalid_cursor", "cursor does not name an item of this list") from None
    pagination = PageInfo(
        startCursor=_cursor(page.start),
        endCursor=_cursor(page.end),
        hasNextPage=page.has_next,
        hasPreviousPage=page.has_previous,
    )
    return Page(pagination, [view(item) for item in page.items])


def _cursor(member: str | None) -> str | None:
    """An index member (an entity id) as a cursor: the resource's own id."""
    return None if member is None else member.partition(":")[2]


async def list_resources(request: Request, resource_type: str, kind: str, view: Callable[[object, str], object]) -> Page:
    """A page of a wallet address's resources of one kind: the caller's own, or all with list-all."""
    s = services(request)
    caller = await authenticated(request, s, b"")
    query = parse_page_query(request, s.settings.list_page_default)
    principal = caller.require(resource_type, "list", query.wallet_address)
    client = principal.scope_client
    return await page_response(s.queries, lambda shard: keys.index(kind, shard, query.wallet_address, client), query, kind, lambda item: view(item, s.settings.public_url))
