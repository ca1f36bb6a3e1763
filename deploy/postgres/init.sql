-- What pg-health-exporter needs in the docker-compose stack's PostgreSQL: the extensions and
-- a least-privilege monitoring role. The official postgres image runs this once, when it
-- initialises an empty data directory, with psql as the superuser, connected to POSTGRES_DB
-- and with ON_ERROR_STOP on, so any error here stops the container from starting.
-- (psql 15+ for \getenv; the stack uses postgres:17.)

-- The role's password comes from the environment: docker-compose.yml passes
-- PG_HEALTH_EXPORTER_PASSWORD, whose default there is a password for the demo only.
\getenv exporter_password PG_HEALTH_EXPORTER_PASSWORD
\if :{?exporter_password}
  SELECT :'exporter_password' = '' AS exporter_password_missing \gset
\else
  \set exporter_password_missing true
\endif
\if :exporter_password_missing
  DO $$ BEGIN RAISE EXCEPTION 'PG_HEALTH_EXPORTER_PASSWORD is not set or empty'; END $$;
\endif

-- pg_monitor is all the exporter needs (README, "The monitoring role"); it never writes.
-- Not pg_health_exporter: PostgreSQL reserves role names starting with pg_.
CREATE ROLE health_exporter LOGIN PASSWORD :'exporter_password' IN ROLE pg_monitor;

-- The application database (POSTGRES_DB, where psql starts): bloat is measured by pgstattuple
-- where the planner's statistics cannot be trusted or read, and sequence usage needs to read
-- the sequences, including those the load generator creates later (as this superuser).
CREATE EXTENSION IF NOT EXISTS pgstattuple;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON SEQUENCES TO health_exporter;

-- The exporter's own database (the DSN in deploy/exporter/config.yaml): pg_stat_statements is
-- read there, for every database of the server (shared_preload_libraries is set on the
-- command line in docker-compose.yml).
\connect postgres
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE EXTENSION IF NOT EXISTS pgstattuple;

-- Databases created later inherit pgstattuple from the template.
\connect template1
CREATE EXTENSION IF NOT EXISTS pgstattuple;
