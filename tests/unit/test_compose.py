"""Checks of the Docker Compose deployment that need no Docker engine.

compose/docker-compose.yml is interpolated with compose/.env the way Docker
Compose does it, then validated against the Compose Specification schema that
check-jsonschema ships as package data. The other tests hold the promises the
stack makes to an operator: images pinned, every service watched by a
healthcheck, start order by conditions, no credential outside compose/.env,
and the Connect, Prometheus and Grafana files agreeing with each other.

The checks with logic of their own are functions that return a list of
problems; each runs on the real files and on a broken sample, so that a check
which can no longer fail is noticed.
"""

import copy
import importlib.resources
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_FILE = COMPOSE_DIR / ".env"
CONNECTOR_FILE = REPO / "connect-config" / "pausewire-connector.json"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
RULES_DIR = COMPOSE_DIR / "prometheus" / "rules"
DATASOURCES_FILE = COMPOSE_DIR / "grafana/provisioning/datasources/datasources.yml"
DASHBOARDS_FILE = COMPOSE_DIR / "grafana/provisioning/dashboards/dashboards.yml"
DASHBOARD_FILE = COMPOSE_DIR / "grafana" / "dashboards" / "pausewire.json"
INIT_DIR = COMPOSE_DIR / "postgres" / "init"
ALERT_TESTS = REPO / "tests" / "unit" / "prometheus" / "alerts.test.yml"

# Other files (the README, the integration tests, the native runner) refer to
# these service names.
SERVICES = {
    "postgres",
    "migrate",
    "kafka",
    "connect",
    "register-connector",
    "redis",
    "prefect",
    "resumer",
    "jaeger",
    "prometheus",
    "grafana",
}
ONE_SHOT_JOBS = {"migrate", "register-connector"}

# Every metric the resumer exports; a dashboard or an alert on any other name
# would show nothing and never fire.
COUNTERS = {
    "prefect_handles_created_total",
    "prefect_handles_resumed_total",
    "prefect_resume_failures_total",
    "pausewire_dlq_messages_total",
    "pausewire_callbacks_total",
    "pausewire_handles_failed_total",
    "pausewire_resumes_deferred_total",
}
HISTOGRAMS = {"prefect_resume_latency_seconds", "pausewire_cdc_delay_seconds"}
# Gauges; the handle and connector ones are read when Prometheus scrapes.
GAUGES = {
    "pausewire_consumer_lag",
    "pausewire_handles",
    "pausewire_handles_past_expiry",
    "pausewire_connector_running",
}
KNOWN_METRICS = (
    COUNTERS
    | GAUGES
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | {"up"}
)

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
# ${NAME:+alt}, ${NAME+alt}, $NAME; "$$" is a literal dollar sign.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_PASSWORD_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}")
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
_EXACT_TAG = re.compile(r"^v?\d+\.\d+")


class InterpolationError(ValueError):
    """A required variable (${NAME:?...}) has no value."""


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as Docker Compose reads them; comments skipped."""
    values: dict[str, str] = {}
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: line without '=': {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        is_set = value is not None
        is_set_non_empty = bool(value)
        if op in (":-", "-"):
            return value if (is_set_non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?") and not (is_set_non_empty if op == ":?" else is_set):
            raise InterpolationError(f"{name} is required: {arg}")
        if op in (":+", "+"):
            return arg if (is_set_non_empty if op == ":+" else is_set) else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


def map_strings(node: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a loaded YAML tree with `fn` applied to every string value."""
    if isinstance(node, str):
        return fn(node)
    if isinstance(node, dict):
        return {key: map_strings(value, fn) for key, value in node.items()}
    if isinstance(node, list):
        return [map_strings(item, fn) for item in node]
    return node


def strings_in(node: Any) -> Iterator[str]:
    """Every string value of a loaded YAML tree; keys are not interpolated."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def referenced_variables(node: Any) -> set[str]:
    return {
        m["braced"] or m["plain"]
        for text in strings_in(node)
        for m in _VARIABLE.finditer(text)
        if not m["escaped"]
    }


def compose_raw() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def compose_resolved() -> dict[str, Any]:
    env = load_env_file(ENV_FILE)
    return map_strings(compose_raw(), lambda text: interpolate(text, env))


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


# --- checks -------------------------------------------------------------


def compose_schema_errors(document: dict[str, Any]) -> list[str]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def unpinned_images(services: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services.items():
        image = service.get("image", "")
        last_segment = image.rsplit("/", 1)[-1]
        _, sep, tag = last_segment.partition(":")
        if not sep or tag == "latest" or not _EXACT_TAG.match(tag):
            problems.append(f"{name}: image {image!r} has no exact version tag")
    return problems


def healthcheck_problems(services: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services.items():
        check = service.get("healthcheck")
        if name in ONE_SHOT_JOBS:
            if service.get("restart") != "no":
                problems.append(f'{name}: a one-shot job needs restart: "no"')
            continue
        test = (check or {}).get("test")
        if not test or (check or {}).get("disable") or test in (["NONE"], "NONE"):
            problems.append(f"{name}: long-running service without a healthcheck")
    return problems


def dependency_problems(services: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            problems.append(f"{name}: depends_on as a list waits for no condition")
            continue
        for target, spec in depends_on.items():
            wanted = (
                "service_completed_successfully"
                if target in ONE_SHOT_JOBS
                else "service_healthy"
            )
            condition = (spec or {}).get("condition")
            if target not in services:
                problems.append(f"{name}: depends on unknown service {target}")
            elif condition != wanted:
                problems.append(f"{name} -> {target}: condition {condition}")
    return problems


def missing_variables(compose: dict[str, Any], env: dict[str, str]) -> list[str]:
    return sorted(
        f"{name} is used in docker-compose.yml but has no value in .env"
        for name in referenced_variables(compose)
        if not env.get(name)
    )


def literal_passwords(compose: dict[str, Any], env: dict[str, str]) -> list[str]:
    problems = []
    for name, service in compose.get("services", {}).items():
        for key, value in environment_of(service).items():
            if _SECRET_NAME.search(key) and not _PASSWORD_REFERENCE.fullmatch(value):
                problems.append(f"{name}: {key} is not a ${{VAR}} without default")
    for text in strings_in(compose):
        for match in _URL_PASSWORD.finditer(text):
            if not _PASSWORD_REFERENCE.fullmatch(match["password"]):
                problems.append(f"URL with a literal password: {text}")
    secrets = {v for k, v in env.items() if _SECRET_NAME.search(k) and v}
    for text in strings_in(compose):
        problems += [
            f"a value of .env is written out: {text}" for s in secrets if s in text
        ]
    return problems


def connector_env_names(connector_text: str) -> set[str]:
    return set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", connector_text))


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr
    )
    keywords = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
    return {
        token
        for token in re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*+(?!\s*\()", expr)
        if token.lower() not in keywords
    }


def unknown_metrics(expressions: list[str]) -> list[str]:
    return sorted(
        f"{name} (in {expr!r}) is not a metric the resumer exports"
        for expr in expressions
        for name in metric_names(expr) - KNOWN_METRICS
    )


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    panels = list(dashboard.get("panels", []))
    for panel in list(panels):
        panels += panel.get("panels", [])
    return [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --- the compose file ---------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_schema_errors(compose_resolved()) == []


def test_schema_check_rejects_an_invalid_compose_file() -> None:
    broken = copy.deepcopy(compose_resolved())
    broken["services"]["redis"]["restart_policy"] = "always"
    broken["services"]["kafka"]["depends_on"] = {"redis": {"condition": "ready"}}
    errors = compose_schema_errors(broken)
    assert any("restart_policy" in e for e in errors), errors
    assert any("ready" in e for e in errors), errors


def test_the_stack_has_the_service_names_other_files_use() -> None:
    assert set(compose_raw()["services"]) == SERVICES


def test_every_image_is_pinned_to_an_exact_version() -> None:
    services = compose_resolved()["services"]
    assert unpinned_images(services) == []


def test_pin_check_flags_latest_missing_and_loose_tags() -> None:
    sample = {
        "a": {"image": "redis:latest"},
        "b": {"image": "localhost:5000/redis"},
        "c": {"image": "redis:7"},
        "d": {"image": "quay.io/debezium/connect:3.6.1.Final"},
    }
    assert [p.split(":")[0] for p in unpinned_images(sample)] == ["a", "b", "c"]


def test_every_long_running_service_has_a_healthcheck() -> None:
    assert healthcheck_problems(compose_raw()["services"]) == []


def test_healthcheck_check_flags_missing_and_disabled_checks() -> None:
    sample = {
        "kafka": {},
        "redis": {"healthcheck": {"test": ["CMD", "true"], "disable": True}},
        "migrate": {"restart": "on-failure"},
        "ok": {"healthcheck": {"test": "true"}},
    }
    flagged = [p.split(":")[0] for p in healthcheck_problems(sample)]
    assert flagged == ["kafka", "redis", "migrate"]


def test_every_dependency_waits_on_a_condition() -> None:
    services = compose_raw()["services"]
    assert dependency_problems(services) == []
    assert services["resumer"]["depends_on"], "the resumer must wait for the stack"


def test_dependency_check_flags_lists_and_wrong_conditions() -> None:
    sample = {
        "migrate": {},
        "kafka": {},
        "a": {"depends_on": ["kafka"]},
        "b": {"depends_on": {"kafka": {"condition": "service_started"}}},
        "c": {"depends_on": {"migrate": {"condition": "service_healthy"}}},
        "d": {"depends_on": {"nowhere": {"condition": "service_healthy"}}},
    }
    flagged = [p.split(" ")[0].rstrip(":") for p in dependency_problems(sample)]
    assert flagged == ["a", "b", "c", "d"]


def test_every_variable_has_a_value_in_the_env_file() -> None:
    env = load_env_file(ENV_FILE)
    assert missing_variables(compose_raw(), env) == []


def test_variable_check_flags_a_name_missing_from_env() -> None:
    sample = {"services": {"x": {"environment": {"A": "${NOT_IN_ENV:-d}$$B"}}}}
    problems = missing_variables(sample, load_env_file(ENV_FILE))
    assert problems == [
        "NOT_IN_ENV is used in docker-compose.yml but has no value in .env"
    ]


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET}-${EMPTY:-d}-${EMPTY-d}-$$SET-$SET", env) == (
        "v-d--$SET-v"
    )
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?needed}", env)


def test_no_password_is_written_in_the_compose_file() -> None:
    env = load_env_file(ENV_FILE)
    assert literal_passwords(compose_raw(), env) == []


def test_password_check_flags_literals_defaults_and_urls() -> None:
    sample = {
        "services": {
            "a": {"environment": {"POSTGRES_PASSWORD": "hunter2"}},
            "b": {"environment": {"GF_SECURITY_ADMIN_PASSWORD": "${P:-admin}"}},
            "c": {"environment": {"URL": "postgresql://u:hunter2@db:5432/x"}},
            "d": {"environment": {"URL": "postgresql://u:${P}@db/x"}},
        }
    }
    problems = literal_passwords(sample, {"P_PASSWORD": "change-me"})
    assert len(problems) == 3, problems
    written_out = {"services": {"e": {"command": "login --pass change-me"}}}
    assert literal_passwords(written_out, {"P_PASSWORD": "change-me"})


def test_env_file_passwords_are_marked_as_placeholders() -> None:
    env = load_env_file(ENV_FILE)
    passwords = {k: v for k, v in env.items() if _SECRET_NAME.search(k)}
    assert passwords, ".env defines no password at all"
    assert all(v.startswith("change-me") for v in passwords.values()), passwords


def test_bind_mounts_point_at_files_in_the_repository() -> None:
    missing = []
    for name, service in compose_raw()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith(".") and not (COMPOSE_DIR / source).exists():
                missing.append(f"{name}: {source}")
    assert missing == []


def test_images_built_here_come_from_the_root_dockerfile() -> None:
    services = compose_raw()["services"]
    for name in ("migrate", "resumer"):
        build = services[name]["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file(), name
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^COPY sql/", dockerfile, re.MULTILINE), "migrations need sql/"
    assert 'CMD ["python", "-m", "resumer"]' in dockerfile


def test_the_prefect_database_is_created_on_first_start() -> None:
    services = compose_resolved()["services"]
    url = environment_of(services["prefect"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    database = url.rsplit("/", 1)[-1]
    scripts = " ".join(p.read_text(encoding="utf-8") for p in INIT_DIR.glob("*.sh"))
    assert re.search(rf"CREATE DATABASE {database}\b", scripts), database
    assert all(os.access(p, os.X_OK) for p in INIT_DIR.glob("*.sh"))


# --- Kafka and Connect --------------------------------------------------


def test_connect_provides_every_variable_the_connector_reads() -> None:
    names = connector_env_names(CONNECTOR_FILE.read_text(encoding="utf-8"))
    assert names, "the connector reads no ${env:...}: check the pattern"
    connect_env = environment_of(compose_resolved()["services"]["connect"])
    missing = sorted(n for n in names if not connect_env.get(n))
    assert missing == [], "Connect would start the connector with empty values"
    assert connect_env["CONNECT_CONFIG_PROVIDERS"] == "env"


def test_connector_reference_check_sees_every_name() -> None:
    text = '{"a": "${env:ONE}", "b": "x-${env:TWO}-y", "c": "${routedByValue}"}'
    assert connector_env_names(text) == {"ONE", "TWO"}


def test_the_connector_registered_is_the_one_in_connect_config() -> None:
    job = compose_raw()["services"]["register-connector"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in job["volumes"]}
    posted = next(a[1:] for a in job["command"] if a.startswith("@"))
    assert (COMPOSE_DIR / mounts[posted]).resolve() == CONNECTOR_FILE
    assert "PUT" in job["command"], "registering must be an idempotent PUT"


def test_clients_use_a_listener_the_broker_advertises() -> None:
    services = compose_resolved()["services"]
    advertised = environment_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    addresses = {item.split("://", 1)[1] for item in advertised.split(",")}
    assert environment_of(services["connect"])["BOOTSTRAP_SERVERS"] in addresses
    resumer = environment_of(services["resumer"])
    assert resumer["KAFKA_BOOTSTRAP_SERVERS"] in addresses


def test_broker_and_connector_agree_on_partitions() -> None:
    services = compose_resolved()["services"]
    broker = environment_of(services["kafka"])["KAFKA_NUM_PARTITIONS"]
    connect = environment_of(services["connect"])["PAUSEWIRE_KAFKA_PARTITIONS"]
    assert broker == connect, "callback and handle topics would not be co-partitioned"
    assert int(broker) >= 1


# --- Prometheus ---------------------------------------------------------


def test_prometheus_scrapes_the_resumer_and_itself() -> None:
    config = load_yaml(PROMETHEUS_FILE)
    assert {"global", "rule_files", "scrape_configs"} <= set(config)
    targets = {
        (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert ("/metrics", "resumer:9400") in targets
    assert ("/metrics", "localhost:9090") in targets
    resumer_env = environment_of(compose_raw()["services"]["resumer"])
    assert resumer_env["PAUSEWIRE_METRICS_PORT"] == "9400"


def test_prometheus_rule_glob_finds_the_rule_files() -> None:
    config = load_yaml(PROMETHEUS_FILE)
    assert "rules/*.yml" in config["rule_files"]
    for pattern in config["rule_files"]:
        assert list(PROMETHEUS_FILE.parent.glob(pattern)), pattern


def test_alert_rules_are_well_formed_and_cover_the_metrics() -> None:
    allowed = {
        "alert",
        "record",
        "expr",
        "for",
        "keep_firing_for",
        "labels",
        "annotations",
    }
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        document = load_yaml(path)
        assert set(document) == {"groups"}, path.name
        for group in document["groups"]:
            assert group["name"] and group["rules"], path.name
            rules += group["rules"]
    for rule in rules:
        assert set(rule) <= allowed, rule
        assert ("alert" in rule) != ("record" in rule), rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
        if "alert" in rule:
            assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    names = [r["alert"] for r in rules if "alert" in r]
    assert len(names) == len(set(names)), names

    expressions = [str(rule["expr"]) for rule in rules]
    assert unknown_metrics(expressions) == []
    used = set().union(*map(metric_names, expressions))
    required = {
        "prefect_resume_failures_total",
        "pausewire_dlq_messages_total",
        "prefect_handles_created_total",
        "pausewire_consumer_lag",
        "pausewire_handles_past_expiry",
        "pausewire_connector_running",
    }
    assert required <= used, required - used


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Prometheus's own checker: PromQL, templates and alert behaviour.

    scripts/check unpacks it from Debian's prometheus package into the
    stack folder; elsewhere it comes with Prometheus.
    """
    stack_dir = Path(os.environ.get("PAUSEWIRE_STACK_DIR", REPO / ".stack"))
    found = shutil.which("promtool") or shutil.which(
        "promtool", path=str(stack_dir / "tools")
    )
    if found is None:
        pytest.fail(
            "promtool not found: run scripts/check, which fetches it, or install "
            "Prometheus (apt-get install prometheus, brew install prometheus)"
        )
    return subprocess.run(
        [found, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_alert_rules_and_prometheus_config_pass_promtool() -> None:
    rules = [str(path) for path in sorted(RULES_DIR.glob("*.yml"))]
    checked = promtool("check", "rules", *rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The config check also loads the rule files through `rule_files`.
    checked = promtool("check", "config", str(PROMETHEUS_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_on_its_series_and_stays_quiet_when_healthy() -> None:
    # promtool runs the scenarios of ALERT_TESTS against the rule files,
    # comparing labels and rendered annotations in full.
    scenarios = load_yaml(ALERT_TESTS)
    fired = {
        case["alertname"]
        for test in scenarios["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    alerts = {
        rule["alert"]
        for path in RULES_DIR.glob("*.yml")
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert fired == alerts, f"alerts without a firing scenario: {alerts - fired}"
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_scenarios_catch_a_broken_rule(tmp_path: Path) -> None:
    # The same scenarios against a rule file whose lag threshold moved: a
    # scenario set that still passed would test nothing.
    rules = (RULES_DIR / "pausewire.yml").read_text()
    assert "pausewire_consumer_lag) > 1000" in rules
    broken = tmp_path / "rules.yml"
    broken.write_text(rules.replace("pausewire_consumer_lag) > 1000", "x) > 1000"))
    scenarios = load_yaml(ALERT_TESTS)
    scenarios["rule_files"] = [str(broken)]
    copy_of_tests = tmp_path / "alerts.test.yml"
    copy_of_tests.write_text(yaml.safe_dump(scenarios))
    result = promtool("test", "rules", str(copy_of_tests))
    assert result.returncode != 0
    assert "PausewireConsumerLag" in result.stdout + result.stderr


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(x_bucket{job="a b"}[5m])))'
        " > 0 and on() up == 0"
    )
    assert metric_names(expr) == {"x_bucket", "up"}
    assert unknown_metrics(["rate(prefect_handle_created_total[1m])"])


# --- Grafana ------------------------------------------------------------


def test_grafana_data_sources_are_prometheus_and_jaeger() -> None:
    sources = load_yaml(DATASOURCES_FILE)["datasources"]
    by_type = {source["type"]: source for source in sources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    assert all(source["uid"] for source in sources)


def test_grafana_loads_dashboards_from_the_mounted_folder() -> None:
    provider = load_yaml(DASHBOARDS_FILE)["providers"][0]
    grafana = compose_raw()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    source = mounts[provider["options"]["path"]]
    assert (COMPOSE_DIR / source).resolve() == DASHBOARD_FILE.parent


def test_dashboard_shows_the_resumer_metrics() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"]
    expressions = dashboard_expressions(dashboard)
    assert unknown_metrics(expressions) == []
    shown = " ".join(squash(expr) for expr in expressions)
    for wanted in (
        "rate(prefect_handles_created_total[1m])",
        "rate(prefect_handles_resumed_total[1m])",
        "histogram_quantile(0.99, sum by (le)"
        " (rate(prefect_resume_latency_seconds_bucket[5m])))",
        "rate(prefect_resume_failures_total[5m])",
        "max by (status) (pausewire_handles)",
        "sum by (topic) (pausewire_consumer_lag)",
        "sum by (reason) (increase(pausewire_dlq_messages_total[5m]))",
    ):
        assert squash(wanted) in shown, wanted

    uids = {source["uid"] for source in load_yaml(DATASOURCES_FILE)["datasources"]}
    panels = dashboard["panels"]
    used = {p["datasource"]["uid"] for p in panels if "datasource" in p}
    assert used <= uids, used - uids
