#!/usr/bin/env python3
"""vLLM v1's engine IPC wire layouts, per release, read from each release's own source.

vLLM's API server and EngineCore exchange msgspec structs declared `array_like=True`: on the
wire a struct is a msgpack array of its fields in declaration order, so a field's position is
what changes between releases. This script reads `vllm/v1/engine/__init__.py` of every release
(straight out of the PyPI wheel with HTTP range requests: a few KB of a 400 MB file), parses it
with `ast` (nothing of vLLM is imported or run), and writes:

  tests/vllm/layouts.json                 every release's field lists and enum values
  userspace/src/engine/vllm_layouts.rs    the table inferscope uses (--rust)

  python3 tests/vllm/layouts.py [--rust] [VERSION ...]    (default: every release from 0.8.0)
"""

import argparse
import ast
import json
import struct
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMBER = "vllm/v1/engine/__init__.py"
CACHE = ROOT / ".cache" / "vllm-engine-src"
STRUCTS = ["EngineCoreRequest", "EngineCoreOutput", "EngineCoreOutputs", "EngineCoreEvent", "UtilityOutput"]
ENUMS = ["FinishReason", "EngineCoreEventType", "EngineCoreRequestType"]
# An unknown release (most likely a newer one) is read with the positions every release since
# this one shares; the early 0.8 releases moved the output list and prompt ids around.
STABLE_SINCE = "0.9.2"


def simple_index():
    req = urllib.request.Request(
        "https://pypi.org/simple/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    return json.load(urllib.request.urlopen(req, timeout=60))


def http_range(url, start, end):
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end}"})
    return urllib.request.urlopen(req, timeout=120).read()


def zip_member(url, size, name):
    """One member of a remote zip, via its central directory (zip64 aware)."""
    tail = http_range(url, max(0, size - 65536), size - 1)
    i = tail.rfind(b"PK\x05\x06")
    cd_size, cd_off = struct.unpack("<II", tail[i + 12 : i + 20])
    if cd_off == 0xFFFFFFFF:
        j = tail.rfind(b"PK\x06\x06")
        cd_size, cd_off = struct.unpack("<QQ", tail[j + 40 : j + 56])
    cd = http_range(url, cd_off, cd_off + cd_size - 1)
    p = 0
    while p + 46 <= len(cd):
        f = struct.unpack("<IHHHHHHIIIHHHHHII", cd[p : p + 46])
        method, csize, usize, nlen, xlen, clen, off = f[4], f[8], f[9], f[10], f[11], f[12], f[16]
        fname = cd[p + 46 : p + 46 + nlen].decode()
        extra = cd[p + 46 + nlen : p + 46 + nlen + xlen]
        if 0xFFFFFFFF in (off, csize, usize):
            q = 0
            while q + 4 <= len(extra):
                hid, hl = struct.unpack("<HH", extra[q : q + 4])
                if hid == 1:
                    vals = iter(struct.unpack(f"<{hl // 8}Q", extra[q + 4 : q + 4 + hl]))
                    if usize == 0xFFFFFFFF:
                        usize = next(vals)
                    if csize == 0xFFFFFFFF:
                        csize = next(vals)
                    if off == 0xFFFFFFFF:
                        off = next(vals)
                q += 4 + hl
        if fname == name:
            lh = http_range(url, off, off + 29)
            n, x = struct.unpack("<HH", lh[26:30])
            data = http_range(url, off + 30 + n + x, off + 30 + n + x + csize - 1)
            return zlib.decompress(data, -15) if method == 8 else data
        p += 46 + nlen + xlen + clen
    raise KeyError(f"{name} not in wheel")


def source(version, index):
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"{version}.py"
    if not cached.exists():
        files = [f for f in index["files"] if f["filename"].startswith(f"vllm-{version}-") and f["filename"].endswith(".whl")]
        if not files:
            raise KeyError(f"no wheel for vllm {version}")
        cached.write_bytes(zip_member(files[0]["url"], files[0]["size"], MEMBER))
    return cached.read_text()


def literal(node):
    try:
        return ast.literal_eval(node)
    except Exception:
        return None


def parse(src):
    tree = ast.parse(src)
    out = {"structs": {}, "enums": {}, "finish_reason_strings": None}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FINISH_REASON_STRINGS" for t in node.targets):
            out["finish_reason_strings"] = literal(node.value)
        if not isinstance(node, ast.ClassDef):
            continue
        if node.name in STRUCTS:
            opts = {k.arg: literal(k.value) for k in node.keywords}
            fields = []
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    ann = ast.unparse(st.annotation)
                    if ann.startswith("ClassVar"):
                        continue
                    f = {"name": st.target.id, "type": ann, "default": st.value is not None}
                    if st.value is not None:
                        try:
                            v = ast.literal_eval(st.value)
                            json.dumps(v)
                            f["default_value"] = v
                        except Exception:
                            f["default_value"] = None
                            f["default_expr"] = ast.unparse(st.value)
                    fields.append(f)
            if opts.get("kw_only"):
                raise ValueError(f"{node.name}: kw_only changes field order; handle it")
            out["structs"][node.name] = {"options": opts, "fields": fields}
        if node.name in ENUMS:
            members = {}
            for st in node.body:
                if isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name):
                    v = literal(st.value)
                    if isinstance(v, bytes):
                        v = v[0] if len(v) == 1 else None
                    members[st.targets[0].id] = v
            out["enums"][node.name] = members
    return out


def positions(layout):
    s = layout["structs"]

    def idx(struct_name, field):
        names = [f["name"] for f in s.get(struct_name, {}).get("fields", [])]
        return names.index(field) if field in names else None

    fr = layout["enums"].get("FinishReason", {})
    strings = layout["finish_reason_strings"] or tuple(k.lower() for k, _ in sorted(fr.items(), key=lambda kv: kv[1]))
    ev = layout["enums"].get("EngineCoreEventType", {})
    rt = layout["enums"].get("EngineCoreRequestType", {})
    return {
        "outputs": {
            "len": len(s["EngineCoreOutputs"]["fields"]),
            **{f: idx("EngineCoreOutputs", f) for f in ["engine_index", "outputs", "scheduler_stats", "timestamp", "utility_output", "finished_requests"]},
        },
        "output": {
            "len": len(s["EngineCoreOutput"]["fields"]),
            **{f: idx("EngineCoreOutput", f) for f in ["request_id", "new_token_ids", "finish_reason", "stop_reason", "events", "num_cached_tokens", "prefill_stats"]},
        },
        "request": {
            "len": len(s["EngineCoreRequest"]["fields"]),
            **{f: idx("EngineCoreRequest", f) for f in ["request_id", "prompt_token_ids", "sampling_params", "arrival_time", "data_parallel_rank", "external_req_id", "client_index"]},
        },
        "finish_reasons": list(strings),
        "event_types": {"queued": ev.get("QUEUED"), "scheduled": ev.get("SCHEDULED"), "preempted": ev.get("PREEMPTED")},
        "request_types": {"add": rt.get("ADD"), "abort": rt.get("ABORT"), "start_dp_wave": rt.get("START_DP_WAVE"), "utility": rt.get("UTILITY")},
    }


def vkey(v):
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in v.split(".")[:3])


def opt(v):
    return "None" if v is None else f"Some({v})"


def rust(releases):
    """Merges consecutive releases with the same positions into one table entry."""
    groups = []
    for r in releases:
        if groups and groups[-1]["positions"] == r["positions"]:
            groups[-1]["last"] = r["version"]
        else:
            groups.append({"first": r["version"], "last": r["version"], "positions": r["positions"]})
    lines = [
        "//! vLLM v1 engine IPC wire layouts by release. GENERATED by `python3 tests/vllm/layouts.py --rust`",
        "//! from each release's own `vllm/v1/engine/__init__.py` (parsed, never imported); do not edit.",
        "//! Field positions index the msgpack array of an `array_like` msgspec struct. Releases between",
        "//! `first` and `last` were all checked and share the layout.",
        "",
        "/// One range of vLLM releases sharing a wire layout.",
        "pub struct VllmLayout {",
        "    pub first: (u16, u16, u16),",
        "    pub last: (u16, u16, u16),",
        "    pub outputs: OutputsLayout,",
        "    pub output: OutputLayout,",
        "    pub request: RequestLayout,",
        "    /// Index: `FinishReason` value.",
        "    pub finish_reasons: &'static [&'static str],",
        "    pub event_types: EventTypes,",
        "    pub request_types: RequestTypes,",
        "}",
        "",
        "/// `EngineCoreOutputs`.",
        "pub struct OutputsLayout {",
        "    pub len: usize,",
        "    pub engine_index: Option<usize>,",
        "    pub outputs: usize,",
        "    pub scheduler_stats: Option<usize>,",
        "    pub timestamp: Option<usize>,",
        "    pub utility_output: Option<usize>,",
        "    pub finished_requests: Option<usize>,",
        "}",
        "",
        "/// `EngineCoreOutput` (one request's part of a step).",
        "pub struct OutputLayout {",
        "    pub len: usize,",
        "    pub request_id: usize,",
        "    pub new_token_ids: usize,",
        "    pub finish_reason: Option<usize>,",
        "    pub stop_reason: Option<usize>,",
        "    pub events: Option<usize>,",
        "    pub num_cached_tokens: Option<usize>,",
        "    pub prefill_stats: Option<usize>,",
        "}",
        "",
        "/// `EngineCoreRequest` (the ADD message).",
        "pub struct RequestLayout {",
        "    pub len: usize,",
        "    pub request_id: usize,",
        "    pub prompt_token_ids: Option<usize>,",
        "    pub sampling_params: Option<usize>,",
        "    pub arrival_time: Option<usize>,",
        "    pub data_parallel_rank: Option<usize>,",
        "    pub external_req_id: Option<usize>,",
        "    pub client_index: Option<usize>,",
        "}",
        "",
        "/// `EngineCoreEventType` values.",
        "pub struct EventTypes {",
        "    pub queued: i64,",
        "    pub scheduled: i64,",
        "    pub preempted: i64,",
        "}",
        "",
        "/// `EngineCoreRequestType`: the first frame's byte.",
        "pub struct RequestTypes {",
        "    pub add: u8,",
        "    pub abort: u8,",
        "    pub start_dp_wave: Option<u8>,",
        "    pub utility: Option<u8>,",
        "}",
        "",
        f"/// Positions every release since {STABLE_SINCE} shares: what an unknown release is read with.",
        "pub struct StableLayout {",
        "    pub request_id: Option<usize>,",
        "    pub prompt_token_ids: Option<usize>,",
        "    pub outputs: Option<usize>,",
        "    pub engine_index: Option<usize>,",
        "    pub request_id_out: Option<usize>,",
        "    pub new_token_ids: Option<usize>,",
        "}",
        "",
        "pub static LAYOUTS: &[VllmLayout] = &[",
    ]
    for g in groups:
        p = g["positions"]
        o, out, rq = p["outputs"], p["output"], p["request"]
        t = lambda v: "({}, {}, {})".format(*vkey(v))
        lines += [
            "    VllmLayout {",
            f"        first: {t(g['first'])},",
            f"        last: {t(g['last'])},",
            f"        outputs: OutputsLayout {{ len: {o['len']}, engine_index: {opt(o['engine_index'])}, outputs: {o['outputs']}, scheduler_stats: {opt(o['scheduler_stats'])}, timestamp: {opt(o['timestamp'])}, utility_output: {opt(o['utility_output'])}, finished_requests: {opt(o['finished_requests'])} }},",
            f"        output: OutputLayout {{ len: {out['len']}, request_id: {out['request_id']}, new_token_ids: {out['new_token_ids']}, finish_reason: {opt(out['finish_reason'])}, stop_reason: {opt(out['stop_reason'])}, events: {opt(out['events'])}, num_cached_tokens: {opt(out['num_cached_tokens'])}, prefill_stats: {opt(out['prefill_stats'])} }},",
            f"        request: RequestLayout {{ len: {rq['len']}, request_id: {rq['request_id']}, prompt_token_ids: {opt(rq['prompt_token_ids'])}, sampling_params: {opt(rq['sampling_params'])}, arrival_time: {opt(rq['arrival_time'])}, data_parallel_rank: {opt(rq['data_parallel_rank'])}, external_req_id: {opt(rq['external_req_id'])}, client_index: {opt(rq['client_index'])} }},",
            "        finish_reasons: &[{}],".format(", ".join(f'"{s}"' for s in p["finish_reasons"])),
            "        event_types: EventTypes {{ queued: {queued}, scheduled: {scheduled}, preempted: {preempted} }},".format(**p["event_types"]),
            "        request_types: RequestTypes {{ add: {}, abort: {}, start_dp_wave: {}, utility: {} }},".format(
                p["request_types"]["add"], p["request_types"]["abort"], opt(p["request_types"]["start_dp_wave"]), opt(p["request_types"]["utility"])
            ),
            "    },",
        ]
    recent = [r for r in releases if vkey(r["version"]) >= vkey(STABLE_SINCE)]
    same = lambda sect, f: {r["positions"][sect][f] for r in recent}
    stable = {}
    for name, sect, f in [
        ("request_id", "request", "request_id"),
        ("prompt_token_ids", "request", "prompt_token_ids"),
        ("outputs", "outputs", "outputs"),
        ("engine_index", "outputs", "engine_index"),
        ("request_id_out", "output", "request_id"),
        ("new_token_ids", "output", "new_token_ids"),
    ]:
        vals = same(sect, f)
        stable[name] = vals.pop() if len(vals) == 1 else None
    lines += [
        "];",
        "",
        "/// The layout of a release, if it lies in a checked range.",
        "pub fn for_version(v: (u16, u16, u16)) -> Option<&'static VllmLayout> {",
        "    LAYOUTS.iter().find(|l| l.first <= v && v <= l.last)",
        "}",
        "",
        f"/// The positions every known release since {STABLE_SINCE} shares (for an unknown release).",
        "pub fn stable() -> StableLayout {",
        "    StableLayout {",
    ]
    lines += [f"        {k}: {opt(v)}," for k, v in stable.items()]
    lines += ["    }", "}", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("versions", nargs="*")
    ap.add_argument("--rust", action="store_true", help="also write userspace/src/engine/vllm_layouts.rs")
    a = ap.parse_args()
    index = simple_index()
    versions = a.versions
    if not versions:
        seen = set()
        for f in index["files"]:
            name = f["filename"]
            if name.startswith("vllm-") and name.endswith(".whl"):
                v = name.split("-")[1]
                if "rc" in v or "dev" in v or "post" in v or vkey(v) < (0, 8, 0):
                    continue
                seen.add(v)
        versions = sorted(seen, key=vkey)
    releases = []
    for v in versions:
        layout = parse(source(v, index))
        missing = [s for s in ["EngineCoreRequest", "EngineCoreOutput", "EngineCoreOutputs"] if s not in layout["structs"]]
        if missing:
            print(f"vllm {v}: no {missing}; skipped", file=sys.stderr)
            continue
        for s in ["EngineCoreRequest", "EngineCoreOutput", "EngineCoreOutputs"]:
            opts = layout["structs"][s]["options"]
            if not opts.get("array_like"):
                raise SystemExit(f"vllm {v}: {s} is not array_like: the table format does not fit")
        releases.append({"version": v, "layout": layout, "positions": positions(layout)})
        print(f"vllm {v}: {len(layout['structs']['EngineCoreOutput']['fields'])} output fields", file=sys.stderr)
    (ROOT / "tests/vllm/layouts.json").write_text(
        json.dumps([{"version": r["version"], **r["layout"], "positions": r["positions"]} for r in releases], indent=1) + "\n"
    )
    if a.rust:
        out = ROOT / "userspace/src/engine/vllm_layouts.rs"
        out.write_text(rust(releases))
        subprocess.run(["rustfmt", "--edition", "2024", str(out)], check=True)


if __name__ == "__main__":
    main()
