#!/usr/bin/env python3
"""Wire samples of vLLM's engine IPC for every layout in tests/vllm/layouts.json.

For each release range, the structs are rebuilt with msgspec (the library vLLM encodes with)
from that release's own field declarations and defaults (`array_like=True, omit_defaults=True`,
as vLLM declares them), filled with a realistic ADD and a step's outputs, and encoded. The Rust
test `engine::vllm::samples` decodes every sample and compares it with what was put in. The
0.32 build installed here is also covered end to end by tests/tests/vllm.rs against the running
engine.

  .venv-vllm/bin/python tests/vllm/make_samples.py   (needs msgspec)
"""

import json
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[2]


def struct(name, decl, array_like=True):
    fields = []
    for f in decl["fields"]:
        if f["default"]:
            d = f.get("default_value")
            if isinstance(d, list):
                fields.append((f["name"], object, msgspec.field(default_factory=list)))
            else:
                fields.append((f["name"], object, d))
        else:
            fields.append((f["name"], object))
    return msgspec.defstruct(name, fields, array_like=array_like, omit_defaults=True)


def main():
    releases = json.loads((ROOT / "tests/vllm/layouts.json").read_text())
    out = []
    seen = set()
    for r in releases:
        key = json.dumps(r["positions"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        s = r["structs"]
        Req = struct("EngineCoreRequest", s["EngineCoreRequest"])
        Out = struct("EngineCoreOutput", s["EngineCoreOutput"])
        Outs = struct("EngineCoreOutputs", s["EngineCoreOutputs"])
        Ev = msgspec.defstruct("EngineCoreEvent", [("type", int), ("timestamp", float)])
        names = lambda st: [f["name"] for f in s[st]["fields"]]
        ev = r["enums"]["EngineCoreEventType"]
        fr = r["enums"]["FinishReason"]

        # ADD: required fields get plausible values, the ones we read get known ones.
        req_vals = {}
        for f in s["EngineCoreRequest"]["fields"]:
            if not f["default"]:
                req_vals[f["name"]] = None
        req_vals["request_id"] = "chatcmpl-abc123-1a2b3c4d"
        req_vals["prompt_token_ids"] = list(range(40, 47))
        if "arrival_time" in req_vals:
            req_vals["arrival_time"] = 1234.5
        if "external_req_id" in names("EngineCoreRequest"):
            req_vals["external_req_id"] = "chatcmpl-abc123"
        add = msgspec.msgpack.encode(Req(**req_vals))

        def output(rid, ntok, finish, events, cached):
            vals = {f["name"]: None for f in s["EngineCoreOutput"]["fields"] if not f["default"]}
            vals["request_id"] = rid
            vals["new_token_ids"] = list(range(100, 100 + ntok))
            if finish is not None:
                vals["finish_reason"] = finish
            if events:
                vals["events"] = [Ev(type=t, timestamp=ts) for t, ts in events]
            on = names("EngineCoreOutput")
            if "num_cached_tokens" in on:
                vals["num_cached_tokens"] = cached
            elif "prefill_stats" in on:
                vals["prefill_stats"] = {"num_prompt_tokens": 7, "num_cached_tokens": cached}
            return Out(**vals)

        outs_vals = {f["name"]: None for f in s["EngineCoreOutputs"]["fields"] if not f["default"]}
        outs_vals["outputs"] = [
            output("chatcmpl-abc123-1a2b3c4d", 1, None, [(ev["QUEUED"], 1000.25), (ev["SCHEDULED"], 1000.5)], 4),
            output("cmpl-def456-0-5e6f7a8b", 3, fr["LENGTH"], [(ev["PREEMPTED"], 1000.75)], 0),
        ]
        on = names("EngineCoreOutputs")
        if "engine_index" in on:
            outs_vals["engine_index"] = 1
        if "timestamp" in on:
            outs_vals["timestamp"] = 1001.0
        if "scheduler_stats" in on:
            outs_vals["scheduler_stats"] = {"num_running_reqs": 2, "num_waiting_reqs": 1, "kv_cache_usage": 0.25}
        outputs = msgspec.msgpack.encode(Outs(**outs_vals))
        out.append(
            {
                "version": r["version"],
                "add": add.hex(),
                "outputs": outputs.hex(),
                "expect": {
                    "engine": 1 if "engine_index" in on else None,
                    "timestamp_ns": 1_001_000_000_000 if "timestamp" in on else None,
                    "gauges": "scheduler_stats" in on,
                    "external_id": "chatcmpl-abc123" if "external_req_id" in names("EngineCoreRequest") else None,
                    "finish_reason": "length",
                    "cached_tokens": 4
                    if {"num_cached_tokens", "prefill_stats"} & set(names("EngineCoreOutput"))
                    else None,
                },
            }
        )
    path = ROOT / "tests/data/vllm/layout-samples.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(out)} layouts sampled into {path}")


if __name__ == "__main__":
    main()
