"""Start-up times of the native stack and commit -> Kafka latency through CDC.

    .venv/bin/python -m tests.benchmarks.bench_stack [--changes 300] [--starts 3]
        [--cold]

Warm start: `down` then `up` with jars and data in place. Cold start
(`--cold`): the stack folder purged first, so jars are copied again from
Maven's local repository and Postgres and Kafka are initialised anew.
Latency: each handle change is one committed transaction; the clock runs
from the commit's return to the change event's arrival at a read_committed
consumer. Half the changes are inserts, half status updates.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

from tests.benchmarks.stats import summary

REPO = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, str(REPO / "compose" / "native.py")]
HANDLE_TOPIC = "pausewire.public.flow_resume_handles"


def time_up() -> float:
    start = time.monotonic()
    subprocess.run([*RUNNER, "up"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def measure_starts(starts: int, cold: bool) -> None:
    if cold:
        subprocess.run(
            [*RUNNER, "down", "--purge"], check=True, stdout=subprocess.DEVNULL
        )
        print(summary("cold start (stack folder purged)", [time_up()]))
    warm = []
    for _ in range(starts):
        subprocess.run([*RUNNER, "down"], check=True, stdout=subprocess.DEVNULL)
        warm.append(time_up())
    if warm:
        print(summary("warm start (down, then up)", warm))


def stack_env() -> dict[str, str]:
    stack_dir = Path(os.environ.get("PAUSEWIRE_STACK_DIR", REPO / ".stack"))
    lines = (stack_dir / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _consumer_at_end(bootstrap: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    partitions = (
        consumer.list_topics(HANDLE_TOPIC, timeout=10).topics[HANDLE_TOPIC].partitions
    )
    assignment = []
    for p in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(HANDLE_TOPIC, p))
        assignment.append(TopicPartition(HANDLE_TOPIC, p, high))
    consumer.assign(assignment)
    return consumer


def measure_cdc(env: dict[str, str], changes: int) -> None:
    consumer = _consumer_at_end(env["KAFKA_BOOTSTRAP_SERVERS"])
    committed: dict[bytes, float] = {}
    latencies: list[float] = []
    run = uuid.uuid4().hex[:8]

    def write() -> None:
        with psycopg.connect(env["PAUSEWIRE_DATABASE_URL"], autocommit=True) as conn:
            for i in range(changes // 2):
                cid = f"bench-{run}-{i}"
                conn.execute(
                    "INSERT INTO flow_resume_handles (correlation_id, flow_run_id, "
                    "timeout_seconds, expires_at) VALUES (%s, gen_random_uuid(), 60, "
                    "now() + interval '1 minute')",
                    (cid,),
                )
                committed[f"{cid}:PENDING_PAUSE".encode()] = time.monotonic()
                time.sleep(0.02)
                conn.execute(
                    "UPDATE flow_resume_handles SET status = 'PAUSED' "
                    "WHERE correlation_id = %s",
                    (cid,),
                )
                committed[f"{cid}:PAUSED".encode()] = time.monotonic()
                time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 60 + changes * 0.1
    while len(latencies) < (changes // 2) * 2 and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is None or message.error() or not message.key():
            continue
        arrived = time.monotonic()
        if not message.key().startswith(f"bench-{run}-".encode()):
            continue
        paused = b'"status":"PAUSED"' in message.value()
        status = b"PAUSED" if paused else b"PENDING_PAUSE"
        sent = committed.get(message.key() + b":" + status)
        if sent is not None:
            latencies.append(arrived - sent)
    writer.join()
    consumer.close()
    print(summary("commit -> Kafka (Debezium, read_committed)", latencies))
    lost = (changes // 2) * 2 - len(latencies)
    print(f"{'changes not seen before the deadline':<44} {lost}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    measure_starts(args.starts, args.cold)
    measure_cdc(stack_env(), args.changes)


if __name__ == "__main__":
    main()
