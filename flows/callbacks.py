"""Publishes a callback event: how an outside service answers a waiting flow.

    python -m flows.callbacks --correlation-id order-42 --response yes \
        [--data '{"ticket": 7}']

The record is keyed by the correlation id and partitioned like Kafka's Java
client (murmur2), so it lands on the same partition number as the handle's
change events, which is what lets one resumer own both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from confluent_kafka import Producer

from outbox.errors import PausewireError
from outbox.settings import Settings, get_settings
from outbox.topics import PARTITIONER

logger = logging.getLogger(__name__)


def publish_callback(
    correlation_id: str,
    result: dict[str, Any],
    *,
    settings: Settings | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Sends `{"correlation_id": ..., "result": ...}` and waits until Kafka has it."""
    settings = settings or get_settings()
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "partitioner": PARTITIONER,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    body = {"correlation_id": correlation_id, "result": result}
    producer.produce(
        settings.callback_topic, key=correlation_id, value=json.dumps(body)
    )
    if producer.flush(timeout_s) != 0:
        raise PausewireError(
            f"the callback for correlation id {correlation_id!r} did not reach "
            f"{settings.callback_topic} within {timeout_s:g} s; is Kafka at "
            f"{settings.kafka_bootstrap_servers} up?"
        )
    logger.info(
        "Published the callback for correlation id %s to %s",
        correlation_id,
        settings.callback_topic,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.callbacks")
    parser.add_argument("--correlation-id", required=True)
    parser.add_argument("--response", required=True, help="the user_response")
    parser.add_argument("--data", default="{}", help="additional_data, as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        data = json.loads(args.data)
        publish_callback(
            args.correlation_id,
            {"user_response": args.response, "additional_data": data},
        )
    except (PausewireError, json.JSONDecodeError) as exc:
        logger.error("Callback not sent: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
