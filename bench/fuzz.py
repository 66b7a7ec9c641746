"""Fuzz opay against the official Open Payments specs with schemathesis, longer than `make test`.

  .venv/bin/python bench/fuzz.py                      # starts its own server (tests.support)
  .venv/bin/python bench/fuzz.py --examples 200       # generated requests per operation, mode and signing
  .venv/bin/python bench/fuzz.py --public-url http://127.0.0.1:8000 \
      --operator-url http://127.0.0.1:8001 --operator-token "$OPAY_OPERATOR_TOKEN"

The same fuzzer as tests/test_spec_fuzz.py (tests/spec_fuzz.py): every operation of the four
specs, positive and negative generation, signed like opay's client (GNAP token, RFC 9421,
Content-Digest) and unsigned; checks not_a_server_error and response_schema_conformance.
Prints requests sent, server errors and violations (the first 20 of each), and exits 1 if
there is any.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from tests.spec_fuzz import Fuzzer, prepare  # noqa: E402

FAILED = []


async def main(args: argparse.Namespace, public_url: str, operator_url: str, operator_token: str, server_sid: int | None) -> None:
    def fuzz() -> None:
        with httpx.Client(timeout=30) as http:
            target = prepare(http, public_url, operator_url, operator_token)
            started = time.monotonic()
            tally = Fuzzer(http, target).run(args.examples)
            elapsed = time.monotonic() - started
        print(f"{args.examples} examples per operation, mode and signing; {elapsed:.1f} s")
        print(tally.summary())
        for title, found in (("server errors", tally.server_errors), ("violations", tally.violations)):
            for line in found[:20]:
                print(f"{title}: {line}")
        if tally.server_errors or tally.violations:
            FAILED.append(True)

    await asyncio.to_thread(fuzz)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="generated requests per operation, mode and signing (default 100)")
    parser.add_argument("--public-url", help="a running server's public API (loopback only)")
    parser.add_argument("--operator-url", help="a running server's operator API (loopback only)")
    parser.add_argument("--operator-token", default=os.environ.get("OPAY_OPERATOR_TOKEN", ""))
    parser.add_argument("--shards", type=int, default=0, help="OPAY_SHARDS for the server this script starts (0: as tests, 2)")
    args = parser.parse_args(argv)
    common.check_server_args(parser, args)
    return args


def run(argv: list[str] | None = None) -> int:
    common.run_main(
        parse_args(argv),
        main,
        data_prefix="opay-fuzz-",
        extra_env={},
        up_details="{public} (operator {operator}); shards {shards}; data {data}",
    )
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(run())
