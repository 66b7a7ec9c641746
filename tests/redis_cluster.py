"""A real Redis Cluster on loopback for tests: masters and replicas from the same redis-server
binary opay embeds, each with `appendonly yes` and `appendfsync always`, joined with
CLUSTER MEET / ADDSLOTSRANGE / REPLICATE (what `redis-cli --cluster create` does)."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

SLOTS = 16384
NODE_TIMEOUT_MS = 2000  # how long a silent master stays master: the failover's first part
READY_SECONDS = 60.0


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (port + 10000) is free as well."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


class RedisCluster:
    def __init__(self, root: Path, masters: int = 3, replicas_each: int = 1) -> None:
        assert masters >= 1 and replicas_each >= 0
        self.root = root
        self.master_count = masters
        self.ports = cluster_ports(masters * (1 + replicas_each))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def start_node(self, port: int) -> None:
        directory = self.root / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        self.processes[port] = subprocess.Popen(
            [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--logfile", str(directory / "redis.log"), "--protected-mode", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._eventually(lambda: self.client(port).ping(), f"node {port} answers")

    def start(self) -> "RedisCluster":
        try:
            self._form()
        except BaseException:
            self.stop()  # no node outlives a cluster that never formed
            raise
        return self

    def _form(self) -> None:
        for port in self.ports:
            self.start_node(port)
        masters, replicas = self.ports[: self.master_count], self.ports[self.master_count :]
        share = SLOTS // self.master_count
        for n, port in enumerate(masters):
            last = SLOTS - 1 if n == self.master_count - 1 else (n + 1) * share - 1
            self.client(port).execute_command("CLUSTER ADDSLOTSRANGE", n * share, last)
        first = self.client(self.ports[0])
        for port in self.ports[1:]:
            first.execute_command("CLUSTER MEET", "127.0.0.1", port)
        self._eventually(lambda: all(self._known(port) == len(self.ports) for port in self.ports), "every node knows every node")
        for n, port in enumerate(replicas):
            master = masters[n % self.master_count]
            master_id = self.client(master).execute_command("CLUSTER MYID")
            self._eventually(lambda: self.client(port).execute_command("CLUSTER REPLICATE", master_id), f"{port} replicates {master}")
        self._eventually(self.healthy, "cluster_state:ok with every replica in sync")

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, every replica's link is up, and every node
        names the same master for each slot range (a node back from a kill may still claim
        its old slots for a moment)."""
        views = {tuple((e[0], e[1], int(e[2][1])) for e in self.client(port).execute_command("CLUSTER SLOTS")) for port in self.processes}
        if len(views) != 1:
            return False
        for port in self.ports:
            if port not in self.processes:
                continue
            node = self.client(port)
            if node.execute_command("CLUSTER INFO").get("cluster_state") != "ok":  # redis-py: a dict
                return False
            replication = node.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def _known(self, port: int) -> int:
        return len(self.client(port).execute_command("CLUSTER NODES"))  # redis-py: address -> node

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot now."""
        slot = int(self.client(self.live_port()).execute_command("CLUSTER KEYSLOT", key))
        for first, last, master, *_ in self.client(self.live_port()).execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                return int(master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def live_port(self) -> int:
        return next(port for port in self.ports if port in self.processes)

    def masters(self) -> list[int]:
        return sorted({int(entry[2][1]) for entry in self.client(self.live_port()).execute_command("CLUSTER SLOTS")})

    def replica_of(self, master: int) -> int:
        """The port of the replica of the master at `master` (as the master sees it)."""
        return int(self.client(master).info("replication")["slave0"]["port"])

    def kill9(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def wait_promoted(self, killed: int) -> int:
        """Waits until a replica took over the killed master's slots; its port."""
        before = {port for port in self.masters()}
        self._eventually(lambda: killed not in self.masters() and self.healthy(), f"a replica of {killed} is master")
        (promoted,) = set(self.masters()) - (before - {killed})
        return promoted

    def rejoin(self, port: int) -> None:
        """Starts a killed node again and waits until it is a replica in sync (the cluster
        healthy again): a master it was the replica of counts on it for WAIT."""
        self.start_node(port)
        self._eventually(self.healthy, f"{port} back, every replica in sync")

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill9(port)

    @staticmethod
    def _eventually(check, what: str, timeout: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.RedisError as caught:
                error = caught
            time.sleep(0.1)
        raise TimeoutError(f"Redis Cluster: not so within {timeout} s: {what} (last error: {error})")
