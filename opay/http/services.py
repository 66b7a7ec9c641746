"""What the HTTP handlers share: settings, the shard router, stores, caches."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

import redis
from starlette.requests import Request

from opay.actors.messages import Command, Failed
from opay.actors.router import ShardRouter
from opay.auth.client_keys import ClientKeys
from opay.auth.grants import GrantStore
from opay.auth.introspection import Introspector
from opay.http import urls
from opay.http.errors import ApiError
from opay.ilp.credentials import CredentialMint
from opay.ilp.peers import PeerStore
from opay.outbox.admin import WebhookEvents
from opay.persistence.queries import Queries
from opay.persistence.wallet_addresses import WalletAddress, WalletAddressStore
from opay.pricing import Pricing
from opay.settings import Settings

if TYPE_CHECKING:
    from opay.remote.probe import RateProber
    from opay.remote.receivers import RemoteReceivers

R = TypeVar("R")

WALLET_CACHE_SECONDS = 5.0


class Services:
    def __init__(
        self,
        *,
        settings: Settings,
        router: ShardRouter,
        queries: Queries,
        wallets: WalletAddressStore,
        grants: GrantStore,
        introspector: Introspector,
        client_keys: ClientKeys,
        mint: CredentialMint,
        pricing: Pricing,
        peers: PeerStore,
        webhook_events: WebhookEvents,
        remote_receivers: "RemoteReceivers | None" = None,
        prober: "RateProber | None" = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.queries = queries
        self.wallets = wallets
        self.grants = grants
        self.introspector = introspector
        self.client_keys = client_keys
        self.mint = mint
        self.pricing = pricing
        self.peers = peers  # ILP peers (opay/ilp/peers.py)
        self.webhook_events = webhook_events  # the operator's view of the outbox
        # Receivers on other servers (opay/remote/receivers.py) and the rate probe of the
        # path to them through a peer (opay/remote/probe.py); None: such receivers are refused.
        self.remote_receivers = remote_receivers
        self.prober = prober
        # path -> (wallet, monotonic time read). A wallet's asset never changes; its public
        # name and owner may (PATCH on the operator API, possibly served by another
        # process), so a hit is kept briefly and decisions on the owner read Redis instead.
        self._wallet_cache: dict[str, tuple[WalletAddress, float]] = {}

    def wallet_url(self, path: str) -> str:
        return urls.wallet_address(self.settings.public_url, path)

    def wallet_path(self, url: str) -> str | None:
        return urls.wallet_path(self.settings.public_url, url)

    async def wallet(self, path: str) -> WalletAddress | None:
        """The wallet address, from a cache at most WALLET_CACHE_SECONDS old: fit for its
        asset and for display, not for deciding who owns it (use self.wallets.get)."""
        hit = self._wallet_cache.get(path)
        if hit is not None and time.monotonic() - hit[1] < WALLET_CACHE_SECONDS:
            return hit[0]
        found = await self.wallets.get(path)
        if found is not None:
            if len(self._wallet_cache) > 100_000:
                self._wallet_cache.clear()
            self._wallet_cache[path] = (found, time.monotonic())
        return found

    def forget_wallet(self, path: str) -> None:
        """After an edit: this process sees it at once, others within WALLET_CACHE_SECONDS."""
        self._wallet_cache.pop(path, None)

    async def wallet_by_url(self, url: str) -> WalletAddress | None:
        path = self.wallet_path(url)
        return None if path is None else await self.wallet(path)

    async def ask(self, command: Command, *, expect: type[R], idempotent: bool = False) -> R:
        """A command's reply, of the type `expect`; a refusal becomes the matching API
        error. An idempotent command (keyed: it lands at most once) whose outcome is
        unknown is asked once more (ShardRouter.ask_until_known) before the caller hears 503."""
        reply = await (self.router.ask_until_known(command) if idempotent else self.router.ask(command))
        if isinstance(reply, Failed):
            raise ApiError.of(reply.kind, reply.code, reply.description, reply.details)
        return expected(command, reply, expect)


def expected(command: Command, reply: object, expect: type[R]) -> R:
    """`reply` if it is an `expect`; any other answer is a server fault, said as one (500),
    never passed on as if it were the one expected. An explicit check, not an assert:
    it must hold under `python -O` too."""
    if not isinstance(reply, expect):
        raise ApiError(
            500,
            "unexpected_reply",
            f"{type(command).__name__} was answered by {type(reply).__name__}, not {expect.__name__}; nothing was acknowledged",
        )
    return reply


def services(request: Request) -> Services:
    return request.app.state.services


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
    return body


REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
