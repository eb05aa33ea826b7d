#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against the local
# PostgreSQL and RabbitMQ (started, or installed and started, when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_rust
ensure_services
cargo test --locked --all-targets
