"""The Debezium connector configuration says what the pipeline relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = json.loads((REPO / "connect-config" / "pausewire-connector.json").read_text())
WORKER = (REPO / "connect-config" / "worker.properties").read_text()


def _transform(name: str) -> dict[str, str]:
    prefix = f"transforms.{name}."
    return {k[len(prefix) :]: v for k, v in CONFIG.items() if k.startswith(prefix)}


def test_streams_only_the_two_tables_through_pgoutput_and_the_owned_publication():
    assert CONFIG["plugin.name"] == "pgoutput"
    assert CONFIG["table.include.list"] == (
        "public.flow_resume_handles,public.outbox_events"
    )
    # The migrations create the publication; the CDC role owns no table.
    assert CONFIG["publication.autocreate.mode"] == "disabled"
    publication = (REPO / "sql" / "005_roles.sql").read_text()
    assert f"CREATE PUBLICATION {CONFIG['publication.name']}" in publication


def test_change_topic_key_is_the_plain_correlation_id():
    assert CONFIG["message.key.columns"] == "public.flow_resume_handles:correlation_id"
    key = _transform("handleKey")
    assert key["type"].endswith("ExtractField$Key")
    assert key["field"] == "correlation_id"
    # A string key converter writes the bytes a callback producer uses.
    assert CONFIG["key.converter"].endswith("StringConverter")


def test_outbox_is_routed_by_aggregate_type_keyed_by_aggregate_id_with_trace_headers():
    router = _transform("outbox")
    assert router["type"] == "io.debezium.transforms.outbox.EventRouter"
    assert router["table.field.event.key"] == "aggregateid"
    assert router["route.by.field"] == "aggregatetype"
    # column:header:name entries
    placements = {
        column: name
        for column, _, name in (
            item.split(":")
            for item in router["table.fields.additional.placement"].split(",")
        )
    }
    assert placements["traceparent"] == "traceparent"
    assert placements["tracestate"] == "tracestate"


@pytest.mark.parametrize("name", ["outbox", "handleKey", "handleState"])
def test_each_transform_applies_to_its_own_table_only(name):
    predicate = CONFIG[f"transforms.{name}.predicate"]
    pattern = CONFIG[f"predicates.{predicate}.pattern"]
    table = "outbox_events" if name == "outbox" else "flow_resume_handles"
    assert re.fullmatch(pattern, f"pausewire.public.{table}")
    other = "flow_resume_handles" if name == "outbox" else "outbox_events"
    assert not re.fullmatch(pattern, f"pausewire.public.{other}")


def test_low_latency_heartbeats_and_exactly_once():
    assert int(CONFIG["poll.interval.ms"]) <= 50
    assert int(CONFIG["heartbeat.interval.ms"]) > 0
    assert CONFIG["exactly.once.support"] == "required"
    assert "exactly.once.source.support=enabled" in WORKER


def test_secrets_and_hosts_come_from_the_workers_environment():
    for key in ("database.hostname", "database.port", "database.password"):
        assert CONFIG[key].startswith("${env:"), key
    assert "EnvVarConfigProvider" in WORKER
