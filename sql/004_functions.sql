-- The functions SPEC names. Each is one statement the application and the
-- resumer call; keeping them here puts every state rule next to the data.

-- The active handle (PENDING_PAUSE or PAUSED, not past its expiry) of a
-- correlation id, or no row.
CREATE FUNCTION get_resumable_handle(p_correlation_id text)
RETURNS SETOF flow_resume_handles
LANGUAGE sql STABLE AS $$
    SELECT *
      FROM flow_resume_handles
     WHERE correlation_id = p_correlation_id
       AND status IN ('PENDING_PAUSE', 'PAUSED')
       AND expires_at > now()
$$;

-- Compare-and-set PAUSED -> RESUMED. True only for the call that made the
-- transition, so a redelivered callback can never count as a second resume.
CREATE FUNCTION mark_handle_resumed(p_handle_id uuid)
RETURNS boolean
LANGUAGE sql AS $$
    WITH moved AS (
        UPDATE flow_resume_handles
           SET status = 'RESUMED', resumed_at = now()
         WHERE id = p_handle_id AND status = 'PAUSED'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM moved)
$$;

-- Keeps a callback until its handle can take it. The first payload wins:
-- a later one for the same wait never replaces it. Returns the id of the
-- handle that holds the payload, or NULL when no handle is active yet and
-- the payload was parked in early_callbacks instead.
CREATE FUNCTION store_resume_payload(p_correlation_id text, p_payload jsonb)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    UPDATE flow_resume_handles
       SET resume_payload = COALESCE(resume_payload, p_payload)
     WHERE correlation_id = p_correlation_id
       AND status IN ('PENDING_PAUSE', 'PAUSED')
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        INSERT INTO early_callbacks (correlation_id, payload)
        VALUES (p_correlation_id, p_payload)
        ON CONFLICT (correlation_id) DO NOTHING;
    END IF;
    RETURN v_id;
END;
$$;

-- Moves every active handle past its expiry to EXPIRED; returns how many.
CREATE FUNCTION cleanup_expired_handles()
RETURNS integer
LANGUAGE sql AS $$
    WITH expired AS (
        UPDATE flow_resume_handles
           SET status = 'EXPIRED'
         WHERE status IN ('PENDING_PAUSE', 'PAUSED')
           AND expires_at <= now()
        RETURNING 1
    )
    SELECT count(*)::integer FROM expired
$$;

-- Deletes finished handles (and outbox rows) older than the given age;
-- returns how many handles went. Active handles are never deleted.
CREATE FUNCTION delete_old_resume_handles(
    p_older_than interval DEFAULT interval '30 days'
)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM flow_resume_handles
     WHERE status NOT IN ('PENDING_PAUSE', 'PAUSED')
       AND updated_at < now() - p_older_than;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    DELETE FROM outbox_events WHERE created_at < now() - p_older_than;
    DELETE FROM early_callbacks WHERE received_at < now() - p_older_than;
    RETURN v_count;
END;
$$;

CREATE VIEW flow_resume_handle_statistics AS
SELECT s.status,
       count(h.id)                                         AS handles,
       min(h.created_at)                                   AS oldest_created_at,
       count(h.id) FILTER (
           WHERE h.status IN ('PENDING_PAUSE', 'PAUSED')
             AND h.expires_at <= now())                    AS past_expiry,
       avg(extract(epoch FROM h.resumed_at - h.created_at))
                                                           AS avg_wait_seconds
  FROM unnest(enum_range(NULL::handle_status)) AS s(status)
  LEFT JOIN flow_resume_handles h ON h.status = s.status
 GROUP BY s.status;
