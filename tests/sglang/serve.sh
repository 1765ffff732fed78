#!/usr/bin/env bash
# Start a real SGLang server (0.5.x on CPU, its generic platform) on 127.0.0.1:PORT in the
# foreground, serving the tiny local model that tests/vllm/setup.sh made.
#
#   tests/sglang/serve.sh PORT [extra sglang.launch_server args...]
#
# The script `exec`s python, so its PID is SGLang's main process (`python -m
# sglang.launch_server`: uvicorn and the TokenizerManager), which starts `sglang::scheduler`
# and `sglang::detokenizer`. SIGTERM to that PID stops all of them.
#
# Environment (all optional):
#   INFERSCOPE_SGLANG_VENV     venv made by setup.sh   (default <repo>/.venv-sglang)
#   INFERSCOPE_VLLM_MODEL      model dir               (default <repo>/.cache/tiny-llama)
#   INFERSCOPE_SGLANG_RUN_DIR  scratch root: HOME, TMPDIR (SGLang's ZeroMQ ipc sockets, never
#                              deleted by SGLang) and caches (default <repo>/.cache/sglang-run)
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT [extra sglang args...]" >&2
    exit 2
fi
port=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${INFERSCOPE_SGLANG_VENV:-$repo/.venv-sglang}
model=${INFERSCOPE_VLLM_MODEL:-$repo/.cache/tiny-llama}
run=${INFERSCOPE_SGLANG_RUN_DIR:-$repo/.cache/sglang-run}

[[ -x $venv/bin/python ]] || { echo "serve.sh: no venv at $venv; run tests/sglang/setup.sh first" >&2; exit 1; }
[[ -f $model/config.json ]] || { echo "serve.sh: no model at $model; run tests/vllm/setup.sh first" >&2; exit 1; }

rm -rf "$run/port-$port"
mkdir -p "$run/port-$port/home" "$run/port-$port/tmp" "$run/cache"
export HOME=$run/port-$port/home
export TMPDIR=$run/port-$port/tmp
export TORCHINDUCTOR_CACHE_DIR=$run/cache/inductor
export TRITON_CACHE_DIR=$run/cache/triton
export HF_HOME=$run/cache/hf
export XDG_CACHE_HOME=$run/cache/xdg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# SGLang's own CPU engine needs sgl-kernel's CPU build: its generic platform is what runs here.
unset SGLANG_USE_CPU_ENGINE

# --mem-fraction-static: the KV cache would otherwise take ~15 GB of host memory;
# --sleep-on-idle: the scheduler would otherwise spin a core while idle.
exec "$venv/bin/python" -m sglang.launch_server \
    --model-path "$model" \
    --served-model-name tiny-llama \
    --device cpu \
    --host 127.0.0.1 \
    --port "$port" \
    --attention-backend torch_native \
    --sampling-backend pytorch \
    --mem-fraction-static 0.05 \
    --enable-metrics \
    --sleep-on-idle \
    --log-level warning \
    "$@"
