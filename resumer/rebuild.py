"""`python -m resumer replay`: rebuild the state from Kafka, compare with Postgres.

Reads every partition of the change topic to its end and the callback
topic to the group's committed offsets, as a starting worker does; refills
the Redis cache on the way; then compares what the topics say with the
handle rows and the parked early callbacks in Postgres, and prints every
difference. Exit 0 when they agree, 1 when they do not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from psycopg.rows import dict_row

from outbox.settings import Settings
from outbox.store import get_store
from resumer.cache import HandleCache, HandleView
from resumer.events import payload_problem
from resumer.replay import Rebuilt, join_config, rebuild_partition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Difference:
    correlation_id: str
    what: str
    topics: object
    postgres: object

    def __str__(self) -> str:
        return (
            f"{self.correlation_id}: {self.what} differs; topics say "
            f"{self.topics!r}, Postgres says {self.postgres!r}"
        )


def committed_offsets(settings: Settings, partitions: list[int]) -> dict[int, int]:
    """The group's committed callback offsets, without joining the group."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
        }
    )
    try:
        tps = [TopicPartition(settings.callback_topic, p) for p in partitions]
        return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps)}
    finally:
        consumer.close()


def rebuild_all(settings: Settings, cache: HandleCache | None) -> list[Rebuilt]:
    """Every partition's state, rebuilt from the topics."""
    probe = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "probe"}
    )
    try:
        metadata = probe.list_topics(settings.handle_topic, timeout=10)
        partitions = sorted(metadata.topics[settings.handle_topic].partitions)
    finally:
        probe.close()
    offsets = committed_offsets(settings, partitions)
    config = join_config(settings)
    return [
        rebuild_partition(
            settings,
            p,
            offsets.get(p, 0),
            validate=payload_problem,
            refill=cache.put if cache else None,
            config=config,
        )
        for p in partitions
    ]


def compare(
    rebuilt: list[Rebuilt],
    store_rows: dict[str, dict[str, Any]],
    parked: dict[str, Any],
) -> list[Difference]:
    """What the topics and Postgres disagree on."""
    views: dict[str, HandleView] = {}
    early: dict[str, Any] = {}
    for part in rebuilt:
        views.update(part.views)
        for cid, state in part.join.snapshot().states.items():
            if state.early_since is not None and state.held is not None:
                early[cid] = state.held.payload
    differences = []
    for cid in sorted(set(views) | set(store_rows)):
        view, row = views.get(cid), store_rows.get(cid)
        topics = (view.handle_id, view.status, view.resume_payload) if view else None
        postgres = (
            (str(row["id"]), str(row["status"]), row["resume_payload"]) if row else None
        )
        if topics != postgres:
            differences.append(Difference(cid, "latest handle", topics, postgres))
    for cid in sorted(set(early) | set(parked)):
        if early.get(cid) != parked.get(cid):
            differences.append(
                Difference(cid, "early callback", early.get(cid), parked.get(cid))
            )
    return differences


def _postgres_state() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    store = get_store()
    with store.pool.connection() as conn:
        conn.row_factory = dict_row
        rows = conn.execute(
            "SELECT DISTINCT ON (correlation_id) * FROM flow_resume_handles "
            "ORDER BY correlation_id, created_at DESC"
        ).fetchall()
        parked = conn.execute(
            "SELECT correlation_id, payload FROM early_callbacks"
        ).fetchall()
    return (
        {str(r["correlation_id"]): r for r in rows},
        {str(r["correlation_id"]): r["payload"] for r in parked},
    )


def run_replay(settings: Settings) -> int:
    """The `replay` command; returns the exit code."""
    store = get_store()
    cache = HandleCache(store.pool, settings.redis_url)
    rebuilt = rebuild_all(settings, cache)
    rows, parked = _postgres_state()
    differences = compare(rebuilt, rows, parked)
    handles = sum(len(r.views) for r in rebuilt)
    for difference in differences:
        print(f"DIFF {difference}")
    print(
        f"Replayed {len(rebuilt)} partition(s): {handles} correlation id(s) from "
        f"the change log, {len(parked)} early callback(s) in Postgres; "
        f"{len(differences)} difference(s); Redis cache refilled"
    )
    return 1 if differences else 0
