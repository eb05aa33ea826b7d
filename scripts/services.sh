#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ run on this machine, installing them from
# the OS packages (Debian/Ubuntu) when they are missing. Sourced by the other
# scripts; safe to run again and again.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

wait_for() { # description, attempts, command...
  local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "services.sh: $what did not come up" >&2; return 1
}

ensure_postgres() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version; version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for "PostgreSQL" 60 pg_isready -q -h 127.0.0.1 -p 5432
  fi
  # A fresh install asks for a password over TCP; the worker's defaults and the
  # tests connect as `postgres` from loopback only, so trust exactly that.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
    local hba; hba=$(as_root su postgres -c "psql -Atc 'SHOW hba_file'")
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    as_root su postgres -c "psql -Atc 'SELECT pg_reload_conf()'" >/dev/null
    wait_for "PostgreSQL trust on 127.0.0.1" 10 psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1'
  fi
}

ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
    as_root rabbitmq-server -detached || true
  fi
  wait_for "RabbitMQ" 90 as_root rabbitmqctl -q await_startup
}

ensure_rust() {
  if ! command -v cargo >/dev/null; then
    command -v curl >/dev/null || apt_install curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  command -v cc >/dev/null || apt_install build-essential
}

# The offline AWS API for the RDS tests: moto in server mode, pinned, in a venv
# outside the clone; and the name its fake instance endpoint reports, mapped to
# the local PostgreSQL.
MOTO_VERSION=5.2.5
ensure_test_aws() {
  local venv="$HOME/.cache/wfm-venv"
  if ! "$venv/bin/pip" show moto 2>/dev/null | grep -q "^Version: $MOTO_VERSION\$"; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv python3-pip; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION"
  fi
  local host=wfm-rds-test.aaaaaaaaaa.us-east-1.rds.amazonaws.com
  grep -q " $host\$" /etc/hosts || echo "127.0.0.1 $host" | as_root tee -a /etc/hosts >/dev/null
}

ensure_services() {
  ensure_postgres
  ensure_rabbitmq
}

# The manifest validators, pinned, outside the clone: kubernetes-validate
# (PyPI; core kinds, strict) and kubernetes-models (npm; core kinds and the
# KEDA and prometheus-operator CRDs), installed from scripts/manifests' lockfile.
KUBERNETES_VALIDATE_VERSION=1.31.0
ensure_manifest_validators() {
  local venv="$HOME/.cache/wfm-kvenv" node="$HOME/.cache/wfm-node"
  if ! "$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -q "^Version: $KUBERNETES_VALIDATE_VERSION\$"; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv python3-pip; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  command -v npm >/dev/null || apt_install nodejs npm
  mkdir -p "$node"
  if ! cmp -s scripts/manifests/package-lock.json "$node/package-lock.json" || [ ! -d "$node/node_modules" ]; then
    cp scripts/manifests/package.json scripts/manifests/package-lock.json "$node/"
    (cd "$node" && npm ci --silent --no-audit --no-fund)
  fi
}
