#!/usr/bin/env bash
# Runs once, when the Postgres data volume is first initialised. The
# pausewire database itself is POSTGRES_DB; the Prefect server keeps its
# tables apart in a database of its own. Roles, tables and role passwords
# come later, from the migrate service.
set -eo pipefail

psql --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set ON_ERROR_STOP=1 --no-psqlrc <<'SQL'
CREATE DATABASE prefect;
SQL
