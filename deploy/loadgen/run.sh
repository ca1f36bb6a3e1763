#!/bin/sh
# The docker-compose stack's load generator: pgbench's TPC-B-like transactions with two
# scripts of ours mixed in, a slow report (slow.sql) and a lookup on a column without an
# index (seqscan.sql), against a schema with a few index problems planted (plant.sql). It
# gives every dashboard something to show and makes the slow-statement alert fire.
#
# Connection settings come from the environment (PGHOST, PGUSER, PGPASSWORD, PGDATABASE).
# PGBENCH_SCALE (default 5: 500,000 accounts) and PGBENCH_RATE (transactions per second,
# default 10) size the load.
set -eu
here=$(dirname "$0")

# Initialise once: pgbench --initialize drops and recreates its tables.
if [ "$(psql -X -At -c "SELECT to_regclass('public.pgbench_accounts') IS NOT NULL")" != t ]; then
    pgbench --initialize --scale="${PGBENCH_SCALE:-5}" --quiet
fi
psql -X -q -v ON_ERROR_STOP=1 -f "$here/plant.sql"

# pgbench stops after --time; loop so the load never ends (the service also restarts).
# Weights: 18 of 20 transactions are TPC-B-like, one a slow report, one a sequential scan.
while :; do
    pgbench --client=4 --jobs=2 --rate="${PGBENCH_RATE:-10}" --time=600 --no-vacuum \
        --progress=60 --builtin=tpcb-like@18 \
        --file="$here/slow.sql@1" --file="$here/seqscan.sql@1"
done
