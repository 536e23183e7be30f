-- The transactional outbox, shaped for Debezium's Outbox Event Router:
-- aggregatetype picks the topic, aggregateid becomes the Kafka key (the
-- correlation id), type goes to a header, payload is the message value.
-- traceparent and tracestate carry the W3C trace context into headers.

CREATE TABLE outbox_events (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid   text NOT NULL,
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    traceparent   text,
    tracestate    text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_events_created ON outbox_events (created_at);

-- Callbacks that arrived before any handle for their correlation id
-- existed. The resumer joins them by key when the change log shows the
-- handle PAUSED; nothing scans this table.
CREATE TABLE early_callbacks (
    correlation_id text PRIMARY KEY,
    payload        jsonb NOT NULL,
    source         jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at    timestamptz NOT NULL DEFAULT now()
);
