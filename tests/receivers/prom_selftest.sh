#!/usr/bin/env bash
# Self-test for prometheus.sh: a real Prometheus (Debian's package) scrapes a
# tiny Python http.server that serves vLLM-style metric names with colons
# (vllm:time_to_first_token_seconds_bucket, ...) and the values are queried
# back through the HTTP API. Done twice: once with the classic text format
# (text/plain; version=0.0.4, what prometheus_client serves by default) and
# once with OpenMetrics (application/openmetrics-text; version=1.0.0).
# Exits non-zero on any failure. Needs root the first time (apt install).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prom=$here/prometheus.sh
tmp=$(mktemp -d /tmp/prom-selftest.XXXXXX)
pids=()
failures=0

cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

ok()   { echo "ok   - $*"; }
fail() { echo "FAIL - $*"; failures=$((failures + 1)); }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# jq may be missing: tiny JSON helper. Usage: jget 'python expr on d' < json
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# ---------------------------------------------------------------- install
"$prom" install
"$prom" install # second call must be a no-op
version=$(prometheus --version 2>&1 | head -1)
ok "prometheus installed: $version"

# ---------------------------------------------------------------- exporter
cat > "$tmp/exporter.py" <<'PY'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = """\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="tiny"} 1
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="tiny"} 3
vllm:time_to_first_token_seconds_bucket{le="1.0",model_name="tiny"} 3
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="tiny"} 4
vllm:time_to_first_token_seconds_sum{model_name="tiny"} 2.55
vllm:time_to_first_token_seconds_count{model_name="tiny"} 4
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="tiny"} 7
# HELP vllm:num_requests_running Number of requests currently running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="tiny"} 2
"""
# OpenMetrics: counter family is named without _total, body ends with # EOF
OPENMETRICS = (TEXT.replace("# HELP vllm:request_success_total", "# HELP vllm:request_success")
                   .replace("# TYPE vllm:request_success_total", "# TYPE vllm:request_success")
               + "# EOF\n")
FMT = sys.argv[2]
BODY = (OPENMETRICS if FMT == "openmetrics" else TEXT).encode()
CTYPE = ("application/openmetrics-text; version=1.0.0; charset=utf-8" if FMT == "openmetrics"
         else "text/plain; version=0.0.4; charset=utf-8")
scrapes = 0

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        global scrapes
        if self.path != "/metrics":
            self.send_error(404)
            return
        scrapes += 1
        sys.stderr.write(f"exporter: scrape {scrapes} Accept={self.headers.get('Accept')}\n")
        self.send_response(200)
        self.send_header("Content-Type", CTYPE)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY

run_case() { # FORMAT
    local fmt=$1
    local eport pport out
    eport=$(free_port)
    pport=$(free_port)
    echo "# --- $fmt: exporter on :$eport, prometheus on :$pport"

    python3 "$tmp/exporter.py" "$eport" "$fmt" 2> "$tmp/exporter-$fmt.log" &
    local epid=$!
    pids+=("$epid")

    "$prom" start "$tmp/data-$fmt" "$pport" "127.0.0.1:$eport" 1s 2> "$tmp/prom-$fmt.log" &
    local ppid=$!
    pids+=("$ppid")

    if "$prom" ready "$pport" 60; then ok "[$fmt] prometheus ready"; else
        fail "[$fmt] prometheus not ready"; cat "$tmp/prom-$fmt.log"; return; fi
    if [[ $(cat "/proc/$ppid/comm") == prometheus ]]; then
        ok "[$fmt] start execs: \$! is the prometheus process"
    else fail "[$fmt] \$! is $(cat "/proc/$ppid/comm"), not prometheus"; fi

    if out=$("$prom" wait-value "$pport" 'vllm:time_to_first_token_seconds_count' 30); then
        local v
        v=$(jget 'd["data"]["result"][0]["value"][1]' <<< "$out")
        local labels
        labels=$(jget 'sorted(d["data"]["result"][0]["metric"].items())' <<< "$out")
        if [[ $v == 4 ]]; then ok "[$fmt] vllm:time_to_first_token_seconds_count = 4 ($labels)"
        else fail "[$fmt] vllm:time_to_first_token_seconds_count = $v"; fi
        if [[ $labels == *"('__name__', 'vllm:time_to_first_token_seconds_count')"* \
              && $labels == *"('job', 'inferscope')"* \
              && $labels == *"('instance', '127.0.0.1:$eport')"* ]]; then
            ok "[$fmt] colon name, job and instance labels kept"
        else fail "[$fmt] labels: $labels"; fi
    else
        fail "[$fmt] no value for vllm:time_to_first_token_seconds_count: $out"
        "$prom" targets "$pport" || true
        cat "$tmp/prom-$fmt.log"
        return
    fi

    out=$("$prom" query "$pport" 'vllm:time_to_first_token_seconds_bucket')
    local buckets
    buckets=$(jget '",".join(r["metric"]["le"] + "=" + r["value"][1] for r in sorted(d["data"]["result"], key=lambda r: float(r["metric"]["le"])))' <<< "$out")
    if [[ $buckets == "0.1=1,0.5=3,1.0=3,+Inf=4" ]]; then ok "[$fmt] _bucket series: $buckets"
    else fail "[$fmt] _bucket series: $buckets"; fi

    out=$("$prom" query "$pport" 'histogram_quantile(0.5, sum by (le) (vllm:time_to_first_token_seconds_bucket))')
    local q
    q=$(jget 'round(float(d["data"]["result"][0]["value"][1]), 6)' <<< "$out")
    if [[ $q == 0.3 ]]; then ok "[$fmt] histogram_quantile(0.5) over colon-named buckets = $q"
    else fail "[$fmt] histogram_quantile(0.5) = $q"; fi

    out=$("$prom" query "$pport" 'vllm:time_to_first_token_seconds_sum')
    v=$(jget 'd["data"]["result"][0]["value"][1]' <<< "$out")
    if [[ $v == 2.55 ]]; then ok "[$fmt] _sum = 2.55"; else fail "[$fmt] _sum = $v"; fi

    out=$("$prom" query "$pport" 'vllm:request_success_total{finished_reason="stop"}')
    v=$(jget 'd["data"]["result"][0]["value"][1]' <<< "$out")
    if [[ $v == 7 ]]; then ok "[$fmt] counter vllm:request_success_total = 7"
    else fail "[$fmt] counter = $v ($out)"; fi

    out=$("$prom" query "$pport" 'vllm:num_requests_running')
    v=$(jget 'd["data"]["result"][0]["value"][1]' <<< "$out")
    if [[ $v == 2 ]]; then ok "[$fmt] gauge vllm:num_requests_running = 2"
    else fail "[$fmt] gauge = $v"; fi

    out=$("$prom" query "$pport" 'up{job="inferscope"}')
    v=$(jget 'd["data"]["result"][0]["value"][1]' <<< "$out")
    if [[ $v == 1 ]]; then ok "[$fmt] up{job=\"inferscope\"} = 1"; else fail "[$fmt] up = $v"; fi

    out=$("$prom" targets "$pport")
    local health
    health=$(jget '[(t["scrapePool"], t["health"], t["lastError"]) for t in d["data"]["activeTargets"]]' <<< "$out")
    if [[ $health == "[('inferscope', 'up', '')]" ]]; then ok "[$fmt] target healthy, no scrape error"
    else fail "[$fmt] targets: $health"; fi

    # a 1s scrape interval really is 1s: the count of scrapes grows quickly
    sleep 2.5
    out=$("$prom" query "$pport" 'count_over_time(up{job="inferscope"}[1m])')
    v=$(jget 'int(d["data"]["result"][0]["value"][1])' <<< "$out")
    if ((v >= 3)); then ok "[$fmt] scraped $v times (1s interval)"; else fail "[$fmt] only $v scrapes"; fi

    if grep -q "Accept=.*openmetrics" "$tmp/exporter-$fmt.log"; then
        ok "[$fmt] prometheus asked for OpenMetrics first (Accept header)"
    fi

    kill -TERM "$ppid"
    local rc=0
    wait "$ppid" || rc=$?
    if [[ $rc == 0 ]]; then ok "[$fmt] prometheus exits 0 on SIGTERM"
    else fail "[$fmt] prometheus exit status $rc on SIGTERM"; cat "$tmp/prom-$fmt.log"; fi
    if [[ -s $tmp/prom-$fmt.log ]]; then
        echo "# [$fmt] prometheus log (warn and above):"
        sed 's/^/#   /' "$tmp/prom-$fmt.log"
    fi
    kill "$epid" 2>/dev/null || true
    wait "$epid" 2>/dev/null || true
}

run_case text
run_case openmetrics

if ((failures > 0)); then
    echo "prometheus self-test: $failures check(s) FAILED"
    exit 1
fi
echo "prometheus self-test: all checks passed ($version)"
