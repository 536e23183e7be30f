-- Resume handles: one row per wait of a flow run for an outside answer.
-- The resumer reads this table only through its Debezium change log.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TYPE handle_status AS ENUM (
    'PENDING_PAUSE',   -- row written, Prefect not yet confirmed the pause
    'PAUSED',          -- Prefect accepted the paused (or suspended) state
    'RESUMED',         -- the answer was delivered; terminal
    'EXPIRED',         -- nobody answered in time; terminal
    'PAUSE_FAILED',    -- Prefect never accepted the pause; compensated
    'RESUME_FAILED'    -- resuming kept failing; waits for a person
);

CREATE TABLE flow_resume_handles (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    correlation_id  text NOT NULL
        CHECK (length(btrim(correlation_id)) BETWEEN 1 AND 255),
    flow_run_id     uuid NOT NULL,
    task_run_id     uuid,
    task_name       text,
    resume_handle   jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          handle_status NOT NULL DEFAULT 'PENDING_PAUSE',
    resume_payload  jsonb,
    timeout_seconds integer NOT NULL CHECK (timeout_seconds > 0),
    context_data    jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    expires_at      timestamptz NOT NULL,
    paused_at       timestamptz,
    resumed_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- At most one active wait per correlation id: a second one would make the
-- answer's destination ambiguous.
CREATE UNIQUE INDEX flow_resume_handles_one_active
    ON flow_resume_handles (correlation_id)
    WHERE status IN ('PENDING_PAUSE', 'PAUSED');

CREATE INDEX flow_resume_handles_correlation
    ON flow_resume_handles (correlation_id, created_at DESC);
CREATE INDEX flow_resume_handles_flow_run ON flow_resume_handles (flow_run_id);
CREATE INDEX flow_resume_handles_expiry
    ON flow_resume_handles (expires_at)
    WHERE status IN ('PENDING_PAUSE', 'PAUSED');

CREATE FUNCTION touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER flow_resume_handles_touch
    BEFORE UPDATE ON flow_resume_handles
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
