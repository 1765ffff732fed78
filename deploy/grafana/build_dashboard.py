#!/usr/bin/env python3
"""Writes inferscope-dashboard.json (the Grafana dashboard) next to this file.

The JSON is generated so that every panel follows the same conventions (datasource variable,
filters, units); edit this script, not the JSON, then run:

    python3 deploy/grafana/build_dashboard.py
    python3 deploy/grafana/check_dashboard.py --url http://HOST:9464/metrics

Standard library only.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}

# Target filter (every inferscope series) and request filter (series with LLM labels).
T = 'job=~"$job", instance=~"$instance"'
R = T + ', gen_ai_request_model=~"$model", server_port=~"$server_port"'
RI = "[$__rate_interval]"

_next_id = [0]


def _id():
    _next_id[0] += 1
    return _next_id[0]


def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t.update({"instant": True, "range": False, "format": "time_series"})
    else:
        t.update({"range": True})
    return t


def targets(*pairs):
    return [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(pairs)]


def timeseries(title, tgts, x, y, w=12, h=8, unit="short", desc="", stack=False, min0=True,
               draw="line"):
    return {
        "id": _id(),
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": tgts,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                **({"min": 0} if min0 else {}),
                "custom": {
                    "drawStyle": draw,
                    "lineWidth": 1,
                    "fillOpacity": 20 if stack else 0,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title, tgts, x, y, w=4, h=4, unit="short", desc="", decimals=None, thresholds=None):
    d = {"unit": unit, "color": {"mode": "thresholds"}}
    if decimals is not None:
        d["decimals"] = decimals
    d["thresholds"] = {
        "mode": "absolute",
        "steps": thresholds or [{"color": "green", "value": None}],
    }
    return {
        "id": _id(),
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": tgts,
        "fieldConfig": {"defaults": d, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        },
    }


def piechart(title, tgts, x, y, w=6, h=8, desc=""):
    return {
        "id": _id(),
        "type": "piechart",
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": tgts,
        "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "pieType": "donut",
            "legend": {"displayMode": "table", "placement": "right", "values": ["value", "percent"]},
            "tooltip": {"mode": "single"},
        },
    }


def row(title, y, collapsed=False):
    return {"id": _id(), "type": "row", "title": title, "collapsed": collapsed,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def quantiles(metric, flt=R, extra_by=""):
    by = "le" + (", " + extra_by if extra_by else "")
    return [
        target(
            f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{flt}}}{RI})))",
            f"p{int(q * 100)}" + (" {{" + extra_by + "}}" if extra_by else ""),
            chr(ord("A") + i),
        )
        for i, q in enumerate((0.5, 0.9, 0.99))
    ]


def variable_query(name, label, query, multi=True, all_value=None, hide=0, desc=""):
    v = {
        "name": name,
        "label": label,
        "description": desc,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": hide,
        "options": [],
        "regex": "",
    }
    if all_value is not None:
        v["allValue"] = all_value
    return v


def build():
    p = []
    y = 0

    # --- overview -----------------------------------------------------------------------
    p.append(stat("Requests / s", [target(f"sum(rate(inferscope_requests_total{{{R}}}{RI}))", "req/s")],
                  0, y, unit="reqps", desc="Finished HTTP requests per second (all routes).", decimals=2))
    p.append(stat("LLM error ratio", [target(
        f'sum(rate(gen_ai_server_request_duration_seconds_count{{{R}, error_type!=""}}{RI}))'
        f" / sum(rate(gen_ai_server_request_duration_seconds_count{{{R}}}{RI}))", "errors")],
        4, y, unit="percentunit", decimals=2,
        desc="Share of LLM requests with an error_type (HTTP >= 400, error body, no response, incomplete response).",
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.01},
                    {"color": "red", "value": 0.05}]))
    p.append(stat("In flight", [target(f"sum(inferscope_requests_in_flight{{{T}}})", "in flight")],
                  8, y, desc="Requests whose head was seen and whose response has not ended (all models and ports: this gauge has no model label)."))
    p.append(stat("TTFT p90", [target(
        f"histogram_quantile(0.9, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket{{{R}}}{RI})))", "p90")],
        12, y, unit="s", decimals=3, desc="Time to first token, 90th percentile (streamed requests)."))
    p.append(stat("Output tokens / s", [target(
        f'sum(rate(gen_ai_server_token_usage_sum{{{R}, gen_ai_token_type="output"}}{RI}))', "tok/s")],
        16, y, decimals=1, desc="Completion tokens per second, from `usage` (or counted stream chunks when the server sends no usage)."))
    p.append(stat("Agents", [target(f"count(inferscope_build_info{{{T}}})", "agents")],
                  20, y, desc="inferscope processes (nodes) reporting."))
    y += 4

    # --- traffic ------------------------------------------------------------------------
    p.append(row("Traffic", y)); y += 1
    p.append(timeseries("Request rate by route and status", [target(
        f"sum by (http_route, http_response_status_code) (rate(inferscope_requests_total{{{R}}}{RI}))",
        "{{http_route}} {{http_response_status_code}}")], 0, y, unit="reqps", stack=True,
        desc="Finished HTTP requests per second. Routes outside the OpenAI/vLLM/SGLang set read `other`; status `none` = no response seen."))
    p.append(timeseries("Error ratio", targets(
        (f'sum(rate(gen_ai_server_request_duration_seconds_count{{{R}, error_type!=""}}{RI}))'
         f" / sum(rate(gen_ai_server_request_duration_seconds_count{{{R}}}{RI}))", "LLM requests with an error"),
        (f'sum(rate(inferscope_requests_total{{{R}, http_response_status_code=~"5.."}}{RI}))'
         f" / sum(rate(inferscope_requests_total{{{R}}}{RI}))", "HTTP 5xx (all routes)"),
        (f'sum(rate(inferscope_requests_total{{{R}, http_response_status_code=~"4.."}}{RI}))'
         f" / sum(rate(inferscope_requests_total{{{R}}}{RI}))", "HTTP 4xx (all routes)"),
    ), 12, y, unit="percentunit", desc="Share of requests that failed."))
    y += 8
    p.append(timeseries("In-flight requests", [target(
        f"sum by (instance) (inferscope_requests_in_flight{{{T}}})", "{{instance}}")], 0, y, unit="short",
        desc="Per agent (node). Not filtered by model or port: the gauge has no such labels."))
    p.append(timeseries("LLM requests by model and operation", [target(
        f"sum by (gen_ai_request_model, gen_ai_operation_name) (rate(gen_ai_server_request_duration_seconds_count{{{R}}}{RI}))",
        "{{gen_ai_request_model}} {{gen_ai_operation_name}}")], 12, y, unit="reqps", stack=True))
    y += 8

    # --- latency ------------------------------------------------------------------------
    p.append(row("Latency", y)); y += 1
    p.append(timeseries("Time to first token (p50 / p90 / p99)",
                        quantiles("gen_ai_server_time_to_first_token_seconds"), 0, y, unit="s",
                        desc="From the first request byte to the first streamed chunk with output. Streamed requests only."))
    p.append(timeseries("End-to-end request duration (p50 / p90 / p99)",
                        quantiles("gen_ai_server_request_duration_seconds"), 12, y, unit="s",
                        desc="From the first request byte to the last response byte, all LLM requests (errors included)."))
    y += 8
    p.append(timeseries("Time per output token (p50 / p90 / p99)",
                        quantiles("gen_ai_server_time_per_output_token_seconds"), 0, y, unit="s",
                        desc="Per request: (last token time - first token time) / (output tokens - 1)."))
    p.append(timeseries("Inter-token latency (p50 / p90 / p99)",
                        quantiles("gen_ai_server_inter_token_latency_seconds"), 12, y, unit="s",
                        desc="Gap between consecutive streamed chunks of one choice (one observation per gap)."))
    y += 8
    p.append(timeseries("TTFT p90 by model",
                        [target(
                            f"histogram_quantile(0.9, sum by (le, gen_ai_request_model) (rate(gen_ai_server_time_to_first_token_seconds_bucket{{{R}}}{RI})))",
                            "{{gen_ai_request_model}}")], 0, y, unit="s"))
    p.append(timeseries("Duration p90 by model",
                        [target(
                            f"histogram_quantile(0.9, sum by (le, gen_ai_request_model) (rate(gen_ai_server_request_duration_seconds_bucket{{{R}}}{RI})))",
                            "{{gen_ai_request_model}}")], 12, y, unit="s"))
    y += 8

    # --- tokens -------------------------------------------------------------------------
    p.append(row("Tokens", y)); y += 1
    p.append(timeseries("Tokens / s (input and output)", [target(
        f"sum by (gen_ai_token_type) (rate(gen_ai_server_token_usage_sum{{{R}}}{RI}))", "{{gen_ai_token_type}}")],
        0, y, unit="short",
        desc="input = prompt tokens, output = completion tokens (from `usage`; for streams without usage, output counts chunks)."))
    p.append(timeseries("Output tokens / s by model", [target(
        f'sum by (gen_ai_request_model) (rate(gen_ai_server_token_usage_sum{{{R}, gen_ai_token_type="output"}}{RI}))',
        "{{gen_ai_request_model}}")], 12, y, unit="short", stack=True))
    y += 8
    p.append(timeseries("Mean tokens per request", [target(
        f"sum by (gen_ai_token_type) (rate(gen_ai_server_token_usage_sum{{{R}}}{RI}))"
        f" / sum by (gen_ai_token_type) (rate(gen_ai_server_token_usage_count{{{R}}}{RI}))", "{{gen_ai_token_type}}")],
        0, y, unit="short"))
    p.append(timeseries("Output tokens per request (p50 / p90 / p99)", [target(
        f'histogram_quantile({q}, sum by (le) (rate(gen_ai_server_token_usage_bucket{{{R}, gen_ai_token_type="output"}}{RI})))',
        f"p{int(q * 100)}", chr(ord("A") + i)) for i, q in enumerate((0.5, 0.9, 0.99))],
        12, y, unit="short", desc="Coarse: the token buckets are powers of 4."))
    y += 8

    # --- outcomes -----------------------------------------------------------------------
    p.append(row("Outcomes", y)); y += 1
    p.append(timeseries("Finish reasons", [target(
        f'sum by (gen_ai_response_finish_reason) (rate(inferscope_requests_total{{{R}, gen_ai_operation_name!="other"}}{RI}))',
        "{{gen_ai_response_finish_reason}}")], 0, y, w=9, unit="reqps", stack=True,
        desc="stop, length, tool_calls, ...; abort = the client went away; none = no finish reason seen (errors, incomplete)."))
    p.append(piechart("Finish reasons (time range)", [target(
        f'sum by (gen_ai_response_finish_reason) (increase(inferscope_requests_total{{{R}, gen_ai_operation_name!="other"}}[$__range]))',
        "{{gen_ai_response_finish_reason}}", instant=True)], 9, y, w=6))
    p.append(timeseries("Aborted and incomplete requests", targets(
        (f'sum by (gen_ai_request_model) (rate(inferscope_requests_total{{{R}, gen_ai_response_finish_reason="abort"}}{RI}))',
         "aborted {{gen_ai_request_model}}"),
        (f"sum(rate(inferscope_incomplete_requests_total{{{T}}}{RI}))", "incomplete (all models)"),
    ), 15, y, w=9, unit="reqps",
        desc="aborted: the client closed the connection before the response ended (finish_reason=\"abort\"). incomplete: reported without their end (lost bytes, closed connection, exited process)."))
    y += 8
    p.append(timeseries("LLM errors by type", [target(
        f'sum by (error_type) (rate(gen_ai_server_request_duration_seconds_count{{{R}, error_type!=""}}{RI}))',
        "{{error_type}}")], 0, y, w=24, unit="reqps", stack=True,
        desc="error_type: HTTP status (>= 400), the error type from the response body, no_response or incomplete_response."))
    y += 8

    # --- engine layer -------------------------------------------------------------------
    p.append(row("Inside the engine (scheduler, from its IPC)", y)); y += 1
    EM = T + ', gen_ai_request_model=~"$model"'
    p.append(timeseries("Engine phases p90: queue, prefill, decode", targets(
        (f"histogram_quantile(0.9, sum by (le) (rate(inferscope_engine_request_queue_time_seconds_bucket{{{EM}}}{RI})))", "queue"),
        (f"histogram_quantile(0.9, sum by (le) (rate(inferscope_engine_request_prefill_time_seconds_bucket{{{EM}}}{RI})))", "prefill"),
        (f"histogram_quantile(0.9, sum by (le) (rate(inferscope_engine_request_decode_time_seconds_bucket{{{EM}}}{RI})))", "decode"),
        (f"histogram_quantile(0.9, sum by (le) (rate(inferscope_engine_second_token_latency_seconds_bucket{{{EM}}}{RI})))", "second token"),
    ), 0, y, w=8, unit="s",
        desc="Engine timestamps (vLLM's own definitions): waiting in the queue, first scheduling to first token, first to last token; and first to second token (the first decode step after the prefill)."))
    p.append(timeseries("Engine steps / s by phase", [target(
        f"sum by (step_phase) (rate(inferscope_engine_steps_total{{{EM}}}{RI}))", "{{step_phase}}")],
        8, y, w=8, unit="short", stack=True,
        desc="Steps that produced output: prefill (every request in it got its first token), decode (none did), mixed (chunked prefill batched with decodes)."))
    p.append(timeseries("Scheduler queues and KV cache", targets(
        (f"sum by (instance, engine) (inferscope_engine_requests_running{{{EM}}})", "running {{instance}} engine {{engine}}"),
        (f"sum by (instance, engine) (inferscope_engine_requests_waiting{{{EM}}})", "waiting {{instance}} engine {{engine}}"),
        (f"max by (instance, engine) (inferscope_engine_kv_cache_usage_ratio{{{EM}}}) * 100", "KV cache % {{instance}} engine {{engine}}"),
    ), 16, y, w=8, unit="short",
        desc="As the engine last reported: requests in the running batch and in the queue; KV-cache blocks in use (percent)."))
    y += 8
    p.append(timeseries("Prefix cache hit rate", [target(
        f"sum by (instance, engine) (rate(inferscope_engine_prefix_cache_hits_total{{{EM}}}{RI}))"
        f" / sum by (instance, engine) (rate(inferscope_engine_prefix_cache_queries_total{{{EM}}}{RI}))",
        "{{instance}} engine {{engine}}")], 0, y, w=8, unit="percentunit",
        desc="Prompt tokens found in the prefix cache over prompt tokens looked up (the scheduler's own counts)."))
    p.append(timeseries("Speculative decoding acceptance", [target(
        f"sum by (instance, engine) (rate(inferscope_engine_spec_decode_accepted_tokens_total{{{EM}}}{RI}))"
        f" / sum by (instance, engine) (rate(inferscope_engine_spec_decode_draft_tokens_total{{{EM}}}{RI}))",
        "{{instance}} engine {{engine}}")], 8, y, w=8, unit="percentunit",
        desc="Draft tokens the target model accepted over draft tokens proposed (engines that draft)."))
    p.append(timeseries("Slow requests and failed health checks", targets(
        (f"sum(rate(inferscope_slow_token_gaps_total{{{R}}}{RI}))", "decode gaps over 1 s"),
        (f"sum by (over_seconds) (rate(inferscope_slow_first_tokens_total{{{R}}}{RI}))", "first token over {{over_seconds}} s"),
        (f"sum by (http_route) (rate(inferscope_health_check_failures_total{{{T}}}{RI}))", "health check failed {{http_route}}"),
    ), 16, y, w=8, unit="short",
        desc="Per second: gaps between streamed chunks longer than 1 s; requests whose first token took more than 5, 10 or 20 s; health probes answered >= 400 or not at all."))
    y += 8

    # --- device layer -------------------------------------------------------------------
    p.append(row("Accelerator runtime (device layer)", y)); y += 1
    p.append(timeseries("Launches / s by kind", [target(
        f"sum by (instance, pid, kind) (rate(inferscope_device_launches_total{{{T}}}{RI}))", "{{instance}} pid {{pid}} {{kind}}")],
        0, y, w=8, unit="short",
        desc="Kernel launches (group `launch`, off by default) and CUDA-graph / model replays the engine asked of its accelerator, per process."))
    p.append(timeseries("Host time waiting for the device", [target(
        f"sum by (instance, pid, kind) (rate(inferscope_device_sync_wait_seconds_sum{{{T}}}{RI}))", "{{instance}} pid {{pid}} {{kind}}")],
        8, y, w=8, unit="percentunit",
        desc="Seconds per second host threads spent in stream / device / event synchronisation (1 = one thread always waiting)."))
    p.append(timeseries("Launch gap p90 by stream", [target(
        f"histogram_quantile(0.9, sum by (le, instance, pid, stream) (rate(inferscope_device_launch_gap_seconds_bucket{{{T}}}{RI})))",
        "{{instance}} pid {{pid}} {{stream}}")], 16, y, w=8, unit="s",
        desc="Time between one launch call's return and the next launch on the same stream (up to 1 s): where the host keeps the device waiting."))
    y += 8
    p.append(timeseries("Copy bandwidth by direction", [target(
        f"sum by (instance, pid, direction) (rate(inferscope_device_copy_bytes_total{{{T}}}{RI}))", "{{instance}} pid {{pid}} {{direction}}")],
        0, y, w=8, unit="Bps", desc="Bytes of asynchronous copies enqueued per second (h2d, d2h, d2d, h2h, default)."))
    p.append(timeseries("Collective bytes / s by operation", [target(
        f"sum by (instance, pid, op) (rate(inferscope_device_collective_bytes_total{{{T}}}{RI}))", "{{instance}} pid {{pid}} {{op}}")],
        8, y, w=8, unit="Bps", desc="NCCL / HCCL collectives: element count x element size, per second."))
    p.append(timeseries("Top kernels (launches / s)", [target(
        f"topk(10, sum by (kernel) (rate(inferscope_device_kernel_launches_total{{{T}}}{RI})))", "{{kernel}}")],
        16, y, w=8, unit="short",
        desc="Kernel names from ELF symbols of host stubs and module lookups; each process's top kernels keep their name, the rest read `other`."))
    y += 8
    p.append(timeseries("Device probe hits / s", [target(
        f"sum by (instance, function) (rate(inferscope_device_probe_hits_total{{{T}}}{RI}))", "{{instance}} {{function}}")],
        0, y, w=12, unit="short",
        desc="Calls of each probed runtime function. Each costs a uprobe trap (inferscope measures its cost at start-up; see its first lines)."))
    p.append(timeseries("Device probes switched off / rate-limited", targets(
        (f"sum by (instance, function) (increase(inferscope_device_probes_disabled_total{{{T}}}{RI}))", "off {{instance}} {{function}}"),
        (f'sum by (instance) (rate(inferscope_dropped_events_total{{{T}, reason="device_rate_limited"}}{RI}))', "rate-limited calls/s {{instance}}"),
    ), 12, y, w=12, unit="short",
        desc="Probes the overhead budget detached (--device-overhead-budget), and calls over --device-rate-limit (counted, not reported)."))
    y += 8
    p.append(timeseries("Engine step device time, host-observed (p50 / p90 / p99)",
        quantiles("inferscope_engine_step_device_seconds", T + ', gen_ai_request_model=~"$model"'),
        0, y, w=12, unit="s",
        desc="From a step's first kernel or graph launch to the end of the last synchronisation after it, as the host sees it (an upper bound of the device's busy time: queueing behind earlier work counts)."))
    p.append(timeseries("Step device time vs step count", targets(
        (f'sum by (instance, engine) (rate(inferscope_engine_step_device_seconds_sum{{{T}}}{RI}))', "device s/s {{instance}} engine {{engine}}"),
        (f'sum by (instance, engine) (rate(inferscope_engine_steps_total{{{T}}}{RI}))', "steps/s {{instance}} engine {{engine}}"),
    ), 12, y, w=12, unit="short",
        desc="Host-observed device seconds per second (1 = the device always busy for the scheduler) beside engine steps per second."))
    y += 8

    # --- resources layer (NVML) --------------------------------------------------------------
    p.append(row("Accelerator resources (NVML, DCMI)", y)); y += 1
    p.append(timeseries("GPU utilisation", [target(
        f"max by (instance, gpu, uuid) (inferscope_gpu_utilization_ratio{{{T}}})", "{{instance}} GPU {{gpu}}")],
        0, y, w=8, unit="percentunit",
        desc="Share of the last sample period in which a kernel ran (NVML; DCGM_FI_DEV_GPU_UTIL). Busy is not full: see the launch gaps above."))
    p.append(timeseries("GPU memory used", [target(
        f"max by (instance, gpu, uuid) (inferscope_gpu_memory_used_bytes{{{T}}}) "
        f"/ max by (instance, gpu, uuid) (inferscope_gpu_memory_total_bytes{{{T}}})", "{{instance}} GPU {{gpu}}")],
        8, y, w=8, unit="percentunit", desc="Device memory in use over device memory in all (the KV cache is most of it on an inference server)."))
    p.append(timeseries("GPU memory by process", [target(
        f"sum by (instance, pid, k8s_pod_name) (inferscope_gpu_process_memory_used_bytes{{{T}}})",
        "{{instance}} pid {{pid}} {{k8s_pod_name}}")], 16, y, w=8, unit="bytes",
        desc="Device memory each process uses (host pid; the pod of a traced process)."))
    y += 8
    p.append(timeseries("Power and temperature", targets(
        (f"max by (instance, gpu) (inferscope_gpu_power_watts{{{T}}})", "{{instance}} GPU {{gpu}} W"),
        (f"max by (instance, gpu) (inferscope_gpu_temperature_celsius{{{T}}})", "{{instance}} GPU {{gpu}} C"),
    ), 0, y, w=8, unit="short", desc="Power draw in watts and GPU temperature in degrees Celsius."))
    p.append(timeseries("SM clock and throttling", targets(
        (f'max by (instance, gpu) (inferscope_gpu_clock_hertz{{{T}, clock="sm"}})', "{{instance}} GPU {{gpu}} SM Hz"),
        (f"max by (instance, gpu) (inferscope_gpu_clock_throttle_reasons{{{T}}} > bool 0)", "{{instance}} GPU {{gpu}} held down"),
    ), 8, y, w=8, unit="short",
        desc="The SM clock, and 1 while NVML names a reason the clocks are held down (power, thermal, idle...: the bitmask is in inferscope_gpu_clock_throttle_reasons)."))
    p.append(timeseries("PCIe throughput and ECC errors", targets(
        (f"sum by (instance, gpu, direction) (inferscope_gpu_pcie_bytes_per_second{{{T}}})", "{{instance}} GPU {{gpu}} {{direction}}"),
        (f"sum by (instance, gpu, type) (increase(inferscope_gpu_ecc_errors_total{{{T}}}{RI}))", "{{instance}} GPU {{gpu}} ECC {{type}}"),
    ), 16, y, w=8, unit="short", desc="PCIe bytes per second by direction; ECC errors of device memory in the window."))
    y += 8
    p.append(timeseries("NPU AI core utilisation", [target(
        f'max by (instance, npu) (inferscope_npu_utilization_ratio{{{T}, core="aicore"}})', "{{instance}} NPU {{npu}}")],
        0, y, w=8, unit="percentunit", desc="Ascend NPUs (DCMI): share of time the AI cores were busy."))
    p.append(timeseries("NPU HBM used", [target(
        f"max by (instance, npu) (inferscope_npu_hbm_used_bytes{{{T}}}) / max by (instance, npu) (inferscope_npu_hbm_total_bytes{{{T}}})",
        "{{instance}} NPU {{npu}}")], 8, y, w=8, unit="percentunit", desc="High-bandwidth memory in use over HBM in all."))
    p.append(timeseries("NPU health, power, temperature", targets(
        (f"max by (instance, npu) (inferscope_npu_health{{{T}}})", "{{instance}} NPU {{npu}} health"),
        (f"max by (instance, npu) (inferscope_npu_power_watts{{{T}}})", "{{instance}} NPU {{npu}} W"),
        (f"max by (instance, npu) (inferscope_npu_temperature_celsius{{{T}}})", "{{instance}} NPU {{npu}} C"),
    ), 16, y, w=8, unit="short", desc="Health as DCMI says it (0 healthy, 1 minor, 2 major, 3 critical), power draw in watts, temperature."))
    y += 8

    # --- Python layer ---------------------------------------------------------------------
    p.append(row("Inside the engine's Python (Python layer)", y)); y += 1
    p.append(timeseries("Engine queues (from the engine's objects)", [target(
        f"sum by (instance, pid, queue) (inferscope_engine_state_requests{{{T}}})", "{{instance}} pid {{pid}} {{queue}}")],
        0, y, w=8, unit="short",
        desc="Requests in the scheduler's running and waiting queues, read from the engine's memory every --engine-state-interval (no engine metrics needed)."))
    p.append(timeseries("KV-cache blocks in use", [target(
        f'1 - sum by (instance, pid) (inferscope_engine_state_kv_cache_blocks{{{T}, state="free"}}) '
        f'/ sum by (instance, pid) (inferscope_engine_state_kv_cache_blocks{{{T}, state="total"}})',
        "{{instance}} pid {{pid}}")], 8, y, w=8, unit="percentunit",
        desc="Share of the KV-cache block pool not free, read from the engine's block pool (vLLM)."))
    p.append(timeseries("Timed Python functions: p90", [target(
        f"histogram_quantile(0.9, sum by (le, instance, function) (rate(inferscope_python_function_duration_seconds_bucket{{{T}}}{RI})))",
        "{{instance}} {{function}}")], 16, y, w=8, unit="s",
        desc="Exact durations of the functions named in --python-timers (hardware breakpoints on entry and return; CPython 3.11-3.13)."))
    y += 8
    p.append(timeseries("Timed Python functions: calls / s", [target(
        f"sum by (instance, function, mode) (rate(inferscope_python_function_calls_total{{{T}}}{RI}))",
        "{{instance}} {{function}} {{mode}}")], 0, y, w=12, unit="short",
        desc="Calls per second; mode breakpoint_entry: counted without durations (its returns did not fit the debug registers)."))
    p.append(timeseries("Timed calls left by an exception", [target(
        f"sum by (instance, pid) (rate(inferscope_python_function_unfinished_total{{{T}}}{RI}))", "{{instance}} pid {{pid}}")],
        12, y, w=12, unit="short", desc="Timed calls seen leaving without a return instruction."))
    y += 8

    # --- inferscope health --------------------------------------------------------------
    p.append(row("inferscope health", y)); y += 1
    p.append(timeseries("Ring-buffer and kernel-side drops", [target(
        f"sum by (instance, reason) (rate(inferscope_dropped_events_total{{{T}}}{RI}))", "{{instance}} {{reason}}")],
        0, y, w=8, unit="short",
        desc="Records lost before user space saw them. ring_buffer_full: raise --ring-buffer-size or give inferscope more CPU."))
    p.append(timeseries("Lost stream bytes", targets(
        (f"sum by (instance) (rate(inferscope_capture_lost_bytes_total{{{T}}}{RI}))", "lost bytes/s {{instance}}"),
    ), 8, y, w=8, unit="Bps", desc="Stream bytes known to be missing (truncation or ring-buffer loss)."))
    p.append(timeseries("Capture gaps and truncated syscalls", targets(
        (f"sum by (instance) (rate(inferscope_capture_gaps_total{{{T}}}{RI}))", "gaps {{instance}}"),
        (f"sum by (instance) (rate(inferscope_capture_truncated_syscalls_total{{{T}}}{RI}))", "truncated {{instance}}"),
    ), 16, y, w=8, unit="short"))
    y += 8
    p.append(timeseries("Parse errors by cause", [target(
        f"sum by (protocol, cause) (rate(inferscope_parse_errors_total{{{T}}}{RI}))", "{{protocol}} {{cause}}")],
        0, y, w=8, unit="short"))
    p.append(timeseries("Export errors", [target(
        f"sum by (instance, exporter) (rate(inferscope_export_errors_total{{{T}}}{RI}))", "{{instance}} {{exporter}}")],
        8, y, w=8, unit="short", desc="Failed exports (OTLP traces / metrics, JSONL). No series until the first failure."))
    p.append(timeseries("Attached processes and tracked connections", targets(
        (f"sum by (instance) (inferscope_attached_processes{{{T}}})", "processes {{instance}}"),
        (f"sum by (instance) (inferscope_tracked_connections{{{T}}})", "connections {{instance}}"),
    ), 16, y, w=8, unit="short", desc="0 attached processes = no vLLM / SGLang / --match server found on that node."))
    y += 8
    p.append(timeseries("TLS connections and plaintext", targets(
        (f"sum by (instance, state) (rate(inferscope_tls_connections_total{{{T}}}{RI}))", "{{state}} {{instance}}"),
        (f"sum by (instance) (rate(inferscope_tls_plaintext_bytes_total{{{T}}}{RI}))", "plaintext bytes/s {{instance}}"),
    ), 0, y, w=12, unit="short",
        desc="HTTPS connections of traced servers: seen (TLS on the wire), tied (plaintext read through OpenSSL), unread (closed with no plaintext: not OpenSSL, or --no-tls)."))
    p.append(timeseries("Lines dropped by slow consumers", [target(
        f"sum by (instance, sink) (rate(inferscope_export_dropped_total{{{T}}}{RI}))", "{{instance}} {{sink}}")],
        12, y, w=12, unit="short",
        desc="JSONL and console lines dropped because their reader did not keep up (--export-buffer-mib waiting already). Capture and the other sinks are not held up."))
    y += 8
    p.append(timeseries("inferscope CPU", [target(
        f"rate(process_cpu_seconds_total{{{T}}}[5m]) and on (job, instance) inferscope_build_info",
        "{{instance}}")], 0, y, w=8, unit="percentunit",
        desc="CPU used by inferscope itself (cores). process_cpu_seconds_total is exported in whole seconds, so a 5m window is used."))
    p.append(timeseries("inferscope RSS", [target(
        f"process_resident_memory_bytes{{{T}}} and on (job, instance) inferscope_build_info", "{{instance}}")],
        8, y, w=8, unit="bytes", desc="Resident memory of the inferscope process. Includes the touched pages of the mapped BPF ring buffer (16 MiB by default, mapped twice); heap is usually a few MiB."))
    p.append(timeseries("BPF events and captured bytes", targets(
        (f"sum by (kind) (rate(inferscope_bpf_events_total{{{T}}}{RI}))", "events {{kind}}"),
        (f"sum(rate(inferscope_captured_bytes_total{{{T}}}{RI}))", "captured bytes"),
        (f"sum(rate(inferscope_socket_bytes_total{{{T}}}{RI}))", "socket bytes"),
    ), 16, y, w=8, unit="short"))
    y += 8

    templating = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        },
        variable_query("job", "Job", "label_values(inferscope_build_info, job)",
                       desc="Scrape jobs that collect inferscope (jobs with inferscope_build_info)."),
        variable_query("instance", "Agent", 'label_values(inferscope_build_info{job=~"$job"}, instance)',
                       all_value=".*"),
        variable_query("model", "Model",
                       'label_values(inferscope_requests_total{job=~"$job", instance=~"$instance"}, gen_ai_request_model)',
                       all_value=".*", desc="gen_ai_request_model (\"none\" for non-LLM routes, \"other\" past --max-models)."),
        variable_query("server_port", "Server port",
                       'label_values(inferscope_requests_total{job=~"$job", instance=~"$instance"}, server_port)',
                       all_value=".*", desc="Port of the inference server (empty when inferscope could not read it)."),
    ]

    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "piechart", "name": "Pie chart", "version": ""},
        ],
        "uid": "inferscope-llm",
        "title": "inferscope: LLM inference servers",
        "description": "Per-request metrics of vLLM / SGLang / OpenAI-compatible servers, measured by inferscope with eBPF, and inferscope's own health.",
        "tags": ["inferscope", "llm", "vllm", "sglang", "ebpf"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "timepicker": {},
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": templating},
        "panels": p,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inferscope-dashboard.json")
    with open(out, "w") as f:
        json.dump(build(), f, indent=2)
        f.write("\n")
    print(f"wrote {out}")
