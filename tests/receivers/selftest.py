#!/usr/bin/env python3
"""Self-test for otlp_receiver.py against the real OpenTelemetry Python SDK exporters.

Starts otlp_receiver.py on free ports, then sends spans and metrics with
opentelemetry-exporter-otlp-proto-grpc and opentelemetry-exporter-otlp-proto-http
(both plain and gzip-compressed), plus a few raw HTTP requests (OTLP/JSON,
hand-gzipped protobuf, error cases), checks that every item shows up in the
JSON-lines output with the right fields, and that SIGTERM stops it with exit
status 0. Exits non-zero on any failure.

    python3 tests/receivers/selftest.py [-v]

Needs the packages in requirements.txt (receiver + SDK/exporters).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
RECEIVER = os.path.join(HERE, "otlp_receiver.py")
VERBOSE = "-v" in sys.argv

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    if cond:
        if VERBOSE:
            print(f"ok   - {what}")
    else:
        print(f"FAIL - {what}")
        failures.append(what)


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        # strict: NaN/Infinity literals would break non-Python readers (serde_json)
        return [json.loads(line, parse_constant=_reject) for line in f if line.strip()]


def _reject(const: str):
    raise ValueError(f"non-JSON constant {const} in output")


def wait_for(pred, path: str, timeout: float = 15.0) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        recs = read_jsonl(path)
        if pred(recs) or time.time() > deadline:
            return recs
        time.sleep(0.1)


def start_receiver(tmp: str):
    spans = os.path.join(tmp, "spans.jsonl")
    metrics = os.path.join(tmp, "metrics.jsonl")
    requests = os.path.join(tmp, "requests.jsonl")
    proc = subprocess.Popen(
        [sys.executable, RECEIVER, "--grpc-port", "0", "--http-port", "0",
         "--spans-out", spans, "--metrics-out", metrics,
         "--requests-out", requests] + (["--verbose"] if VERBOSE else []),
        stdout=subprocess.PIPE, stderr=None if VERBOSE else subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"receiver exited before printing its ports (rc={proc.wait()})")
    ports = json.loads(line)
    return proc, ports["grpc_port"], ports["http_port"], spans, metrics, requests


def send_with_sdk(grpc_port: int, http_port: int) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetricExporter)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter)
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode
    import grpc

    exporters = {
        "grpc": (GrpcSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True, timeout=10),
                 GrpcMetricExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True, timeout=10)),
        "grpc-gzip": (GrpcSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True,
                                       timeout=10, compression=grpc.Compression.Gzip),
                      GrpcMetricExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True,
                                         timeout=10, compression=grpc.Compression.Gzip)),
        "http": (HttpSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=10),
                 HttpMetricExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/metrics",
                                    timeout=10)),
        "http-gzip": (HttpSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces",
                                       timeout=10, compression=HttpCompression.Gzip),
                      HttpMetricExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/metrics",
                                         timeout=10, compression=HttpCompression.Gzip)),
    }

    for label, (span_exp, metric_exp) in exporters.items():
        resource = Resource.create({"service.name": "selftest", "selftest.route": label})

        tp = TracerProvider(resource=resource)
        tp.add_span_processor(SimpleSpanProcessor(span_exp))
        tracer = tp.get_tracer("inferscope.selftest", "0.1.0")
        with tracer.start_as_current_span(f"request-{label}", kind=SpanKind.SERVER,
                                          attributes={"gen_ai.request.model": "tiny",
                                                      "gen_ai.usage.output_tokens": 42,
                                                      "ttft_s": 0.125,
                                                      "streamed": True,
                                                      "token.ids": [1, 2, 3]}) as parent:
            parent.add_event("first_token", {"token.index": 0})
            with tracer.start_as_current_span(f"decode-{label}", kind=SpanKind.INTERNAL) as child:
                child.set_status(Status(StatusCode.ERROR, "boom"))
        tp.shutdown()  # flushes the processor and shuts the exporter down

        view = View(instrument_name="ttft_seconds",
                    aggregation=ExplicitBucketHistogramAggregation([0.1, 0.5, 1.0]))
        reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
        mp = MeterProvider(resource=resource, metric_readers=[reader], views=[view])
        meter = mp.get_meter("inferscope.selftest", "0.1.0")
        hist = meter.create_histogram("ttft_seconds", unit="s", description="time to first token")
        for v in (0.05, 0.2, 0.3, 2.0):
            hist.record(v, {"model": "tiny"})
        ctr = meter.create_counter("requests_total", unit="{request}")
        ctr.add(3, {"model": "tiny", "status": "ok"})
        gauge = meter.create_gauge("kv_cache_usage_ratio", unit="1")
        gauge.set(0.75, {"model": "tiny"})
        mp.shutdown()  # collects once and exports


def raw_post(port: int, path: str, body: bytes, ctype: str, encoding: str | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    req.add_header("Content-Type", ctype)
    if encoding:
        req.add_header("Content-Encoding", encoding)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def send_raw(http_port: int) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    # hand-built protobuf, gzip-compressed by hand
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "raw"
    ss = rs.scope_spans.add()
    ss.scope.name = "raw-scope"
    sp = ss.spans.add()
    sp.trace_id = bytes(range(1, 17))
    sp.span_id = bytes(range(1, 9))
    sp.name = "raw-gzip"
    sp.kind = 3  # CLIENT
    sp.start_time_unix_nano, sp.end_time_unix_nano = 1_000, 2_000
    a = sp.attributes.add()
    a.key = "kv"
    b = a.value.kvlist_value.values.add()
    b.key, b.value.int_value = "inner", 7
    st, ct, body = raw_post(http_port, "/v1/traces", gzip.compress(req.SerializeToString()),
                            "application/x-protobuf", "gzip")
    check(st == 200 and ct == "application/x-protobuf",
          f"raw gzip protobuf POST accepted (status {st}, {ct})")
    check(trace_service_pb2.ExportTraceServiceResponse.FromString(body) is not None,
          "raw gzip protobuf POST returns an ExportTraceServiceResponse")

    # OTLP/JSON (hex ids, as the OTLP spec encodes them)
    doc = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "json"}}]},
        "scopeSpans": [{"scope": {"name": "json-scope"}, "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173", "name": "json-span", "kind": 2,
            "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
            "attributes": [{"key": "n", "value": {"intValue": "5"}}]}]}]}]}
    st, ct, _ = raw_post(http_port, "/v1/traces", json.dumps(doc).encode(), "application/json")
    check(st == 200 and ct == "application/json", f"OTLP/JSON POST accepted (status {st})")

    # non-finite doubles must still come out as strict JSON
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    mreq = metrics_service_pb2.ExportMetricsServiceRequest()
    m = mreq.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = "nonfinite"
    m.gauge.data_points.add().as_double = float("nan")
    m.gauge.data_points.add().as_double = float("-inf")
    st, _, _ = raw_post(http_port, "/v1/metrics", mreq.SerializeToString(),
                        "application/x-protobuf")
    check(st == 200, f"raw metrics POST accepted (status {st})")

    st, _, _ = raw_post(http_port, "/v1/traces", b"x", "text/plain")
    check(st == 415, f"unsupported Content-Type rejected with 415 (got {st})")
    st, _, _ = raw_post(http_port, "/v1/logs", b"", "application/x-protobuf")
    check(st == 404, f"unknown path rejected with 404 (got {st})")
    st, _, _ = raw_post(http_port, "/v1/traces", b"\xff\xff\xff", "application/x-protobuf")
    check(st == 400, f"garbage protobuf rejected with 400 (got {st})")


LABELS = ("grpc", "grpc-gzip", "http", "http-gzip")


def verify_spans(spans_path: str) -> None:
    expected = {f"request-{l}" for l in LABELS} | {f"decode-{l}" for l in LABELS} \
        | {"raw-gzip", "json-span"}
    recs = wait_for(lambda rs: expected <= {r["name"] for r in rs}, spans_path)
    by_name = {r["name"]: r for r in recs}
    check(expected <= set(by_name), f"all spans received (missing: {expected - set(by_name)})")
    check(len(recs) == len(expected), f"no duplicate spans ({len(recs)} lines)")
    for label in LABELS:
        p, c = by_name.get(f"request-{label}"), by_name.get(f"decode-{label}")
        if not p or not c:
            continue
        want_transport = label.split("-")[0]
        check(p["transport"] == want_transport and c["transport"] == want_transport,
              f"[{label}] transport == {want_transport}")
        check(len(p["trace_id"]) == 32 and len(p["span_id"]) == 16 and p["parent_span_id"] == "",
              f"[{label}] parent ids are hex, root has empty parent_span_id")
        check(c["trace_id"] == p["trace_id"] and c["parent_span_id"] == p["span_id"],
              f"[{label}] child links to parent")
        check(p["kind"] == "SPAN_KIND_SERVER" and c["kind"] == "SPAN_KIND_INTERNAL",
              f"[{label}] kinds ({p['kind']}, {c['kind']})")
        check(p["attributes"] == {"gen_ai.request.model": "tiny",
                                  "gen_ai.usage.output_tokens": 42, "ttft_s": 0.125,
                                  "streamed": True, "token.ids": [1, 2, 3]},
              f"[{label}] span attributes {p['attributes']}")
        check(len(p["events"]) == 1 and p["events"][0]["name"] == "first_token"
              and p["events"][0]["attributes"] == {"token.index": 0}
              and p["events"][0]["time_unix_nano"] >= p["start_time_unix_nano"],
              f"[{label}] span event")
        check(0 < p["start_time_unix_nano"] <= c["start_time_unix_nano"]
              <= c["end_time_unix_nano"] <= p["end_time_unix_nano"],
              f"[{label}] timestamps nest")
        check(p["status"] == {"code": "STATUS_CODE_UNSET", "message": ""}
              and c["status"] == {"code": "STATUS_CODE_ERROR", "message": "boom"},
              f"[{label}] status ({p['status']}, {c['status']})")
        check(p["resource"].get("service.name") == "selftest"
              and p["resource"].get("selftest.route") == label,
              f"[{label}] resource attributes")
        check(p["scope"] == "inferscope.selftest" and p["scope_version"] == "0.1.0",
              f"[{label}] scope name/version")
    raw = by_name.get("raw-gzip")
    if raw:
        check(raw["transport"] == "http" and raw["kind"] == "SPAN_KIND_CLIENT"
              and raw["trace_id"] == bytes(range(1, 17)).hex()
              and raw["attributes"] == {"kv": {"inner": 7}} and raw["scope"] == "raw-scope"
              and raw["resource"] == {"service.name": "raw"},
              f"raw gzip span decoded: {raw}")
    js = by_name.get("json-span")
    if js:
        check(js["trace_id"] == "5b8efff798038103d269b633813fc60c"
              and js["span_id"] == "eee19b7ec3c1b174"
              and js["parent_span_id"] == "eee19b7ec3c1b173"
              and js["kind"] == "SPAN_KIND_SERVER" and js["attributes"] == {"n": 5}
              and js["start_time_unix_nano"] == 1544712660000000000,
              f"OTLP/JSON span decoded: {js}")


def verify_metrics(metrics_path: str) -> None:
    def have_all(rs):
        seen = {(r["name"], r["resource"].get("selftest.route")) for r in rs}
        return all((n, l) in seen for l in LABELS
                   for n in ("ttft_seconds", "requests_total", "kv_cache_usage_ratio"))

    recs = wait_for(have_all, metrics_path)
    check(have_all(recs), "all metrics received over every route")
    for label in LABELS:
        mine = {r["name"]: r for r in recs if r["resource"].get("selftest.route") == label}
        want_transport = label.split("-")[0]
        h, s, g = (mine.get("ttft_seconds"), mine.get("requests_total"),
                   mine.get("kv_cache_usage_ratio"))
        if h:
            check(h["type"] == "histogram" and h["unit"] == "s" and h["count"] == 4
                  and abs(h["sum"] - 2.55) < 1e-9 and h["explicit_bounds"] == [0.1, 0.5, 1.0]
                  and h["bucket_counts"] == [1, 2, 0, 1] and h["min"] == 0.05
                  and h["max"] == 2.0 and h["attributes"] == {"model": "tiny"}
                  and h["description"] == "time to first token"
                  and h["aggregation_temporality"] == "AGGREGATION_TEMPORALITY_CUMULATIVE",
                  f"[{label}] histogram point {h}")
            check(h["transport"] == want_transport and h["scope"] == "inferscope.selftest",
                  f"[{label}] histogram transport/scope")
        if s:
            check(s["type"] == "sum" and s["value"] == 3 and isinstance(s["value"], int)
                  and s["is_monotonic"] is True and s["unit"] == "{request}"
                  and s["attributes"] == {"model": "tiny", "status": "ok"},
                  f"[{label}] sum point {s}")
        if g:
            check(g["type"] == "gauge" and g["value"] == 0.75 and g["unit"] == "1"
                  and g["time_unix_nano"] > 0, f"[{label}] gauge point {g}")
    check(len(recs) == 3 * len(LABELS) + 2, f"no duplicate metric points ({len(recs)} lines)")
    nf = [r["value"] for r in recs if r["name"] == "nonfinite"]
    check(nf == ["NaN", "-Inf"], f"non-finite values written as strings {nf}")


def verify_requests(requests_path: str) -> None:
    recs = read_jsonl(requests_path)
    if VERBOSE:
        for r in recs:
            print("     request:", r["transport"], r["signal"], r["content_type"],
                  r["content_encoding"], r["items"], r["headers"].get("user-agent"))
    # 4 SDK routes x (2 trace exports of 1 span each, as SimpleSpanProcessor
    # exports span by span, + 1 metrics export of 3 points) + 3 raw
    ok = [r for r in recs if r["items"] > 0]
    check(len(ok) == 15, f"15 non-empty export requests logged (got {len(ok)})")
    by = {(r["transport"], r["signal"], r["content_encoding"]) for r in ok}
    # grpcio hides grpc-encoding, so gzip is only observable on OTLP/HTTP
    for sig in ("traces", "metrics"):
        check(("grpc", sig, None) in by, f"request log has grpc/{sig}")
        for enc in ("identity", "gzip"):
            check(("http", sig, enc) in by, f"request log has http/{sig}/{enc}")
    check(any(r["content_type"] == "application/json" for r in ok), "request log has JSON")
    sdk = [r for r in ok if "urllib" not in r["headers"].get("user-agent", "")]
    check(len(sdk) == 12 and all(r["headers"]["user-agent"].startswith(
        "OTel-OTLP-Exporter-Python/") for r in sdk), "SDK exporters' user-agent recorded")

def main() -> int:
    with tempfile.TemporaryDirectory(prefix="otlp-selftest-") as tmp:
        proc, grpc_port, http_port, spans, metrics, requests = start_receiver(tmp)
        try:
            check(isinstance(grpc_port, int) and grpc_port > 0
                  and isinstance(http_port, int) and http_port > 0,
                  f"ports line ({grpc_port}, {http_port})")
            send_with_sdk(grpc_port, http_port)
            send_raw(http_port)
            verify_spans(spans)
            verify_metrics(metrics)
            verify_requests(requests)
        finally:
            proc.terminate()
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed after timeout"
        check(rc == 0, f"receiver exits 0 on SIGTERM (got {rc})")
        # files must still be complete, parseable JSON lines after shutdown
        check(len(read_jsonl(spans)) == 10 and len(read_jsonl(metrics)) == 14,
              "output files intact after shutdown")

    total = "receiver self-test"
    if failures:
        print(f"{total}: {len(failures)} check(s) FAILED")
        return 1
    print(f"{total}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
