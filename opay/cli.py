"""`opay serve`: everything on embedded defaults, or joined to an existing Redis and Ray;
`opay head` and `opay frontend`: the two roles of a cluster (README, "Scaling out")."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import uvloop

from opay import frontends, reach
from opay.console import say
from opay.actors.cluster import DeploymentMismatch, ShardDirectory, pin_shard_count, start_ray
from opay.observability import logs
from opay.persistence import clients
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.settings import Settings, SettingsError, from_environment


ROLES = {
    "serve": "everything on one machine: Redis and Ray of its own unless OPAY_REDIS_URL / OPAY_RAY_ADDRESS, shards, timers, APIs",
    "head": "a cluster's head role: pins the shard count, ensures the detached shards, runs the timers and webhook delivery; no API",
    "frontend": "a cluster's front end: joins Redis and Ray, finds the head's shards, serves the public and operator APIs",
}
# How long `opay frontend` waits for the head to have created the shards.
SHARDS_WAIT_SECONDS = 60.0


def serve() -> int:
    return _run("serve")


def head() -> int:
    return _run("head")


def frontend(ready_fd: int | None = None, parent: int | None = None) -> int:
    if parent is not None:
        frontends.die_with_parent(parent)
    return _run("frontend", ready_fd)


def _run(role: str, ready_fd: int | None = None) -> int:
    """A start line per part as it comes up (stdout, for people), then "opay ready"; on
    SIGINT/SIGTERM a stop line per part, in reverse, then "opay stopped". Log records go
    to stderr (opay/observability/logs.py). A supervised child (`ready_fd`) says nothing on
    stdout: its parent speaks for all of them."""
    show_token = not os.environ.get("OPAY_OPERATOR_TOKEN")
    settings = from_environment()
    missing = [name for name, value in (("OPAY_REDIS_URL", settings.redis_url), ("OPAY_RAY_ADDRESS", settings.ray_address)) if not value]
    if role != "serve" and missing:
        raise SettingsError(
            f"{' and '.join(missing)} not set: opay {role} joins a cluster's Redis and Ray (`opay serve` starts its own)"
        )
    logs.configure(settings.log_level, settings.log_format, {"pid": os.getpid()} if role == "frontend" else None)
    processes = 1 if ready_fd is not None or role == "head" else settings.frontend_processes or os.cpu_count() or 1
    embedded = None
    redis_reached = False
    ray_line = None
    try:
        redis_url = settings.redis_url
        if redis_url:
            reach.redis_answers(redis_url, settings.connect_timeout_seconds)
            say("redis", reach.shown_url(redis_url))
        else:
            embedded = EmbeddedRedis(Path(settings.data_dir) / "redis", settings.redis_port)
            embedded.launch()
            # Ray starts while redis-server reads its AOF back: a restart on much stored data
            # waits for the longer of the two, not for their sum. (If Redis then fails, the
            # exit's atexit hook that ray.init installs stops this Ray.)
            ray_line = start_ray(settings)
            embedded.wait_ready()
            redis_url = embedded.url
            say("redis", f"{redis_url}  (AOF under {embedded.data_dir})")
        redis_reached = True
        count = pin_shard_count(clients.blocking(redis_url, settings.redis_timeout_seconds), settings.shards)
        if role == "frontend" and processes > 1:
            # The children join Ray and find the shards; this parent only keeps them running.
            code = _supervise(settings, processes, redis_url, settings.ray_address, count, None, show_token)
        else:
            code = _on_ray(settings, role, processes, redis_url, count, show_token, ready_fd, ray_line)
    except reach.Unreachable as error:
        print(f"opay: {error}", file=sys.stderr, flush=True)
        return 1
    except DeploymentMismatch as error:
        print(f"opay: refusing to start: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()
            say("redis", "stopped")
        elif redis_reached:
            say("redis", "disconnected")
    if ready_fd is None:
        print("opay stopped", flush=True)
    return code


def _on_ray(
    settings: Settings, role: str, processes: int, redis_url: str, count: int, show_token: bool, ready_fd: int | None, ray_line: str | None
) -> int:
    """Join or start Ray (unless done: `ray_line` says what it is), find or create the shards,
    then the role's work until stopped."""
    import ray

    say("ray", ray_line or start_ray(settings))
    shards = None
    try:
        shards = ShardDirectory(settings, redis_url, count, create=role != "frontend", wait_seconds=SHARDS_WAIT_SECONDS)
        say("shards", f"{shards.count} Ray actors (detached)" if role != "frontend" else f"{shards.count} found")
        if role == "head":
            return uvloop.run(_head(settings, redis_url, shards))
        if processes > 1:
            address = settings.ray_address or ray.get_runtime_context().gcs_address
            return _supervise(settings, processes, redis_url, address, count, shards, show_token)
        from opay import runtime

        sockets = ready = None
        if ready_fd is not None:
            sockets = [frontends.listening_socket(settings.host, settings.port), frontends.listening_socket(settings.operator_host, settings.operator_port)]
            ready = lambda: frontends.tell_ready(ready_fd)  # noqa: E731
        uvloop.run(runtime.serve(settings, redis_url, shards, show_token=show_token, duties=role == "serve", sockets=sockets, ready=ready))
        return 0
    finally:
        ray.shutdown()
        if shards is not None:
            # A Ray of our own takes its shards with it; a cluster's go on serving other front ends.
            say("shards", "left running on the cluster (detached)" if settings.ray_address else "stopped")
        say("ray", "disconnected" if settings.ray_address else "stopped")


async def _head(settings: Settings, redis_url: str, shards: ShardDirectory) -> int:
    from opay import runtime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    duties = asyncio.create_task(runtime.run_duties(settings, redis_url, shards, stop))
    say("timers", "running" + (" (and webhook delivery)" if settings.webhook_url else ""))
    print("opay ready; the front ends serve (opay frontend); Ctrl-C stops the head", flush=True)
    await duties
    say("timers", "stopped")
    return 0


def _supervise(
    settings: Settings, processes: int, redis_url: str, ray_address: str, count: int, shards: ShardDirectory | None, show_token: bool
) -> int:
    """`processes` children serving the same ports; `opay serve`'s parent also runs the
    timers and webhook delivery (its children do not)."""
    metrics_dir = frontends.fresh_metrics_dir(settings.data_dir)
    env = {
        **os.environ,
        "OPAY_REDIS_URL": redis_url,
        "OPAY_RAY_ADDRESS": ray_address,
        "OPAY_SHARDS": str(count),
        "OPAY_FRONTEND_PROCESSES": "1",
        "OPAY_OPERATOR_TOKEN": settings.operator_token,  # a generated one too: every child takes the same
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    if not settings.ray_address:
        env.setdefault("RAY_AUTH_MODE", "token")  # a local Ray of Ray 2.60's: its token is in ~/.ray/auth_token
    duties = None
    if shards is not None:
        frontends.record_metrics_in(metrics_dir)  # timer lag and webhook attempts, in the children's scrapes
        from opay import runtime

        def duties(stop):
            return runtime.run_duties(settings, redis_url, shards, stop)

    def announce(pids: list[int]) -> None:
        from opay import runtime

        say("front ends", f"{len(pids)} processes on the same ports (SO_REUSEPORT), pids {' '.join(map(str, pids))}")
        runtime.announce_ready(settings, show_token)

    code = uvloop.run(frontends.supervise(processes, env, metrics_dir, announce, duties))
    say("front ends", "stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opay", description="Open Payments server")
    commands = parser.add_subparsers(dest="command", required=True)
    for role, what in ROLES.items():
        command = commands.add_parser(role, help=f"{what} (configured by OPAY_* variables)")
        if role == "frontend":
            # Given by a supervising parent (opay/frontends.py), never by people.
            command.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
            command.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    config = commands.add_parser("config", help="print every setting: variable, current value, default, description")
    config.add_argument("--markdown", action="store_true", help="print the README's settings table instead")
    keys = commands.add_parser("keys", help="client keys of wallet addresses")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    new_key = keys_commands.add_parser("new", help="make an Ed25519 key, register its public JWK, save the private key")
    new_key.add_argument("wallet", help="path of the wallet address, e.g. alice")
    new_key.add_argument("--out", help="where to save the private key (PEM); default: {data_dir}/keys/<path>-<kid>.pem")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve()
        if args.command == "head":
            return head()
        if args.command == "frontend":
            return frontend(args.ready_fd, args.parent)
        if args.command == "config":
            from opay.commands import config as config_command

            return config_command.run(as_markdown=args.markdown)
        from opay.commands import keys as keys_command

        return keys_command.new(args.wallet, args.out)
    except SettingsError as error:
        # Nothing has started yet: the one line says what to fix, a traceback would bury it.
        print(f"opay: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
