"""A Kafka broker and a Redis of a test's own, started and stopped by the project's
``scripts/services.sh`` with a private state directory and free ports: for tests that
stop the broker, or need one configured otherwise than the shared one."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services(env: dict[str, str], command: str) -> str:
    """``scripts/services.sh COMMAND`` in ``env``; its stdout (the exports of ``up``)."""
    done = subprocess.run(
        ["bash", str(SERVICES), command], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"services.sh {command} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@contextlib.contextmanager
def own_services(state_dir: Path, **extra: str) -> Iterator[dict[str, str]]:
    """Start them; yield the environment that reaches them (``up``'s exports added, and
    ``RECSYS_STATE_DIR`` naming the state directory); stop them at the end."""
    env = dict(
        os.environ,
        RECSYS_STATE_DIR=str(state_dir),
        KAFKA_PORT=str(free_port()),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        REDIS_PORT=str(free_port()),
        KAFKA_NUM_PARTITIONS="2",
        PYTHON=sys.executable,
        **extra,
    )
    try:
        for line in services(env, "up").splitlines():  # export NAME=value
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
        yield env
    finally:
        services(env, "down")


class RedisCluster:
    """A Redis Cluster of ``redis-server`` processes on free ports, each serving a third of
    the slots (no replicas), as :func:`own_redis_cluster` starts it."""

    def __init__(self, directory: Path, n_nodes: int = 3) -> None:
        self.directory = directory
        self.ports = _cluster_ports(n_nodes)
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        """Start (or restart, from its ``nodes.conf``: it takes back its slots) a node."""
        server = shutil.which("redis-server")
        assert server, "redis-server is missing: run scripts/services.sh up"
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                # A node away for 2 s is failed (the cluster refuses writes meanwhile).
                *("--cluster-node-timeout", "2000"),
                *("--save", "", "--appendonly", "no", "--dir", str(node_dir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_node(self, port: int) -> None:
        process = self.processes.pop(port)
        process.terminate()
        process.wait(timeout=10)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    def state_ok(self) -> bool:
        """Every node sees every slot served."""
        return all("cluster_state:ok" in self.cli(port, "cluster", "info") for port in self.ports)

    def create(self) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        deadline = time.monotonic() + 20
        while not all(_answers(port) for port in self.ports):
            assert time.monotonic() < deadline, "the cluster's nodes did not start"
            time.sleep(0.05)
        self.cli(self.ports[0], "--cluster", "create", *nodes, "--cluster-yes")
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.state_ok():
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.1)

    def stop(self) -> None:
        for port in list(self.processes):
            self.stop_node(port)


def _cluster_ports(n: int) -> list[int]:
    """``n`` distinct free ports whose cluster bus ports (port + 10000, which Redis
    also listens on) are free and valid too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10_000 > 65_535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _answers(port: int) -> bool:
    done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
    return done.stdout.strip() == "PONG"


@contextlib.contextmanager
def own_redis_cluster(directory: Path, n_nodes: int = 3) -> Iterator[RedisCluster]:
    """A Redis Cluster of ``n_nodes`` masters, created with ``redis-cli --cluster create``
    and stopped at the end."""
    cluster = RedisCluster(directory, n_nodes)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()
