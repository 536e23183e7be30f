"""The native runner's health waits and error paths, without real services."""

from __future__ import annotations

import importlib.util
import json
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "native_runner", REPO / "compose" / "native.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["native_runner"] = module
    spec.loader.exec_module(module)
    return module


native = _load_runner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator[object]:
    # Ports of their own: a real stack may be running on the defaults.
    for name in (
        "PG",
        "REDIS",
        "KAFKA",
        "KAFKA_CONTROLLER",
        "CONNECT",
        "PREFECT",
        "RESUMER",
    ):
        monkeypatch.setenv(f"PAUSEWIRE_{name}_PORT", str(_free_port()))
    monkeypatch.setenv("PAUSEWIRE_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.setenv("PAUSEWIRE_VENV", str(tmp_path / "venv"))
    result = native.Stack(native.Layout.from_env())
    for sub in ("logs", "run", "config"):
        result.layout.path(sub).mkdir(parents=True)
    return result


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_wait_until_returns_once_the_check_passes():
    answers = iter([False, False, True])
    took = native.wait_until("x", lambda: next(answers), timeout_s=5, interval_s=0)
    assert took < 5


def test_wait_until_treats_a_raising_check_as_not_ready():
    calls = []

    def check() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError
        return True

    native.wait_until("x", check, timeout_s=5, interval_s=0)
    assert len(calls) == 3


def test_wait_until_gives_up_at_the_deadline_naming_component_and_log(tmp_path):
    log = tmp_path / "kafka.log"
    log.write_text("line one\nbroker could not bind\n")

    with pytest.raises(native.StackError) as caught:
        native.wait_until(
            "kafka", lambda: False, timeout_s=0.3, log=log, interval_s=0.05
        )

    message = str(caught.value)
    assert message.startswith("kafka: not healthy after 0.3 s")
    assert "broker could not bind" in message, "the log's last lines explain why"
    assert str(log) in message


def test_a_component_that_dies_while_starting_fails_at_once(tmp_path):
    log = tmp_path / "connect.log"
    log.write_text("Exception in thread main\n")

    with pytest.raises(native.StackError) as caught:
        native.wait_until(
            "connect", lambda: False, timeout_s=60, log=log, alive=lambda: 1
        )

    assert "process exited with code 1 while starting" in str(caught.value)


def test_a_taken_port_names_the_variable_to_change(stack, monkeypatch, listening_port):
    monkeypatch.setenv("PAUSEWIRE_KAFKA_PORT", str(listening_port))
    taken = native.Stack(native.Layout.from_env())

    with pytest.raises(native.StackError) as caught:
        taken.start_kafka()

    assert caught.value.component == "kafka"
    assert f"port {listening_port} is already in use" in caught.value.cause
    assert "PAUSEWIRE_KAFKA_PORT" in caught.value.cause


def test_a_bad_port_value_is_refused(monkeypatch):
    monkeypatch.setenv("PAUSEWIRE_PG_PORT", "99999")
    with pytest.raises(native.StackError, match="PAUSEWIRE_PG_PORT"):
        native.Layout.from_env()


def test_a_missing_tool_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(native.StackError) as caught:
        native.require_tool("kafka", "java", "install OpenJDK 17")
    assert str(caught.value) == ("kafka: java not found on PATH; install OpenJDK 17")


def test_redis_that_exits_at_start_is_reported_with_its_log(
    stack, monkeypatch, tmp_path
):
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Fatal: cannot open the data folder'\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake.parent))

    with pytest.raises(native.StackError) as caught:
        stack.start_redis()

    assert caught.value.component == "redis"
    assert "exited with code 3" in caught.value.cause
    assert "cannot open the data folder" in caught.value.cause
    assert caught.value.log == stack.layout.log("redis")


class _RejectingConnect(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        body = json.dumps(
            {
                "error_code": 400,
                "message": "Connector config "
                "is invalid: slot.name has an illegal value",
            }
        )
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_a_connector_that_connect_rejects_fails_with_connects_reason(
    stack, monkeypatch
):
    server = HTTPServer(("127.0.0.1", 0), _RejectingConnect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PAUSEWIRE_CONNECT_PORT", str(server.server_port))
    fake_connect = native.Stack(native.Layout.from_env())
    try:
        with pytest.raises(native.StackError) as caught:
            fake_connect.register_connector(alive=None)
    finally:
        server.shutdown()

    assert "rejected the connector configuration (HTTP 400)" in str(caught.value)
    assert "slot.name has an illegal value" in str(caught.value)


def test_a_template_with_an_unknown_name_is_an_error(tmp_path):
    template = tmp_path / "t.properties"
    template.write_text("port=${kafka_port}\nhost=${kafka_host}\n")
    with pytest.raises(native.StackError, match="kafka_host"):
        native.render(template, tmp_path / "out", {"kafka_port": 1})


def test_generated_passwords_are_private_and_stable(tmp_path):
    path = tmp_path / "secrets.env"
    first = native.Secrets.load_or_create(path)
    second = native.Secrets.load_or_create(path)
    assert first == second
    assert len({first.admin, first.app, first.cdc, first.prefect}) == 4
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_status_of_a_stack_that_never_started_is_unhealthy(stack, capsys):
    assert stack.status() is False
    out = capsys.readouterr().out
    assert out.count("stopped") == 6


def test_down_of_a_stack_that_never_started_is_harmless(stack):
    stack.down(purge=True)
    assert not stack.layout.root.exists()
