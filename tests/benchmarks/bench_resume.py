"""Resume latency and throughput through the whole pipeline.

    .venv/bin/python -m tests.benchmarks.bench_resume [--waits 60] [--early 20]
        [--throughput 100] [--flow-threads 50]

Needs the running stack (`compose/native.py up` with no resumer of its
own). One resumer process (`python -m resumer`) runs with a consumer group
of its own, skipped to the end of the callbacks; flows wait in threads of
this process. Callbacks go to Kafka from one long-lived producer, so a
produce is not charged with a connection set-up. They go to a callback
topic of the benchmark's own (dead letters too), co-partitioned with the
handle topic like `genesis.callbacks`: tests and resumers that share the
stack then neither see nor race the benchmark's callbacks.

"Prefect accepted" is the timestamp of the run's Running state right after
its Paused one, read from Prefect after the fact. Prefect stamps a state
when its server builds it, on this machine's clock, so it is compared with
`time.time()` here.

1. Latency, one wait at a time: the callback is produced once the
   handle's PAUSED change is on Kafka (the resumer reads the same topic),
   as for any answer that comes after the pause. Callback produced ->
   Prefect accepted, and -> the flow's first line after the helper.
2. Early callback: produced before the flow starts, so it waits in the
   resumer for the handle. PAUSED committed (Debezium's source timestamp)
   -> Prefect accepted, and callback produced -> Prefect accepted.
3. Throughput, in batches of `--flow-threads` waits: all paused, then
   (a) resumed straight through Prefect's API by 8 threads (the resumer's
   own Prefect call and RESUMED mark, without Kafka, join or lock), or
   (b) one callback each, all produced at once. Rate = runs / (first
   resume request or produce -> last Prefect acceptance), over all
   batches. Every run must show exactly one Paused -> Running transition.
4. Where the time goes: Kafka produce -> readable by a consumer of our
   own, the resumer's histograms and counters (deltas per phase; the
   resumer also reads the handle changes of anything else using the
   stack), and the cores kept busy by the resumer, Prefect's server,
   Postgres, this process (flows, direct path) and the whole machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from psycopg.rows import dict_row

from flows.pause import wait_for_user_input
from outbox.settings import get_settings
from outbox.store import get_store
from outbox.topics import PARTITIONER, ensure_topics
from resumer.prefect_api import Outcome, PrefectResumer
from tests.benchmarks.bench_stack import stack_env
from tests.benchmarks.stats import summary
from tests.integration.resumers import ResumerProcess
from tests.integration.waits import FlowRunner

REPO = Path(__file__).resolve().parents[2]

# The benchmark's own callback and dead-letter topics, made like the
# product's by `ensure_topics` (same partition count as the handle topic).
BENCH_TOPICS = {
    "PAUSEWIRE_CALLBACK_TOPIC": "bench.callbacks",
    "KAFKA_DLQ_TOPIC": "bench.dlq.callbacks",
}

# Every wait is answered within seconds; one left unanswered (the run
# failed half-way) ends on its own after this, so the process always exits.
WAIT_TIMEOUT_SECONDS = 120
STEP_TIMEOUT_SECONDS = 30.0
# After the PAUSED change is on Kafka, time for the resumer (which polls
# the same topic with fetch.wait.max.ms=10) to have read it too.
SETTLE_SECONDS = 0.1
# Phases 1 and 2 stop starting waits after these, whatever their counts.
LATENCY_BUDGET_SECONDS = 100.0
EARLY_BUDGET_SECONDS = 60.0
WARM_UP_WAITS = 2
DIRECT_THREADS = 8

# When each flow ran and what it got, by correlation id: Prefect copies a
# flow's parameters, so the flow cannot report through an argument.
MARKS: dict[str, dict[str, Any]] = {}


@flow(persist_result=False)
def answered_wait(key: str) -> None:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    MARKS[key]["flow_run_id"] = context.flow_run.id
    answer = wait_for_user_input(key, timeout_seconds=WAIT_TIMEOUT_SECONDS)
    MARKS[key]["continued"] = time.time()
    MARKS[key]["answer"] = answer.additional_data.get("key")


def answer_of(key: str) -> dict[str, Any]:
    """The callback's result; carries its key so the flow's answer is checked."""
    return {"user_response": "yes", "additional_data": {"key": key}, "skipped": False}


# ---- Kafka: our producer and our own view of both topics


class Callbacks:
    """One producer for the whole run; a produce pays no connection set-up."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                # Must match Kafka's Java client, or the callback lands on
                # another partition than its handle's changes.
                "partitioner": PARTITIONER,
                "linger.ms": 0,
            }
        )

    def send(self, keys: list[str]) -> float:
        """Produces one callback per key at once; returns when the first went."""
        started = time.time()
        for key in keys:
            body = {"correlation_id": key, "result": answer_of(key)}
            self._producer.produce(
                self._topic, key=key.encode(), value=json.dumps(body).encode()
            )
        if self._producer.flush(STEP_TIMEOUT_SECONDS) != 0:
            raise RuntimeError(f"{len(keys)} callback(s) not delivered in time")
        return started


def topic_ends(consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
    """The current end of every partition of `topics`."""
    # Metadata of all topics: asking for one by name could auto-create it.
    metadata = consumer.list_topics(timeout=10)
    ends = []
    for topic in topics:
        for number in metadata.topics[topic].partitions:
            tp = TopicPartition(topic, number)
            high = consumer.get_watermark_offsets(tp, timeout=10)[1]
            ends.append(TopicPartition(topic, number, high))
    return ends


def skip_to_end(bootstrap: str, group: str, topic: str) -> None:
    """Commits the topic's ends for a new group, so it skips older callbacks."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(offsets=topic_ends(consumer, [topic]), asynchronous=False)
    finally:
        consumer.close()


@dataclass(frozen=True)
class Seen:
    arrived: float
    # Debezium's source timestamp (the commit in Postgres) for handle changes.
    committed: float | None = None


class TopicWatch:
    """Records when our callbacks and handle changes become readable."""

    def __init__(self, bootstrap: str, topics: tuple[str, str], prefix: str) -> None:
        self.seen: dict[tuple[str, str], Seen] = {}
        self._callback_topic = topics[0]
        self._prefix = prefix.encode()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-watch-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 5,
            }
        )
        self._consumer.assign(topic_ends(self._consumer, list(topics)))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error() or message.value() is None:
                continue
            arrived = time.time()
            key = message.key() or b""
            if not key.startswith(self._prefix):
                continue
            if message.topic() == self._callback_topic:
                self.seen.setdefault((key.decode(), "callback"), Seen(arrived))
                continue
            change = json.loads(message.value() or b"{}")
            committed = change.get("__source_ts_ms")
            self.seen.setdefault(
                (key.decode(), str(change.get("status"))),
                Seen(arrived, committed / 1000 if committed else None),
            )

    def wait(self, keys: Iterable[str], what: str, timeout_s: float) -> None:
        """Until every key's `what` (callback or a status) was seen."""
        deadline = time.monotonic() + timeout_s
        missing = [k for k in keys if (k, what) not in self.seen]
        while missing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} key(s) never showed {what}")
            time.sleep(0.005)
            missing = [k for k in missing if (k, what) not in self.seen]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


# ---- what the resumer and the server report


def scrape(port: int) -> dict[str, float]:
    """Every sample of the resumer's /metrics, by name and labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histogram_line(label: str, samples: dict[str, float], name: str) -> str:
    """Count, mean and bucket-bound percentiles of a histogram's delta."""
    count = samples.get(f"{name}_count", 0.0)
    if not count:
        return f"{label:<44} n=0"
    buckets = sorted(
        (float(key.split('le="')[1].rstrip('"}')), value)
        for key, value in samples.items()
        if key.startswith(f"{name}_bucket{{")
    )

    def bound(q: float) -> str:
        le = next(le for le, n in buckets if n >= q * count)
        return "+Inf" if le == float("inf") else f"{le * 1000:g} ms"

    mean_ms = samples.get(f"{name}_sum", 0.0) / count * 1000
    return (
        f"{label:<44} n={count:<5.0f} mean={mean_ms:8.1f} ms  "
        f"p50<={bound(0.5)}  p90<={bound(0.9)}  p99<={bound(0.99)}"
    )


QUOTE_BRACE = '"}'


def labelled(samples: dict[str, float], name: str) -> str:
    """A labelled counter's non-zero deltas, as `label=value` pairs."""
    pairs = [
        f"{key.partition('=')[2].strip(QUOTE_BRACE)}={value:.0f}"
        for key, value in sorted(samples.items())
        if key.startswith(f"{name}{{") and value
    ]
    return ", ".join(pairs) or "none"


def cpu_seconds(pid: int | None, children: bool = False) -> float:
    """User plus system CPU time of a process (0 when it cannot be read).

    With `children`, plus that of its children that exited and were waited
    for: a Postgres backend's time moves to the postmaster when it ends.
    """
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command's closing parenthesis; utime, stime, cutime
    # and cstime are the 14th to 17th of the whole line.
    fields = stat.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def prefect_server_pid() -> int | None:
    """The stack's Prefect server, from the native runner's pid file."""
    stack_dir = Path(os.environ.get("PAUSEWIRE_STACK_DIR", REPO / ".stack"))
    try:
        pid = int((stack_dir / "run" / "prefect.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"prefect" in cmdline else None


def postgres_cpu_seconds() -> float:
    """CPU time of every Postgres process: both databases, all backends."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in line:
            total += cpu_seconds(int(stat.parent.name), children=True)
    return total


def machine_busy_seconds() -> float:
    """CPU time spent by all cores on anything but idling or waiting for I/O."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    # guest time is already counted in user time.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Where the machine's CPU went between each `start` and `stop`.

    The resumer, Prefect's server, Postgres and this process (the flows and
    the direct path) share two cores with Kafka and Connect.
    """

    NAMES = ("resumer", "prefect server", "postgres", "flows", "machine")

    def __init__(self, resumer_pid: int, server_pid: int | None) -> None:
        self.probes: list[Callable[[], float]] = [
            lambda: cpu_seconds(resumer_pid),
            lambda: cpu_seconds(server_pid),
            postgres_cpu_seconds,
            lambda: cpu_seconds(os.getpid()),
            machine_busy_seconds,
        ]
        self.wall = 0.0
        self.cpu = [0.0] * len(self.probes)
        self._started = 0.0
        self._before: list[float] = []

    def start(self) -> None:
        self._started = time.monotonic()
        self._before = [probe() for probe in self.probes]

    def stop(self) -> None:
        self.wall += time.monotonic() - self._started
        for n, probe in enumerate(self.probes):
            self.cpu[n] += probe() - self._before[n]

    def line(self, label: str) -> str:
        cores = ", ".join(
            f"{name} {cpu / self.wall:.2f}"
            for name, cpu in zip(self.NAMES, self.cpu, strict=True)
        )
        return f"{label:<44} wall={self.wall:5.1f} s  cores busy: {cores}"


# ---- flows and their runs


@dataclass
class Phase:
    """The waits of one phase, and the resumer's metrics before it."""

    name: str
    run: str
    flows: dict[str, Future[Any]] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def key(self, i: int) -> str:
        return f"bench-resume-{self.run}-{self.name}-{i}"


def start_waits(runner: FlowRunner, phase: Phase, keys: list[str]) -> None:
    for key in keys:
        MARKS[key] = {}
        phase.flows[key] = runner.submit(answered_wait, key)


def all_continued(keys: list[str], timeout_s: float) -> None:
    """Until every flow got its answer (before it goes on to complete)."""
    deadline = time.monotonic() + timeout_s
    while not all("continued" in MARKS[key] for key in keys):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all of {len(keys)} flows continued in time")
        time.sleep(0.005)


def finish(phase: Phase, keys: Iterable[str]) -> None:
    for key in keys:
        phase.flows[key].result(timeout=WAIT_TIMEOUT_SECONDS + 30)


def handles(dsn: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The newest handle of each key that has one."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (correlation_id) * FROM flow_resume_handles "
            "WHERE correlation_id = ANY(%s) ORDER BY correlation_id, created_at DESC",
            (keys,),
        ).fetchall()
    return {row["correlation_id"]: row for row in rows}


def all_paused(dsn: str, keys: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = handles(dsn, keys)
        if sum(row["status"] == "PAUSED" for row in rows.values()) == len(keys):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all of {len(keys)} handles PAUSED in time")
        time.sleep(0.1)


def acceptances(keys: Iterable[str]) -> dict[str, list[float]]:
    """Each run's Paused -> Running transitions: when Prefect accepted them."""
    found: dict[str, list[float]] = {}
    with get_client(sync_client=True) as client:
        for key in keys:
            states = sorted(
                client.read_flow_run_states(MARKS[key]["flow_run_id"]),
                key=lambda state: state.timestamp,
            )
            found[key] = [
                now.timestamp.timestamp()
                for before, now in itertools.pairwise(states)
                if before.is_paused() and now.is_running()
            ]
    return found


def once_each(accepted: dict[str, list[float]]) -> tuple[dict[str, float], int]:
    """The single acceptance of each run, and how many runs had another count."""
    odd = sum(len(times) != 1 for times in accepted.values())
    return {k: times[0] for k, times in accepted.items() if times}, odd


def check_answers(keys: Iterable[str]) -> int:
    """How many flows continued with another callback's answer, or none."""
    return sum(MARKS[key].get("answer") != key for key in keys)


# ---- the phases


def measure_latency(
    runner: FlowRunner,
    phase: Phase,
    callbacks: Callbacks,
    watch: TopicWatch,
    waits: int,
) -> None:
    """One wait at a time; the callback goes once the resumer can know PAUSED."""
    deadline = time.monotonic() + LATENCY_BUDGET_SECONDS
    for i in range(waits + WARM_UP_WAITS):
        if time.monotonic() > deadline:
            print(f"latency budget spent after {i} waits")
            break
        key = phase.key(i)
        start_waits(runner, phase, [key])
        watch.wait([key], "PAUSED", STEP_TIMEOUT_SECONDS)
        time.sleep(SETTLE_SECONDS)
        phase.sent[key] = callbacks.send([key])
        finish(phase, [key])


def measure_early(
    runner: FlowRunner,
    phase: Phase,
    callbacks: Callbacks,
    watch: TopicWatch,
    waits: int,
) -> None:
    """The callback first; the flow starts once it is readable on Kafka."""
    deadline = time.monotonic() + EARLY_BUDGET_SECONDS
    for i in range(waits):
        if time.monotonic() > deadline:
            print(f"early-callback budget spent after {i} waits")
            break
        key = phase.key(i)
        MARKS[key] = {}
        phase.sent[key] = callbacks.send([key])
        watch.wait([key], "callback", STEP_TIMEOUT_SECONDS)
        time.sleep(SETTLE_SECONDS)
        start_waits(runner, phase, [key])
        finish(phase, [key])


def batches(count: int, size: int) -> list[range]:
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


@dataclass
class ResumePath:
    """One resume path of the throughput phase, summed over its batches."""

    phase: Phase
    meter: CpuMeter
    # Runs, and seconds from the first request or produce to the last
    # Prefect acceptance, of each batch.
    batches: list[tuple[int, float]] = field(default_factory=list)
    # The resumer's CPU over whole batches, pausing and change reading too.
    resumer_cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Runs resumed per second, over all batches."""
        runs = sum(count for count, _ in self.batches)
        return runs / sum(seconds for _, seconds in self.batches)


class Throughput:
    """Batches of paused runs, resumed by the two paths in turn.

    Taking turns, both paths share whatever else the machine is doing.
    """

    def __init__(
        self,
        runner: FlowRunner,
        callbacks: Callbacks,
        watch: TopicWatch,
        dsn: str,
        pids: tuple[int, int | None],
        run: str,
    ) -> None:
        self.runner, self.callbacks, self.watch = runner, callbacks, watch
        self.dsn, self.resumer_pid = dsn, pids[0]
        self.direct = ResumePath(Phase("direct", run), CpuMeter(*pids))
        self.pipeline = ResumePath(Phase("pipeline", run), CpuMeter(*pids))
        self.calls: list[float] = []
        self._prefect = PrefectResumer()

    def run(self, count: int, size: int, pool: ThreadPoolExecutor) -> None:
        # Through FlowRunner: a thread without this one's Prefect settings
        # would start a throwaway local server and resume nothing.
        resumers = FlowRunner(pool)
        for numbers in batches(count, size):
            self._batch(self.direct, numbers, lambda keys: self._direct(keys, resumers))
            self._batch(self.pipeline, numbers, self.callbacks.send)

    def _batch(
        self, path: ResumePath, numbers: range, resume: Callable[[list[str]], float]
    ) -> None:
        """Pauses a batch, resumes it with `resume`, waits for every flow."""
        keys = [path.phase.key(i) for i in numbers]
        resumer_before = cpu_seconds(self.resumer_pid)
        start_waits(self.runner, path.phase, keys)
        all_paused(self.dsn, keys, STEP_TIMEOUT_SECONDS + len(keys))
        self.watch.wait(keys, "PAUSED", STEP_TIMEOUT_SECONDS)
        time.sleep(SETTLE_SECONDS)

        path.meter.start()
        started = resume(keys)
        all_continued(keys, STEP_TIMEOUT_SECONDS * 2)
        path.meter.stop()

        finish(path.phase, keys)
        self.watch.wait(keys, "RESUMED", STEP_TIMEOUT_SECONDS)
        time.sleep(SETTLE_SECONDS)
        path.resumer_cpu += cpu_seconds(self.resumer_pid) - resumer_before
        path.phase.sent.update(dict.fromkeys(keys, started))
        accepted, _ = once_each(acceptances(keys))
        path.batches.append((len(keys), max(accepted.values()) - started))

    def _direct(self, keys: list[str], resumers: FlowRunner) -> float:
        """The resumer's Prefect call and RESUMED mark, 8 at a time."""
        rows = handles(self.dsn, keys)
        started = time.time()
        for done in [resumers.submit(self._resume, rows[key]) for key in keys]:
            done.result(timeout=STEP_TIMEOUT_SECONDS * 2)
        return started

    def _resume(self, row: dict[str, Any]) -> None:
        payload = answer_of(row["correlation_id"])
        response_key = row["resume_handle"]["keyset"]["response"]
        called = time.monotonic()
        result = self._prefect.resume(str(row["flow_run_id"]), payload, response_key)
        self.calls.append(time.monotonic() - called)
        if result.outcome is not Outcome.RESUMED:
            raise RuntimeError(f"direct resume refused: {result.detail}")
        get_store().mark_resumed(row["id"], payload)


# ---- reporting


def report(label: str, seconds: list[float]) -> None:
    print(summary(label, seconds) if seconds else f"{label:<44} n=0")


def report_resumer(phase: Phase, after: dict[str, float]) -> None:
    changed = delta(phase.metrics, after)
    print(
        histogram_line(
            "  resumer: kafka timestamp -> resume done",
            changed,
            "prefect_resume_latency_seconds",
        )
    )
    print(
        histogram_line("  resumer: lock wait", changed, "pausewire_lock_wait_seconds")
    )
    print(
        histogram_line(
            "  resumer: commit -> change read (CDC)",
            changed,
            "pausewire_cdc_delay_seconds",
        )
    )
    hits = changed.get("pausewire_cache_hits_total", 0.0)
    misses = changed.get("pausewire_cache_misses_total", 0.0)
    print(
        f"{'  resumer: cache hits / misses':<44} {hits:.0f} / {misses:.0f};  "
        f"decisions: {labelled(changed, 'pausewire_callbacks_total')};  "
        f"resume failures: {changed.get('prefect_resume_failures_total', 0):.0f};  "
        f"dead letters: {labelled(changed, 'pausewire_dlq_messages_total')}"
    )


def report_exactly_once(phase: Phase, accepted: dict[str, list[float]]) -> None:
    keys = list(phase.flows)
    _, odd = once_each(accepted)
    rows = handles(get_settings().database_url.get_secret_value(), keys)
    not_resumed = sum(rows.get(k, {}).get("status") != "RESUMED" for k in keys)
    print(
        f"{'  runs / not exactly one Paused->Running':<44} {len(keys)} / {odd};  "
        f"handles not RESUMED: {not_resumed};  wrong answers: {check_answers(keys)}"
    )


def report_latency(phase: Phase, watch: TopicWatch, after: dict[str, float]) -> None:
    keys = [phase.key(i) for i in range(WARM_UP_WAITS, len(phase.flows))]
    accepted = acceptances(phase.flows)
    times, _ = once_each(accepted)
    sent = {k: phase.sent[k] for k in keys}
    kafka = {k: watch.seen[(k, "callback")].arrived for k in keys}
    print(f"1. latency, one wait at a time ({WARM_UP_WAITS} warm-up waits not counted)")
    report(
        "  callback produced -> Prefect accepted", [times[k] - sent[k] for k in keys]
    )
    report(
        "  callback produced -> flow continues",
        [MARKS[k]["continued"] - sent[k] for k in keys],
    )
    report("  produced -> readable on Kafka", [kafka[k] - sent[k] for k in keys])
    report(
        "  readable on Kafka -> Prefect accepted", [times[k] - kafka[k] for k in keys]
    )
    report(
        "  Prefect accepted -> flow continues",
        [MARKS[k]["continued"] - times[k] for k in keys],
    )
    report_resumer(phase, after)
    report_exactly_once(phase, accepted)


def report_early(phase: Phase, watch: TopicWatch, after: dict[str, float]) -> None:
    keys = list(phase.flows)
    accepted = acceptances(keys)
    times, _ = once_each(accepted)
    paused = {k: watch.seen[(k, "PAUSED")].committed or 0.0 for k in keys}
    print("2. early callback, produced before the flow starts")
    report(
        "  PAUSED committed -> Prefect accepted", [times[k] - paused[k] for k in keys]
    )
    report(
        "  callback produced -> Prefect accepted",
        [times[k] - phase.sent[k] for k in keys],
    )
    report(
        "  PAUSED committed -> change readable",
        [watch.seen[(k, "PAUSED")].arrived - paused[k] for k in keys],
    )
    report_resumer(phase, after)
    report_exactly_once(phase, accepted)


def rate_line(label: str, path: ResumePath) -> str:
    count = sum(runs for runs, _ in path.batches)
    batches = ", ".join(f"{runs / spent:.1f}" for runs, spent in path.batches)
    return f"{label:<44} {count} runs, {path.rate:5.1f} /s (per batch: {batches} /s)"


def report_throughput(tp: Throughput, size: int, after: dict[str, float]) -> None:
    direct, pipeline = tp.direct, tp.pipeline
    count = len(direct.phase.flows)
    print(
        f"3. throughput, {count} runs per path, paused {size} at a time, "
        "batches of (a) and (b) in turn"
    )
    print(rate_line(f"  (a) Prefect API directly, {DIRECT_THREADS} threads", direct))
    report("  (a) one resume call, under that load", tp.calls)
    report_exactly_once(direct.phase, acceptances(direct.phase.flows))
    print(direct.meter.line("  (a) first request -> all flows continued"))
    print(rate_line("  (b) Kafka -> resumer -> Prefect", pipeline))
    report_exactly_once(pipeline.phase, acceptances(pipeline.phase.flows))
    print(pipeline.meter.line("  (b) first produce -> all flows continued"))
    report_resumer(pipeline.phase, after)
    ratio = pipeline.rate / direct.rate
    per_wait = [path.resumer_cpu / count * 1000 for path in (pipeline, direct)]
    print(
        f"{'  (b) / (a)':<44} {ratio:.0%};  resumer CPU per wait: "
        f"{per_wait[0]:.1f} ms in (b), {per_wait[1]:.1f} ms in (a) (reading "
        "changes only)"
    )


# ---- the run


def log_summary(log: Path) -> str:
    """Warnings, errors and resumes found done already, in the resumer's log.

    The resumer logs one JSON object a line to a file, or text lines.
    """
    levels: dict[str, int] = {}
    already = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            level, message = str(record["level"]), str(record["message"])
        except (ValueError, KeyError, TypeError):
            level, message = (line.split()[2:3] or [""])[0], line
        levels[level] = levels.get(level, 0) + 1
        already += "(already_resumed)" in message
    return (
        f"{'resumer log':<44} {levels.get('WARNING', 0)} warning(s), "
        f"{levels.get('ERROR', 0)} error(s), {already} resume(s) found done already"
    )


def rescue(dsn: str, phases: list[Phase]) -> None:
    """Resumes every wait still running, so that no flow is left behind.

    A few rounds, for flows that were still pausing; any left after that
    end with their timeout.
    """
    prefect, store = PrefectResumer(), get_store()
    for _ in range(3):
        left = [k for p in phases for k, done in p.flows.items() if not done.done()]
        if not left:
            return
        print(f"resuming {len(left)} wait(s) left behind")
        for key, row in handles(dsn, left).items():
            if row["status"] == "PAUSED":
                prefect.resume(str(row["flow_run_id"]), answer_of(key), None)
                store.mark_resumed(row["id"], answer_of(key))
        time.sleep(2)


def run_phases(
    args: argparse.Namespace,
    env: dict[str, str],
    resumer: ResumerProcess,
    watch: TopicWatch,
    runner: FlowRunner,
    run: str,
    phases: list[Phase],
) -> None:
    assert resumer.process is not None
    pids = (resumer.process.pid, prefect_server_pid())
    dsn = env["PAUSEWIRE_DATABASE_URL"]
    callbacks = Callbacks(env["KAFKA_BOOTSTRAP_SERVERS"], get_settings().callback_topic)

    idle = CpuMeter(*pids)
    idle.start()
    time.sleep(3)
    idle.stop()
    print(idle.line("idle, before the phases"))

    for name, measure, report, count in (
        ("latency", measure_latency, report_latency, args.waits),
        ("early", measure_early, report_early, args.early),
    ):
        phase = Phase(name, run, metrics=scrape(resumer.port))
        phases.append(phase)
        meter = CpuMeter(*pids)
        meter.start()
        measure(runner, phase, callbacks, watch, count)
        meter.stop()
        report(phase, watch, scrape(resumer.port))
        print(meter.line("  over the phase"))

    tp = Throughput(runner, callbacks, watch, dsn, pids, run)
    phases.extend([tp.direct.phase, tp.pipeline.phase])
    tp.pipeline.phase.metrics = scrape(resumer.port)
    with ThreadPoolExecutor(DIRECT_THREADS, thread_name_prefix="direct") as pool:
        tp.run(args.throughput, args.flow_threads, pool)
    report_throughput(tp, args.flow_threads, scrape(resumer.port))


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_resume")
    parser.add_argument("--waits", type=int, default=60)
    parser.add_argument("--early", type=int, default=20)
    parser.add_argument("--throughput", type=int, default=100)
    parser.add_argument(
        "--flow-threads",
        type=int,
        default=50,
        help="waits paused at once in the throughput phase",
    )
    args = parser.parse_args()
    print("command: python -m tests.benchmarks.bench_resume", *sys.argv[1:])
    # Stopped early, the run still resumes its waits and stops its resumer.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)

    env = stack_env()
    os.environ.update({**env, **BENCH_TOPICS, "PREFECT_PAUSE_ENABLED": "true"})
    get_settings.cache_clear()
    settings = get_settings()
    ensure_topics(settings)
    # The flows' INFO lines would bury the figures.
    logging.getLogger("prefect").setLevel(logging.WARNING)
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    group = f"bench-resumer-{run}"
    skip_to_end(settings.kafka_bootstrap_servers, group, settings.callback_topic)
    resumer_env = {
        **os.environ,
        "KAFKA_CONSUMER_GROUP": group,
        "PAUSEWIRE_UNKNOWN_GRACE_SECONDS": "300",
    }
    phases: list[Phase] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-resume-") as folder,
        temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}),
        ThreadPoolExecutor(args.flow_threads, thread_name_prefix="flow") as pool,
    ):
        resumer = ResumerProcess(resumer_env, Path(folder) / "resumer.log")
        watch = TopicWatch(
            settings.kafka_bootstrap_servers,
            (settings.callback_topic, settings.handle_topic),
            f"bench-resume-{run}-",
        )
        try:
            resumer.start()
            assert resumer.process is not None
            run_phases(args, env, resumer, watch, FlowRunner(pool), run, phases)
        finally:
            rescue(env["PAUSEWIRE_DATABASE_URL"], phases)
            resumer.stop()
            watch.close()
            print(log_summary(Path(folder, "resumer.log")))
    print(f"{'wall time':<44} {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
