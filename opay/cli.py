"""`opay serve`: everything on embedded defaults, or joined to an existing Redis and Ray."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvloop

from opay import runtime
from opay.actors.cluster import start_ray, start_shards
from opay.persistence.embedded_redis import EmbeddedRedis
from opay.settings import from_environment


def serve() -> int:
    show_token = not os.environ.get("OPAY_OPERATOR_TOKEN")
    settings = from_environment()
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(Path(settings.data_dir) / "redis", settings.redis_port)
        embedded.start()
        redis_url = embedded.url
        print(f"opay redis        {redis_url}  (AOF under {embedded.data_dir})", flush=True)
    try:
        start_ray(settings)
        shards = start_shards(settings, redis_url)
        print(f"opay shards       {len(shards)} Ray actors", flush=True)
        uvloop.run(runtime.serve(settings, redis_url, shards, show_token=show_token))
    finally:
        import ray

        ray.shutdown()
        if embedded is not None:
            embedded.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opay", description="Open Payments server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the public and operator APIs (configured by OPAY_* variables)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve()
    return 2


if __name__ == "__main__":
    sys.exit(main())
