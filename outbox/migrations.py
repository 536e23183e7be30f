"""Applies the numbered files in `sql/` in order, each once, and records them.

`pausewire-migrate up` brings a database to the newest schema; `status`
lists what is applied; `rollback` runs `sql/rollback.sql`, which backs the
handles up, drops everything and records itself. Each file runs in its own
transaction together with its `migration_history` row, so a file is either
applied and recorded or neither. An advisory lock keeps two runners (two
containers starting at once) from applying the same file twice.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from outbox.errors import ConfigurationError, MigrationError

logger = logging.getLogger(__name__)

# Any fixed number works; it only has to differ from other advisory locks
# taken in the same database.
_ADVISORY_LOCK_KEY = 0x70617573

_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

_HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS migration_history (
    id             serial PRIMARY KEY,
    filename       text NOT NULL,
    checksum       text NOT NULL,
    action         text NOT NULL CHECK (action IN ('apply', 'rollback')),
    applied_at     timestamptz NOT NULL DEFAULT now(),
    rolled_back_at timestamptz
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    filename: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def default_sql_dir() -> Path:
    """`sql/` beside the package in a checkout, or PAUSEWIRE_SQL_DIR."""
    configured = os.environ.get("PAUSEWIRE_SQL_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "sql"


def load_migrations(sql_dir: Path) -> list[Migration]:
    """The numbered files of `sql_dir`, in order; the rollback script is not one."""
    if not sql_dir.is_dir():
        raise ConfigurationError(f"migrations folder {sql_dir} does not exist")
    files = sorted(p for p in sql_dir.iterdir() if _MIGRATION_FILE.match(p.name))
    return [Migration(p.name, p.read_text()) for p in files]


def applied_filenames(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    """Files applied and not rolled back since."""
    rows = conn.execute(
        "SELECT filename FROM migration_history "
        "WHERE action = 'apply' AND rolled_back_at IS NULL"
    ).fetchall()
    return {str(row[0]) for row in rows}


def migrate(conninfo: str, sql_dir: Path | None = None) -> list[str]:
    """Applies every pending migration; returns the files applied this time."""
    migrations = load_migrations(sql_dir or default_sql_dir())
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_HISTORY_DDL)
        for migration in migrations:
            if _apply_one(conn, migration):
                applied.append(migration.filename)
    return applied


def _apply_one(conn: psycopg.Connection[tuple[object, ...]], m: Migration) -> bool:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
        # Checked under the lock: another runner may have applied it while
        # this one waited.
        if m.filename in applied_filenames(conn):
            return False
        try:
            conn.execute(m.text.encode())
        except psycopg.Error as exc:
            raise MigrationError(m.filename, str(exc).strip()) from exc
        conn.execute(
            "INSERT INTO migration_history (filename, checksum, action) "
            "VALUES (%s, %s, 'apply')",
            (m.filename, m.checksum),
        )
    logger.info("Applied migration %s", m.filename)
    return True


def rollback(conninfo: str, sql_dir: Path | None = None) -> None:
    """Runs the rollback script in one transaction."""
    path = (sql_dir or default_sql_dir()) / "rollback.sql"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_HISTORY_DDL)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
            try:
                conn.execute(path.read_text().encode())
            except psycopg.Error as exc:
                raise MigrationError(path.name, str(exc).strip()) from exc
    logger.info("Rolled back every migration; backups kept in *_backup_* tables")


def set_role_password(conninfo: str, role: str, password: str) -> None:
    """Sets a login password; the value never reaches a log line."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    logger.info("Set the password of role %s", role)


def _admin_conninfo() -> str:
    url = os.environ.get("PAUSEWIRE_ADMIN_DATABASE_URL") or os.environ.get(
        "PAUSEWIRE_DATABASE_URL"
    )
    if not url:
        raise ConfigurationError(
            "set PAUSEWIRE_ADMIN_DATABASE_URL (or PAUSEWIRE_DATABASE_URL) to a "
            "database URL whose role owns the pausewire schema"
        )
    return url


def _password_from_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line: `pausewire-migrate up|status|rollback`."""
    parser = argparse.ArgumentParser(prog="pausewire-migrate")
    parser.add_argument("command", choices=["up", "status", "rollback"])
    parser.add_argument("--app-password-env", metavar="VAR")
    parser.add_argument("--cdc-password-env", metavar="VAR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _run(args)
    except (ConfigurationError, MigrationError) as exc:
        logger.error("pausewire-migrate: %s", exc)
        return 1
    except psycopg.OperationalError as exc:
        logger.error("pausewire-migrate: cannot reach Postgres: %s", exc)
        return 1


def _run(args: argparse.Namespace) -> int:
    conninfo = _admin_conninfo()
    if args.command == "rollback":
        rollback(conninfo)
        return 0
    if args.command == "status":
        with psycopg.connect(conninfo) as conn:
            conn.execute(_HISTORY_DDL)
            done = applied_filenames(conn)
        for m in load_migrations(default_sql_dir()):
            print("applied" if m.filename in done else "pending", m.filename)
        return 0
    applied = migrate(conninfo)
    logger.info("Schema is current; %d migration(s) applied now", len(applied))
    for var, role in (
        (args.app_password_env, "pausewire_app"),
        (args.cdc_password_env, "pausewire_cdc"),
    ):
        if var:
            set_role_password(conninfo, role, _password_from_env(var))
    return 0


if __name__ == "__main__":
    sys.exit(main())
