#!/usr/bin/env python3
"""Capture a real SGLang release's engine IPC bytes, syscall by syscall, as test data.

Like tests/vllm/capture.py (whose request mix and strace parser it uses): starts SGLang with
tests/sglang/serve.sh, attaches strace to its main process (uvicorn + TokenizerManager) once it
is ready, sends the known mix of requests, and writes every sendto/recvfrom of that process with
its bytes, plus what each HTTP response said, to a JSON file. The Rust test
`engine::sglang::tests::real_captures` replays the bytes through the ZMTP parser and the SGLang
decoder and checks every request against the responses.

  python3 tests/sglang/capture.py --venv .venv-sglang --out tests/data/sglang/real-0.5.23.json

Set SGLANG_USE_PICKLE_IPC=0 in the environment for SGLang's msgpack IPC instead of pickles.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/vllm"))
from capture import parse_strace, requests  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=18331)
    args = ap.parse_args()
    venv = Path(args.venv).resolve()
    ver = subprocess.check_output(
        [venv / "bin/python", "-c", "import importlib.metadata as m; print(m.version('sglang'))"], text=True, cwd="/"
    ).strip()
    env = dict(os.environ, INFERSCOPE_SGLANG_VENV=str(venv))
    log = open(f"/tmp/capture-sglang-{args.port}.log", "w")
    server = subprocess.Popen(
        [ROOT / "tests/sglang/serve.sh", str(args.port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        for _ in range(300):
            try:
                models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/v1/models", timeout=2).read())
                # SGLang answers /v1/models before its warm-up request is through.
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health_generate", timeout=30).read()
                break
            except Exception:
                if server.poll() is not None:
                    sys.exit(f"SGLang exited; see {log.name}")
                time.sleep(1)
        else:
            sys.exit(f"SGLang not ready; see {log.name}")
        model = models["data"][0]["id"]
        raw = f"/tmp/capture-sglang-{args.port}.strace"
        tids = os.listdir(f"/proc/{server.pid}/task")
        st = subprocess.Popen(
            ["strace", "-f", "-ttt", "-xx", "-s", "16777216", "-qq", "-e", "trace=sendto,recvfrom,sendmsg,recvmsg",
             "-e", "signal=none", "-o", raw] + [a for t in tids for a in ("-p", t)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
        wall_minus_mono = time.time() - time.monotonic()
        truth = requests(args.port, model)
        time.sleep(1)
        st.send_signal(signal.SIGINT)
        st.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    calls = parse_strace(raw)
    # strace stamps with the wall clock; SGLang's own stamps (time.perf_counter()) and
    # inferscope's capture use CLOCK_MONOTONIC: the calls are put on that clock.
    for c in calls:
        c["ts_ns"] = int(round((c.pop("ts") - wall_minus_mono) * 1e9))
    ipc = "pickle" if os.environ.get("SGLANG_USE_PICKLE_IPC", "1").lower() not in ("0", "false") else "msgpack"
    doc = {
        "generator": "tests/sglang/capture.py",
        "sglang_version": ver,
        "ipc": ipc,
        "note": "sendto/recvfrom of a real SGLang main process (strace attached after start), on CLOCK_MONOTONIC like SGLang's own stamps, with the HTTP responses' ids and usage",
        "responses": truth,
        "calls": calls,
    }
    Path(args.out).write_text(json.dumps(doc, indent=0) + "\n")
    print(f"{args.out}: SGLang {ver} ({ipc} IPC), {len(calls)} calls, {sum(len(c['hex']) // 2 for c in calls)} bytes, {len(truth)} responses")


if __name__ == "__main__":
    main()
