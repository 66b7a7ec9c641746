"""Reaching Redis and Ray at start, each within OPAY_CONNECT_TIMEOUT_SECONDS.

A server that cannot reach a part it needs says which and where in one line and exits;
it never waits in a library's own loop (ray.init retries an unreachable or refusing GCS
for ever, printing warnings). Within the timeout each is tried again, so a server
started alongside its Redis (compose, a pod) waits for it rather than failing at once.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

from opay.persistence import clients

T = TypeVar("T")

RETRY_SECONDS = 0.25


class Unreachable(Exception):
    def __init__(self, part: str, where: str, seconds: float, reason: str = "") -> None:
        self.part, self.where, self.seconds, self.reason = part, where, seconds, reason
        super().__init__(f"cannot reach {part} at {where} within {seconds:g} s" + (f": {reason}" if reason else ""))


def shown_url(url: str) -> str:
    """The URL without its password: it is printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def redis_answers(url: str, seconds: float) -> None:
    """Redis at `url` answers a PING within `seconds`, else Unreachable with the last reason."""
    deadline = time.monotonic() + seconds
    reason = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unreachable("Redis", shown_url(url), seconds, reason)
        try:
            client = clients.blocking(url, left)  # asks the server whether it is a Redis Cluster
            try:
                client.ping()
                return
            finally:
                client.close()
        except redis.RedisError as error:
            # redis-py words it "Error 111 connecting to host:port. Connection refused.": the cause says it.
            reason = getattr(error.__context__, "strerror", None) or str(error)
        time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))


def port_answers(part: str, where: str, host: str, port: int, seconds: float) -> None:
    """A TCP connection to host:port opens within `seconds`, else Unreachable."""
    deadline = time.monotonic() + seconds
    reason = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unreachable(part, where, seconds, reason)
        try:
            socket.create_connection((host, port), timeout=left).close()
            return
        except OSError as error:
            reason = error.strerror or str(error)
        time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))


def within(seconds: float, part: str, where: str, connect: Callable[[], T]) -> T:
    """`connect()`'s result if it returns within `seconds`; its error, as Unreachable, if it
    raises; Unreachable if it is still waiting then (left behind in a daemon thread: the
    caller is expected to exit)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, connect()))
        except BaseException as error:  # noqa: BLE001 - handed to the caller as is
            outcome.append((False, error))

    thread = threading.Thread(target=run, name=f"connect {part}", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise Unreachable(part, where, seconds)
    ok, value = outcome[0]
    if not ok:
        raise Unreachable(part, where, seconds, f"{type(value).__name__}: {value}") from value
    return value
