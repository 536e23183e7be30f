"""Throwaway redis-server processes on free loopback ports.

Each test that needs to stop or restart Redis gets servers of its own, so
it never disturbs the stack's Redis or another test. Import the fixtures
into the test module that uses them.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 5.0


def free_port() -> int:
    """A port nothing listens on right now; the server binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisNode:
    """One redis-server process without persistence, stoppable and restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1.0)

    def start(self) -> None:
        """Start on this node's port and return once it answers PING."""
        assert self.process is None, "node already running"
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self._wait_for_ping()

    def stop(self) -> None:
        """Terminate this node's own process by its PID and wait for it."""
        if self.process is None:
            return
        process, self.process = self.process, None
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE_S)

    def restart(self) -> None:
        """Stop and start again on the same port, with an empty dataset."""
        self.stop()
        self.start()

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited with "
                        f"{self.process.returncode}; see {self.workdir}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")


def _started(workdir: Path) -> RedisNode:
    node = RedisNode(workdir)
    node.start()
    return node


@pytest.fixture
def redis_node(tmp_path: Path) -> Iterator[RedisNode]:
    """One fresh Redis server, stopped at the end of the test."""
    node = _started(tmp_path)
    yield node
    node.stop()


@pytest.fixture
def redis_trio(tmp_path: Path) -> Iterator[list[RedisNode]]:
    """Three independent Redis servers: the masters of a Redlock quorum."""
    nodes: list[RedisNode] = []
    try:
        for _ in range(3):
            nodes.append(_started(tmp_path))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
