-- PAUSED -> RESUMED and the payload in one UPDATE. Two statements (store
-- the payload, then mark) reached the change log as two events, the first
-- a "PAUSED with a payload" that made the resumer start a resume that was
-- already done. True only for the call that made the transition; the first
-- payload stored stays.
CREATE FUNCTION mark_handle_resumed(p_handle_id uuid, p_payload jsonb)
RETURNS boolean
LANGUAGE sql AS $$
    WITH moved AS (
        UPDATE flow_resume_handles
           SET status = 'RESUMED',
               resumed_at = now(),
               resume_payload = COALESCE(resume_payload, p_payload)
         WHERE id = p_handle_id AND status = 'PAUSED'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM moved)
$$;

GRANT EXECUTE ON FUNCTION mark_handle_resumed(uuid, jsonb) TO pausewire_app;
