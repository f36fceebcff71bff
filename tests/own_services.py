"""A Kafka broker and a Redis of a test's own, started and stopped by the project's
``scripts/services.sh`` with a private state directory and free ports: for tests that
stop the broker, or need one configured otherwise than the shared one."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services(env: dict[str, str], command: str, *args: str) -> str:
    """``scripts/services.sh COMMAND ARGS`` in ``env``; its stdout (the exports of ``up``)."""
    done = subprocess.run(
        ["bash", str(SERVICES), command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"services.sh {command} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@contextlib.contextmanager
def own_services(state_dir: Path, **extra: str) -> Iterator[dict[str, str]]:
    """Start them; yield the environment that reaches them (``up``'s exports added, and
    ``RECSYS_STATE_DIR`` naming the state directory); stop them at the end."""
    ports = _distinct_free_ports(3)  # (three separate picks could return one port twice)
    env = dict(
        os.environ,
        RECSYS_STATE_DIR=str(state_dir),
        **dict(
            zip(("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "REDIS_PORT"), map(str, ports), strict=True)
        ),
        KAFKA_NUM_PARTITIONS="2",
        PYTHON=sys.executable,
        **extra,
    )
    try:
        exported = []
        for line in services(env, "up").splitlines():  # export NAME=value, shell-quoted
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = " ".join(shlex.split(value))
            exported.append(name)
        # Its state folder under a name it does not read back: exported as
        # RECSYS_STATE_DIR, a later run on other ports from the same shell shared it.
        assert env["RECSYS_SERVICES_STATE"] == str(state_dir)
        assert "RECSYS_STATE_DIR" not in exported
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
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = _redis_server(
            *("--port", str(port), "--bind", "127.0.0.1"),
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            # A node away for 2 s is failed (the cluster refuses writes meanwhile).
            *("--cluster-node-timeout", "2000"),
            *("--save", "", "--appendonly", "no", "--dir", str(node_dir)),
        )

    def stop_node(self, port: int) -> None:
        process = self.processes.pop(port)
        process.terminate()
        process.wait(timeout=10)

    def cli(self, port: int, *args: str) -> str:
        done = _redis_cli(port, *args)
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


def _distinct_free_ports(n: int, fits: Callable[[int], bool] = lambda port: True) -> list[int]:
    """``n`` free ports that ``fits`` accepts, no two the same (the kernel may hand a
    closed port out again)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports and fits(port):
            ports.append(port)
    return ports


def _cluster_ports(n: int) -> list[int]:
    """``n`` distinct free ports whose cluster bus ports (port + 10000, which Redis
    also listens on) are free and valid too."""
    return _distinct_free_ports(n, lambda port: port + 10_000 <= 65_535 and _free(port + 10_000))


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _redis_server(*args: str) -> subprocess.Popen:
    """A ``redis-server`` (Debian's, which the services script installs) run with ``args``."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: run scripts/services.sh up"
    return subprocess.Popen([server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _redis_cli(port: int, *args: str) -> subprocess.CompletedProcess:
    """``redis-cli -p PORT ARGS``, its output as text."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=60
    )


def _answers(port: int) -> bool:
    return _redis_cli(port, "ping").stdout.strip() == "PONG"


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


class RedisSentinel:
    """A Redis master, one replica, and three sentinels watching the master as
    ``SERVICE`` (a quorum of two, a master failed after 1 s away), as
    :func:`own_redis_sentinel` starts them."""

    SERVICE = "recsys"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        ports = _distinct_free_ports(5)
        self.redis_ports, self.sentinel_ports = ports[:2], ports[2:]
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start(self) -> None:
        master, replica = self.redis_ports
        for port in self.redis_ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            extra = ("--replicaof", "127.0.0.1", str(master)) if port == replica else ()
            self.processes[port] = _redis_server(
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)),
                *("--save", "", "--appendonly", "no", *extra),
            )
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"  # (sentinels rewrite it)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
            )
            self.processes[port] = _redis_server(str(conf), "--sentinel")
        deadline = time.monotonic() + 60
        while not (self.master_port() == master and self._replicating(replica) and self._met()):
            exited = [port for port, p in self.processes.items() if p.poll() is not None]
            assert not exited, f"redis-server on ports {exited} exited (port taken?)"
            assert time.monotonic() < deadline, "the sentinels did not find the master"
            time.sleep(0.1)

    def _met(self) -> bool:
        """Every sentinel knows the replica (found in the master's INFO, polled every
        10 s) and the other sentinels (from their hellos): a failover needs both, and a
        master killed before would stay failed with no one promoted."""
        replica = str(self.redis_ports[1])
        for port in self.sentinel_ports:
            replicas = _redis_cli(port, "sentinel", "replicas", self.SERVICE).stdout
            others = _redis_cli(port, "sentinel", "sentinels", self.SERVICE).stdout
            if replica not in replicas.split() or others.split().count("name") != 2:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers sees it."""
        for port in self.sentinel_ports:
            done = _redis_cli(port, "sentinel", "get-master-addr-by-name", self.SERVICE)
            lines = done.stdout.split()
            if done.returncode == 0 and len(lines) == 2:
                return int(lines[1])
        return None

    def _replicating(self, port: int) -> bool:
        return "master_link_status:up" in _redis_cli(port, "info", "replication").stdout

    def kill_master(self) -> int:
        """SIGKILL the master; returns its port."""
        port = self.master_port()
        assert port is not None
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)
        return port

    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Until the sentinels name a master other than ``old``; its port."""
        deadline = time.monotonic() + timeout
        while (port := self.master_port()) in (old, None):
            assert time.monotonic() < deadline, "no failover"
            time.sleep(0.1)
        return port

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()


@contextlib.contextmanager
def own_redis_sentinel(directory: Path) -> Iterator[RedisSentinel]:
    """A master, a replica and three sentinels (:class:`RedisSentinel`), stopped at the end."""
    running = RedisSentinel(directory)
    try:
        running.start()
        yield running
    finally:
        running.stop()
