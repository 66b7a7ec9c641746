"""`opay serve` as an operator runs it: what it prints, what Ctrl-C stops, external Redis."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import redis

from opay.persistence import keys
from opay.persistence.embedded_redis import EmbeddedRedis
from tests.support import OpayServer, free_port, session_members


def session_alive(session: int) -> bool:
    """Anything left of what serve started: Ray's workers have their own process groups,
    but stay in serve's session."""
    return bool(session_members(session))


def test_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    server = OpayServer(tmp_path, extra_env={"OPAY_OPERATOR_TOKEN": ""}).start()
    try:
        _check_ctrl_c(server, tmp_path)
    finally:
        if server.process is not None:
            server.kill9()


def _check_ctrl_c(server: OpayServer, tmp_path: Path) -> None:
    assert server.process is not None
    session = server.process.pid
    log = server.log()
    assert f"opay public API   {server.public_url}" in log
    assert f"opay operator API {server.operator_url}" in log
    # No token was configured: one was generated, printed, and is the one that works.
    token = log.split("opay operator token ", 1)[1].split()[0]
    assert httpx.get(f"{server.operator_url}/health", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert (tmp_path / "redis" / "opay.aof").exists() or (tmp_path / "redis" / "appendonlydir").exists()

    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    server.process = None
    deadline = time.monotonic() + 30
    while session_alive(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session_alive(session), "a process opay started outlived Ctrl-C"
    with redis.Redis(port=server.redis_port, socket_connect_timeout=0.5) as client:
        try:
            client.ping()
            raise AssertionError("the embedded redis-server still answers after Ctrl-C")
        except redis.ConnectionError:
            pass


def test_existing_redis_is_used_instead_of_an_embedded_one(tmp_path: Path) -> None:
    external = EmbeddedRedis(tmp_path / "external", free_port())
    external.start()
    server = OpayServer(tmp_path / "opay", extra_env={"OPAY_REDIS_URL": external.url})
    try:
        server.start()
        created = httpx.post(
            f"{server.operator_url}/wallet-addresses",
            json={"path": "carol", "assetCode": "USD", "assetScale": 2},
            headers=server.operator_headers,
        )
        assert created.status_code == 201
        with redis.Redis.from_url(external.url) as client:
            assert client.exists(keys.wallet_address("carol"))
        assert not (tmp_path / "opay" / "redis").exists(), "no embedded Redis when OPAY_REDIS_URL is set"
    finally:
        server.stop()
        external.stop()
