"""The operator's lists of things that come and go (grants, webhook events): first/last and
a cursor as the public lists take them, the cursor being a position (opay/persistence/
positions.py) rather than an item's id, so it still holds once its item is gone."""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from opay.http.errors import ApiError
from opay.http.pagination import PageInfo, _count
from opay.persistence.positions import Collected, Position, parse_cursor


class ListQuery(msgspec.Struct, frozen=True):
    direction: str
    count: int
    cursor: Position | None


def parse_list_query(request: Request, default_count: int) -> ListQuery:
    params = request.query_params
    if "first" in params and "last" in params:
        raise ApiError(400, "invalid_request", "give first or last, not both")
    raw = params.get("cursor")
    cursor = None if raw is None else parse_cursor(raw)
    if raw is not None and cursor is None:
        raise ApiError(400, "invalid_cursor", "cursor must be a startCursor or endCursor of this list")
    if "last" in params:
        return ListQuery("last", _count(params["last"], "last"), cursor)
    return ListQuery("first", _count(params["first"], "first") if "first" in params else default_count, cursor)


def page_info(collected: Collected) -> PageInfo:
    """Cursors are the bounds of what was read, which a short page (items gone, or filtered
    out) may extend past its items."""
    return PageInfo(
        startCursor=None if collected.first is None else collected.first.cursor(),
        endCursor=None if collected.last is None else collected.last.cursor(),
        hasNextPage=collected.has_next,
        hasPreviousPage=collected.has_previous,
    )
