"""Several front-end processes on one box, serving the same ports, under one supervisor.

Each child is `opay frontend` started by the parent (`opay serve` or `opay frontend` with
OPAY_FRONTEND_PROCESSES > 1). It binds the public and operator ports itself with
SO_REUSEPORT, so the kernel spreads new connections over the live children and one that
dies takes only its own connections with it; it has its own router and caches and shares
only Redis and Ray with the others. The parent holds no listening socket: it starts the
children, says "ready" once every one serves, replaces one that dies (after a pause that
doubles while they keep dying young, giving up after MAX_QUICK_DEATHS in a row), and
stops them all on SIGINT/SIGTERM (SIGKILL after STOP_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger("opay.frontends")

# A child joins Ray and Redis before it serves: seconds, even on a loaded box.
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
RESTART_MIN_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# A child that served this long was healthy: its next death restarts quickly again.
HEALTHY_SECONDS = 60.0
# Dying young this many times in a row is not bad luck (a port taken, Ray gone): stop.
MAX_QUICK_DEATHS = 5
_PR_SET_PDEATHSIG = 1


class ChildFailed(Exception):
    def __init__(self, pid: int, returncode: int | None) -> None:
        self.pid, self.returncode = pid, returncode
        super().__init__(f"front-end process {pid} exited with {returncode} before it served")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other processes may bind too (SO_REUSEPORT: the
    kernel balances connections over them); uvicorn listens on it."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def fresh_metrics_dir(data_dir: str) -> str:
    """prometheus_client's multiprocess directory for one supervisor's children, emptied:
    files of an earlier run's processes would be summed into this run's series."""
    directory = Path(data_dir) / "prometheus"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return str(directory)


def record_metrics_in(directory: str) -> None:
    """This process's metrics go to the multiprocess directory as well, so a scrape of any
    child sums them in. prometheus_client picks its value class from the environment when
    it is imported, which Ray's driver has already done: it is picked again here, before
    opay's metrics (opay/observability/metrics.py) are declared."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import prometheus_client.values

    prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()


def die_with_parent(parent: int) -> None:
    """A child must not outlive its supervisor (kill -9 of it): the kernel sends it SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        raise SystemExit(1)


def tell_ready(fd: int) -> None:
    os.write(fd, b"1")
    os.close(fd)


class Supervisor:
    """`count` children of `opay frontend`, kept at `count`."""

    def __init__(self, count: int, env: dict[str, str], metrics_dir: str, stop: asyncio.Event) -> None:
        self._count = count
        # Set by SIGINT/SIGTERM, which a terminal also sends the children: one that exits
        # for it is not replaced, even before stop() runs.
        self._stop = stop
        self._env = env
        self._metrics_dir = metrics_dir
        self._children: list[asyncio.subprocess.Process | None] = [None] * count
        self._spawned: set[asyncio.subprocess.Process] = set()  # stop() ends them all, even one still starting
        self._watchers: list[asyncio.Task] = []
        self.gave_up = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children if child is not None and child.returncode is None]

    async def start(self) -> None:
        """Every child serving, or ChildFailed for the first that did not (the others stopped)."""
        started = await asyncio.gather(*(self._spawn() for _ in range(self._count)), return_exceptions=True)
        for slot, outcome in enumerate(started):
            if isinstance(outcome, asyncio.subprocess.Process):
                self._children[slot] = outcome
        failed = [outcome for outcome in started if isinstance(outcome, BaseException)]
        if failed:
            raise failed[0]
        self._watchers = [asyncio.create_task(self._keep(slot)) for slot in range(self._count)]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        live = [child for child in self._spawned if child.returncode is None]
        for child in live:
            child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(child.wait() for child in live)), STOP_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            for child in live:
                if child.returncode is None:
                    log.warning("front-end process %d did not stop within %g s; killed", child.pid, STOP_TIMEOUT_SECONDS)
                    child.kill()
            await asyncio.gather(*(child.wait() for child in live))

    async def _spawn(self) -> asyncio.subprocess.Process:
        read_fd, write_fd = os.pipe()
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "opay.cli", "frontend", "--ready-fd", str(write_fd), "--parent", str(os.getpid()),
                env=self._env,
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # its start lines are the parent's to say; its logs go to stderr
            )
        finally:
            os.close(write_fd)
        self._spawned.add(child)
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            reading = asyncio.get_running_loop().run_in_executor(None, pipe.read, 1)
            try:
                # EOF without a byte: the child exited (or closed the pipe) before serving.
                said = await asyncio.wait_for(asyncio.shield(reading), READY_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                said = b""
            if not said:
                if child.returncode is None:
                    child.kill()
                await child.wait()
                await reading  # the kill closed the pipe's other end
                raise ChildFailed(child.pid, child.returncode)
        return child

    async def _keep(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        since = loop.time()
        while True:
            child = self._children[slot]
            assert child is not None
            returncode = await child.wait()
            if self._stop.is_set():
                return
            self._spawned.discard(child)
            self._forget(child.pid)
            lived = loop.time() - since
            quick_deaths = 0 if lived >= HEALTHY_SECONDS else quick_deaths + 1
            if quick_deaths > MAX_QUICK_DEATHS:
                log.error("front-end process %d exited with %s; %d died young in a row: giving up", child.pid, returncode, quick_deaths)
                self.gave_up.set()
                return
            pause = min(RESTART_MAX_SECONDS, RESTART_MIN_SECONDS * 2 ** max(0, quick_deaths - 1))
            log.warning(
                "front-end process %d exited with %s after %.1f s; starting another in %.1f s",
                child.pid, returncode, lived, pause,
                extra={"fields": {"child_pid": child.pid, "returncode": returncode}},
            )
            while True:
                await asyncio.sleep(pause)
                since = loop.time()
                try:
                    self._children[slot] = await self._spawn()
                    break
                except ChildFailed as error:
                    self._forget(error.pid)
                    quick_deaths += 1
                    if quick_deaths > MAX_QUICK_DEATHS:
                        log.error("%s; %d died young in a row: giving up", error, quick_deaths)
                        self.gave_up.set()
                        return
                    pause = min(RESTART_MAX_SECONDS, pause * 2)
                    log.warning("%s; trying again in %.1f s", error, pause)
            log.warning("front-end process %d replaces %d", self._children[slot].pid, child.pid, extra={"fields": {"child_pid": self._children[slot].pid}})

    def _forget(self, pid: int) -> None:
        # Its live gauges stop counting; its counters stay summed in (prometheus_client's rule).
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)


async def supervise(
    count: int,
    env: dict[str, str],
    metrics_dir: str,
    announce: Callable[[list[int]], None],
    duties: Callable[[asyncio.Event], Awaitable[None]] | None = None,
) -> int:
    """Run `count` children (and the parent's `duties`, until stopped) until SIGINT/SIGTERM;
    the exit code: 0, a child's own when it could not start (2: it refused the deployment),
    or 1 when the supervisor gave up on one."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(count, env, metrics_dir, stop)
    duty = asyncio.create_task(duties(stop)) if duties else None
    starting = asyncio.create_task(supervisor.start())
    stopped = asyncio.create_task(stop.wait())
    gave_up = asyncio.create_task(supervisor.gave_up.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # ChildFailed: below
            announce(supervisor.pids)
            await asyncio.wait({stopped, gave_up}, return_when=asyncio.FIRST_COMPLETED)
        return 1 if supervisor.gave_up.is_set() else 0
    except ChildFailed as error:
        return error.returncode if error.returncode and error.returncode > 0 else 1
    finally:
        stop.set()
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await supervisor.stop()
        for task in (stopped, gave_up):
            task.cancel()
        if duty is not None:
            await duty
