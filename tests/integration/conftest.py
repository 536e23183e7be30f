"""Fixtures that start the real stack once per test session.

Where a Docker engine answers, the stack comes from compose/docker-compose.yml
through testcontainers; elsewhere from the native runner (`compose/native.py
up`, which is idempotent, so a stack that already runs is reused). Either
way the tests get the same `StackEnv` and talk to real servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StackEnv:
    """How to reach each component of the running stack."""

    values: dict[str, str]

    @property
    def app_dsn(self) -> str:
        return self.values["PAUSEWIRE_DATABASE_URL"]

    @property
    def admin_dsn(self) -> str:
        return self.values["PAUSEWIRE_ADMIN_DATABASE_URL"]

    @property
    def kafka(self) -> str:
        return self.values["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def prefect_api(self) -> str:
        return self.values["PREFECT_API_URL"]

    @property
    def redis_url(self) -> str:
        return self.values["REDIS_URL"]


def _docker_available() -> bool:
    try:
        probe = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _native_stack() -> dict[str, str]:
    # The tests run resumers of their own: the stack must not run one.
    subprocess.run(
        [sys.executable, str(REPO / "compose" / "native.py"), "up"],
        check=True,
        env={**os.environ, "PAUSEWIRE_NATIVE_RESUMER": "0"},
    )
    stack_dir = Path(os.environ.get("PAUSEWIRE_STACK_DIR", REPO / ".stack"))
    lines = (stack_dir / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _compose_stack() -> Iterator[dict[str, str]]:
    from testcontainers.compose import DockerCompose

    compose = DockerCompose(
        str(REPO / "compose"), compose_file_name="docker-compose.yml", wait=True
    )
    with compose:
        env = dict(
            line.split("=", 1)
            for line in (REPO / "compose" / ".env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        yield {
            "PAUSEWIRE_DATABASE_URL": (
                f"postgresql://pausewire_app:{env['PAUSEWIRE_APP_PASSWORD']}"
                f"@127.0.0.1:{env['POSTGRES_HOST_PORT']}/pausewire"
            ),
            "PAUSEWIRE_ADMIN_DATABASE_URL": (
                f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                f"@127.0.0.1:{env['POSTGRES_HOST_PORT']}/pausewire"
            ),
            "PREFECT_API_URL": f"http://127.0.0.1:{env['PREFECT_HOST_PORT']}/api",
            "REDIS_URL": f"redis://127.0.0.1:{env['REDIS_HOST_PORT']}/0",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{env['KAFKA_HOST_PORT']}",
        }


@pytest.fixture(scope="session")
def stack() -> Iterator[StackEnv]:
    """The running stack; its settings are also exported to this process."""
    if _docker_available() and os.environ.get("PAUSEWIRE_TEST_STACK") != "native":
        source: Iterator[dict[str, str]] = _compose_stack()
        values = next(source)
    else:
        source, values = iter(()), _native_stack()
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield StackEnv(values)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for _ in source:
            pass


@pytest.fixture
def correlation_id() -> str:
    """A fresh correlation id, so no test sees another test's events."""
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def admin_conn(stack: StackEnv) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_conn(stack: StackEnv) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(stack.app_dsn) as conn:
        yield conn


class TopicReader:
    """Reads topics from their current end, with read_committed isolation.

    Positions are taken when the reader is made, so a test sees only what
    happens after it started, whatever earlier runs left in the topics.
    """

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        metadata = self.consumer.list_topics(timeout=10)
        assignment = []
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                assignment.append(TopicPartition(topic, partition, high))
        self.consumer.assign(assignment)

    def collect(
        self,
        want: Callable[[Message], bool],
        *,
        count: int = 1,
        timeout_s: float = 30.0,
    ) -> list[Message]:
        """Messages matching `want`, until `count` arrived or the deadline."""
        found: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            message = self.consumer.poll(0.2)
            if message is None or message.error():
                continue
            if want(message):
                found.append(message)
        return found

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader(stack: StackEnv) -> Iterator[Callable[[list[str]], TopicReader]]:
    readers: list[TopicReader] = []

    def make(topics: list[str]) -> TopicReader:
        reader = TopicReader(stack.kafka, topics)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


def keyed(correlation_id: str) -> Callable[[Message], bool]:
    """Matches messages whose key is exactly the correlation id's bytes."""
    key = correlation_id.encode()
    return lambda message: message.key() == key


def value_json(message: Message) -> dict[str, object]:
    raw = message.value()
    assert raw is not None, "expected a value, got a tombstone"
    decoded: dict[str, object] = json.loads(raw)
    return decoded


@pytest.fixture(scope="session")
def prefect_api(stack: StackEnv) -> Iterator[str]:
    """Points Prefect, already imported with other settings, at the stack."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        yield stack.prefect_api


@pytest.fixture
def pausing(stack: StackEnv, prefect_api: str, monkeypatch) -> Iterator[None]:
    """PREFECT_PAUSE_ENABLED=true for one test, with fresh settings."""
    from outbox.settings import get_settings

    monkeypatch.setenv("PREFECT_PAUSE_ENABLED", "true")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def wait_for(what: str, probe: Callable[[], object], timeout_s: float = 15.0) -> object:
    """Polls `probe` until it returns something truthy; fails with `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def handle_row(dsn: str, correlation_id: str) -> dict[str, object] | None:
    """The newest handle of a correlation id, as a dict, or None."""
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM flow_resume_handles WHERE correlation_id = %s "
            "ORDER BY created_at DESC LIMIT 1",
            (correlation_id,),
        ).fetchone()
