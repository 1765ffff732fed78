#!/usr/bin/env python3
"""A real OTLP receiver for integration tests.

Built on the official OpenTelemetry protobuf definitions (PyPI
``opentelemetry-proto``) and ``grpcio``. It listens on

* OTLP/gRPC   -- opentelemetry.proto.collector.{trace,metrics}.v1
                 TraceService/Export and MetricsService/Export
                 (default 127.0.0.1:4317; gzip/deflate message compression is
                 handled by grpcio itself)
* OTLP/HTTP   -- POST /v1/traces and POST /v1/metrics
                 (default 127.0.0.1:4318), Content-Type
                 application/x-protobuf (binary protobuf, the default of every
                 OTLP/HTTP exporter) or application/json (OTLP/JSON);
                 Content-Encoding gzip, deflate or identity.

Every received span is written as one JSON line to ``--spans-out`` and every
metric data point as one JSON line to ``--metrics-out`` (and, with
``--requests-out``, one line per export request: transport, signal, item
count, content type/encoding, headers). The files are flushed
after every export request, so a test can poll them. Once both listeners are
bound, one JSON line ``{"grpc_port": N, "http_port": M}`` is printed on stdout
and flushed (this is the only thing ever written to stdout); a harness that
passes ``--grpc-port 0 --http-port 0`` reads it to learn the chosen ports.
SIGTERM / SIGINT shut it down cleanly with exit status 0.

Run ``otlp_receiver.py --help`` for all flags; see README.md beside this file.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import math
import signal
import sys
import threading
import time
import zlib
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
VERBOSE = False


def log(msg: str) -> None:
    sys.stderr.write(f"otlp_receiver: {msg}\n")
    sys.stderr.flush()


def _finite(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as the strings "NaN", "+Inf", "-Inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("+Inf" if obj > 0 else "-Inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def to_json(rec: Dict[str, Any]) -> str:
    try:
        return json.dumps(rec, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(rec), separators=(",", ":"), allow_nan=False, default=str)


# --------------------------------------------------------------------------
# protobuf -> plain python conversion
# --------------------------------------------------------------------------


def any_value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    # e.g. string_value_strindex (profiles dictionary), unknown future kinds
    return getattr(v, kind)


def attrs(kvs) -> Dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def resource_and_scope(resource, scope) -> Dict[str, Any]:
    return {
        "resource": attrs(resource.attributes),
        "scope": scope.name,
        "scope_version": scope.version,
        "scope_attributes": attrs(scope.attributes),
    }


def span_records(req: trace_service_pb2.ExportTraceServiceRequest,
                 transport: str) -> List[Dict[str, Any]]:
    out = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            common = resource_and_scope(rs.resource, ss.scope)
            for sp in ss.spans:
                out.append({
                    "trace_id": sp.trace_id.hex(),
                    "span_id": sp.span_id.hex(),
                    "parent_span_id": sp.parent_span_id.hex(),
                    "trace_state": sp.trace_state,
                    "flags": sp.flags,
                    "name": sp.name,
                    "kind": trace_pb2.Span.SpanKind.Name(sp.kind),
                    "start_time_unix_nano": sp.start_time_unix_nano,
                    "end_time_unix_nano": sp.end_time_unix_nano,
                    "attributes": attrs(sp.attributes),
                    "dropped_attributes_count": sp.dropped_attributes_count,
                    "events": [{
                        "name": ev.name,
                        "time_unix_nano": ev.time_unix_nano,
                        "attributes": attrs(ev.attributes),
                    } for ev in sp.events],
                    "links": [{
                        "trace_id": ln.trace_id.hex(),
                        "span_id": ln.span_id.hex(),
                        "attributes": attrs(ln.attributes),
                    } for ln in sp.links],
                    "status": {
                        "code": trace_pb2.Status.StatusCode.Name(sp.status.code),
                        "message": sp.status.message,
                    },
                    **common,
                    "transport": transport,
                })
    return out


def _number_value(dp: metrics_pb2.NumberDataPoint):
    kind = dp.WhichOneof("value")
    if kind == "as_int":
        return dp.as_int
    if kind == "as_double":
        return dp.as_double
    return None


def _temporality(v: int) -> str:
    return metrics_pb2.AggregationTemporality.Name(v)


def metric_records(req: metrics_service_pb2.ExportMetricsServiceRequest,
                   transport: str) -> List[Dict[str, Any]]:
    out = []
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            common = resource_and_scope(rm.resource, sm.scope)
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                base = {
                    "name": m.name,
                    "description": m.description,
                    "unit": m.unit,
                    "type": kind,
                }
                points: List[Dict[str, Any]] = []
                if kind == "gauge":
                    for dp in m.gauge.data_points:
                        points.append({"value": _number_value(dp), "_dp": dp})
                elif kind == "sum":
                    for dp in m.sum.data_points:
                        points.append({
                            "value": _number_value(dp),
                            "is_monotonic": m.sum.is_monotonic,
                            "aggregation_temporality":
                                _temporality(m.sum.aggregation_temporality),
                            "_dp": dp,
                        })
                elif kind == "histogram":
                    for dp in m.histogram.data_points:
                        points.append({
                            "count": dp.count,
                            "sum": dp.sum if dp.HasField("sum") else None,
                            "min": dp.min if dp.HasField("min") else None,
                            "max": dp.max if dp.HasField("max") else None,
                            "bucket_counts": list(dp.bucket_counts),
                            "explicit_bounds": list(dp.explicit_bounds),
                            "aggregation_temporality":
                                _temporality(m.histogram.aggregation_temporality),
                            "_dp": dp,
                        })
                elif kind == "exponential_histogram":
                    for dp in m.exponential_histogram.data_points:
                        points.append({
                            "count": dp.count,
                            "sum": dp.sum if dp.HasField("sum") else None,
                            "min": dp.min if dp.HasField("min") else None,
                            "max": dp.max if dp.HasField("max") else None,
                            "scale": dp.scale,
                            "zero_count": dp.zero_count,
                            "positive": {"offset": dp.positive.offset,
                                         "bucket_counts": list(dp.positive.bucket_counts)},
                            "negative": {"offset": dp.negative.offset,
                                         "bucket_counts": list(dp.negative.bucket_counts)},
                            "aggregation_temporality": _temporality(
                                m.exponential_histogram.aggregation_temporality),
                            "_dp": dp,
                        })
                elif kind == "summary":
                    for dp in m.summary.data_points:
                        points.append({
                            "count": dp.count,
                            "sum": dp.sum,
                            "quantile_values": [
                                {"quantile": q.quantile, "value": q.value}
                                for q in dp.quantile_values],
                            "_dp": dp,
                        })
                else:  # metric without data: still record it
                    out.append({**base, "attributes": {}, **common,
                                "transport": transport})
                    continue
                for p in points:
                    dp = p.pop("_dp")
                    out.append({
                        **base,
                        "attributes": attrs(dp.attributes),
                        "start_time_unix_nano": dp.start_time_unix_nano,
                        "time_unix_nano": dp.time_unix_nano,
                        **p,
                        **common,
                        "transport": transport,
                    })
    return out


# --------------------------------------------------------------------------
# sinks
# --------------------------------------------------------------------------


class JsonlSink:
    """Thread-safe JSON-lines writer, flushed after every batch."""

    def __init__(self, path: Optional[str], append: bool):
        self._lock = threading.Lock()
        self._f = open(path, "a" if append else "w", encoding="utf-8") if path else None
        self.count = 0

    def write(self, records: List[Dict[str, Any]]) -> None:
        with self._lock:
            self.count += len(records)
            if self._f is None or not records:
                return
            for r in records:
                self._f.write(to_json(r))
                self._f.write("\n")
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


class Receiver:
    def __init__(self, spans: JsonlSink, metrics: JsonlSink, requests: JsonlSink):
        self.spans = spans
        self.metrics = metrics
        self.requests = requests

    def _request(self, signal_name: str, transport: str, n: int, meta: Dict[str, Any]) -> None:
        self.requests.write([{
            "signal": signal_name,
            "transport": transport,
            "items": n,
            "received_unix_nano": time.time_ns(),
            **meta,
        }])
        if VERBOSE:
            log(f"{transport}: {signal_name} export with {n} item(s)")

    def on_traces(self, req, transport: str, meta: Dict[str, Any]) -> None:
        recs = span_records(req, transport)
        self.spans.write(recs)
        self._request("traces", transport, len(recs), meta)

    def on_metrics(self, req, transport: str, meta: Dict[str, Any]) -> None:
        recs = metric_records(req, transport)
        self.metrics.write(recs)
        self._request("metrics", transport, len(recs), meta)


def grpc_meta(context) -> Dict[str, Any]:
    headers: Dict[str, Any] = {}
    for k, v in context.invocation_metadata() or ():
        headers[k] = v if isinstance(v, str) else v.hex()
    return {
        "path": None,
        "content_type": "application/grpc",
        # grpcio decompresses gzip/deflate messages itself and strips the
        # grpc-encoding header from the metadata it shows, so this is null.
        "content_encoding": headers.get("grpc-encoding"),
        "headers": headers,
    }


# --------------------------------------------------------------------------
# OTLP/gRPC
# --------------------------------------------------------------------------


class TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rx: Receiver):
        self.rx = rx

    def Export(self, request, context):
        self.rx.on_traces(request, "grpc", grpc_meta(context))
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, rx: Receiver):
        self.rx = rx

    def Export(self, request, context):
        self.rx.on_metrics(request, "grpc", grpc_meta(context))
        return metrics_service_pb2.ExportMetricsServiceResponse()


def start_grpc(rx: Receiver, host: str, port: int) -> Tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceServicer(rx), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(rx), server)
    bound = server.add_insecure_port(f"{host}:{port}")  # raises RuntimeError if busy
    server.start()
    return server, bound


# --------------------------------------------------------------------------
# OTLP/HTTP
# --------------------------------------------------------------------------

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_b64(obj: Any) -> Any:
    """OTLP/JSON encodes trace/span ids as hex; protobuf JSON expects base64."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _ID_FIELDS and isinstance(v, str):
                try:
                    obj[k] = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError:
                    pass
            else:
                _hex_ids_to_b64(v)
    elif isinstance(obj, list):
        for v in obj:
            _hex_ids_to_b64(v)
    return obj


ROUTES = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                   trace_service_pb2.ExportTraceServiceResponse, "on_traces"),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse, "on_metrics"),
}


def make_handler(rx: Receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "inferscope-otlp-receiver/1"

        def log_message(self, fmt, *args):  # keep stderr quiet
            pass

        def _reply(self, status: int, body: bytes = b"",
                   ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    line = self.rfile.readline()
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        # trailers up to the empty line
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length > MAX_MESSAGE_BYTES:
                raise ValueError("body too large")
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            # handy for readiness probes
            if self.path in ("/", "/healthz"):
                self._reply(200, b"ok\n")
            else:
                self._reply(404, b"not found\n")

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            try:
                body = self._read_body()
            except Exception as e:  # noqa: BLE001
                self.close_connection = True
                self._reply(400, f"bad body: {e}\n".encode())
                return
            route = ROUTES.get(path)
            if route is None:
                self._reply(404, b"not found\n")
                return
            req_cls, resp_cls, method = route
            enc = self.headers.get("Content-Encoding", "identity").strip().lower()
            try:
                if enc == "gzip":
                    body = gzip.decompress(body)
                elif enc == "deflate":
                    body = zlib.decompress(body)
                elif enc not in ("", "identity"):
                    self._reply(415, f"unsupported Content-Encoding {enc}\n".encode())
                    return
            except Exception as e:  # noqa: BLE001
                self._reply(400, f"cannot decompress ({enc}): {e}\n".encode())
                return
            ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            req = req_cls()
            try:
                if ctype == "application/x-protobuf":
                    req.ParseFromString(body)
                elif ctype == "application/json":
                    json_format.ParseDict(_hex_ids_to_b64(json.loads(body or b"{}")),
                                          req, ignore_unknown_fields=True)
                else:
                    self._reply(415, f"unsupported Content-Type {ctype!r}\n".encode())
                    return
            except (DecodeError, json_format.ParseError, ValueError) as e:
                self._reply(400, f"cannot decode {ctype}: {e}\n".encode())
                return
            getattr(rx, method)(req, "http", {
                "path": path,
                "content_type": ctype,
                "content_encoding": enc or "identity",
                "headers": {k.lower(): v for k, v in self.headers.items()},
            })
            resp = resp_cls()
            if ctype == "application/json":
                self._reply(200, json_format.MessageToJson(resp).encode(), "application/json")
            else:
                self._reply(200, resp.SerializeToString(), "application/x-protobuf")

    return Handler


def start_http(rx: Receiver, host: str, port: int) -> Tuple[ThreadingHTTPServer, int]:
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer((host, port), make_handler(rx))
    t = threading.Thread(target=srv.serve_forever, name="otlp-http", daemon=True)
    t.start()
    return srv, srv.server_address[1]


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--grpc-port", type=int, default=4317,
                    help="OTLP/gRPC port (default 4317; 0 = pick a free port; -1 = disabled)")
    ap.add_argument("--http-port", type=int, default=4318,
                    help="OTLP/HTTP port (default 4318; 0 = pick a free port; -1 = disabled)")
    ap.add_argument("--spans-out", metavar="FILE", help="JSON-lines file for received spans")
    ap.add_argument("--metrics-out", metavar="FILE",
                    help="JSON-lines file for received metric data points")
    ap.add_argument("--requests-out", metavar="FILE",
                    help="JSON-lines file with one line per export request (transport, "
                         "signal, item count, content type/encoding, headers)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log every export request on stderr (default: only start/stop)")
    ap.add_argument("--append", action="store_true",
                    help="append to the output files instead of truncating them")
    args = ap.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose

    spans = JsonlSink(args.spans_out, args.append)
    metrics = JsonlSink(args.metrics_out, args.append)
    requests = JsonlSink(args.requests_out, args.append)
    rx = Receiver(spans, metrics, requests)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log(f"got signal {signum}, shutting down")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    grpc_server = http_server = None
    grpc_port = http_port = None
    try:
        if args.grpc_port >= 0:
            grpc_server, grpc_port = start_grpc(rx, args.host, args.grpc_port)
        if args.http_port >= 0:
            http_server, http_port = start_http(rx, args.host, args.http_port)
    except (OSError, RuntimeError) as e:  # grpcio raises RuntimeError on bind failure
        log(f"error: cannot listen: {e}")
        if grpc_server is not None:
            grpc_server.stop(None)
        return 2

    sys.stdout.write(json.dumps({"grpc_port": grpc_port, "http_port": http_port}) + "\n")
    sys.stdout.flush()
    log(f"listening: grpc={args.host}:{grpc_port} http={args.host}:{http_port}")

    while not stop.wait(0.5):
        pass

    if http_server is not None:
        http_server.shutdown()
        http_server.server_close()
    if grpc_server is not None:
        grpc_server.stop(grace=1.0).wait(5)
    spans.close()
    metrics.close()
    requests.close()
    log(f"stopped after {spans.count} span(s), {metrics.count} data point(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
