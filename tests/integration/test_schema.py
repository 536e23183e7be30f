"""The migrations, the rollback script and SPEC's functions, on real Postgres.

Each test gets a database of its own, so the schema it migrates, rolls back
or fills never touches the stack's `pausewire` database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from outbox import migrations

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def scratch_dsn(stack) -> Iterator[str]:
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    params = conninfo_to_dict(stack.admin_dsn)
    server = make_conninfo(**{**params, "dbname": "postgres"})
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(**{**params, "dbname": name})
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def db(scratch_dsn) -> Iterator[Conn]:
    migrations.migrate(scratch_dsn)
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        yield conn


def _tables(conn: Conn) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def _new_handle(
    conn: Conn, cid: str, *, status: str = "PAUSED", expires: str = "10 minutes"
) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO flow_resume_handles (correlation_id, flow_run_id, status, "
        "timeout_seconds, expires_at) VALUES (%s, gen_random_uuid(), %s, 600, "
        "now() + %s::interval) RETURNING id",
        (cid, status, expires),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[return-value]


def test_migrations_apply_on_an_empty_database_then_are_a_no_op(scratch_dsn):
    first = migrations.migrate(scratch_dsn)
    second = migrations.migrate(scratch_dsn)

    expected = [
        m.filename for m in migrations.load_migrations(migrations.default_sql_dir())
    ]
    assert first == expected
    assert second == [], "a second run must apply nothing"
    with psycopg.connect(scratch_dsn) as conn:
        assert {
            "flow_resume_handles",
            "outbox_events",
            "flow_resume_handle_audit",
            "early_callbacks",
            "migration_history",
        } <= _tables(conn)
        applied = conn.execute(
            "SELECT count(*) FROM migration_history WHERE action = 'apply'"
        ).fetchone()
        assert applied == (len(expected),), "each file recorded exactly once"


def test_rollback_keeps_a_backup_and_records_itself_then_migrate_again(
    scratch_dsn,
):
    migrations.migrate(scratch_dsn)
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        _new_handle(conn, "kept-by-backup")

    migrations.rollback(scratch_dsn)

    with psycopg.connect(scratch_dsn) as conn:
        tables = _tables(conn)
        assert "flow_resume_handles" not in tables
        [backup] = [t for t in tables if t.startswith("flow_resume_handles_backup_")]
        rows = conn.execute(f'SELECT correlation_id FROM "{backup}"').fetchall()
        assert rows == [("kept-by-backup",)], "the rollback must not lose handles"
        history = conn.execute(
            "SELECT filename, action FROM migration_history ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert history == ("rollback.sql", "rollback")
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'get_resumable_handle'"
        ).fetchone()
        assert functions == (0,)

    reapplied = migrations.migrate(scratch_dsn)
    assert len(reapplied) == len(
        migrations.load_migrations(migrations.default_sql_dir())
    ), "after a rollback every file applies again"


def test_one_active_handle_per_correlation_id(db):
    _new_handle(db, "only-one", status="PENDING_PAUSE")
    with pytest.raises(psycopg.errors.UniqueViolation):
        _new_handle(db, "only-one", status="PAUSED")
    db.execute(
        "UPDATE flow_resume_handles SET status = 'EXPIRED' "
        "WHERE correlation_id = 'only-one'"
    )
    _new_handle(db, "only-one")  # a finished wait frees the id


def test_blank_correlation_id_is_refused(db):
    with pytest.raises(psycopg.errors.CheckViolation):
        _new_handle(db, "   ")


def test_every_status_change_writes_an_audit_row(db):
    handle = _new_handle(db, "audited", status="PENDING_PAUSE")
    db.execute(
        "UPDATE flow_resume_handles SET status = 'PAUSED' WHERE id = %s", (handle,)
    )
    db.execute("UPDATE flow_resume_handles SET attempts = 1 WHERE id = %s", (handle,))
    db.execute("SELECT mark_handle_resumed(%s)", (handle,))

    rows = db.execute(
        "SELECT old_status, new_status, correlation_id, flow_run_id IS NOT NULL, "
        "changed_at IS NOT NULL FROM flow_resume_handle_audit WHERE handle_id = %s "
        "ORDER BY id",
        (handle,),
    ).fetchall()
    assert rows == [
        (None, "PENDING_PAUSE", "audited", True, True),
        ("PENDING_PAUSE", "PAUSED", "audited", True, True),
        ("PAUSED", "RESUMED", "audited", True, True),
    ], "one row per status change, none for other updates"


def test_get_resumable_handle_returns_only_the_active_unexpired_one(db):
    active = _new_handle(db, "lookup")
    _new_handle(db, "stale", expires="-1 minute")

    found = db.execute("SELECT id FROM get_resumable_handle('lookup')").fetchall()
    assert found == [(active,)]
    assert db.execute("SELECT * FROM get_resumable_handle('stale')").fetchall() == []
    assert db.execute("SELECT * FROM get_resumable_handle('none')").fetchall() == []


def test_mark_handle_resumed_is_a_compare_and_set(db):
    handle = _new_handle(db, "cas")
    first = db.execute("SELECT mark_handle_resumed(%s)", (handle,)).fetchone()
    second = db.execute("SELECT mark_handle_resumed(%s)", (handle,)).fetchone()
    assert (first, second) == ((True,), (False,)), (
        "only the first call may count as the resume, or a redelivery resumes twice"
    )
    pending = _new_handle(db, "not-paused", status="PENDING_PAUSE")
    assert db.execute("SELECT mark_handle_resumed(%s)", (pending,)).fetchone() == (
        False,
    )


def test_store_resume_payload_keeps_the_first_payload(db):
    handle = _new_handle(db, "payload", status="PENDING_PAUSE")
    first = db.execute(
        "SELECT store_resume_payload('payload', %s)", ('{"n": 1}',)
    ).fetchone()
    db.execute("SELECT store_resume_payload('payload', %s)", ('{"n": 2}',))

    assert first == (handle,)
    stored = db.execute(
        "SELECT resume_payload FROM flow_resume_handles WHERE id = %s", (handle,)
    ).fetchone()
    assert stored == ({"n": 1},), "a later callback must not replace the first"


def test_store_resume_payload_parks_a_callback_that_has_no_handle_yet(db):
    result = db.execute(
        "SELECT store_resume_payload('early', %s)", ('{"n": 1}',)
    ).fetchone()
    db.execute("SELECT store_resume_payload('early', %s)", ('{"n": 2}',))

    assert result == (None,)
    parked = db.execute(
        "SELECT payload FROM early_callbacks WHERE correlation_id = 'early'"
    ).fetchall()
    assert parked == [({"n": 1},)]


def test_cleanup_expired_handles_expires_only_active_handles_past_expiry(db):
    late = _new_handle(db, "late", expires="-1 second")
    on_time = _new_handle(db, "on-time")

    assert db.execute("SELECT cleanup_expired_handles()").fetchone() == (1,)
    statuses = dict(db.execute("SELECT id, status FROM flow_resume_handles").fetchall())
    assert statuses == {late: "EXPIRED", on_time: "PAUSED"}


def test_delete_old_resume_handles_never_deletes_active_ones(db):
    done = _new_handle(db, "done")
    db.execute("SELECT mark_handle_resumed(%s)", (done,))
    active = _new_handle(db, "active")
    # The touch trigger would reset updated_at; age the rows without it.
    db.execute("SET session_replication_role = replica")
    db.execute("UPDATE flow_resume_handles SET updated_at = now() - interval '40 days'")
    db.execute("SET session_replication_role = DEFAULT")

    deleted = db.execute("SELECT delete_old_resume_handles()").fetchone()

    assert deleted == (1,)
    remaining = {r[0] for r in db.execute("SELECT id FROM flow_resume_handles")}
    assert remaining == {active}, "an active wait must survive any clean-up"


def test_statistics_view_counts_every_status(db):
    _new_handle(db, "s1")
    _new_handle(db, "s2", status="PENDING_PAUSE")
    rows = dict(
        db.execute(
            "SELECT status::text, handles FROM flow_resume_handle_statistics"
        ).fetchall()
    )
    assert rows["PAUSED"] == 1
    assert rows["PENDING_PAUSE"] == 1
    assert rows["RESUMED"] == 0, "statuses with no handle still show, at zero"
    assert set(rows) >= {"EXPIRED", "PAUSE_FAILED", "RESUME_FAILED"}
