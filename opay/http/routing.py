"""Starlette's routing, with what opay's answers need of it: path convertors for ids and
a Mount that takes only the paths its routes take.

- `{name:any}`: any text, slashes and newlines included (Starlette's `path` stops at a
  newline). An id in a path, whatever it holds, reaches its route, which authenticates
  before it judges the id.
- `{name:canonical_uuid}`: a UUID as this server writes them (lowercase, hyphenated).
  A route with it comes before the same route with `{name:any}`, which takes every
  other id to the same handler: a malformed id is judged only after authentication.
  Building a URL with it refuses anything else.
- `Prefix`: a `Mount` whose rest of path may hold anything (newlines too), and which
  matches only where one of its routes matches, FULL or PARTIAL, as a flat list of
  routes would. So a path under a prefix that none of its routes takes still falls to
  the app's later routes (the wallet addresses' catch-all), a bare `/grants` is not
  redirected to `/grants/`, and a method its routes do not take is still a 405.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute, Match, Mount, Route, compile_path
from starlette.types import Scope


class AnyText(Convertor):
    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class CanonicalUuid(Convertor):
    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    _exactly = re.compile(regex)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        if self._exactly.fullmatch(value) is None:
            raise ValueError(f"not a canonical UUID: {value!r}")
        return value


register_url_convertor("any", AnyText())
register_url_convertor("canonical_uuid", CanonicalUuid())


class Prefix(Mount):
    def __init__(self, path: str, routes: Sequence[BaseRoute], name: str | None = None) -> None:
        super().__init__(path, routes=routes, name=name)
        self.path_regex, self.path_format, self.param_convertors = compile_path(self.path + "/{path:any}")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.NONE:
            return match, child_scope
        inner = {**scope, **child_scope}
        best = Match.NONE
        for route in self.routes:
            found, _ = route.matches(inner)
            if found is Match.FULL:
                return Match.FULL, child_scope
            if found is Match.PARTIAL:
                best = Match.PARTIAL
        return (best, child_scope) if best is Match.PARTIAL else (Match.NONE, {})


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope, skip: Iterable[object] = ()) -> set[str]:
    """The methods of the routes, mounted ones included, that take this path but not this
    method; routes whose endpoint is in `skip` do not count."""
    skipped = set(skip)
    allowed: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            match, child_scope = route.matches(scope)
            if match is not Match.NONE:
                allowed |= allowed_methods(route.routes, {**scope, **child_scope}, skipped)
        elif isinstance(route, Route) and route.endpoint not in skipped and route.matches(scope)[0] is Match.PARTIAL:
            allowed |= route.methods or set()
    return allowed
