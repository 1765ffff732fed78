//! Prometheus metrics: the OpenTelemetry GenAI server metrics under their Prometheus names,
//! request counters, inferscope's own health, and (opt-in) the names vLLM's dashboards query.
//! Served in the text exposition format at `/metrics`.

pub mod device;
pub mod engine;
pub mod python;

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use inferscope_common::stat;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use self::engine::EngineMetrics;
use super::{Health, Labels};
use crate::request::RequestRecord;

// Buckets recommended by the OpenTelemetry GenAI semantic conventions.
const DURATION_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
const TTFT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
const TPOT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
// inferscope's own: inter-token latency needs resolution below 10 ms on fast hardware.
const ITL_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
// vLLM's own buckets, so its dashboards' quantiles mean the same.
const VLLM_TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
const VLLM_ITL: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const VLLM_E2E: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];
const VLLM_TOKENS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

const GENAI_LABELS: &[&str] = &["gen_ai_operation_name", "gen_ai_request_model", "server_port"];

pub(super) fn hist(reg: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    reg.register(Box::new(h.clone())).with_context(|| format!("registering {name}"))?;
    Ok(h)
}

pub(super) fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone())).with_context(|| format!("registering {name}"))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

struct VllmCompat {
    ttft: HistogramVec,
    itl: HistogramVec,
    tpot: HistogramVec,
    e2e: HistogramVec,
    prompt: HistogramVec,
    generation: HistogramVec,
    prompt_total: IntCounterVec,
    generation_total: IntCounterVec,
    success: IntCounterVec,
}

pub struct PromMetrics {
    pub registry: Registry,
    duration: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    itl: HistogramVec,
    tokens: HistogramVec,
    requests: IntCounterVec,
    in_flight: IntGauge,
    bpf_events: IntCounterVec,
    dropped: IntCounterVec,
    arrivals: IntCounterVec,
    truncated: IntCounter,
    captured_bytes: IntCounter,
    syscall_bytes: IntCounter,
    lost_bytes: IntCounter,
    gaps: IntCounter,
    discarded: IntCounter,
    parse_errors: IntCounterVec,
    incomplete: IntCounter,
    attached: IntGauge,
    connections: IntGauge,
    ipc_connections: IntGauge,
    ipc_discarded: IntCounter,
    export_errors: IntCounterVec,
    map_write_errors: IntCounterVec,
    vllm: Option<VllmCompat>,
    /// The engine layer's families.
    pub engine: EngineMetrics,
    /// The device layer's families (when it runs).
    pub device: Option<device::DeviceMetrics>,
    /// The Python layer's function timers (with --python-timers).
    pub python: Option<python::PythonMetrics>,
    /// Launch call sites (device layer on).
    pub sites: Option<python::SiteMetrics>,
    /// Engine state read from the engine's objects (with --engine-state-interval > 0).
    pub engine_state: Option<python::EngineStateMetrics>,
    /// Last absolute values seen, to turn health snapshots into counter increments.
    prev: HashMap<String, u64>,
}

impl PromMetrics {
    pub fn new(vllm_names: bool) -> Result<Self> {
        let reg = Registry::new();
        #[cfg(target_os = "linux")]
        reg.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let build = IntGaugeVec::new(Opts::new("inferscope_build_info", "inferscope version (value 1)"), &["version"])?;
        reg.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let mut dur_labels = GENAI_LABELS.to_vec();
        dur_labels.push("error_type");
        let mut tok_labels = GENAI_LABELS.to_vec();
        tok_labels.push("gen_ai_token_type");
        let vllm = if vllm_names {
            let l = &["model_name"];
            Some(VllmCompat {
                ttft: hist(
                    &reg,
                    "vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds (inferscope, from the wire).",
                    VLLM_TTFT,
                    l,
                )?,
                itl: hist(
                    &reg,
                    "vllm:inter_token_latency_seconds",
                    "Histogram of inter-token latency in seconds (inferscope, from the wire).",
                    VLLM_ITL,
                    l,
                )?,
                tpot: hist(
                    &reg,
                    "vllm:request_time_per_output_token_seconds",
                    "Histogram of time per output token in seconds (inferscope, from the wire).",
                    VLLM_ITL,
                    l,
                )?,
                e2e: hist(
                    &reg,
                    "vllm:e2e_request_latency_seconds",
                    "Histogram of end to end request latency in seconds (inferscope, from the wire).",
                    VLLM_E2E,
                    l,
                )?,
                prompt: hist(
                    &reg,
                    "vllm:request_prompt_tokens",
                    "Number of prefill tokens processed (inferscope, from usage).",
                    VLLM_TOKENS,
                    l,
                )?,
                generation: hist(
                    &reg,
                    "vllm:request_generation_tokens",
                    "Number of generation tokens processed (inferscope, from usage).",
                    VLLM_TOKENS,
                    l,
                )?,
                prompt_total: counter(
                    &reg,
                    "vllm:prompt_tokens_total",
                    "Number of prefill tokens processed (inferscope).",
                    l,
                )?,
                generation_total: counter(
                    &reg,
                    "vllm:generation_tokens_total",
                    "Number of generation tokens processed (inferscope).",
                    l,
                )?,
                success: counter(
                    &reg,
                    "vllm:request_success_total",
                    "Count of successfully processed requests (inferscope).",
                    &["model_name", "finished_reason"],
                )?,
            })
        } else {
            None
        };
        Self {
            duration: hist(&reg, "gen_ai_server_request_duration_seconds", "Time from the first request byte to the last response byte (OpenTelemetry gen_ai.server.request.duration).", DURATION_BUCKETS, &dur_labels)?,
            ttft: hist(&reg, "gen_ai_server_time_to_first_token_seconds", "Time from the first request byte to the first streamed chunk carrying output (gen_ai.server.time_to_first_token).", TTFT_BUCKETS, GENAI_LABELS)?,
            tpot: hist(&reg, "gen_ai_server_time_per_output_token_seconds", "Time per output token after the first, per request (gen_ai.server.time_per_output_token).", TPOT_BUCKETS, GENAI_LABELS)?,
            itl: hist(&reg, "gen_ai_server_inter_token_latency_seconds", "Time between consecutive streamed output chunks of one choice (inferscope).", ITL_BUCKETS, GENAI_LABELS)?,
            tokens: hist(&reg, "gen_ai_server_token_usage", "Tokens per request by type: input (prompt) or output (completion) (gen_ai.server.token.usage).", TOKEN_BUCKETS, &tok_labels)?,
            requests: counter(&reg, "inferscope_requests_total", "Finished HTTP requests by operation, model, route, status and finish reason.", &["gen_ai_operation_name", "gen_ai_request_model", "http_route", "http_response_status_code", "gen_ai_response_finish_reason", "server_port"])?,
            in_flight: gauge(&reg, "inferscope_requests_in_flight", "Requests whose head was seen and whose response has not ended.")?,
            bpf_events: counter(&reg, "inferscope_bpf_events_total", "Records the BPF programs wrote to the ring buffer, by kind.", &["kind"])?,
            dropped: counter(&reg, "inferscope_dropped_events_total", "Records lost before user space saw them, by reason.", &["reason"])?,
            arrivals: counter(&reg, "inferscope_arrival_times_total", "Segment arrival times recorded on watched ports, and used by reads of traced servers.", &["result"])?,
            truncated: IntCounter::new("inferscope_capture_truncated_syscalls_total", "Syscalls that moved more bytes than the capture size (head and tail kept).")?,
            captured_bytes: IntCounter::new("inferscope_captured_bytes_total", "Payload bytes copied from traced sockets.")?,
            syscall_bytes: IntCounter::new("inferscope_socket_bytes_total", "Bytes moved by syscalls on traced sockets, captured or not.")?,
            lost_bytes: IntCounter::new("inferscope_capture_lost_bytes_total", "Stream bytes known to be missing (truncation or ring-buffer loss).")?,
            gaps: IntCounter::new("inferscope_capture_gaps_total", "Gaps found in captured byte streams.")?,
            discarded: IntCounter::new("inferscope_unparsed_bytes_total", "Captured bytes skipped while a parser was out of sync (not HTTP, or after lost bytes).")?,
            parse_errors: counter(&reg, "inferscope_parse_errors_total", "Input that could not be parsed, by protocol and cause.", &["protocol", "cause"])?,
            incomplete: IntCounter::new("inferscope_incomplete_requests_total", "Requests reported without their response end (lost bytes, closed connection, exited process).")?,
            attached: gauge(&reg, "inferscope_attached_processes", "Processes traced now.")?,
            connections: gauge(&reg, "inferscope_tracked_connections", "Connections with parser state now.")?,
            ipc_connections: gauge(&reg, "inferscope_ipc_connections", "Engine IPC (ZeroMQ) connections tracked now.")?,
            ipc_discarded: IntCounter::new("inferscope_ipc_unparsed_bytes_total", "Bytes on engine IPC sockets that could not be framed (out of sync after attaching mid-stream or after lost bytes, or not ZeroMQ).")?,
            export_errors: counter(&reg, "inferscope_export_errors_total", "Failed exports, by exporter.", &["exporter"])?,
            map_write_errors: counter(
                &reg,
                "inferscope_bpf_map_write_errors_total",
                "Failed writes into the BPF maps inferscope fills (TRACKED, SOCKETS, WATCHED_PORTS, PY_LAYOUTS, PY_TSTATES): what they name is not traced.",
                &["map"],
            )?,
            vllm,
            engine: EngineMetrics::new(&reg, vllm_names)?,
            device: None,
            python: None,
            engine_state: None,
            sites: None,
            prev: HashMap::new(),
            registry: reg,
        }
        .register_plain()
    }

    fn register_plain(self) -> Result<Self> {
        for c in [
            &self.truncated,
            &self.captured_bytes,
            &self.syscall_bytes,
            &self.lost_bytes,
            &self.gaps,
            &self.discarded,
            &self.incomplete,
            &self.ipc_discarded,
        ] {
            self.registry.register(Box::new(c.clone()))?;
        }
        Ok(self)
    }

    pub fn record(&self, r: &RequestRecord, l: &Labels) {
        self.requests
            .with_label_values(&[l.operation, &l.model, l.route, &l.status, &l.finish_reason, &l.server_port])
            .inc();
        if !r.operation.is_llm() {
            return;
        }
        let g = [l.operation, l.model.as_str(), l.server_port.as_str()];
        self.duration.with_label_values(&[l.operation, &l.model, &l.server_port, &l.error_type]).observe(r.e2e_s());
        if let Some(t) = r.ttft_s() {
            self.ttft.with_label_values(&g).observe(t);
        }
        if let Some(t) = r.tpot_s() {
            self.tpot.with_label_values(&g).observe(t);
        }
        let itl = self.itl.with_label_values(&g);
        for &gap in &r.itl_ns {
            itl.observe(gap as f64 / 1e9);
        }
        if let Some(p) = r.prompt_tokens {
            self.tokens.with_label_values(&[l.operation, &l.model, &l.server_port, "input"]).observe(p as f64);
        }
        if let Some(c) = r.completion_tokens.filter(|_| r.operation.generates()) {
            self.tokens.with_label_values(&[l.operation, &l.model, &l.server_port, "output"]).observe(c as f64);
        }
        if let Some(v) = &self.vllm {
            let m = [l.model.as_str()];
            if let Some(t) = r.ttft_s() {
                v.ttft.with_label_values(&m).observe(t);
            }
            let itl = v.itl.with_label_values(&m);
            for &gap in &r.itl_ns {
                itl.observe(gap as f64 / 1e9);
            }
            if let Some(t) = r.tpot_s() {
                v.tpot.with_label_values(&m).observe(t);
            }
            let ok = r.status.is_some_and(|s| s < 400) && r.error_type.is_none() || r.aborted;
            if ok && r.operation.generates() {
                v.e2e.with_label_values(&m).observe(r.e2e_s());
                if let Some(p) = r.prompt_tokens {
                    v.prompt.with_label_values(&m).observe(p as f64);
                    v.prompt_total.with_label_values(&m).inc_by(p);
                }
                if let Some(c) = r.completion_tokens {
                    v.generation.with_label_values(&m).observe(c as f64);
                    v.generation_total.with_label_values(&m).inc_by(c);
                }
                v.success.with_label_values(&[&l.model, &l.finish_reason]).inc();
            }
        }
    }

    fn advance(prev: &mut HashMap<String, u64>, key: &str, now: u64, c: &IntCounter) {
        let p = prev.entry(key.to_string()).or_insert(0);
        if now > *p {
            c.inc_by(now - *p);
        }
        *p = now.max(*p);
    }

    pub fn health(&mut self, h: &Health) {
        let prev = &mut self.prev;
        Self::advance(prev, "data", h.bpf_stat(stat::DATA_EVENTS), &self.bpf_events.with_label_values(&["data"]));
        Self::advance(prev, "conn", h.bpf_stat(stat::CONN_EVENTS), &self.bpf_events.with_label_values(&["connection"]));
        Self::advance(
            prev,
            "ringbuf",
            h.bpf_stat(stat::RINGBUF_DROPS),
            &self.dropped.with_label_values(&["ring_buffer_full"]),
        );
        Self::advance(
            prev,
            "sockmap",
            h.bpf_stat(stat::SOCKET_MAP_FULL),
            &self.dropped.with_label_values(&["socket_map_full"]),
        );
        Self::advance(
            prev,
            "device_rate",
            h.bpf_stat(stat::DEVICE_RATE_LIMITED),
            &self.dropped.with_label_values(&["device_rate_limited"]),
        );
        Self::advance(
            prev,
            "readfail",
            h.bpf_stat(stat::READ_USER_FAILED),
            &self.dropped.with_label_values(&["user_memory_unreadable"]),
        );
        Self::advance(
            prev,
            "iov",
            h.bpf_stat(stat::IOV_OVERFLOW),
            &self.dropped.with_label_values(&["too_many_iovecs"]),
        );
        Self::advance(prev, "trunc", h.bpf_stat(stat::TRUNCATED_SYSCALLS), &self.truncated);
        Self::advance(prev, "captured", h.bpf_stat(stat::CAPTURED_BYTES), &self.captured_bytes);
        Self::advance(prev, "sysbytes", h.bpf_stat(stat::SYSCALL_BYTES), &self.syscall_bytes);
        Self::advance(
            prev,
            "arr_rec",
            h.bpf_stat(stat::ARRIVALS_RECORDED),
            &self.arrivals.with_label_values(&["recorded"]),
        );
        Self::advance(prev, "arr_used", h.bpf_stat(stat::ARRIVALS_USED), &self.arrivals.with_label_values(&["used"]));
        Self::advance(prev, "lost", h.tracker.lost_bytes, &self.lost_bytes);
        Self::advance(prev, "gaps", h.tracker.gaps, &self.gaps);
        Self::advance(prev, "discarded", h.tracker.discarded_bytes, &self.discarded);
        Self::advance(prev, "incomplete", h.tracker.incomplete, &self.incomplete);
        Self::advance(prev, "ipc_discarded", h.tracker.ipc_discarded_bytes, &self.ipc_discarded);
        Self::advance(
            prev,
            "zmtp/dropped_message",
            h.tracker.ipc_dropped_messages,
            &self.parse_errors.with_label_values(&["zmtp", "dropped_message"]),
        );
        for (cause, n) in &h.tracker.parse_errors {
            Self::advance(prev, &format!("http/{cause}"), *n, &self.parse_errors.with_label_values(&["http", cause]));
        }
        for (proto, cause, n) in [
            ("http", "orphan_response", h.tracker.orphan_responses),
            ("openai", "bad_chunk", h.tracker.bad_chunks),
            ("http", "too_many_pipelined", h.tracker.pending_overflow),
        ] {
            Self::advance(prev, &format!("{proto}/{cause}"), n, &self.parse_errors.with_label_values(&[proto, cause]));
        }
        for (cause, n) in &h.decode_errors {
            Self::advance(prev, &format!("event/{cause}"), *n, &self.parse_errors.with_label_values(&["event", cause]));
        }
        for (map, n) in &h.map_write_errors {
            Self::advance(prev, &format!("map/{map}"), *n, &self.map_write_errors.with_label_values(&[map]));
        }
        for (exp, n) in &h.export_errors {
            Self::advance(prev, &format!("export/{exp}"), *n, &self.export_errors.with_label_values(&[exp]));
        }
        self.attached.set(h.attached_processes as i64);
        self.connections.set(h.tracker.connections as i64);
        self.ipc_connections.set(h.tracker.ipc_connections as i64);
        self.in_flight.set(h.in_flight as i64);
    }

    pub fn encode(registry: &Registry) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
        buf
    }
}

async fn serve_one(registry: Arc<Registry>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", prometheus::TEXT_FORMAT)
            .body(Full::new(Bytes::from(PromMetrics::encode(&registry)))),
        "/healthz" => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
        "/" => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"inferscope: metrics at /metrics, liveness at /healthz\n"))),
        _ => Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Binds the metrics endpoint now (so a bad address fails at startup) and serves it forever.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --prometheus-listen {addr} (in use? another inferscope?)"))?;
    let registry = Arc::new(registry);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = service_fn(move |req| serve_one(registry.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::BoundedLabel,
        protocol::openai::Operation,
        request::{RequestRecord, TokensFrom},
    };

    fn record(op: Operation, path: &str) -> RequestRecord {
        RequestRecord {
            pid: 1,
            conn_id: 1,
            peer: None,
            server_port: Some(8000),
            method: "POST".into(),
            path: path.into(),
            operation: op,
            status: Some(200),
            model: Some("m".into()),
            response_model: Some("m".into()),
            stream: op == Operation::Chat,
            request_id: None,
            traceparent: None,
            user_agent: None,
            start_ns: 1_000_000_000,
            request_end_ns: Some(1_001_000_000),
            response_start_ns: Some(1_002_000_000),
            first_token_ns: (op == Operation::Chat).then_some(1_020_000_000),
            last_token_ns: (op == Operation::Chat).then_some(1_050_000_000),
            end_ns: 1_060_000_000,
            output_events: 4,
            itl_ns: vec![10_000_000; 3],
            chunk_times: vec![],
            prompt_tokens: Some(5),
            completion_tokens: Some(if op == Operation::Chat { 4 } else { 0 }),
            cached_tokens: None,
            tokens_from: Some(TokensFrom::Usage),
            finish_reasons: vec!["length".into()],
            n: 1,
            max_tokens: Some(4),
            temperature: None,
            top_p: None,
            aborted: false,
            complete: true,
            capture_gaps: false,
            error_type: None,
            prompt: None,
            completion: None,
            engine: None,
        }
    }

    #[test]
    fn families_follow_the_record() {
        let p = PromMetrics::new(true).unwrap();
        let mut models = BoundedLabel::new(8);
        for (op, path) in [(Operation::Chat, "/v1/chat/completions"), (Operation::Embeddings, "/v1/embeddings")] {
            let r = record(op, path);
            p.record(&r, &Labels::of(&r, &mut models, "vllm"));
        }
        let text = String::from_utf8(PromMetrics::encode(&p.registry)).unwrap();
        let line = |prefix: &str| {
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}")).to_string()
        };
        assert!(line("gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name=\"chat\"").ends_with(" 1"));
        assert!(
            line("gen_ai_server_time_to_first_token_seconds_sum{gen_ai_operation_name=\"chat\"").ends_with(" 0.02")
        );
        assert!(line("gen_ai_server_inter_token_latency_seconds_count").ends_with(" 3"));
        assert!(line("vllm:request_time_per_output_token_seconds_sum{model_name=\"m\"}").ends_with(" 0.01"));
        // Embeddings generate nothing: no output-token observation, input tokens counted.
        assert!(
            !text.lines().any(|l| l.contains("embeddings") && l.contains("gen_ai_token_type=\"output\"")),
            "{text}"
        );
        assert!(line("gen_ai_server_token_usage_sum{gen_ai_operation_name=\"embeddings\"").ends_with(" 5"));
        assert!(line("inferscope_requests_total{gen_ai_operation_name=\"embeddings\"").ends_with(" 1"));
    }
}
