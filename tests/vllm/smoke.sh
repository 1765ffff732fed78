#!/usr/bin/env bash
# End-to-end smoke test of the real vLLM recipe:
#   setup.sh (idempotent) -> serve.sh on a free port -> /health -> one streaming
#   chat completion (stream_options.include_usage) and one non-streaming
#   completion, both with max_tokens/ignore_eos/temperature 0 -> exact token
#   counts in `usage` and in /metrics -> SIGTERM -> all vLLM processes gone.
#
#   tests/vllm/smoke.sh            # exit 0 only if everything worked
#
# Environment: INFERSCOPE_VLLM_VENV (venv, default <repo>/.venv-vllm), PORT (default:
# a free one), SMOKE_READY_TIMEOUT (seconds, default 300), plus serve.sh's.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export INFERSCOPE_VLLM_VENV=${INFERSCOPE_VLLM_VENV:-$repo/.venv-vllm}
run=${INFERSCOPE_VLLM_RUN_DIR:-$repo/.cache/vllm-run}
model_name=${INFERSCOPE_VLLM_MODEL_NAME:-tiny-llama}
ready_timeout=${SMOKE_READY_TIMEOUT:-300}
N_CHAT=8      # completion tokens asked for in the streaming chat request
N_COMPL=5     # ... and in the non-streaming completion request

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)
say() { printf '[smoke.sh %6ss] %s\n' "$(since "$T0")" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

say "setup (idempotent)"
"$here/setup.sh" "$INFERSCOPE_VLLM_VENV" || fail "setup.sh failed"
py=$INFERSCOPE_VLLM_VENV/bin/python
command -v curl >/dev/null || fail "curl is needed"

port=${PORT:-$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
base=http://127.0.0.1:$port
mkdir -p "$run"
log=$run/smoke-$port.log
work=$(mktemp -d "${TMPDIR:-/tmp}/vllm-smoke.XXXXXX")

pid=
children=
cleanup() {
    local rc=$?
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        say "cleanup: stopping server $pid"
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    # Children left behind (only if the API server died abnormally).
    for c in $children; do kill -0 "$c" 2>/dev/null && kill -KILL "$c" 2>/dev/null; done
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting vLLM on port $port (log: $log)"
"$here/serve.sh" "$port" > "$log" 2>&1 &
pid=$!
t_start=$(now)

# Wait for /health.
ready=
while (( $(awk -v s="$(since "$t_start")" -v t="$ready_timeout" 'BEGIN { print (s < t) }') )); do
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 40 "$log"
        wait "$pid"; rc=$?; pid=
        fail "server exited (status $rc) before becoming healthy; log: $log"
    fi
    if curl -sf -o /dev/null "$base/health"; then ready=1; break; fi
    sleep 0.5
done
[[ -n $ready ]] || { tail -n 40 "$log"; fail "server not healthy after ${ready_timeout}s; log: $log"; }
ready_s=$(since "$t_start")
say "healthy after ${ready_s}s"

# The PID we started is the API server itself (serve.sh execs python).
grep -q 'vllm.entrypoints.openai.api_server' "/proc/$pid/cmdline" 2>/dev/null \
    || fail "pid $pid is not vLLM's API server: $(tr '\0' ' ' < "/proc/$pid/cmdline")"
children=$(ps -e -o pid=,ppid= | awk -v p="$pid" '
    { parent[$1] = $2 } END { n = 1; want[p] = 1
      do { added = 0; for (c in parent) if (!(c in want) && (parent[c] in want)) { want[c] = 1; added = 1 } } while (added)
      for (c in want) if (c != p) printf "%s ", c }')
children=${children% }
plist=$(echo "$pid $children" | tr ' ' ',')
say "process tree (ps -o pid,ppid,comm,args):"
ps -o pid,ppid,comm,args -p "$plist" | cut -c1-160 | sed 's/^/    /'
ps -o comm= -p "$plist" | grep -q '^VLLM::EngineCor' || fail "no VLLM::EngineCore child process"

ok=1
check() { if "$@"; then :; else ok=; fi; }

# 1. Streaming chat completion with usage in the last chunk.
say "POST /v1/chat/completions stream=true max_tokens=$N_CHAT"
curl -sS -N --max-time 60 "$base/v1/chat/completions" -H 'Content-Type: application/json' -d @- \
    > "$work/chat.sse" <<EOF || fail "chat request failed"
{"model": "$model_name", "messages": [{"role": "user", "content": "Say hello to the eBPF probes."}],
 "max_tokens": $N_CHAT, "ignore_eos": true, "temperature": 0, "stream": true,
 "stream_options": {"include_usage": true}}
EOF
check "$py" - "$work/chat.sse" "$N_CHAT" <<'EOF'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
raw = open(path).read()
events = [l[len("data: "):] for l in raw.split("\n") if l.startswith("data: ")]
err = []
if not events or events[-1] != "[DONE]":
    err.append("stream does not end with data: [DONE]")
chunks = [json.loads(e) for e in events if e != "[DONE]"]
usage = [c["usage"] for c in chunks if c.get("usage")]
text = "".join(ch.get("delta", {}).get("content") or "" for c in chunks for ch in c.get("choices", []))
finish = [ch.get("finish_reason") for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")]
if not usage or usage[-1].get("completion_tokens") != n:
    err.append(f"usage.completion_tokens != {n}: {usage}")
if finish != ["length"]:
    err.append(f"finish_reason {finish} != ['length']")
if chunks and chunks[0]["choices"][0]["delta"].get("role") != "assistant":
    err.append("first chunk is not the assistant role delta")
print(f"    {len(events)} SSE events, usage={usage[-1] if usage else None}, finish={finish}, text={text!r}")
for e in err:
    print("    ERROR:", e)
sys.exit(1 if err else 0)
EOF

# 2. Non-streaming completion.
say "POST /v1/completions stream=false max_tokens=$N_COMPL"
curl -sS --max-time 60 "$base/v1/completions" -H 'Content-Type: application/json' -d @- \
    > "$work/compl.json" <<EOF || fail "completion request failed"
{"model": "$model_name", "prompt": "The quick brown fox", "max_tokens": $N_COMPL,
 "ignore_eos": true, "temperature": 0}
EOF
check "$py" - "$work/compl.json" "$N_COMPL" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
u, ch = d.get("usage") or {}, (d.get("choices") or [{}])[0]
print(f"    usage={u}, finish={ch.get('finish_reason')}, text={ch.get('text')!r}")
ok = u.get("completion_tokens") == n and ch.get("finish_reason") == "length"
if not ok:
    print("    ERROR: unexpected response:", json.dumps(d)[:500])
sys.exit(0 if ok else 1)
EOF

# 3. vLLM's own metrics agree (fresh server: exactly these two requests).
say "GET /metrics"
curl -sS --max-time 30 "$base/metrics" > "$work/metrics.txt" || fail "metrics request failed"
grep -E '^vllm:(request_success_total|prompt_tokens_total|generation_tokens_total|time_to_first_token_seconds_count)[{ ]' \
    "$work/metrics.txt" | sed 's/^/    /'
check "$py" - "$work/metrics.txt" "$((N_CHAT + N_COMPL))" <<'EOF'
import re, sys
want_gen = int(sys.argv[2])
tot = {}
for line in open(sys.argv[1]):
    m = re.match(r'^(vllm:[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$', line.strip())
    if m:
        tot[m.group(1)] = tot.get(m.group(1), 0.0) + float(m.group(3))
want = {"vllm:request_success_total": 2, "vllm:generation_tokens_total": want_gen,
        "vllm:time_to_first_token_seconds_count": 2}
bad = {k: (tot.get(k), v) for k, v in want.items() if tot.get(k) != v}
if tot.get("vllm:prompt_tokens_total", 0) <= 0:
    bad["vllm:prompt_tokens_total"] = (tot.get("vllm:prompt_tokens_total"), "> 0")
for k, (got, exp) in bad.items():
    print(f"    ERROR: {k} = {got}, expected {exp}")
sys.exit(1 if bad else 0)
EOF

# 4. SIGTERM stops the API server and its children.
say "SIGTERM to API server $pid"
t_stop=$(now)
kill -TERM "$pid"
stopped=
for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || { stopped=1; break; }; sleep 0.1; done
if [[ -n $stopped ]]; then
    wait "$pid"; rc=$?
    say "server exited with status $rc after $(since "$t_stop")s"
    pid=
else
    ok=; say "ERROR: server still running 30s after SIGTERM"
fi
# EngineCore/Worker exit with the API server; Python's multiprocessing
# resource_tracker child may take a moment longer. Allow 15 s.
for _ in $(seq 1 150); do
    left=
    for c in $children; do kill -0 "$c" 2>/dev/null && left+="$c "; done
    [[ -z $left ]] && break
    sleep 0.1
done
[[ -z $left ]] || { ok=; say "ERROR: children still alive after the server exited: $left"; ps -o pid,comm -p "$(echo $left | tr ' ' ',')"; }

if [[ -n $ok ]]; then
    say "PASS (ready in ${ready_s}s, total $(since "$T0")s)"
    exit 0
fi
say "FAIL (server log: $log)"
exit 1
