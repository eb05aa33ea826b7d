#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against the local
# PostgreSQL and RabbitMQ (started, or installed and started, when missing) and
# a local AWS-compatible API (moto, installed pinned into ~/.cache/wfm-venv);
# and the Kubernetes manifests against their schemas.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_rust
ensure_services
ensure_test_aws
scripts/validate-manifests.sh
cargo test --locked --all-targets
# The build without the optional features (no AWS SDK, no trace exporter: what
# run-local.sh builds): its own unit tests.
cargo test --locked --no-default-features --lib
