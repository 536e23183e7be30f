"""Resumer processes for tests: `python -m resumer`, started and stopped by pid.

Each test gets a consumer group of its own, so a resumer starts from the
callbacks produced after the group was made, and no test shares partitions
with another test's resumer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from outbox.topics import PARTITIONER
from tests.integration.redis_nodes import free_port

CALLBACK_TOPIC = "genesis.callbacks"


class ResumerProcess:
    """One `python -m resumer` with its own metrics port and log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {**env, "PAUSEWIRE_METRICS_PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **overrides: str) -> ResumerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "resumer"],
                env={**self.env, **overrides},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"resumer exited with {self.process.returncode}:\n{self.tail()}"
                )
            if self.healthz().get("ready"):
                return
            time.sleep(0.2)
        raise AssertionError(f"resumer not ready in {timeout_s} s:\n{self.tail()}")

    def healthz(self) -> dict[str, Any]:
        try:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as reply:
                body: dict[str, Any] = json.loads(reply.read())
                return body
        except OSError:
            return {}

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head.split("{")[0] == name:
                    total += float(value)
        return total

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float = 40.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def resumer_env(stack: Any, tmp_path: Path) -> dict[str, str]:
    """The environment of a resumer of this test's own group."""
    return {
        **os.environ,
        **stack.values,
        "KAFKA_CONSUMER_GROUP": f"test-resumer-{uuid.uuid4()}",
        "PREFECT_PAUSE_ENABLED": "true",
        "PAUSEWIRE_UNKNOWN_GRACE_SECONDS": "300",
    }


@pytest.fixture
def resumers(resumer_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Makes resumer processes; all are stopped at the end of the test."""
    made: list[ResumerProcess] = []
    _skip_to_end(resumer_env)

    def make(**env: str) -> ResumerProcess:
        process = ResumerProcess(
            {**resumer_env, **env}, tmp_path / f"resumer-{len(made)}.log"
        )
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


def _skip_to_end(env: dict[str, str]) -> None:
    # A new group would start at the topic's beginning and redo every old
    # test's callbacks; commit the current ends for it first.
    consumer = Consumer(
        {
            "bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
            "group.id": env["KAFKA_CONSUMER_GROUP"],
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(CALLBACK_TOPIC, timeout=10)
        ends = []
        for partition in metadata.topics[CALLBACK_TOPIC].partitions:
            tp = TopicPartition(CALLBACK_TOPIC, partition)
            ends.append(
                TopicPartition(
                    CALLBACK_TOPIC,
                    partition,
                    consumer.get_watermark_offsets(tp, timeout=10)[1],
                )
            )
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def produce_callback(
    bootstrap: str,
    correlation_id: str,
    result: Any,
    *,
    raw: bytes | None = None,
    key: str | None = None,
) -> None:
    """Publishes one callback, partitioned like Kafka's Java client."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": PARTITIONER})
    value = (
        raw
        if raw is not None
        else json.dumps({"correlation_id": correlation_id, "result": result}).encode()
    )
    producer.produce(CALLBACK_TOPIC, key=key or correlation_id, value=value)
    assert producer.flush(10) == 0, "the callback was not delivered"
