"""What `wait_for_user_input` does before it writes anything.

Bad arguments must fail with `InvalidWaitRequestError` before the helper
reads its settings, opens a connection or asks Prefect: a caller that gets a
configuration or connection error instead would look for the fault in the
wrong place, and a handle written for a request that can never be served
would wait for nothing. With pausing switched off the helper answers at
once and touches nothing either.

No process runs here: every way to the outside is replaced by a function
that fails the test if it is called.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prefect.input import RunInput
from pydantic import BaseModel

from flows import pause as pause_module
from flows.pause import UserResponse, wait_for_user_input
from outbox.errors import InvalidWaitRequestError
from outbox.models import MAX_CORRELATION_ID_LENGTH
from outbox.settings import get_settings

# A port where nothing listens: were it ever dialled, the test would see a
# connection error rather than a hang.
DUMMY_DATABASE_URL = "postgresql://nobody@127.0.0.1:1/none"


class Review(RunInput):
    verdict: str = "pending"
    score: int = 0


class PlainAnswer(BaseModel):
    user_response: str = ""


def _no_io(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{what} was called before the arguments were checked")

    return refuse


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No database URL, fresh settings, and every way out refused."""
    for name in ("PAUSEWIRE_DATABASE_URL", "DATABASE_URL", "PREFECT_PAUSE_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pause_module, "get_store", _no_io("the handle store"))
    monkeypatch.setattr(pause_module, "get_watcher", _no_io("the status watcher"))
    monkeypatch.setattr(pause_module, "_prefect_client", _no_io("Prefect's API"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_PAUSE_ENABLED", "false")
    monkeypatch.setenv("PAUSEWIRE_DATABASE_URL", DUMMY_DATABASE_URL)


@pytest.mark.parametrize("enabled", ["true", "false"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"correlation_id": ""}, "correlation_id must be a non-blank string"),
        ({"correlation_id": "  \t\n "}, "correlation_id must be a non-blank string"),
        (
            {"correlation_id": "x" * (MAX_CORRELATION_ID_LENGTH + 1)},
            f"at most {MAX_CORRELATION_ID_LENGTH} are allowed",
        ),
        ({"wait_for_input": PlainAnswer}, "must be a prefect.input.RunInput"),
        ({"wait_for_input": dict}, "must be a prefect.input.RunInput"),
        ({"wait_for_input": UserResponse()}, "must be a prefect.input.RunInput"),
        ({"timeout_seconds": -5}, "timeout_seconds must be positive, got -5"),
        ({"timeout_seconds": 0}, "timeout_seconds must be positive, got 0"),
        ({"timeout_seconds": True}, "timeout_seconds must be a whole number"),
        ({"timeout_seconds": 1.5}, "timeout_seconds must be a whole number"),
        ({"mode": "hold"}, "mode must be 'pause' or 'suspend', got 'hold'"),
    ],
    ids=[
        "blank-id",
        "whitespace-id",
        "id-too-long",
        "plain-pydantic-model",
        "dict-model",
        "model-instance",
        "negative-timeout",
        "zero-timeout",
        "bool-timeout",
        "fractional-timeout",
        "unknown-mode",
    ],
)
def test_bad_arguments_fail_before_settings_or_io(
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict[str, Any],
    message: str,
    enabled: str,
) -> None:
    # No database URL is set: reading the settings first would fail with a
    # missing-setting error instead of naming the bad argument.
    monkeypatch.setenv("PREFECT_PAUSE_ENABLED", enabled)
    call = {"correlation_id": "order-42", **kwargs}
    correlation_id = call.pop("correlation_id")

    with pytest.raises(InvalidWaitRequestError, match=message) as caught:
        wait_for_user_input(correlation_id, **call)

    assert isinstance(caught.value, ValueError), "callers may catch ValueError"


def test_an_id_of_exactly_the_maximum_length_is_accepted(switched_off: None) -> None:
    answer = wait_for_user_input("x" * MAX_CORRELATION_ID_LENGTH)

    assert answer == UserResponse(skipped=True)


def test_switched_off_returns_the_skipped_answer(switched_off: None) -> None:
    answer = wait_for_user_input("order-42")

    assert answer == UserResponse(skipped=True)
    assert answer.skipped, "the flow must be able to tell nobody answered"


def test_switched_off_returns_the_given_default(switched_off: None) -> None:
    default = UserResponse(user_response="no")

    answer = wait_for_user_input("order-42", default=default, mode="suspend")

    assert answer is default


def test_switched_off_a_custom_model_gets_its_default_instance(
    switched_off: None,
) -> None:
    answer = wait_for_user_input("order-42", Review, timeout_seconds=5)

    assert answer == Review()
    assert type(answer) is Review


def test_switched_off_a_custom_model_returns_the_given_default(
    switched_off: None,
) -> None:
    default = Review(verdict="accepted", score=3)

    assert wait_for_user_input("order-42", Review, default=default) is default


def test_pausing_is_off_unless_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # PREFECT_PAUSE_ENABLED is unset by the autouse fixture: the default
    # must be off, so that a deploy without the flag never blocks a flow.
    monkeypatch.setenv("PAUSEWIRE_DATABASE_URL", DUMMY_DATABASE_URL)

    assert wait_for_user_input("order-42") == UserResponse(skipped=True)
