"""Creates pausewire's Kafka topics and checks that they are co-partitioned.

The resumer joins the handle change topic with the callback topic by
partition: a correlation id must hash to the same partition number on both,
which holds only while both topics have the same partition count and both
producers hash keys with murmur2 (Kafka's Java default, which Debezium
uses). `pausewire-topics` creates missing topics with one count for all and
refuses to go on when existing topics disagree.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import Future

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from outbox.errors import ConfigurationError
from outbox.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# The shapes confluent-kafka uses for message headers.
HeaderValue = str | bytes | None
Headers = dict[str, HeaderValue] | list[tuple[str, HeaderValue]]

# Producers of callbacks must partition like Kafka's Java client does, or a
# callback lands on another partition than its handle's change events.
PARTITIONER = "murmur2_random"

# How often to look again for topics just created.
METADATA_POLL_SECONDS = 0.1


def topic_names(settings: Settings) -> list[str]:
    """Every topic pausewire reads or writes."""
    return [
        settings.handle_topic,
        settings.callback_topic,
        settings.outbox_topic,
        settings.dlq_topic,
    ]


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Creates missing topics; returns each topic's partition count."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    counts = partition_counts(admin, timeout_s)
    missing = [t for t in topic_names(settings) if t not in counts]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, settings.kafka_partitions) for t in missing],
            request_timeout=timeout_s,
        )
        for topic, future in futures.items():
            _created(topic, future)
        counts = _await_metadata(admin, topic_names(settings), timeout_s)
    check_copartitioned(settings, counts)
    return {t: counts[t] for t in topic_names(settings)}


def _created(topic: str, future: Future[None]) -> None:
    try:
        future.result()
        logger.info("Created topic %s", topic)
    except KafkaException as exc:
        # Another process may have created it between our look and our
        # request; that is the outcome we wanted.
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def _await_metadata(
    admin: AdminClient, topics: list[str], timeout_s: float
) -> dict[str, int]:
    # A created topic reaches the broker's metadata cache a moment after the
    # controller confirms it, and its partitions get leaders a moment after
    # that: a look straight after creation can miss either.
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        absent = [
            name
            for name in topics
            if name not in metadata.topics
            or not metadata.topics[name].partitions
            or any(p.leader < 0 for p in metadata.topics[name].partitions.values())
        ]
        if not absent:
            return _counts(metadata)
        if time.monotonic() >= deadline:
            raise ConfigurationError(
                f"Kafka created {', '.join(absent)} but its metadata still lacks "
                f"them or their partition leaders after {timeout_s:g} s; see the "
                "kafka log"
            )
        time.sleep(METADATA_POLL_SECONDS)


def partition_counts(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    """Partition count of every topic the cluster knows."""
    return _counts(admin.list_topics(timeout=timeout_s))


def _counts(metadata: ClusterMetadata) -> dict[str, int]:
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def check_copartitioned(settings: Settings, counts: dict[str, int]) -> None:
    """Raises when the two joined topics differ in partition count."""
    handle = counts.get(settings.handle_topic)
    callback = counts.get(settings.callback_topic)
    if handle is not None and callback is not None and handle != callback:
        raise ConfigurationError(
            f"topic {settings.handle_topic} has {handle} partitions but "
            f"{settings.callback_topic} has {callback}; the resumer joins them by "
            "partition, so they must match (recreate one, or add partitions to "
            "the smaller one before any callback is produced)"
        )


def main() -> int:
    """Command line: create missing topics and print their partition counts."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        counts = ensure_topics(get_settings())
    except ConfigurationError as exc:
        logger.error("pausewire-topics: %s", exc)
        return 1
    for topic, count in counts.items():
        print(f"{topic} partitions={count}")
    return 0


def header_map(headers: Headers | None) -> dict[str, bytes]:
    """A message's headers as one dict; a repeated name keeps its last value.

    confluent-kafka hands headers over as a list of pairs whose values may be
    bytes, str or None; every reader of pausewire wants bytes by name.
    """
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    result: dict[str, bytes] = {}
    for name, value in pairs:
        result[name] = value.encode() if isinstance(value, str) else value or b""
    return result


if __name__ == "__main__":
    sys.exit(main())
