"""Who may decide an interactive grant on the built-in consent page.

The ASE's login proxy names the logged-in user in a header (OPAY_CONSENT_USER_HEADER);
the page's decision counts only when that user owns every wallet address the grant
names. The client that asked never decides: it holds the page URL, not the user's login.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence


def may_decide(user: bytes | None, owners: Sequence[str | None]) -> bool:
    """`user`: the header's value as sent (None: absent, repeated or empty); `owners`: the
    owner of each wallet address the grant's access items name (None: no owner, or no
    such wallet address). Items without an identifier name none: they grant only what a
    non-interactive grant gets (outgoing-payment and list-all need an identifier), so
    any logged-in user may accept them. Constant-time compares, all of them."""
    if not user:
        return False
    allowed = True
    for owner in owners:
        matches = owner is not None and secrets.compare_digest(owner.encode(), user)
        allowed = allowed and matches
    return allowed
