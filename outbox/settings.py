"""The one settings object of pausewire, read from the environment.

The names that operators already know from Prefect, Redis and Kafka keep
their plain spelling (`PREFECT_API_URL`, `REDIS_URL`, ...); everything that
belongs to pausewire alone is prefixed `PAUSEWIRE_`. Units are in the field
names. No field has a secret as its default: the database URL must be given.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything pausewire reads from its environment, validated once."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    environment: str = Field("dev", validation_alias=_env("PAUSEWIRE_ENV"))
    database_url: SecretStr = Field(
        validation_alias=_env("PAUSEWIRE_DATABASE_URL", "DATABASE_URL"),
    )
    prefect_api_url: str = Field(
        "http://127.0.0.1:4200/api", validation_alias=_env("PREFECT_API_URL")
    )
    prefect_api_key: SecretStr | None = Field(
        None, validation_alias=_env("PREFECT_API_KEY")
    )
    pause_enabled: bool = Field(False, validation_alias=_env("PREFECT_PAUSE_ENABLED"))
    # How often a waiting flow asks Prefect whether it was resumed behind
    # pausewire's back. Only a safety net: the wake comes from Postgres.
    safety_poll_seconds: float = Field(
        30.0, gt=0, validation_alias=_env("PAUSEWIRE_SAFETY_POLL_SECONDS")
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL")
    )
    # Extra Redlock masters beyond REDIS_URL, comma separated. A quorum of
    # all of them must agree before a resume runs.
    redlock_urls: str = Field("", validation_alias=_env("PAUSEWIRE_REDLOCK_URLS"))
    lock_ttl_seconds: float = Field(30.0, validation_alias=_env("REDIS_LOCK_TTL"))
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    kafka_consumer_group: str | None = Field(
        None, validation_alias=_env("KAFKA_CONSUMER_GROUP")
    )
    callback_topic: str = Field(
        "genesis.callbacks", validation_alias=_env("PAUSEWIRE_CALLBACK_TOPIC")
    )
    dlq_topic: str = Field(
        "dlq.prefect.callbacks", validation_alias=_env("KAFKA_DLQ_TOPIC")
    )
    # Debezium names the change topic <topic.prefix>.<schema>.<table>; the
    # connector configuration and this default must agree.
    handle_topic: str = Field(
        "pausewire.public.flow_resume_handles",
        validation_alias=_env("PAUSEWIRE_HANDLE_TOPIC"),
    )
    # The Outbox Event Router sends each row to pausewire.<aggregatetype>.
    outbox_topic: str = Field(
        "pausewire.waits", validation_alias=_env("PAUSEWIRE_OUTBOX_TOPIC")
    )
    kafka_partitions: int = Field(
        3, ge=1, validation_alias=_env("PAUSEWIRE_KAFKA_PARTITIONS")
    )
    # How long a callback whose correlation id has no handle yet is kept
    # before it goes to the dead-letter topic.
    unknown_grace_seconds: float = Field(
        300.0, ge=0, validation_alias=_env("PAUSEWIRE_UNKNOWN_GRACE_SECONDS")
    )
    # Resumes carried out at once: Prefect's server, not the resumer, is the
    # ceiling, so a few are enough to keep it busy.
    resume_concurrency: int = Field(
        8, ge=1, validation_alias=_env("PAUSEWIRE_RESUME_CONCURRENCY")
    )
    # The longest wait between two attempts of one resume; waits double from
    # 1 s up to it.
    resume_retry_cap_seconds: float = Field(
        60.0, gt=0, validation_alias=_env("PAUSEWIRE_RESUME_RETRY_CAP_SECONDS")
    )
    # Fault injection for recovery tests and drills: "after_prefect_resume"
    # makes the resumer kill itself with SIGKILL right after Prefect accepted
    # a resume, before the handle is marked and the offset committed.
    crash_point: str = Field("", validation_alias=_env("PAUSEWIRE_CRASH_POINT"))
    metrics_port: int = Field(9400, validation_alias=_env("PAUSEWIRE_METRICS_PORT"))
    # Kafka Connect's REST address. When set, the resumer reports whether the
    # Debezium connector runs as `pausewire_connector_running`.
    connect_url: str | None = Field(
        None, validation_alias=_env("PAUSEWIRE_CONNECT_URL")
    )
    connector_name: str = Field(
        "pausewire", validation_alias=_env("PAUSEWIRE_CONNECTOR_NAME")
    )

    @property
    def consumer_group(self) -> str:
        """The resumer's consumer group: one per environment by default."""
        if self.kafka_consumer_group:
            return self.kafka_consumer_group
        return f"prefect-callback-service-{self.environment}"

    @property
    def redis_lock_urls(self) -> list[str]:
        """Every Redis master that takes part in the Redlock quorum."""
        extra = [url.strip() for url in self.redlock_urls.split(",") if url.strip()]
        return [self.redis_url, *extra]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    # model_validate reads the environment like Settings() does, and lets
    # the type checker see that required fields come from there.
    return Settings.model_validate({})
