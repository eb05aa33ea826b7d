#!/usr/bin/env bash
# Private RabbitMQ nodes beside the machine's broker, run from the installed
# package: own node names, ports, configuration and data directories. The
# machine's broker (rabbit@localhost, port 5672) is never touched.
#
#   scripts/rabbitmq-cluster.sh start DIR COUNT BASE_PORT [ADVANCED_CONFIG]
#   scripts/rabbitmq-cluster.sh stop DIR
#   scripts/rabbitmq-cluster.sh stop-node DIR I     # 1-based; data kept
#   scripts/rabbitmq-cluster.sh kill-node DIR I     # SIGKILL: a crash; data kept
#   scripts/rabbitmq-cluster.sh start-node DIR I
#
# Node I is `<name>-I@localhost` (name from DIR), AMQP on 127.0.0.1:BASE_PORT+I-1,
# Erlang distribution on BASE_PORT+I-1+10000. With COUNT > 1 the nodes form one
# cluster (nodes 2.. join node 1). ADVANCED_CONFIG is an Erlang term file
# (e.g. `[{rabbit, [{consumer_timeout, 3000}]}].`) given to every node.
# `DIR/nodes` lists "name port" per node; `rabbitmqctl -n NAME ...` drives one.
# Needs root (or the rabbitmq user): the nodes run as `rabbitmq` and share its
# Erlang cookie, as the package's own broker does.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

node_env() { # dir index base_port name
  local dir=$1 i=$2 base=$3 name=$4 port=$(($3 + $2 - 1))
  echo "RABBITMQ_NODENAME=$name-$i@localhost RABBITMQ_NODE_PORT=$port" \
    "RABBITMQ_DIST_PORT=$((port + 10000)) RABBITMQ_CONFIG_FILE=$dir/n$i/rabbitmq" \
    "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/n$i/advanced.config" \
    "RABBITMQ_MNESIA_BASE=$dir/n$i/mnesia RABBITMQ_LOG_BASE=$dir/n$i/log" \
    "RABBITMQ_PID_FILE=$dir/n$i/pid RABBITMQ_ENABLED_PLUGINS_FILE=$dir/n$i/enabled_plugins"
}

ctl() { as_root rabbitmqctl -q -n "$1" "${@:2}"; }

await_node() { # name
  for _ in $(seq 120); do
    ctl "$1" await_startup >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "rabbitmq-cluster.sh: node $1 did not start" >&2
  return 1
}

kill_pid_file() { # file
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  # Only the Erlang VM the file names (pids are reused).
  if [ -n "$pid" ] && grep -q beam "/proc/$pid/cmdline" 2>/dev/null; then
    as_root kill -KILL "$pid" 2>/dev/null || true
  fi
}

start_node() { # dir index
  local dir=$1 i=$2 base name
  read -r name base <"$dir/cluster"
  # shellcheck disable=SC2046
  as_root env $(node_env "$dir" "$i" "$base" "$name") rabbitmq-server -detached
}

start() {
  local dir=$1 count=$2 base=$3 advanced=${4:-}
  command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed" >&2; exit 1; }
  local name; name=wfm$(basename "$dir" | tr -c 'a-zA-Z0-9\n' '-')
  mkdir -p "$dir"
  echo "$name $base" >"$dir/cluster"
  : >"$dir/nodes"
  for i in $(seq "$count"); do
    local port=$((base + i - 1))
    mkdir -p "$dir/n$i/mnesia" "$dir/n$i/log"
    printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$port" >"$dir/n$i/rabbitmq.conf"
    if [ -n "$advanced" ]; then cp "$advanced" "$dir/n$i/advanced.config"; else echo '[].' >"$dir/n$i/advanced.config"; fi
    echo '[].' >"$dir/n$i/enabled_plugins"
    echo "$name-$i@localhost $port" >>"$dir/nodes"
  done
  as_root chown -R rabbitmq:rabbitmq "$dir"
  for i in $(seq "$count"); do start_node "$dir" "$i"; done
  for i in $(seq "$count"); do await_node "$name-$i@localhost"; done
  for i in $(seq 2 "$count"); do
    ctl "$name-$i@localhost" stop_app
    ctl "$name-$i@localhost" join_cluster "$name-1@localhost"
    ctl "$name-$i@localhost" start_app
  done
}

stop() {
  local dir=$1
  [ -f "$dir/nodes" ] || return 0
  # rabbitmqctl reads stdin: without </dev/null it would swallow the list.
  while read -r node _; do
    ctl "$node" stop </dev/null >/dev/null 2>&1 || true
  done <"$dir/nodes"
  # A node that did not answer: its VM's pid is in its pid file.
  for pid_file in "$dir"/n*/pid; do kill_pid_file "$pid_file"; done
  as_root rm -rf "$dir"
}

case "${1:-}" in
  start) start "$2" "$3" "$4" "${5:-}" ;;
  stop) stop "$2" ;;
  stop-node) ctl "$(sed -n "${3}p" "$2/nodes" | cut -d' ' -f1)" stop ;;
  kill-node)
    kill_pid_file "$2/n$3/pid"
    node=$(sed -n "${3}p" "$2/nodes" | cut -d' ' -f1)
    for _ in $(seq 100); do ctl "$node" ping >/dev/null 2>&1 || exit 0; sleep 0.1; done
    echo "rabbitmq-cluster.sh: $node survived SIGKILL" >&2; exit 1
    ;;
  start-node)
    start_node "$2" "$3"
    await_node "$(sed -n "${3}p" "$2/nodes" | cut -d' ' -f1)"
    ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
