"""The resumer's /metrics say what happened, and hold every metric the
dashboard and the alert rules use.

The stack is shared: other tests (or people) may open waits while these
run. Counters are therefore checked against a range, from what this test
did to that plus the handles others created meanwhile, which Postgres
tells. The gauges read from Postgres are checked against the view itself.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import psycopg
import pytest
from prefect import flow
from prefect.input import RunInput
from prometheus_client.parser import text_string_to_metric_families

from flows.pause import wait_for_user_input
from resumer.metrics import ConnectorStatus
from tests.integration.conftest import wait_for
from tests.integration.redis_nodes import free_port
from tests.integration.resumers import produce_callback, resumer_env, resumers
from tests.integration.waits import FlowRunner, paused_handle
from tests.unit.test_compose import (
    DASHBOARD_FILE,
    RULES_DIR,
    dashboard_expressions,
    load_yaml,
    metric_names,
)

pytestmark = pytest.mark.integration

__all__ = ["resumer_env", "resumers"]

ANSWER = {"user_response": "counted", "additional_data": {}, "skipped": False}
STATUSES = ("PENDING_PAUSE", "PAUSED", "RESUMED", "EXPIRED")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Approval(RunInput):
    approved: bool
    note: str = ""


NO_ANSWER = Approval(approved=False, note="no answer")


@flow(persist_result=False)
def waiting(correlation_id: str) -> dict[str, Any]:
    return wait_for_user_input(correlation_id, timeout_seconds=300).model_dump()


@flow(persist_result=False)
def waiting_briefly(correlation_id: str) -> dict[str, Any]:
    return wait_for_user_input(
        correlation_id, Approval, timeout_seconds=8, default=NO_ANSWER
    ).model_dump()


@pytest.fixture
def runner(pausing: None) -> Iterator[FlowRunner]:
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="flow") as pool:
        yield FlowRunner(pool)


def metrics_text(worker: Any) -> str:
    url = f"http://127.0.0.1:{worker.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def scrape(worker: Any) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics_text(worker))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def exported_names(worker: Any) -> set[str]:
    """Every series name /metrics offers, including families without samples yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text(worker)):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
    return names


def statistics(dsn: str) -> dict[str, tuple[float, float]]:
    """The view the gauges come from: status -> (handles, past expiry)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status::text, handles, past_expiry "
            "FROM flow_resume_handle_statistics"
        ).fetchall()
    return {status: (float(handles), float(past)) for status, handles, past in rows}


def db_now(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def foreign_handles(dsn: str, prefix: str, since: datetime) -> int:
    """Handles opened by someone else since `since`, which count here too."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM flow_resume_handles "
            "WHERE created_at >= %s - interval '5 seconds' "
            "AND correlation_id NOT LIKE %s",
            (since, f"{prefix}%"),
        ).fetchone()
    assert row is not None
    return int(row[0])


def gauges_match_the_view(worker: Any, dsn: str) -> bool:
    samples, view = scrape(worker), statistics(dsn)
    by_status = all(
        value(samples, "pausewire_handles", status=status) == view[status][0]
        for status in view
    )
    past_expiry = sum(past for _, past in view.values())
    return by_status and value(samples, "pausewire_handles_past_expiry") == past_expiry


def test_counters_and_gauges_follow_a_scenario_of_waits(
    stack, runner, resumers, correlation_id
):
    worker = resumers().start()
    since = db_now(stack.admin_dsn)
    before = scrape(worker)
    answered = [f"{correlation_id}-{i}" for i in range(3)]
    rejected = f"{correlation_id}-rejected"

    futures = {cid: runner.submit(waiting, cid) for cid in answered}
    expiring = runner.submit(waiting_briefly, rejected)
    for cid in [*answered, rejected]:
        paused_handle(stack, cid, timeout_s=30)
    for cid in answered:
        produce_callback(stack.kafka, cid, ANSWER)
    produce_callback(stack.kafka, rejected, {"approved": "perhaps"})

    for cid in answered:
        assert futures[cid].result(timeout=60) == ANSWER
    assert expiring.result(timeout=60) == NO_ANSWER.model_dump()

    def delta(name: str, **labels: str) -> float:
        return value(scrape(worker), name, **labels) - value(before, name, **labels)

    wait_for(
        "the counters to see every wait",
        lambda: (
            delta("prefect_handles_created_total") >= 4
            and delta("prefect_handles_resumed_total") >= 3
            and delta("pausewire_dlq_messages_total", reason="invalid_payload") >= 1
        ),
        timeout_s=30,
    )
    others = foreign_handles(stack.admin_dsn, correlation_id, since)
    assert 4 <= delta("prefect_handles_created_total") <= 4 + others
    assert 3 <= delta("prefect_handles_resumed_total") <= 3 + others
    invalid = delta("pausewire_dlq_messages_total", reason="invalid_payload")
    assert 1 <= invalid <= 1 + others
    assert delta("pausewire_dlq_messages_total") - invalid <= others, (
        "a dead letter of another reason appeared that this scenario did not cause"
    )
    # A callback consumed before the resumer has read its handle's PAUSED
    # change is stored first and resumed by that change: either way each
    # answer is counted once, under the join's first decision.
    first = delta("pausewire_callbacks_total", decision="Resume") + delta(
        "pausewire_callbacks_total", decision="Store"
    )
    assert 3 <= first <= 3 + others, f"{first} answers decided, expected 3"
    assert delta("prefect_resume_latency_seconds_count") >= 3

    wait_for(
        "pausewire_handles to equal the statistics view",
        lambda: gauges_match_the_view(worker, stack.admin_dsn),
        timeout_s=30,
    )
    after = scrape(worker)
    for status, done in (("RESUMED", 3), ("EXPIRED", 1)):
        grown = value(after, "pausewire_handles", status=status) - value(
            before, "pausewire_handles", status=status
        )
        assert grown >= done, f"{status} grew by {grown}, expected at least {done}"


def test_an_open_handle_past_its_expiry_raises_the_gauge(
    stack, resumers, admin_conn, correlation_id
):
    worker = resumers().start()
    admin_conn.execute(
        "INSERT INTO flow_resume_handles (correlation_id, flow_run_id, status, "
        "timeout_seconds, expires_at, resume_handle) VALUES (%s, "
        "gen_random_uuid(), 'PAUSED', 60, now() - interval '1 minute', %s)",
        (correlation_id, json.dumps({"mode": "pause"})),
    )
    try:
        wait_for(
            "pausewire_handles_past_expiry to count the stale handle",
            lambda: (
                value(scrape(worker), "pausewire_handles_past_expiry") >= 1
                and gauges_match_the_view(worker, stack.admin_dsn)
            ),
            timeout_s=30,
        )
    finally:
        admin_conn.execute(
            "DELETE FROM flow_resume_handles WHERE correlation_id = %s",
            (correlation_id,),
        )


def test_connector_gauge_follows_kafka_connect(stack):
    url = stack.values.get("PAUSEWIRE_CONNECT_URL")
    if not url:
        pytest.skip("this stack does not publish Kafka Connect's REST address")

    def reading(connect_url: str, name: str) -> float:
        collector = ConnectorStatus()
        collector.watch(connect_url, name)
        [family] = collector.collect()
        [sample] = family.samples
        assert sample.labels == {"connector": name}
        return float(sample.value)

    assert reading(url, "pausewire") == 1.0
    assert reading(url, "no-such-connector") == 0.0
    assert reading(f"http://127.0.0.1:{free_port()}", "pausewire") == 0.0, (
        "Kafka Connect unreachable must count as not running"
    )


def test_every_metric_the_dashboard_and_the_alerts_use_is_exported(stack, resumers):
    if not stack.values.get("PAUSEWIRE_CONNECT_URL"):
        pytest.skip("this stack does not publish Kafka Connect's REST address")
    worker = resumers().start()
    expressions = dashboard_expressions(json.loads(DASHBOARD_FILE.read_text()))
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            expressions += [str(rule["expr"]) for rule in group["rules"]]
    # `up` is Prometheus's own, about the scrape.
    used = set().union(*map(metric_names, expressions)) - {"up"}

    def missing() -> set[str]:
        return used - exported_names(worker)

    # The consumer lag appears with the first measurement, a few s in.
    with contextlib.suppress(AssertionError):
        wait_for("every metric on /metrics", lambda: not missing(), timeout_s=30)
    assert missing() == set(), "a panel or an alert uses a metric nobody exports"
