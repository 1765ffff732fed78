//! One JSON object per line: every finished request (`"type":"request"`) and a periodic health
//! line (`"type":"health"`). The field set is a contract others check mechanically: see README.
//! Also every other JSON inferscope writes, so none is built outside export/: steps, device
//! intervals (and the device summary and launch stats they share), timed calls (also the
//! `timers` verb's lines), profile windows, launch sites, engine state, and `python-info --json`.

use std::io::Write;

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    clock::Clock,
    device::{
        catalog::{CopyDir, SyncKind},
        summary::{DeviceSummary, LaunchStats},
    },
    engine::Phases,
    python::{
        Interpreter, PyFrame, PyThread,
        state::EngineState,
        timers::{CallRecord, TimerSpec},
    },
    request::RequestRecord,
};

/// One finished request as a JSON line. Field order is the order written; times are
/// Unix-epoch nanoseconds. Serialized directly (no intermediate map): it is written for every
/// request.
#[derive(Serialize)]
pub struct RequestLine<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub pid: u32,
    /// Which server answered (`vllm`, `sglang`, `openai_compatible`).
    pub provider: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub operation: &'static str,
    pub status: Option<u16>,
    pub model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub stream: bool,
    pub request_id: Option<&'a str>,
    pub start_ns: u64,
    pub request_end_ns: Option<u64>,
    pub response_start_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub last_token_ns: Option<u64>,
    pub end_ns: u64,
    pub ttft_s: Option<f64>,
    pub e2e_s: f64,
    pub tpot_s: Option<f64>,
    pub itl_mean_s: Option<f64>,
    pub itl_max_s: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub output_events: u64,
    pub tokens_from: Option<&'static str>,
    pub finish_reason: Option<&'a str>,
    pub finish_reasons: &'a [String],
    pub n: u32,
    pub max_tokens: Option<u64>,
    pub aborted: bool,
    pub complete: bool,
    pub capture_gaps: bool,
    pub head_truncated: bool,
    pub tls: bool,
    pub error_type: Option<&'a str>,
    pub client: Option<String>,
    pub server_port: Option<u16>,
    pub conn_id: u64,
    /// Engine layer (null when the engine's messages were not seen): data-parallel engine
    /// index and the request's phases from the engine's own timestamps.
    pub engine: Option<u32>,
    pub engine_request_ids: Option<&'a [String]>,
    pub queued_ns: Option<u64>,
    pub scheduled_ns: Option<u64>,
    pub engine_first_token_ns: Option<u64>,
    pub engine_last_token_ns: Option<u64>,
    pub queue_s: Option<f64>,
    pub prefill_s: Option<f64>,
    pub decode_s: Option<f64>,
    pub inference_s: Option<f64>,
    /// Queueing to first token, engine clock (vLLM's TTFT without tokenisation and HTTP).
    pub engine_ttft_s: Option<f64>,
    pub preemptions: Option<u32>,
    /// True when an engine output message was lost while the request ran: phases that it
    /// could have changed are null, and engine token counts are lower bounds.
    pub engine_outputs_lost: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<&'a str>,
}

/// The JSON line for a finished request.
pub fn request_line<'a>(r: &'a RequestRecord, clock: &Clock, provider: Option<&'a str>) -> RequestLine<'a> {
    let ns = |t: Option<u64>| t.map(|t| clock.unix_ns(t));
    let e = r.engine.as_ref();
    RequestLine {
        ty: "request",
        pid: r.pid,
        provider,
        method: &r.method,
        path: &r.path,
        operation: r.operation.name(),
        status: r.status,
        model: r.model.as_deref(),
        response_model: r.response_model.as_deref(),
        stream: r.stream,
        request_id: r.request_id.as_deref(),
        start_ns: clock.unix_ns(r.start_ns),
        request_end_ns: ns(r.request_end_ns),
        response_start_ns: ns(r.response_start_ns),
        first_token_ns: ns(r.first_token_ns),
        last_token_ns: ns(r.last_token_ns),
        end_ns: clock.unix_ns(r.end_ns),
        ttft_s: r.ttft_s(),
        e2e_s: r.e2e_s(),
        tpot_s: r.tpot_s(),
        itl_mean_s: (!r.itl_ns.is_empty()).then(|| r.itl_ns.iter().sum::<u64>() as f64 / r.itl_ns.len() as f64 / 1e9),
        itl_max_s: r.itl_ns.iter().max().map(|m| *m as f64 / 1e9),
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cached_tokens: r.cached_tokens.or(e.and_then(|e| e.cached_tokens)),
        output_events: r.output_events,
        tokens_from: r.tokens_from.map(|t| t.as_str()),
        finish_reason: r.finish_reason(),
        finish_reasons: &r.finish_reasons,
        n: r.n,
        max_tokens: r.max_tokens,
        aborted: r.aborted,
        complete: r.complete,
        capture_gaps: r.capture_gaps,
        head_truncated: r.head_truncated,
        tls: r.tls,
        error_type: r.error_type.as_deref(),
        client: r.peer.map(|p| p.to_string()),
        server_port: r.server_port,
        conn_id: r.conn_id,
        engine: e.and_then(|e| e.engine.or(Some(0))),
        engine_request_ids: e.map(|e| e.request_ids.as_slice()),
        queued_ns: ns(e.and_then(|e| e.queued_ns)),
        scheduled_ns: ns(e.and_then(|e| e.scheduled_ns)),
        engine_first_token_ns: ns(e.and_then(|e| e.first_token_ns)),
        engine_last_token_ns: ns(e.and_then(|e| e.last_token_ns)),
        queue_s: e.and_then(|e| e.queue_s()),
        prefill_s: e.and_then(|e| e.prefill_s()),
        decode_s: e.and_then(|e| e.decode_s()),
        inference_s: e.and_then(|e| e.inference_s()),
        engine_ttft_s: e.and_then(|e| e.engine_ttft_s()),
        preemptions: e.map(|e| e.preemptions),
        engine_outputs_lost: e.map(|e| e.outputs_lost),
        prompt: r.prompt.as_deref(),
        completion: r.completion.as_deref(),
    }
}

/// One engine step as a JSON line (`"type":"step"`). Request ids are capped at
/// [`MAX_STEP_IDS`]; `batch_size` is always the full count.
pub fn step_json(s: &crate::engine::EngineStep, clock: &Clock) -> Value {
    let g = &s.gauges;
    json!({
        "type": "step",
        "pid": s.pid,
        "engine": s.engine.unwrap_or(0),
        "ts_ns": clock.unix_ns(s.ts_ns),
        "batch_size": s.batch_size(),
        "request_ids": &s.request_ids[..s.request_ids.len().min(MAX_STEP_IDS)],
        "tokens": s.tokens,
        "prefill_tokens": s.prompt_tokens,
        "finished": s.finished,
        "running": g.running,
        "waiting": g.waiting,
        "kv_cache_usage": g.kv_cache_usage,
        "prefix_cache_queries": g.prefix_cache_queries,
        "prefix_cache_hits": g.prefix_cache_hits,
        "kv_cache_blocks": g.kv_cache_blocks,
        "phase": s.phase(),
        "first_tokens": s.first_tokens,
        "spec_decode": g.spec_decode.as_ref().map(|d| json!({
            "num_spec_tokens": d.num_spec_tokens,
            "drafts": d.drafts,
            "draft_tokens": d.draft_tokens,
            "accepted_tokens": d.accepted_tokens,
        })),
        "iteration": g.iteration.as_ref().map(|i| json!({
            "prefill_requests": i.prefill_requests,
            "prefill_tokens": i.prefill_tokens,
            "decode_requests": i.decode_requests,
            "decode_tokens": i.decode_tokens,
            "elapsed_seconds": i.elapsed_s,
        })),
    })
}

/// A step line with what the device did in the step (device layer), as a `device` object.
pub fn step_json_with_device(s: &crate::engine::EngineStep, d: Option<&DeviceSummary>, clock: &Clock) -> Value {
    let mut v = step_json(s, clock);
    if let (Some(d), Some(o)) = (d, v.as_object_mut()) {
        let mut dj = summary_json(d);
        if let Some(m) = dj.as_object_mut() {
            m.insert("first_call_ns".into(), json!(clock.unix_ns(d.first_ns)));
            m.insert("last_call_ns".into(), json!(clock.unix_ns(d.last_ns)));
            // Host-observed device time, and its share of the step from its first device call
            // to its output.
            if let Some(ns) = d.host_observed_ns() {
                m.insert("host_observed_seconds".into(), json!(ns as f64 / 1e9));
                let window = s.ts_ns.saturating_sub(d.first_ns);
                if window > 0 {
                    m.insert("host_observed_share".into(), json!((ns as f64 / window as f64).min(1.0)));
                }
            }
        }
        o.insert("device".into(), dj);
    }
    v
}

/// A `device` interval line: what one process asked of its accelerator over the interval.
pub fn device_json(
    r: &crate::device::IntervalReport,
    ts_unix_ns: u64,
    interval_s: f64,
    top: usize,
    probes: (usize, &[String]),
    disabled: &[String],
    final_line: bool,
) -> Value {
    let mut v = summary_json(&r.summary);
    let s = |ns: u64| ns as f64 / 1e9;
    let streams: Vec<Value> = r
        .streams
        .iter()
        .map(|(name, st)| {
            let mut m = launch_json_fields(st);
            m.insert("stream".into(), json!(name));
            Value::Object(m)
        })
        .collect();
    let top_k = r.kernels.top(top);
    let (mut other_n, mut other_ns) = r.kernels.overflow;
    for (name, (n, ns)) in &r.kernels.by_name {
        if !top_k.iter().any(|(k, _, _)| k == name) {
            other_n = other_n.saturating_add(*n);
            other_ns = other_ns.saturating_add(*ns);
        }
    }
    let kernels: Vec<Value> =
        top_k.iter().map(|(k, n, ns)| json!({"name": k, "launches": n, "launch_seconds": s(*ns)})).collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), json!("device"));
        o.insert("pid".into(), json!(r.pid));
        o.insert("ts_ns".into(), json!(ts_unix_ns));
        o.insert("interval_seconds".into(), json!(interval_s));
        let rate = |n: u64| if interval_s > 0.0 { n as f64 / interval_s } else { 0.0 };
        o.insert("launches_per_second".into(), json!(rate(r.summary.launch.launches)));
        o.insert("graph_launches_per_second".into(), json!(rate(r.summary.launch.graph_launches)));
        o.insert("streams".into(), json!(streams));
        o.insert("kernels".into(), json!(kernels));
        o.insert("kernels_other".into(), json!({"launches": other_n, "launch_seconds": s(other_ns)}));
        o.insert("probes_attached".into(), json!(probes.0));
        o.insert("libraries".into(), json!(probes.1));
        o.insert("probes_disabled".into(), json!(disabled));
        if final_line {
            o.insert("final".into(), json!(true));
        }
    }
    v
}

/// A device summary as a JSON object (seconds as floats, bytes and counts as integers).
pub fn summary_json(d: &DeviceSummary) -> Value {
    let s = |ns: u64| ns as f64 / 1e9;
    let mut copies = serde_json::Map::new();
    for dir in CopyDir::ALL {
        let c = &d.copies[dir.index()];
        if c.count > 0 {
            copies.insert(dir.name().into(), json!({"count": c.count, "bytes": c.bytes, "seconds": s(c.ns)}));
        }
    }
    let mut v = json!({
        "copies": copies,
        "syncs": d.syncs,
        "sync_wait_seconds": s(d.sync_ns),
        "max_sync_wait_seconds": s(d.max_sync_ns),
        "sync_wait_seconds_by_kind": {
            "stream": s(d.sync_ns_by_kind[SyncKind::Stream as usize]),
            "device": s(d.sync_ns_by_kind[SyncKind::Device as usize]),
            "event": s(d.sync_ns_by_kind[SyncKind::Event as usize]),
        },
        "allocs": d.allocs,
        "alloc_bytes": d.alloc_bytes,
        "collectives": d.collectives,
        "collective_bytes": d.collective_bytes,
        "collective_seconds": s(d.collective_ns),
        "errors": d.errors,
    });
    if let Some(m) = v.as_object_mut() {
        m.extend(launch_json_fields(&d.launch));
    }
    v
}

/// Launch stats' JSON fields (seconds as floats), the same in interval, stream and step objects.
pub fn launch_json_fields(l: &LaunchStats) -> serde_json::Map<String, Value> {
    let s = |ns: u64| ns as f64 / 1e9;
    let mut m = serde_json::Map::new();
    m.insert("launches".into(), json!(l.launches));
    m.insert("graph_launches".into(), json!(l.graph_launches));
    m.insert("launch_seconds".into(), json!(s(l.launch_ns)));
    m.insert("launch_gaps".into(), json!(l.gaps));
    m.insert("launch_gap_seconds".into(), json!(s(l.gap_ns)));
    m.insert("max_launch_gap_seconds".into(), json!(s(l.max_gap_ns)));
    m
}

/// Most request ids written on one step line.
pub const MAX_STEP_IDS: usize = 1024;

/// A health line: what inferscope saw and lost so far (counters are totals since start).
pub fn health_json(h: &crate::output::Health, unix_ns: u64) -> Value {
    use inferscope_common::stat;
    json!({
        "type": "health",
        "ts_ns": unix_ns,
        "attached_processes": h.attached_processes,
        "connections": h.tracker.connections,
        "in_flight": h.in_flight,
        "data_events": h.bpf_stat(stat::DATA_EVENTS),
        "ring_buffer_drops": h.bpf_stat(stat::RINGBUF_DROPS),
        "socket_map_full": h.bpf_stat(stat::SOCKET_MAP_FULL),
        "tracking_map_full": h.bpf_stat(stat::TRACKING_MAP_FULL),
        "truncated_syscalls": h.bpf_stat(stat::TRUNCATED_SYSCALLS),
        "captured_bytes": h.bpf_stat(stat::CAPTURED_BYTES),
        "socket_bytes": h.bpf_stat(stat::SYSCALL_BYTES),
        "unclassified_socket_io": h.bpf_stat(stat::UNCLASSIFIED_SOCKET_IO),
        "accepts_without_enter": h.bpf_stat(stat::ACCEPTS_WITHOUT_ENTER),
        "dups_followed": h.bpf_stat(stat::DUPS_FOLLOWED),
        "arrivals_recorded": h.bpf_stat(stat::ARRIVALS_RECORDED),
        "arrivals_used": h.bpf_stat(stat::ARRIVALS_USED),
        "lost_bytes": h.tracker.lost_bytes,
        "gaps": h.tracker.gaps,
        "unparsed_bytes": h.tracker.discarded_bytes,
        "incomplete_requests": h.tracker.incomplete,
        "head_truncated_requests": h.tracker.head_truncated,
        "tls": {
            "connections": h.bpf_stat(stat::TLS_CONNECTIONS),
            "tied": h.bpf_stat(stat::TLS_TIED),
            "unread_connections": h.tracker.tls_unread,
            "calls_without_socket": h.bpf_stat(stat::TLS_UNTIED_CALLS),
            "plaintext_bytes": h.bpf_stat(stat::TLS_PLAINTEXT_BYTES),
        },
        "parse_errors": h.tracker.parse_errors.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "decode_errors": h.decode_errors.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "export_errors": h.export_errors.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "export_dropped": h.export_dropped.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "map_write_errors": h.map_write_errors.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "engine": {
            "messages": h.engine.messages,
            "messages_with_gaps": h.engine.messages_with_gaps,
            "undecodable": h.engine.undecodable.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "lost_requests": h.engine.lost_requests,
            "partial_requests": h.engine.partial_requests,
            "output_messages": h.engine.output_messages,
            "ipc_dropped_messages": h.tracker.ipc_dropped_messages,
            "ipc_unparsed_bytes": h.tracker.ipc_discarded_bytes,
        },
        "python_timers": {
            "processes": h.python.processes,
            "watched_functions": h.python.watched_functions,
            "breakpoints": h.python.breakpoints,
            "calls": h.python.calls,
            "unfinished_calls": h.python.unfinished,
            "unmatched_returns": h.python.unmatched_returns,
            "write_hits": h.python.write_hits,
            "other_accesses": h.python.other_accesses,
            "throttled_ticks": h.python.throttled,
            "undecodable": h.python.undecodable,
        },
        "device": {
            "probe_hits": h.bpf_stat(stat::DEVICE_HITS),
            "rate_limited": h.bpf_stat(stat::DEVICE_RATE_LIMITED),
            "mmap_events": h.bpf_stat(stat::MMAP_EVENTS),
            "probes_attached": h.device.probes_attached,
            "attach_errors": h.device.attach_errors,
            "unreadable_files": h.device.unreadable_files,
            "unknown_probe_calls": h.device.unknown_probe,
            "nested_driver_calls": h.device.nested,
            "unclaimed_step_calls": h.device.unclaimed,
            "probes_disabled": h.device.disabled,
        },
    })
}

/// The JSON line of one call: `start_ns` on the monotonic clock (what BPF and
/// `time.monotonic_ns()` read), and `ts_ns` in Unix time when the caller knows it.
/// `step`: the engine step the call belongs to (Unix ns the engine stamped it, batch size).
pub fn call_json(r: &CallRecord, spec: &TimerSpec, unix_start_ns: Option<u64>, step: Option<(u64, usize)>) -> Value {
    let mut v = json!({
        "type": "python_call",
        "pid": r.pid,
        "tid": r.tid,
        "function": spec.function(),
        "symbol": spec.symbol,
        "mode": r.mode.label(),
        "start_ns": r.start_ns,
        "duration_ns": r.end_ns.map(|e| e.saturating_sub(r.start_ns)),
        "depth": r.depth,
    });
    if let Some(ts) = unix_start_ns {
        v["ts_ns"] = ts.into();
    }
    if let Some((ts, batch)) = step {
        v["step_ts_ns"] = ts.into();
        v["step_batch_size"] = batch.into();
    }
    v
}

/// A `python_profile` line: one rolling-profile window of one process.
pub fn profile_json(pid: u32, p: &crate::python::profile::Profile, unix_ns: u64, files: Option<(&str, &str)>) -> Value {
    json!({
        "type": "python_profile",
        "pid": pid,
        "ts_ns": unix_ns,
        "window_s": p.duration_ns as f64 / 1e9,
        "samples": p.samples,
        "samples_outside_python": p.empty,
        "threads": p.threads,
        "top": p.top(10).into_iter().map(|(f, share)| json!({"function": f, "percent": (share * 100.0).round() / 100.0})).collect::<Vec<_>>(),
        "pprof": files.map(|f| f.0),
        "svg": files.map(|f| f.1),
    })
}

/// A `python_launch_sites` line: launches of one process by Python call site, in an interval.
pub fn sites_json(pid: u32, sites: &[crate::python::sites::SiteCount], unix_ns: u64, secs: f64) -> Value {
    json!({
        "type": "python_launch_sites",
        "pid": pid,
        "ts_ns": unix_ns,
        "interval_seconds": secs,
        "launches": sites.iter().map(|s| s.launches).sum::<u64>(),
        "sites": sites.iter().take(20).map(|s| json!({"site": s.site, "caller": s.caller, "launches": s.launches})).collect::<Vec<_>>(),
    })
}

/// An `engine_state` line: the engine's live state read from its objects.
pub fn engine_state_json(s: &EngineState, unix_ns: u64) -> Value {
    let mut v = json!({"type": "engine_state", "pid": s.pid, "engine": s.engine, "ts_ns": unix_ns});
    for (k, val) in &s.values {
        v[*k] = json!(val);
    }
    v
}

/// A line of type `ty` holding `value`'s fields: `gpu` (one GPU at one sample, its processes
/// within), `gpu_event`.
pub fn typed_json<T: serde::Serialize>(value: &T, ty: &str, unix_ns: u64) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    v["type"] = json!(ty);
    v["ts_ns"] = json!(unix_ns);
    v
}

/// An `npu` line: one Ascend NPU's resources at one sample.
pub fn npu_json(d: &crate::resources::NpuSample, unix_ns: u64) -> Value {
    let mut v = typed_json(d, "npu", unix_ns);
    v["processes"] = d.processes.iter().map(|(pid, b)| json!({"pid": pid, "memory_used_bytes": b})).collect();
    v
}

/// A `process` line when a process is traced (the sink adds where it runs).
pub fn process_json(pid: u32, engine: &str, unix_ns: u64) -> Value {
    json!({"type": "process", "pid": pid, "engine": engine, "ts_ns": unix_ns})
}

/// `inferscope python-info --json`: the interpreter, its threads and their stacks (`main`:
/// whether a thread is the process's main thread), and the engine's live state when read.
pub fn python_info_json(
    pid: u32,
    i: &Interpreter,
    rows: &[(&PyThread, Vec<PyFrame>, Option<String>)],
    main: impl Fn(&PyThread) -> bool,
    state: Option<&EngineState>,
) -> Value {
    let threads: Vec<serde_json::Value> = rows
        .iter()
        .map(|(t, s, e)| {
            serde_json::json!({
                "native_thread_id": t.native_thread_id,
                "thread_id": t.thread_id,
                "main": main(t),
                "stack": s.iter().map(|f| serde_json::json!({"name": f.name, "filename": f.filename, "first_line": f.first_line})).collect::<Vec<_>>(),
                "error": e,
            })
        })
        .collect();
    serde_json::json!({
        "pid": pid,
        "version": i.version_string(),
        "file": i.file,
        "layout": i.layout_source,
        "threads": threads,
        "engine_state": state.map(|s| {
            let mut m = serde_json::Map::new();
            m.insert("engine".into(), s.engine.into());
            for (k, v) in &s.values {
                m.insert((*k).into(), (*v).into());
            }
            m.insert("problem".into(), s.problem.clone().into());
            serde_json::Value::Object(m)
        }),
    })
}

/// Appends lines to a file (or stdout for `-`): formatted on the loop, written by a thread of
/// its own in batches (every flush, or every 256 KiB), with at most `max_pending` bytes waiting
/// for a slow consumer; past that, lines are dropped and counted ([`OffLoopWriter`]).
pub struct JsonlWriter {
    out: crate::export::offloop::OffLoopWriter,
    /// Lines that could not be formatted.
    bad_lines: u64,
}

impl JsonlWriter {
    pub fn open(path: &str, max_pending: u64) -> anyhow::Result<Self> {
        let (out, what): (Box<dyn Write + Send>, &'static str) = if path == "-" {
            (Box::new(std::io::stdout()), "--jsonl - (standard output)")
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open --jsonl file {path}: {e}"))?;
            (Box::new(f), "the --jsonl file")
        };
        let out = crate::export::offloop::OffLoopWriter::new(out, "jsonl-writer", what, max_pending)?;
        Ok(Self { out, bad_lines: 0 })
    }

    pub fn write<T: Serialize>(&mut self, v: &T) {
        let buf = self.out.buffer();
        let len = buf.len();
        match serde_json::to_writer(&mut *buf, v) {
            Ok(()) => {
                buf.push(b'\n');
                self.out.line_done();
            }
            Err(_) => {
                buf.truncate(len);
                self.bad_lines += 1;
            }
        }
    }

    /// Hands what was written so far to the writing thread.
    pub fn flush(&mut self) {
        self.out.flush();
    }

    /// At the stop: everything out (waiting up to 2 s for a consumer that does not read).
    pub fn close(&mut self) {
        self.out.close(std::time::Duration::from_secs(2));
    }

    /// Lines not formatted, and failed writes.
    pub fn errors(&self) -> u64 {
        self.bad_lines + self.out.errors()
    }

    /// Lines dropped because the consumer did not keep up.
    pub fn dropped(&self) -> u64 {
        self.out.dropped_lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{
        IntervalReport, StreamStats,
        catalog::CopyDir,
        summary::{Sample, What},
    };

    #[test]
    fn device_lines_carry_sums_streams_and_bounded_kernels() {
        let clock = Clock::new();
        let mut r = IntervalReport { pid: 7, ..Default::default() };
        r.summary.add(&Sample {
            start_ns: 10,
            end_ns: 20,
            what: What::Copy { dir: CopyDir::DeviceToHost, bytes: 1 << 20, ns: 10 },
            error: false,
        });
        r.streams.insert("0x50".into(), StreamStats { launches: 3, gaps: 2, gap_ns: 4_000, ..Default::default() });
        for (k, n) in [("a", 5), ("b", 3), ("c", 1)] {
            for _ in 0..n {
                r.kernels.add(k, 1_000);
            }
        }
        let v = device_json(&r, 99, 2.0, 2, (4, &["libcuda.so.1".to_string()]), &[], false);
        assert_eq!(v["type"], "device");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["copies"]["d2h"]["bytes"], 1 << 20);
        assert_eq!(v["streams"][0]["stream"], "0x50");
        assert_eq!(v["streams"][0]["launch_gap_seconds"], 4e-6);
        let names: Vec<&str> = v["kernels"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(v["kernels_other"]["launches"], 1);
        assert_eq!(v["probes_attached"], 4);
        assert!(v.get("final").is_none());

        let step = crate::engine::EngineStep { pid: 7, ts_ns: 30, ..Default::default() };
        let s = step_json_with_device(&step, Some(&r.summary), &clock);
        assert_eq!(s["device"]["copies"]["d2h"]["count"], 1);
        assert_eq!(s["device"]["first_call_ns"], clock.unix_ns(10));
        assert!(step_json_with_device(&step, None, &clock).get("device").is_none());
    }
}
