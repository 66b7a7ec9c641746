"""Whether a wallet address of this server takes anything new: grants and payments.

Decided from Redis at every create and every grant request, never from a front end's
wallet cache (Services.wallet): a deactivation holds on every front end as soon as the
operator's PATCH has answered. A deactivated wallet address's payments already made keep
settling; only new ones are refused: 400 `inactive_wallet_address`, as Rafiki answers.
"""

from __future__ import annotations

from opay.auth.grant_states import Grant
from opay.http.errors import ApiError
from opay.http.services import Services
from opay.persistence.wallet_addresses import WalletAddress

INACTIVE = "inactive_wallet_address"


async def local_wallet(s: Services, url: str) -> WalletAddress | None:
    """The wallet address of this server `url` names, as Redis holds it now; None for any other URL."""
    path = s.wallet_path(url)
    return None if path is None else await s.wallets.get(path)


async def known_wallet(s: Services, url: str) -> WalletAddress:
    """The walletAddress of a create: one of this server's (400 unknown_wallet_address)."""
    wallet = await local_wallet(s, url)
    if wallet is None:
        raise ApiError(400, "unknown_wallet_address", "walletAddress is not a wallet address of this server")
    return wallet


def require_active(wallet: WalletAddress, url: str) -> None:
    if not wallet.active:
        raise ApiError(
            400, INACTIVE, "the wallet address is deactivated: it takes no new payments", {"walletAddress": url}
        )


async def active_wallet(s: Services, url: str) -> WalletAddress:
    """The walletAddress of a create that makes something new: known, and active."""
    wallet = await known_wallet(s, url)
    require_active(wallet, url)
    return wallet


async def deactivated_in(s: Services, grant: Grant) -> str | None:
    """The first wallet address of this server the grant names (its client's, its access
    items') that is deactivated now, else None. A grant asked for before a deactivation
    is approved after it only as a new request would be: not at all."""
    for url in dict.fromkeys([grant.client.walletAddress, *(item.identifier for item in grant.access)]):
        wallet = None if url is None else await local_wallet(s, url)
        if wallet is not None and not wallet.active:
            return url
    return None
