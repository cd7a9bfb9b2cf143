#!/bin/sh
# payworker's runtime roles: created if missing, their password (re)set from the
# environment, never superuser or owner of anything. Run as the database's owner (libpq's
# PGHOST, PGUSER, PGPASSWORD, PGDATABASE) before `payworker migrate --grant ROLE`, which
# gives them their privileges. Safe to re-run: docker-compose.yml's db-roles service runs it
# on every `up`, so a changed password reaches an existing database too (an initdb script
# would only ever run on an empty volume).
#
#   PAYWORKER_DB_PASSWORD           password of the worker's role (workers, operator commands)
#   PAYWORKER_MONITOR_DB_PASSWORD   password of the monitoring role (metrics, Flower)
#   PAYWORKER_DB_ROLE               the worker's role name       (default payworker_worker)
#   PAYWORKER_MONITOR_DB_ROLE       the monitoring role name     (default payworker_monitor)
set -eu

: "${PAYWORKER_DB_PASSWORD:?set PAYWORKER_DB_PASSWORD}"
: "${PAYWORKER_MONITOR_DB_PASSWORD:?set PAYWORKER_MONITOR_DB_PASSWORD}"

# Passwords travel as psql variables and are quoted by format(%L): no shell or SQL
# injection whatever they contain. \gexec runs each generated statement.
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
    -v worker_role="${PAYWORKER_DB_ROLE:-payworker_worker}" \
    -v worker_password="$PAYWORKER_DB_PASSWORD" \
    -v monitor_role="${PAYWORKER_MONITOR_DB_ROLE:-payworker_monitor}" \
    -v monitor_password="$PAYWORKER_MONITOR_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', name)
  FROM (VALUES (:'worker_role'), (:'monitor_role')) AS wanted(name)
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
              ' NOBYPASSRLS PASSWORD %L', name, password)
  FROM (VALUES (:'worker_role', :'worker_password'),
               (:'monitor_role', :'monitor_password')) AS wanted(name, password)
\gexec
SQL
echo "db-roles: ${PAYWORKER_DB_ROLE:-payworker_worker} and ${PAYWORKER_MONITOR_DB_ROLE:-payworker_monitor} are ready"
