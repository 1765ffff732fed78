#!/usr/bin/env bash
# Optional self-test: otlp_receiver.py against the Rust opentelemetry-otlp 0.33
# exporters the daemon itself uses (tonic gRPC + reqwest-blocking HTTP/protobuf,
# plain and gzip). Builds rust_probe/ (about 1 min on 2 cores; needs crates.io
# or a warm ~/.cargo registry), runs it, and checks what the receiver wrote.
#   tests/receivers/rust_selftest.sh [PYTHON]    # PYTHON: one with requirements.txt
# Env: CARGO_TARGET_DIR (default /tmp/inferscope-otlp-probe-target).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${1:-$("$here/venv.sh")}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/inferscope-otlp-probe-target}
cargo build -q --manifest-path "$here/rust_probe/Cargo.toml"
probe=$CARGO_TARGET_DIR/debug/otlp-probe

tmp=$(mktemp -d /tmp/rust-selftest.XXXXXX)
rpid=""
cleanup() {
    if [[ -n $rpid ]]; then kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

coproc RX { exec "$py" "$here/otlp_receiver.py" --grpc-port 0 --http-port 0 \
    --spans-out "$tmp/spans.jsonl" --metrics-out "$tmp/metrics.jsonl" \
    --requests-out "$tmp/requests.jsonl" 2> "$tmp/receiver.log"; }
rpid=$RX_PID
read -r -t 30 ports <&"${RX[0]}"
gport=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["grpc_port"])' "$ports")
hport=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["http_port"])' "$ports")

timeout 120 "$probe" "$gport" "$hport"
kill -TERM "$rpid"
rc=0; wait "$rpid" || rc=$?; rpid=""
[[ $rc == 0 ]] || { echo "FAIL - receiver exit status $rc"; cat "$tmp/receiver.log"; exit 1; }

python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
load = lambda n: [json.loads(l) for l in open(f"{tmp}/{n}.jsonl")]
spans, metrics, reqs = load("spans"), load("metrics"), load("requests")
fails = []
def check(c, what):
    print(("ok   - " if c else "FAIL - ") + what)
    if not c: fails.append(what)
routes = ["grpc", "grpc-gzip", "http", "http-gzip"]
for r in routes:
    s = [x for x in spans if x["name"] == f"rust-{r}"]
    check(len(s) == 1 and s[0]["transport"] == r.split("-")[0]
          and s[0]["kind"] == "SPAN_KIND_SERVER"
          and s[0]["status"] == {"code": "STATUS_CODE_ERROR", "message": "boom"}
          and s[0]["attributes"] == {"gen_ai.usage.output_tokens": 42, "ttft_s": 0.125}
          and [e["name"] for e in s[0]["events"]] == ["first_token"]
          and s[0]["resource"]["service.name"] == "rust-probe"
          and s[0]["scope"] == "inferscope.rust-probe", f"[{r}] span")
    mine = {m["name"]: m for m in metrics if m["resource"].get("probe.route") == r}
    h = mine.get("gen_ai.server.time_to_first_token")
    check(h is not None and h["type"] == "histogram" and h["count"] == 4
          and abs(h["sum"] - 2.55) < 1e-9 and h["bucket_counts"] == [1, 2, 0, 1]
          and h["explicit_bounds"] == [0.1, 0.5, 1.0] and h["unit"] == "s"
          and h["transport"] == r.split("-")[0], f"[{r}] histogram")
    c = mine.get("requests")
    check(c is not None and c["type"] == "sum" and c["value"] == 3, f"[{r}] counter")
    check("vllm:time_to_first_token_seconds" not in mine,
          f"[{r}] colon-named instrument dropped by the Rust SDK (known behaviour)")
encs = {(q["transport"], q["content_encoding"]) for q in reqs}
check(("http", "gzip") in encs and ("http", "identity") in encs, "HTTP gzip and identity seen")
check(all(q["headers"].get("user-agent", "").startswith("OTel-OTLP-Exporter-Rust/")
          for q in reqs), "user-agent is OTel-OTLP-Exporter-Rust/*")
if fails:
    print(f"rust exporter self-test: {len(fails)} check(s) FAILED"); sys.exit(1)
print("rust exporter self-test: all checks passed")
PY
