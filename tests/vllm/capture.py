#!/usr/bin/env python3
"""Capture a real vLLM release's engine IPC bytes, syscall by syscall, as test data.

Starts the vLLM installed in a venv (tests/vllm/serve.sh), attaches strace to its API server
after it is ready (as inferscope attaching to a running server would: the ZMTP greetings are
long gone), sends a known mix of requests, and writes every sendto/recvfrom of the API server
(the ZeroMQ I/O threads' calls: the HTTP side uses read/write) with its bytes, plus what each
HTTP response said (ids, token counts), to a JSON file. The Rust test
`engine::vllm::real_captures` replays the bytes through the ZMTP parser and the decoder of that
release's layout and checks every request against the responses.

  python3 tests/vllm/capture.py --venv .venv-vllm-0.12 --out tests/data/vllm/real-0.12.0.json

Needs strace and a venv made by tests/vllm/setup.sh.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"^(\d+) (\d+\.\d+) (sendto|recvfrom)\((\d+), \"((?:\\x[0-9a-f]{2})*)\"(\.\.\.)?, \d+.*\) = (-?\d+)")


def post(port, path, body, request_id=None):
    headers = {"Content-Type": "application/json"}
    if request_id:
        # Ids ending in '-' and 8 characters, like the random suffix vLLM >= 0.14 adds.
        headers["X-Request-Id"] = request_id
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read().decode()


def stream_usage(text):
    """The id and usage of a streamed response (include_usage)."""
    rid, usage = None, None
    for line in text.splitlines():
        if line.startswith("data: {"):
            ev = json.loads(line[6:])
            rid = rid or ev.get("id")
            usage = ev.get("usage") or usage
    return rid, usage


def requests(port, model):
    """A known mix: streamed chats, unary completions, n=2, a long token-id prompt."""
    out = []
    for i, max_tokens in enumerate([4, 9, 17]):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"hello number {i}"}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        rid, usage = stream_usage(post(port, "/v1/chat/completions", body, f"cap-{i:08d}" if i else None))
        out.append({"id": rid, "kind": "chat_stream", "n": 1, **usage})
    for prompt, max_tokens in [("the quick brown fox", 6), ("jumps over", 11)]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
        r = json.loads(post(port, "/v1/completions", body))
        out.append({"id": r["id"], "kind": "completion", "n": 1, **r["usage"]})
    body = {"model": model, "prompt": "two at once", "max_tokens": 5, "n": 2, "ignore_eos": True}
    r = json.loads(post(port, "/v1/completions", body, "cap-n2-a1b2c3d4"))
    out.append({"id": r["id"], "kind": "completion_n2", "n": 2, **r["usage"]})
    # A long prompt as token ids: a larger ADD.
    body = {"model": model, "prompt": [100 + (i * 7) % 1800 for i in range(1500)], "max_tokens": 3, "ignore_eos": True}
    r = json.loads(post(port, "/v1/completions", body))
    out.append({"id": r["id"], "kind": "long_prompt", "n": 1, **r["usage"]})
    return out


def parse_strace(path):
    pending = {}
    calls = []
    for line in open(path, encoding="ascii", errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"^(\d+) (\d+\.\d+) (.*) <unfinished \.\.\.>$", line)
        if m:
            pending[m.group(1)] = (m.group(2), m.group(3))
            continue
        m = re.match(r"^(\d+) (\d+\.\d+) <\.\.\. (\w+) resumed>(.*)$", line)
        if m:
            start = pending.pop(m.group(1), None)
            if start is None:
                continue
            line = f"{m.group(1)} {m.group(2)} {start[1]}{m.group(4)}"
        m = CALL.match(line)
        if not m:
            if re.match(r"^\d+ \d+\.\d+ (sendmsg|recvmsg)\(", line):
                sys.exit(f"capture.py: a {line.split()[2][:7]} call: not handled, extend the parser: {line[:200]}")
            continue
        tid, ts, call, fd, data, cut, ret = m.groups()
        if int(ret) <= 0:
            continue
        assert not cut, f"strace cut a buffer (raise -s): {line[:200]}"
        raw = bytes.fromhex(data.replace("\\x", ""))
        assert len(raw) == int(ret), (len(raw), ret, line[:200])
        calls.append({"tid": int(tid), "ts": float(ts), "call": call, "fd": int(fd), "hex": raw.hex()})
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=18321)
    ap.add_argument("--model", help="model dir (default: the one setup.sh made for this venv's release)")
    args = ap.parse_args()
    venv = Path(args.venv).resolve()
    ver = subprocess.check_output([venv / "bin/python", "-c", "import vllm; print(vllm.__version__)"], text=True).strip()
    env = dict(os.environ, INFERSCOPE_VLLM_VENV=str(venv))
    model_dir = args.model or ROOT / ".cache" / ("tiny-llama" if ver == "0.32.0" else f"tiny-llama-{ver}")
    env["INFERSCOPE_VLLM_MODEL"] = str(model_dir)
    log = open(f"/tmp/capture-vllm-{args.port}.log", "w")
    server = subprocess.Popen(
        [ROOT / "tests/vllm/serve.sh", str(args.port), "--max-model-len", "2048"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        for _ in range(300):
            try:
                models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/v1/models", timeout=2).read())
                break
            except Exception:
                if server.poll() is not None:
                    sys.exit(f"vLLM exited; see {log.name}")
                time.sleep(1)
        else:
            sys.exit(f"vLLM not ready; see {log.name}")
        model = models["data"][0]["id"]
        raw = f"/tmp/capture-vllm-{args.port}.strace"
        tids = os.listdir(f"/proc/{server.pid}/task")
        st = subprocess.Popen(
            ["strace", "-f", "-ttt", "-xx", "-s", "16777216", "-qq", "-e", "trace=sendto,recvfrom,sendmsg,recvmsg",
             "-e", "signal=none", "-o", raw] + [a for t in tids for a in ("-p", t)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
        truth = requests(args.port, model)
        time.sleep(1)
        st.send_signal(signal.SIGINT)
        st.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    calls = parse_strace(raw)
    t0 = min(c["ts"] for c in calls)
    for c in calls:
        c["ts_ns"] = int(round((c.pop("ts") - t0) * 1e9)) + 1_000_000_000
    doc = {
        "generator": "tests/vllm/capture.py",
        "vllm_version": ver,
        "note": "sendto/recvfrom of a real vLLM API server (strace attached after start), with the HTTP responses' ids and usage",
        "responses": truth,
        "calls": calls,
    }
    Path(args.out).write_text(json.dumps(doc, indent=0) + "\n")
    print(f"{args.out}: vLLM {ver}, {len(calls)} calls, {sum(len(c['hex']) // 2 for c in calls)} bytes, {len(truth)} responses")


if __name__ == "__main__":
    main()
