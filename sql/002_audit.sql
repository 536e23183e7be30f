-- Every status change of a handle, written by a trigger so that no code
-- path can change a status without leaving a row here.

CREATE TABLE flow_resume_handle_audit (
    id             bigserial PRIMARY KEY,
    handle_id      uuid NOT NULL,
    correlation_id text NOT NULL,
    flow_run_id    uuid NOT NULL,
    old_status     handle_status,
    new_status     handle_status NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX flow_resume_handle_audit_handle
    ON flow_resume_handle_audit (handle_id, id);
CREATE INDEX flow_resume_handle_audit_correlation
    ON flow_resume_handle_audit (correlation_id, id);

CREATE FUNCTION audit_handle_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO flow_resume_handle_audit
            (handle_id, correlation_id, flow_run_id, old_status, new_status)
        VALUES (
            NEW.id, NEW.correlation_id, NEW.flow_run_id,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status
        );
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER flow_resume_handles_audit
    AFTER INSERT OR UPDATE OF status ON flow_resume_handles
    FOR EACH ROW EXECUTE FUNCTION audit_handle_status();
