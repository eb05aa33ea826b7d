#!/usr/bin/env bash
# Sets up and runs the worker on this machine: PostgreSQL and RabbitMQ
# (installed and started when missing), the `wfm` database (or the one named
# by WFM_DATABASE_NAME), then `wfm-worker run` with the defaults of
# config/wfm-worker.env.example. A WFM_DATABASE_URL of your own is used as is:
# its database is yours to create.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_rust
ensure_services
if [ -z "${WFM_DATABASE_URL:-}" ]; then
  db=${WFM_DATABASE_NAME:-wfm}
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$db\""
  fi
  # The worker reads only WFM_DATABASE_URL: point it at the database made above.
  export WFM_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
fi
# The AWS SDK (cargo feature `rds`, a third of a cold build's CPU) and the
# OpenTelemetry exporter (`otlp`) are left out unless asked for: a local
# database needs neither, and a first run builds that much sooner. So is the
# `jemalloc` allocator: its C build (~50 s) would take a first run past four
# minutes, for ~1.2 µs of CPU per message that a local run does not miss.
wanted=()
if [ -n "${WFM_RDS_INSTANCE_ID:-}" ] || [ "${WFM_RDS_IAM_AUTH:-false}" != false ] ||
  [[ " $* " == *" --rds-"* ]]; then
  wanted+=(rds)
fi
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-}" ]; then
  wanted+=(otlp)
fi
features=(--no-default-features)
if [ ${#wanted[@]} -gt 0 ]; then
  features+=(--features "$(IFS=,; echo "${wanted[*]}")")
fi
# Nor thin LTO (Cargo.toml's release profile): ~1 µs of CPU per message that
# a local run does not miss, and 23 s of a first run on a slow two-core
# machine (4 min 02 s → 3 min 39 s, BENCHMARKS.md). Set it to `thin` to keep it.
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-false}"
exec cargo run --release --locked "${features[@]}" --bin wfm-worker -- run "$@"
