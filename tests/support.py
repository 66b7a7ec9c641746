"""Run a real `opay serve` (own redis-server with AOF, own local Ray) for tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

READY_TIMEOUT_SECONDS = 120
# The header a login proxy would set: test servers let the consent page decide for the
# wallet's owner named in it (extra_env {"OPAY_CONSENT_USER_HEADER": ""} gives the default, none).
CONSENT_USER_HEADER = "X-Opay-User"


# Below the kernel's ephemeral range (32768+ here): Ray's many processes bind port 0,
# and an ephemeral port released by us could be theirs before opay binds it.
_PORTS = range(20_000, 32_000)


def free_port() -> int:
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


def wait_port_free(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} still in use")


def session_members(session: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Fields after the ")" that ends the command name: state ppid pgrp session ...
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session:
                members.append(int(entry.name))
    return members


class OpayServer:
    """One server process group; ports and data dir stay fixed across restarts."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.operator_port = free_port()
        self.redis_port = free_port()
        self.operator_token = "test-operator-token"
        self.public_url = f"http://127.0.0.1:{self.port}"
        self.operator_url = f"http://127.0.0.1:{self.operator_port}"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "serve.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPAY_")}
        env.update(
            {
                "OPAY_PORT": str(self.port),
                "OPAY_PUBLIC_URL": self.public_url,
                "OPAY_OPERATOR_PORT": str(self.operator_port),
                "OPAY_OPERATOR_TOKEN": self.operator_token,
                "OPAY_REDIS_PORT": str(self.redis_port),
                "OPAY_DATA_DIR": str(self.data_dir),
                "OPAY_SHARDS": "2",
                "OPAY_FRONTEND_PROCESSES": "1",  # one process, as before: a supervisor's children cost the suite's budget
                "OPAY_CONSENT_USER_HEADER": CONSENT_USER_HEADER,
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> "OpayServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        wait_port_free(self.redis_port)
        self._ready_before = self._ready_lines()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "opay.cli", "serve"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            # A server that never became ready must not outlive the test that started it.
            self.kill9()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"opay serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                # Any answer means it serves (a test may run it with a generated token);
                # serve prints its ready line once both servers have started.
                httpx.get(f"{self.operator_url}/health", headers=self.operator_headers, timeout=1.0)
                if self._ready_lines() > self._ready_before:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"opay serve not ready:\n{self.log()}")

    @property
    def operator_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.operator_token}"}

    def _ready_lines(self) -> int:
        # The log is appended across restarts: count, so an earlier run's line is not taken.
        return self.log_path.read_text(errors="replace").count("opay ready") if self.log_path.exists() else 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def kill9(self) -> None:
        """kill -9 of the whole server: the serve process, its redis-server and its Ray.
        Ray's workers (the shards) sit in process groups of their own, but stay in the
        session that serve leads, so the whole session is killed."""
        assert self.process is not None
        session = self.process.pid
        for pid in session_members(session):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


# Two servers that fetch from each other on loopback (each its own Redis and Ray).
LOOPBACK_FETCHES = {"OPAY_ALLOW_INSECURE_FETCH": "true", "OPAY_FETCH_ALLOW": "127.0.0.1"}
A_TO_B, B_TO_A = "token-a-to-b-0123456789", "token-b-to-a-0123456789"


def peer_body(name: str, url: str, outgoing: str, incoming: str, routes: list[str], max_packet: str | None = None) -> dict:
    body = {"name": name, "url": url, "outgoingToken": outgoing, "incomingToken": incoming, "assetCode": "USD", "assetScale": 2, "routes": routes}
    if max_packet is not None:
        body["maxPacketAmount"] = max_packet
    return body


@contextmanager
def two_servers(root: Path, *, peered: bool = True, max_packet: str | None = None) -> Iterator[tuple[OpayServer, OpayServer]]:
    """A (test.a) and B (test.b), started, and when `peered`, peered both ways over a USD
    link (A presents A_TO_B to B, B presents B_TO_A to A); both stopped on the way out."""
    a = OpayServer(root / "a", {**LOOPBACK_FETCHES, "OPAY_ILP_ADDRESS": "test.a"})
    b = OpayServer(root / "b", {**LOOPBACK_FETCHES, "OPAY_ILP_ADDRESS": "test.b"})
    a.start()
    try:
        b.start()
    except BaseException:
        a.stop()
        raise
    try:
        if peered:
            for at, name, other, out, inc, route in ((a, "b", b, A_TO_B, B_TO_A, "test.b"), (b, "a", a, B_TO_A, A_TO_B, "test.a")):
                body = peer_body(name, f"{other.public_url}/ilp", out, inc, [route], max_packet)
                created = httpx.post(f"{at.operator_url}/peers", json=body, headers=at.operator_headers, timeout=30)
                assert created.status_code == 201, created.text
        yield a, b
    finally:
        b.stop()
        a.stop()
