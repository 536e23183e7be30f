-- Least privilege. pausewire_app reads and writes the pausewire tables and
-- calls its functions; pausewire_cdc may only stream and read the two
-- tables Debezium captures. Passwords are set outside migrations, by
-- whoever provisions the database, so none lives in this repository.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pausewire_app') THEN
        CREATE ROLE pausewire_app LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pausewire_cdc') THEN
        CREATE ROLE pausewire_cdc LOGIN REPLICATION;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA public TO pausewire_app, pausewire_cdc;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON flow_resume_handles, outbox_events, early_callbacks
    TO pausewire_app;
GRANT SELECT ON flow_resume_handle_audit, flow_resume_handle_statistics,
    migration_history TO pausewire_app;
GRANT INSERT ON flow_resume_handle_audit TO pausewire_app;
GRANT USAGE ON SEQUENCE flow_resume_handle_audit_id_seq TO pausewire_app;
GRANT EXECUTE ON FUNCTION
    get_resumable_handle(text), mark_handle_resumed(uuid),
    store_resume_payload(text, jsonb), cleanup_expired_handles(),
    delete_old_resume_handles(interval)
    TO pausewire_app;
GRANT SELECT ON flow_resume_handles, outbox_events TO pausewire_cdc;

-- The publication is made here, by the tables' owner: creating one needs
-- ownership of its tables, which the CDC role must not have. Debezium runs
-- with publication.autocreate.mode=disabled and uses this one.
CREATE PUBLICATION pausewire_cdc FOR TABLE flow_resume_handles, outbox_events;
