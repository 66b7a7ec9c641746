"""`opay serve`: everything on embedded defaults, or joined to an existing Redis and Ray."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvloop

from opay import reach, runtime
from opay.actors.cluster import DeploymentMismatch, ShardDirectory, pin_shard_count, start_ray
from opay.observability import logs
from opay.persistence import clients
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.settings import SettingsError, from_environment


def serve() -> int:
    """A start line per part as it comes up (stdout, for people), then runtime's "opay
    ready"; on SIGINT/SIGTERM a stop line per part, in reverse, then "opay stopped". Log
    records go to stderr (opay/observability/logs.py)."""
    show_token = not os.environ.get("OPAY_OPERATOR_TOKEN")
    settings = from_environment()
    logs.configure(settings.log_level, settings.log_format)
    say = runtime.say
    embedded = shards = None
    redis_reached = ray_started = False
    try:
        redis_url = settings.redis_url
        if redis_url:
            reach.redis_answers(redis_url, settings.connect_timeout_seconds)
            say("redis", reach.shown_url(redis_url))
        else:
            embedded = EmbeddedRedis(Path(settings.data_dir) / "redis", settings.redis_port)
            embedded.start()
            redis_url = embedded.url
            say("redis", f"{redis_url}  (AOF under {embedded.data_dir})")
        redis_reached = True
        count = pin_shard_count(clients.blocking(redis_url, settings.redis_timeout_seconds), settings.shards)
        say("ray", start_ray(settings))
        ray_started = True
        shards = ShardDirectory(settings, redis_url, count)
        say("shards", f"{shards.count} Ray actors (detached)")
        uvloop.run(runtime.serve(settings, redis_url, shards, show_token=show_token))
    except reach.Unreachable as error:
        print(f"opay: {error}", file=sys.stderr, flush=True)
        return 1
    except DeploymentMismatch as error:
        print(f"opay: refusing to start: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        if ray_started:
            import ray

            ray.shutdown()
            if shards is not None:
                # A Ray of our own takes its shards with it; a cluster's go on serving other front ends.
                say("shards", "left running on the cluster (detached)" if settings.ray_address else "stopped")
            say("ray", "disconnected" if settings.ray_address else "stopped")
        if embedded is not None:
            embedded.stop()
            say("redis", "stopped")
        elif redis_reached:
            say("redis", "disconnected")
    print("opay stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opay", description="Open Payments server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the public and operator APIs (configured by OPAY_* variables)")
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
