#!/usr/bin/env bash
# Validates deploy/kubernetes against the Kubernetes schemas (strict: unknown
# fields fail) and the KEDA and prometheus-operator CRD schemas, plus the
# wiring between the objects (scripts/manifests/validate.mjs). Installs the
# pinned validators on first use. The PromQL's metric names are checked
# against a running worker by the integration tests (tests/it/kubernetes.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_manifest_validators
dir=deploy/kubernetes
core=()
for f in "$dir"/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml) ;;
    *) grep -qE '^apiVersion: (v1|apps/v1|batch/v1|policy/v1)$' "$f" && core+=("$f") ;;
  esac
done
"$HOME/.cache/wfm-kvenv/bin/kubernetes-validate" --strict --quiet "${core[@]}"
# ES modules resolve packages next to the script, not through NODE_PATH.
cp scripts/manifests/validate.mjs "$HOME/.cache/wfm-node/"
node "$HOME/.cache/wfm-node/validate.mjs" "$PWD/$dir"
