#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md: services up, release build, wfm-bench (its
# flags are passed through; default: 3 runs, medians).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_rust
ensure_services
cargo build --release --locked --bins
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/wfm-bench" "${@:---runs=3}"
