"""Wire the parts together and serve: Redis, Ray shards, the two HTTP servers, timers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from typing import Callable

import httpx
import redis.asyncio as aioredis
import uvicorn

from opay import base64url
from opay.actors import registry
from opay.actors.timers import Timers
from opay.actors.router import ShardRouter, Shards
from opay.auth.client_keys import ClientKeys
from opay.auth.grants import GrantStore
from opay.auth.introspection import Introspector
from opay.console import say
from opay.http.app import operator_app, public_app
from opay.http.services import Services
from opay.ilp.credentials import SECRET_BYTES, CredentialMint
from opay.ilp.links import PacketLinks
from opay.ilp.peers import PeerStore
from opay.net.fetch import Fetcher, FetchPolicy
from opay.outbox import delivery as webhooks
from opay.outbox.admin import WebhookEvents
from opay.persistence import clients, keys
from opay.persistence.clients import ShardClients
from opay.persistence.queries import Queries
from opay.persistence.wallet_addresses import WalletAddressStore
from opay.pricing import Pricing
from opay.remote.identity import ensure_client_identity
from opay.remote.probe import RateProber
from opay.remote.receivers import RemoteReceivers
from opay.settings import Settings
from opay.supervision import supervise

log = logging.getLogger("opay")

# Allocations less deallocations between two young collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        # One process, two servers: signals are handled once, for both, in serve().
        yield


async def stream_secret(client: aioredis.Redis, settings: Settings) -> bytes:
    """OPAY_STREAM_SECRET (base64url), else one generated once and kept in Redis, so every
    front end and every restart mints and opens the same credentials."""
    if settings.stream_secret:
        secret = base64url.decode(settings.stream_secret)
    else:
        await client.set(keys.STREAM_SECRET, os.urandom(SECRET_BYTES), nx=True)
        secret = await client.get(keys.STREAM_SECRET)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the STREAM secret must be {SECRET_BYTES} bytes")
    return secret


async def _forget_revoked(client: aioredis.Redis, introspector: Introspector) -> None:
    while True:
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(keys.REVOCATIONS_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        introspector.forget(message["data"].decode())
        except Exception as error:  # a dropped subscription is retried, never fatal
            log.warning("revocation listener: %s", error)
            await asyncio.sleep(1)


async def serve(
    settings: Settings,
    redis_url: str,
    shards: Shards,
    *,
    show_token: bool,
    duties: bool = True,
    sockets: list[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """The public and operator APIs until SIGINT/SIGTERM. `duties`: this process also runs
    the timers and webhook delivery (one per deployment would do; `opay serve`'s one
    process, or the supervisor's parent). `sockets`: (public, operator), bound by the
    caller (SO_REUSEPORT, opay/frontends.py). `ready`: called once both serve, in place of
    the start lines and "opay ready" (a supervised child: its parent says them)."""
    client = clients.asynchronous(redis_url, settings.redis_timeout_seconds, wait_replicas=settings.redis_wait_replicas)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
    fetcher = Fetcher(FetchPolicy.from_settings(settings))  # every URL a client supplies, never `http`
    wallets = WalletAddressStore(client)
    # The ASE's own client identity (its wallet address, its key published in jwks.json), with
    # which it reads receivers on other servers (opay/remote/receivers.py).
    client_signer = await ensure_client_identity(settings, client, wallets)
    log.debug("Open Payments client identity %s (key %s)", client_signer.wallet_address, client_signer.keyid)
    grants = GrantStore(client, settings.access_token_seconds)
    introspector = Introspector(
        local=None if settings.introspection_url else grants,
        url=settings.introspection_url,
        bearer=settings.operator_token,
        http=http,
        cache_seconds=settings.introspection_cache_seconds,
        timeout_seconds=settings.introspection_timeout_seconds,
    )
    grants.on_revoke(introspector.forget)
    # Receivers on other servers, read under that identity, and the rate probe of the path to
    # them through a peer: what a quote for such a receiver takes (opay/http/quotes.py).
    remote_receivers = RemoteReceivers(settings, fetcher, client_signer)
    prober = RateProber(settings)
    router = shard_router(settings, shards)
    shard_clients = ShardClients(redis_url, settings.redis_timeout_seconds, router.shard_count, settings.redis_wait_replicas)
    services = Services(
        settings=settings,
        router=router,
        queries=Queries(shard_clients, registry.codec),
        wallets=wallets,
        grants=grants,
        introspector=introspector,
        client_keys=ClientKeys(public_url=settings.public_url, wallets=wallets, fetcher=fetcher, cache_seconds=settings.jwks_cache_seconds),
        mint=CredentialMint(await stream_secret(client, settings), settings.ilp_address),
        pricing=Pricing(client, http, rates_url=settings.rates_url, cache_seconds=settings.rates_cache_seconds),
        peers=(peers := PeerStore(client, shard_clients)),
        webhook_events=WebhookEvents(shard_clients),
        remote_receivers=remote_receivers,
        prober=prober,
    )
    # Remote payments' packets: the router puts them on the peers' links (opay/ilp/links.py),
    # and reads their receivers again with the same resolver (and grants) as quotes.
    links = PacketLinks(peers, remote_receivers.resolve, pool_size=settings.stream_packets_in_flight)
    router.links = links
    servers = [
        # log_config=None: uvicorn's loggers go through opay's (opay/observability/logs.py);
        # its own info lines ("Started server process"...) are below "warning".
        _Server(
            uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, log_config=None, log_level="warning", http="httptools")
        )
        for app, host, port in (
            (public_app(services), settings.host, settings.port),
            (operator_app(services), settings.operator_host, settings.operator_port),
        )
    ]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [setattr(server, "should_exit", True) for server in servers])
    background = [
        asyncio.create_task(supervise("revocation listener", lambda: _forget_revoked(client, introspector))),
        asyncio.create_task(supervise("peer cache", peers.listen)),
        *(start_duties(shard_clients, router, settings) if duties else []),
    ]
    # What is built by now (apps, routes, caches, Ray's and the libraries' modules) lives as
    # long as the process: frozen out of the collector's scans. A request allocates many
    # short-lived objects and makes no cycles worth a young collection every 700 of them.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    announce = asyncio.create_task(_announce(settings, servers, show_token, ready))
    try:
        listening = [[sock] for sock in sockets] if sockets else [None, None]
        await asyncio.gather(*(server.serve(sockets=socks) for server, socks in zip(servers, listening)))
        if ready is None:
            say("public API", "stopped")
            say("operator API", "stopped")
    finally:
        for task in [*background, announce]:
            task.cancel()
        await asyncio.gather(*background, announce, return_exceptions=True)
        await router.close()
        await asyncio.to_thread(prober.close)
        links.close()
        await http.aclose()
        await fetcher.aclose()
        await shard_clients.aclose()
        await client.aclose()


def start_duties(shard_clients: ShardClients, router: ShardRouter, settings: Settings) -> list[asyncio.Task]:
    """The deployment's background work: due timers, and webhook delivery if there is a URL."""
    due = Timers(shard_clients, router, settings.timer_batch_max)
    tasks = [asyncio.create_task(supervise("timers", lambda: due.run(settings.timer_interval_seconds)))]
    if settings.webhook_url:  # without one there is nothing to send (and the task would return)
        tasks.append(asyncio.create_task(supervise("webhooks", lambda: webhooks.run(shard_clients, settings))))
    return tasks


def shard_router(settings: Settings, shards: Shards) -> ShardRouter:
    return ShardRouter(
        shards, batch_max=settings.batch_max, in_flight=settings.batches_in_flight, deadline_seconds=settings.shard_call_timeout_seconds
    )


async def run_duties(settings: Settings, redis_url: str, shards: Shards, stop: asyncio.Event) -> None:
    """Timers and webhook delivery without the APIs (`opay head`, and the supervisor of
    several front-end processes), until `stop` is set."""
    router = shard_router(settings, shards)
    shard_clients = ShardClients(redis_url, settings.redis_timeout_seconds, router.shard_count, settings.redis_wait_replicas)
    tasks = start_duties(shard_clients, router, settings)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await router.close()
        await shard_clients.aclose()


async def _announce(settings: Settings, servers: list[_Server], show_token: bool, ready: Callable[[], None] | None) -> None:
    while not all(server.started for server in servers):
        await asyncio.sleep(0.05)
    if ready is not None:
        ready()
        return
    announce_ready(settings, show_token)


def announce_ready(settings: Settings, show_token: bool) -> None:
    say("public API", f"{settings.public_url}  (listening on {settings.host}:{settings.port})")
    say("operator API", f"http://{settings.operator_host}:{settings.operator_port}  (probes: /healthz, /readyz)")
    if show_token:
        print(f"opay operator token {settings.operator_token}  (generated: set OPAY_OPERATOR_TOKEN to choose one)", flush=True)
    token = settings.operator_token if show_token else "$OPAY_OPERATOR_TOKEN"
    print(
        f"approve a pending grant: curl -X POST -H 'Authorization: Bearer {token}'"
        f" http://{settings.operator_host}:{settings.operator_port}/grants/<grant id>/approve"
        "  (the id ends its continue URI; /deny refuses)",
        flush=True,
    )
    print("opay ready; Ctrl-C stops everything it started", flush=True)
