"""Where a front end's CPU goes: py-spy samples `opay serve` (one front-end process) while
bench/replay.py replays one scenario at it, and prints the top functions by own time and
by time spent inside them, as percentages of the samples.

  .venv/bin/python bench/profile.py                       # signed creates, 15 s
  .venv/bin/python bench/profile.py --scenario credits --seconds 10 --top 30

py-spy comes from PyPI (installed into this venv on first use); it samples at --rate Hz
without stopping the process (--nonblocking), so what it sees is the process as it runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replay import CONNECTIONS, SCENARIOS, ensure_wrk  # noqa: E402

PY_SPY = Path(sys.executable).with_name("py-spy")
SETUP_SECONDS_MAX = 600  # replay's own setup (payments to credit, a grant) before wrk starts
FRAMES_SHOWN = 60  # characters of a frame's name in the tables


def ensure_py_spy() -> None:
    if not PY_SPY.exists():
        print("py-spy is not in this venv: pip install py-spy", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)


def measured_wrk_running(parent: int, connections: int) -> bool:
    """Whether a child of `parent` runs wrk with the measured run's connection count (a
    scenario's setup runs wrk too, with fewer), from /proc's stat and cmdline."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            command = stat.with_name("cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if name == "wrk" and int(fields[1]) == parent and f"-c{connections}".encode() in command:
            return True
    return False


def tables(collapsed: str, top: int) -> tuple[str, int]:
    """(the two tables, samples) from py-spy's raw output: one line per stack, frames
    separated by ';', then the count."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # Root first. Under uvloop a callback's stack starts at the coroutine it resumes.
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            inside[frame] += n
    if not samples:
        return "no samples", 0
    lines = [f"{'own %':>6}  function (own time: the function itself)"]
    lines += [f"{100 * n / samples:6.1f}  {frame[:FRAMES_SHOWN]}" for frame, n in own.most_common(top)]
    lines += ["", f"{'in %':>6}  function (time inside it, callees included)"]
    lines += [f"{100 * n / samples:6.1f}  {frame[:FRAMES_SHOWN]}" for frame, n in inside.most_common(top)]
    return "\n".join(lines), samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="creates", choices=SCENARIOS)
    parser.add_argument("--seconds", type=float, default=15.0, help="wrk's window, sampled whole (default 15)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    parser.add_argument("--keep", type=Path, help="also write py-spy's raw stacks here (one line per stack, flamegraph.pl's input)")
    args = parser.parse_args(argv)
    ensure_wrk()
    ensure_py_spy()
    from tests.support import OpayServer

    with tempfile.TemporaryDirectory(prefix="opay-profile-") as work:
        server = OpayServer(Path(work), {"OPAY_FRONTEND_PROCESSES": "1", "OPAY_LOG_LEVEL": "warning"}).start()
        try:
            assert server.process is not None
            replay = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("replay.py")), "--scenario", args.scenario, "--rounds", "1",
                 "--seconds", str(args.seconds), "--public-url", server.public_url, "--operator-url", server.operator_url,
                 "--operator-token", server.operator_token],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            # Sample only the measured window: from when replay, its setup done, starts that wrk.
            started = time.monotonic()
            while not measured_wrk_running(replay.pid, CONNECTIONS[args.scenario]):
                if replay.poll() is not None or time.monotonic() - started > SETUP_SECONDS_MAX:
                    raise SystemExit(f"replay ended or took over {SETUP_SECONDS_MAX} s before starting wrk")
                time.sleep(0.05)
            raw = Path(work) / "stacks.txt"
            spy = [str(PY_SPY), "record", "--nonblocking", "-p", str(server.process.pid), "-r", str(args.rate), "-d", str(int(args.seconds))]
            subprocess.run([*spy, "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
            output, _ = replay.communicate(timeout=120)
            text, samples = tables(raw.read_text(), args.top)
            if args.keep:
                args.keep.write_text(raw.read_text())
            print("\n".join(line for line in output.splitlines() if "req/s" in line).rstrip())
            print(f"\npy-spy: {samples:,} samples of opay serve (pid {server.process.pid}) over {args.seconds:.0f} s of {args.scenario}\n")
            print(text)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
