"""Rule violations, named by a machine code. Adapters map the kind to a transport status."""

from __future__ import annotations


class DomainError(Exception):
    kind = "invalid"

    def __init__(self, code: str, description: str, details: dict | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.details = details or {}


class Invalid(DomainError):
    """The input breaks a rule: nothing was changed."""

    kind = "invalid"


class Conflict(DomainError):
    """The input is well formed but the resource's state refuses it."""

    kind = "conflict"


class NotFound(DomainError):
    kind = "not_found"


class Forbidden(DomainError):
    """The grant behind the request does not allow this (e.g. its limits are spent)."""

    kind = "forbidden"


class Unprocessable(DomainError):
    """Well formed, but cannot be processed as sent (e.g. an idempotency key reused for another request)."""

    kind = "unprocessable"
