-- Undoes every pausewire migration, keeping the data: the handles and the
-- audit trail are copied into timestamped backup tables first, and the
-- rollback is recorded in migration_history. Run with psql or
-- `pausewire-migrate rollback`.

-- Status columns are kept as text in the backups: the handle_status type
-- is dropped below, and a backup must not depend on what it outlives.
DO $$
DECLARE
    v_handles text := 'flow_resume_handles_backup_'
        || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS');
    v_audit text := 'flow_resume_handle_audit_backup_'
        || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS');
BEGIN
    IF to_regclass('flow_resume_handles') IS NOT NULL THEN
        EXECUTE format('CREATE TABLE %I AS TABLE flow_resume_handles', v_handles);
        EXECUTE format(
            'ALTER TABLE %I ALTER COLUMN status TYPE text', v_handles);
    END IF;
    IF to_regclass('flow_resume_handle_audit') IS NOT NULL THEN
        EXECUTE format(
            'CREATE TABLE %I AS TABLE flow_resume_handle_audit', v_audit);
        EXECUTE format(
            'ALTER TABLE %I ALTER COLUMN old_status TYPE text, '
            'ALTER COLUMN new_status TYPE text', v_audit);
    END IF;
END;
$$;

DROP PUBLICATION IF EXISTS pausewire_cdc;
DROP VIEW IF EXISTS flow_resume_handle_statistics;
DROP FUNCTION IF EXISTS get_resumable_handle(text);
DROP FUNCTION IF EXISTS mark_handle_resumed(uuid);
DROP FUNCTION IF EXISTS mark_handle_resumed(uuid, jsonb);
DROP FUNCTION IF EXISTS store_resume_payload(text, jsonb);
DROP FUNCTION IF EXISTS cleanup_expired_handles();
DROP FUNCTION IF EXISTS delete_old_resume_handles(interval);
DROP TABLE IF EXISTS flow_resume_handle_audit;
DROP TABLE IF EXISTS flow_resume_handles;
DROP TABLE IF EXISTS outbox_events;
DROP TABLE IF EXISTS early_callbacks;
DROP FUNCTION IF EXISTS audit_handle_status();
DROP FUNCTION IF EXISTS notify_handle_status();
DROP FUNCTION IF EXISTS touch_updated_at();
DROP TYPE IF EXISTS handle_status;

-- Forget the applied files so that the next migrate starts from the top,
-- and leave a record of the rollback itself.
UPDATE migration_history SET rolled_back_at = now() WHERE rolled_back_at IS NULL;
INSERT INTO migration_history (filename, checksum, action)
VALUES ('rollback.sql', '', 'rollback');
