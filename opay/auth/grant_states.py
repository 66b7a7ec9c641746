"""The grant state machine: pure transitions on the Grant structs, no I/O.

An interactive grant goes pending -> approved | denied -> finalized (tokens issued); a
non-interactive one is finalized at once. Each transition here takes a grant and returns
the grant it becomes (or refuses); the store (opay/auth/grants.py) reads, applies one
transition and writes it back as one compare-and-set. Also here: the interaction hash
and the finish redirect the user is sent back to the client with.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec

from opay import base64url
from opay.auth.access import AccessItem
from opay.persistence.wallet_addresses import Jwk


class ClientRef(msgspec.Struct, frozen=True, omit_defaults=True):
    """A client is its wallet address, or (directed identity) just its key."""

    walletAddress: str | None = None
    jwk: Jwk | None = None

    @property
    def identity(self) -> str:
        if self.walletAddress is not None:
            return self.walletAddress
        assert self.jwk is not None
        return f"jwk:{jwk_thumbprint(self.jwk)}"


class Finish(msgspec.Struct, frozen=True):
    """The client's `interact.finish`: where to send the user back, and its nonce."""

    method: Literal["redirect"]
    uri: str
    nonce: str


GrantState = Literal["pending", "approved", "denied", "finalized"]


class Interaction(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    nonce: str  # in the consent page's URL: whoever holds it may see and decide the grant
    finish_nonce: str  # the AS nonce (`interact.finish` of the response), an input of the hash
    finish: Finish | None = None
    wait_seconds: int
    next_poll_ms: int  # a poll before this instant is `too_fast`
    expires_at_ms: int
    interact_ref: str | None = None  # set on approval
    decided_at_ms: int | None = None


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    client: ClientRef
    access: list[AccessItem]
    continue_token_digest: str
    created_at_ms: int
    # Grants stored before interaction existed decode as finalized, non-interactive.
    state: GrantState = "finalized"
    interaction: Interaction | None = None


class Token(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    grant_id: str
    client: ClientRef
    access: list[AccessItem]
    expires_at_ms: int


class Introspection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The token-introspection contract: {active, grant, access, client}."""

    active: bool
    grant: str | None = None
    access: list[AccessItem] = []
    client: ClientRef | None = None


INACTIVE = Introspection(active=False)

WAIT_SECONDS = 1
POLL_SLACK_MS = 100  # a poll this early is forgiven: timers are coarse
INTERACTION_SECONDS = 600


class ContinuationRefused(Exception):
    """A continuation request that cannot proceed, by its GNAP error code:
    `invalid_continuation`, `request_denied` or `too_fast`."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def unknown_continuation() -> ContinuationRefused:
    return ContinuationRefused("invalid_continuation", "unknown grant or continuation token")


class Continued(msgspec.Struct, frozen=True, kw_only=True):
    """A continuation's outcome: still pending, or finalized with its first token."""

    grant: Grant
    token_value: str | None = None
    token: Token | None = None
    continue_token: str | None = None


class Decided(msgspec.Struct, frozen=True):
    """The grant after a decision; `changed` is False when an earlier decision stood."""

    grant: Grant
    changed: bool


def digest(secret_value: str) -> str:
    return hashlib.sha256(secret_value.encode()).hexdigest()


def jwk_thumbprint(jwk: Jwk) -> str:
    # RFC 7638 for OKP keys: the required members, lexicographic, no whitespace.
    canonical = msgspec.json.encode({"crv": jwk.crv, "kty": jwk.kty, "x": jwk.x})
    return hashlib.sha256(canonical).hexdigest()[:32]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def interaction_hash(client_nonce: str, finish_nonce: str, interact_ref: str, grant_endpoint: str) -> str:
    """GNAP (RFC 9635 §4.2.3): SHA-256 over the four values joined by LF, encoded as
    base64url without padding. (Rafiki sends standard base64 with padding instead.)"""
    data = "\n".join((client_nonce, finish_nonce, interact_ref, grant_endpoint)).encode()
    return base64url.encode(hashlib.sha256(data).digest())


def with_query(uri: str, params: dict[str, str]) -> str:
    """`uri` with `params` appended to its query (after any query it already has)."""
    parts = urlsplit(uri)
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def finish_redirect(grant: Grant, grant_endpoint: str) -> str | None:
    """Where the user goes back to the client after the decision, if the client said."""
    interaction = grant.interaction
    if interaction is None or interaction.finish is None:
        return None
    if grant.state == "denied":
        return with_query(interaction.finish.uri, {"result": "grant_rejected"})
    if interaction.interact_ref is None:
        return None
    hash_ = interaction_hash(interaction.finish.nonce, interaction.finish_nonce, interaction.interact_ref, grant_endpoint)
    return with_query(interaction.finish.uri, {"hash": hash_, "interact_ref": interaction.interact_ref})


def continue_token_matches(grant: Grant, continue_token: str) -> bool:
    return secrets.compare_digest(grant.continue_token_digest, digest(continue_token))


def nonce_matches(grant: Grant, nonce: str) -> bool:
    """Whether `nonce` is the one in this interactive grant's consent page URL."""
    return grant.interaction is not None and secrets.compare_digest(grant.interaction.nonce.encode(), nonce.encode())


def issued(grant_id: str, client: ClientRef, access: list[AccessItem], continue_token: str, now_ms: int) -> Grant:
    """A non-interactive grant: finalized from the start."""
    return Grant(id=grant_id, client=client, access=access, continue_token_digest=digest(continue_token), created_at_ms=now_ms)


def pending(
    grant_id: str,
    client: ClientRef,
    access: list[AccessItem],
    finish: Finish | None,
    continue_token: str,
    now_ms: int,
    *,
    wait_seconds: int,
    interaction_seconds: int,
) -> Grant:
    """An interactive grant awaiting the user's decision."""
    interaction = Interaction(
        nonce=new_secret(),
        finish_nonce=new_secret(),
        finish=finish,
        wait_seconds=wait_seconds,
        next_poll_ms=now_ms + wait_seconds * 1000,
        expires_at_ms=now_ms + interaction_seconds * 1000,
    )
    return Grant(
        id=grant_id,
        client=client,
        access=access,
        continue_token_digest=digest(continue_token),
        created_at_ms=now_ms,
        state="pending",
        interaction=interaction,
    )


def new_token(token_id: str, grant: Grant, now_ms: int, token_seconds: int) -> Token:
    return Token(id=token_id, grant_id=grant.id, client=grant.client, access=grant.access, expires_at_ms=now_ms + token_seconds * 1000)


def decided(grant: Grant, approve: bool, now_ms: int, interact_ref: str, nonce: str | None = None) -> Decided | None:
    """pending -> approved (with `interact_ref`) | denied; the first decision stands
    (changed=False). None: given a nonce, not this grant's."""
    interaction = grant.interaction
    if nonce is not None and not nonce_matches(grant, nonce):
        return None
    if grant.state != "pending" or interaction is None:
        return Decided(grant, changed=False)
    return Decided(
        msgspec.structs.replace(
            grant,
            state="approved" if approve else "denied",
            interaction=msgspec.structs.replace(interaction, interact_ref=interact_ref if approve else None, decided_at_ms=now_ms),
        ),
        changed=True,
    )


def continued(grant: Grant, continue_token: str, interact_ref: str | None, now_ms: int) -> Grant | None:
    """A continuation request on `grant`: with interact_ref after the finish redirect, or
    without (a poll). Returns the polled grant (still pending, its next poll moved on), or
    None when the grant is approved and is to be finalized now. Refusals raise
    ContinuationRefused."""
    if not continue_token_matches(grant, continue_token):
        raise unknown_continuation()
    interaction = grant.interaction
    if grant.state == "finalized" or interaction is None:
        raise ContinuationRefused("invalid_continuation", "the grant is already finalized: there is nothing to continue")
    if grant.state == "denied":
        raise ContinuationRefused("request_denied", "the grant was denied")
    if interact_ref is not None:
        expected = interaction.interact_ref
        if expected is None or not secrets.compare_digest(expected.encode(), interact_ref.encode()):
            raise ContinuationRefused("invalid_continuation", "interact_ref does not match this grant's interaction")
    elif grant.state == "pending":
        # Only a poll that could learn nothing new is too fast: once the
        # grant is decided, the next poll gets the answer at once.
        if now_ms < interaction.next_poll_ms - POLL_SLACK_MS:
            raise ContinuationRefused("too_fast", f"poll at most every {interaction.wait_seconds} s (the continue response's wait)")
        return msgspec.structs.replace(
            grant, interaction=msgspec.structs.replace(interaction, next_poll_ms=now_ms + interaction.wait_seconds * 1000)
        )
    return None


def finalized(grant: Grant, continue_token: str) -> Grant:
    """approved -> finalized: its first token is issued with it, and a new continue token."""
    return msgspec.structs.replace(grant, state="finalized", continue_token_digest=digest(continue_token))
