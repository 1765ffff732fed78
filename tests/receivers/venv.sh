#!/usr/bin/env bash
# Idempotently create a virtualenv with tests/receivers/requirements.txt and
# print the path of its python on stdout (the only line printed there).
#   PY=$(tests/receivers/venv.sh [VENV_DIR])     # default: tests/receivers/.venv
#   "$PY" tests/receivers/selftest.py
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${1:-$here/.venv}
req=$here/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
