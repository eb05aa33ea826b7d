#!/usr/bin/env bash
# Sets up and runs the worker on this machine: PostgreSQL and RabbitMQ
# (installed and started when missing), the `wfm` database, then
# `wfm-worker run` with the defaults of config/wfm-worker.env.example.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_rust
ensure_services
db=${WFM_DATABASE_NAME:-wfm}
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$db\""
fi
exec cargo run --release --locked --bin wfm-worker -- run "$@"
