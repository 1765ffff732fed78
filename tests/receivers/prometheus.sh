#!/usr/bin/env bash
# A private, real Prometheus server for integration tests (Debian's package).
#
#   prometheus.sh install
#       Idempotently install Debian's `prometheus` if the binary is missing
#       (apt-get install -y --no-install-recommends prometheus). The package's
#       service is never started: a policy-rc.d that denies service starts is
#       put in place for the install when none exists. Only the binary is used.
#
#   prometheus.sh start DATA_DIR LISTEN_PORT TARGET_HOST:PORT [SCRAPE_INTERVAL]
#       (installs first if needed) writes DATA_DIR/prometheus.yml scraping
#       TARGET every SCRAPE_INTERVAL (default 1s; scrape_timeout = interval)
#       under job name "inferscope", then execs prometheus in the foreground
#       (so $! of `prometheus.sh start ... &` is the prometheus PID; SIGTERM
#       stops it cleanly) with
#         --storage.tsdb.path DATA_DIR --web.listen-address 127.0.0.1:LISTEN_PORT
#         --config.file DATA_DIR/prometheus.yml --web.enable-lifecycle
#       Environment: METRICS_PATH (default /metrics), SCHEME (default http),
#       PROM_LOG_LEVEL (default warn), PROM_EXTRA_ARGS (extra flags, word-split).
#
#   prometheus.sh ready PORT [TIMEOUT_S]
#       wait (default 30 s) until GET /-/ready answers 200; exit 1 on timeout.
#
#   prometheus.sh query PORT 'PROMQL' [TIME]
#       print the JSON answer of the instant query API (/api/v1/query).
#
#   prometheus.sh wait-value PORT 'PROMQL' [TIMEOUT_S]
#       poll the instant query until it returns a non-empty result (default
#       30 s); print the last JSON answer; exit 1 on timeout.
#
#   prometheus.sh targets PORT
#       print the JSON answer of /api/v1/targets (health, lastError, ...).
set -euo pipefail

die() { echo "prometheus.sh: $*" >&2; exit 2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

install_prometheus() {
    if command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "prometheus is missing and installing it needs root"
    local guard=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $guard ]]; then
        # deny every service start during the install (see invoke-rc.d(8))
        printf '#!/bin/sh\nexit 101\n' > "$guard"
        chmod 755 "$guard"
        created=1
    fi
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y --no-install-recommends prometheus; then
            apt-get update && apt-get install -y --no-install-recommends prometheus
        fi
    } >&2 || rc=$?
    if [[ $created == 1 ]]; then rm -f "$guard"; fi
    [[ $rc == 0 ]] || die "apt-get install prometheus failed (rc=$rc)"
    command -v prometheus >/dev/null 2>&1 || die "prometheus still missing after install"
}

cmd_start() {
    [[ $# -ge 3 && $# -le 4 ]] || usage
    local data=$1 port=$2 target=$3 interval=${4:-1s}
    [[ $port =~ ^[0-9]+$ ]] || die "LISTEN_PORT must be a number: $port"
    install_prometheus
    mkdir -p "$data"
    data=$(cd "$data" && pwd)
    local cfg=$data/prometheus.yml
    cat > "$cfg" <<EOF
# written by tests/receivers/prometheus.sh
global:
  scrape_interval: ${interval}
  scrape_timeout: ${interval}
  evaluation_interval: ${interval}
scrape_configs:
  - job_name: inferscope
    scrape_interval: ${interval}
    scrape_timeout: ${interval}
    metrics_path: ${METRICS_PATH:-/metrics}
    scheme: ${SCHEME:-http}
    static_configs:
      - targets: ['${target}']
EOF
    # shellcheck disable=SC2086
    exec prometheus \
        --config.file "$cfg" \
        --storage.tsdb.path "$data" \
        --web.listen-address "127.0.0.1:${port}" \
        --web.enable-lifecycle \
        --log.level "${PROM_LOG_LEVEL:-warn}" \
        ${PROM_EXTRA_ARGS:-}
}

api() { # PORT PATH [curl args...]
    local port=$1 path=$2
    shift 2
    curl -sS --fail-with-body --max-time 10 "$@" "http://127.0.0.1:${port}${path}"
}

cmd_query() {
    [[ $# -ge 2 && $# -le 3 ]] || usage
    local args=(--get --data-urlencode "query=$2")
    [[ $# == 3 ]] && args+=(--data-urlencode "time=$3")
    api "$1" /api/v1/query "${args[@]}"
    echo
}

cmd_ready() {
    [[ $# -ge 1 && $# -le 2 ]] || usage
    local deadline=$((SECONDS + ${2:-30}))
    until curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/-/ready"; do
        if ((SECONDS >= deadline)); then
            echo "prometheus.sh: not ready on port $1 after ${2:-30}s" >&2
            return 1
        fi
        sleep 0.2
    done
}

cmd_wait_value() {
    [[ $# -ge 2 && $# -le 3 ]] || usage
    local deadline=$((SECONDS + ${3:-30})) out=""
    while true; do
        out=$(api "$1" /api/v1/query --get --data-urlencode "query=$2" 2>/dev/null || true)
        if [[ $out == *'"status":"success"'* && $out != *'"result":[]'* ]]; then
            echo "$out"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "$out"
            echo "prometheus.sh: no result for '$2' after ${3:-30}s" >&2
            return 1
        fi
        sleep 0.25
    done
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
    install) install_prometheus ;;
    start) cmd_start "$@" ;;
    query) cmd_query "$@" ;;
    ready) cmd_ready "$@" ;;
    wait-value) cmd_wait_value "$@" ;;
    targets) [[ $# == 1 ]] || usage; api "$1" /api/v1/targets; echo ;;
    *) usage ;;
esac
