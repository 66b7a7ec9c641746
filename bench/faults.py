"""Fault injection under load, as a standalone run: the scenarios of tests/test_faults.py
(tests/faults_support.py, one copy) against servers this script starts on loopback, with
a table of figures per scenario.

    .venv/bin/python bench/faults.py                      # every scenario
    .venv/bin/python bench/faults.py --scenarios kill,stop

Bounded: each scenario runs its faults (a few seconds to 15 s) under 50 credit writers or 8
flow workers, every key given up after 60 s; exit status 1 if any scenario broke a promise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import faults_support as faults  # noqa: E402

SCENARIOS = {
    "kill": faults.shard_kills,
    "redis": faults.redis_outage,
    "stop": faults.shard_stop,
    "flow-kill": faults.flow_shard_kill,
}
FRONT_END = "flow-front-end"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join([*SCENARIOS, FRONT_END]), help="comma-separated: " + ", ".join([*SCENARIOS, FRONT_END]))
    chosen = parser.parse_args().scenarios.split(",")
    unknown = set(chosen) - {*SCENARIOS, FRONT_END}
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")

    runs: list[faults.Run] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opay-faults-") as tmp:
        own = [name for name in chosen if name in SCENARIOS]
        if own:
            server = faults.own_server(Path(tmp) / "own")
            server.start()
            try:
                for name in own:
                    runs.append(asyncio.run(SCENARIOS[name](server)))
                    print(runs[-1].figures.line(), flush=True)
            finally:
                faults.stop_server(server)
        if FRONT_END in chosen:
            with faults.joined_front_end(Path(tmp) / "front-end") as server:
                runs.append(asyncio.run(faults.flow_front_end_kill(server)))
                print(runs[-1].figures.line(), flush=True)

    print()
    print(faults.Figures.HEADER)
    for run in runs:
        print(run.figures.line())
    print(f"({time.monotonic() - started:.0f} s; deadline {faults.DEADLINE_SECONDS:.0f} s, a request past deadline + {faults.MARGIN_SECONDS:.0f} s fails)")
    broken = [run for run in runs if run.violations]
    for run in broken:
        print(f"\n{run.figures.scenario}: " + "\n  ".join(run.violations))
        print("server log (tail):\n" + run.log[-2000:])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
