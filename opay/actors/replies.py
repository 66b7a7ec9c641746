"""Turning domain refusals into replies, in one place."""

from __future__ import annotations

from opay.actors.messages import Failed
from opay.domain.errors import DomainError


def failed(error: DomainError) -> Failed:
    return Failed(error.kind, error.code, error.description, error.details)


def not_found(what: str) -> Failed:
    return Failed("not_found", "not_found", f"no such {what}")
