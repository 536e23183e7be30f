-- Wakes the flow that waits on a handle the moment its status changes, so
-- that it learns of its resume from Postgres, not from a Prefect poll. One
-- channel for all handles: each flow process keeps a single listening
-- connection and hands each notification to the wait it belongs to.
-- The payload format "<handle id>:<status>" is read by outbox/watcher.py.

CREATE FUNCTION notify_handle_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify(
            'pausewire_handle_status', NEW.id::text || ':' || NEW.status::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER flow_resume_handles_notify
    AFTER INSERT OR UPDATE OF status ON flow_resume_handles
    FOR EACH ROW EXECUTE FUNCTION notify_handle_status();
