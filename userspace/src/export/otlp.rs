//! OTLP export (gRPC or HTTP/protobuf): one trace per request, an HTTP server span with an
//! `llm_request` child carrying `gen_ai.*` attributes, and the same metrics as Prometheus under
//! their OpenTelemetry names. A request's W3C `traceparent` header, when present, makes the
//! HTTP span a child of the caller's span.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use opentelemetry::{
    Array, Context, KeyValue, StringValue, Value,
    metrics::{Counter, Histogram, Meter, MeterProvider as _},
    trace::{
        Event, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
        TracerProvider as _,
    },
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};

use crate::output::Labels;
use crate::{clock::Clock, engine::Phases, request::RequestRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (default port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (default port 4318).
    Http,
}

/// Tracing detail, as operators know it from commercial agents.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    /// 0: request spans. 1: adds engine-stage spans (from the engine layer, when present).
    /// 2: adds one span event per streamed output chunk, up to `max_span_events`.
    pub tracing_level: u8,
    pub max_span_events: u32,
    pub metrics_interval: Duration,
    pub traces: bool,
    pub metrics: bool,
}

/// Counts what the exporters could not deliver.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub spans_ok: AtomicU64,
    pub spans_failed: AtomicU64,
    pub metric_exports_failed: AtomicU64,
}

#[derive(Debug)]
struct CountingSpans<E> {
    inner: E,
    counters: Arc<ExportCounters>,
}

impl<E: SpanExporter> SpanExporter for CountingSpans<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => self.counters.spans_ok.fetch_add(n, Ordering::Relaxed),
            Err(_) => self.counters.spans_failed.fetch_add(n, Ordering::Relaxed),
        };
        r
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

struct CountingMetrics<E> {
    inner: E,
    counters: Arc<ExportCounters>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetrics<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.inner.export(metrics).await;
        if r.is_err() {
            self.counters.metric_exports_failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

struct Instruments {
    duration: Histogram<f64>,
    ttft: Histogram<f64>,
    tpot: Histogram<f64>,
    itl: Histogram<f64>,
    tokens: Histogram<u64>,
    requests: Counter<u64>,
}

pub struct Otlp {
    opts: OtlpOptions,
    tracer_provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    meter_provider: Option<SdkMeterProvider>,
    instruments: Option<Instruments>,
    /// GPU resources (made with the metrics).
    gpu: Option<super::otlp_resources::GpuInstruments>,
    pub counters: Arc<ExportCounters>,
    pub spans_submitted: u64,
    /// The container and pod of each traced process in one, as span attributes.
    targets: HashMap<u32, Vec<KeyValue>>,
}

/// Appends the signal path for OTLP/HTTP when the endpoint is a bare base URL.
fn http_url(endpoint: &str, signal: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    let has_path = e.split("://").nth(1).is_some_and(|rest| rest.contains('/'));
    if has_path { e.to_string() } else { format!("{e}/v1/{signal}") }
}

/// That `--otlp-endpoint` is a URL an exporter can send to: http(s), a host, and a port that is
/// a number (checked before anything is loaded).
pub fn check_endpoint(endpoint: &str) -> Result<()> {
    let usage = || format!("--otlp-endpoint must be a URL such as http://collector:4317 (got {endpoint:?})");
    let uri: http::Uri = endpoint.parse().map_err(|e| anyhow::anyhow!("{}: {e}", usage()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        bail!("{}", usage());
    }
    // A port, when given, is a number (the URI parser takes `host:43x7` as it is).
    let host_port = uri.authority().map_or("", |a| a.as_str()).rsplit('@').next().unwrap_or("");
    if let Some((_, port)) = host_port.rsplit_once(':')
        && !host_port.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        bail!("{}: the port is not a number", usage());
    }
    Ok(())
}

impl Otlp {
    /// Must be called inside the tokio runtime (the gRPC client runs on it).
    /// Trace detail from now on (`inferscope ctl tracing-level`).
    pub fn set_tracing_level(&mut self, level: u8) {
        self.opts.tracing_level = level;
    }

    pub fn new(opts: OtlpOptions) -> Result<Self> {
        check_endpoint(&opts.endpoint)?;
        let counters = Arc::new(ExportCounters::default());
        let resource = Resource::builder()
            .with_service_name(opts.service_name.clone())
            .with_attributes([
                KeyValue::new("telemetry.sdk.name", "inferscope"),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("host.name", hostname()),
            ])
            .build();
        let timeout = Duration::from_secs(5);
        let (tracer_provider, tracer) = if opts.traces {
            let exporter = match opts.protocol {
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&opts.endpoint)
                    .with_timeout(timeout)
                    .build(),
                OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(http_url(&opts.endpoint, "traces"))
                    .with_timeout(timeout)
                    .build(),
            }
            .context("building the OTLP span exporter")?;
            let exporter = CountingSpans { inner: exporter, counters: counters.clone() };
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(65536)
                .with_max_export_batch_size(2048)
                .with_scheduled_delay(Duration::from_millis(500))
                .build();
            let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_span_processor(processor)
                .with_max_events_per_span(opts.max_span_events.max(1))
                .build();
            let tracer = provider.tracer("inferscope");
            (Some(provider), Some(tracer))
        } else {
            (None, None)
        };
        let (meter_provider, instruments, gpu) = if opts.metrics {
            let exporter = match opts.protocol {
                OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(&opts.endpoint)
                    .with_timeout(timeout)
                    .build(),
                OtlpProtocol::Http => opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(http_url(&opts.endpoint, "metrics"))
                    .with_timeout(timeout)
                    .build(),
            }
            .context("building the OTLP metric exporter")?;
            let exporter = CountingMetrics { inner: exporter, counters: counters.clone() };
            let reader = PeriodicReader::builder(exporter).with_interval(opts.metrics_interval).build();
            let provider = SdkMeterProvider::builder().with_resource(resource).with_reader(reader).build();
            let meter = provider.meter("inferscope");
            let gpu = super::otlp_resources::GpuInstruments::new(&meter);
            (Some(provider), Some(instruments(&meter)), Some(gpu))
        } else {
            (None, None, None)
        };
        Ok(Self {
            opts,
            tracer_provider,
            tracer,
            meter_provider,
            instruments,
            gpu,
            counters,
            spans_submitted: 0,
            targets: HashMap::new(),
        })
    }

    /// Where a traced process runs (OpenTelemetry `container.*` and `k8s.*` attributes): added
    /// to every span of its requests, steps and calls, since one inferscope reports for every
    /// pod of its node and the resource names inferscope itself.
    pub fn target(&mut self, pid: u32, attributes: Vec<(std::borrow::Cow<'static, str>, String)>) {
        if attributes.is_empty() {
            self.targets.remove(&pid);
            return;
        }
        self.targets.insert(pid, attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect());
    }

    pub fn forget(&mut self, pid: u32) {
        self.targets.remove(&pid);
    }

    /// A sample of every GPU's resources.
    pub fn accelerators(&mut self, devices: &[crate::resources::DeviceSample]) {
        if let Some(g) = &mut self.gpu {
            g.record(devices, &self.targets);
        }
    }

    /// A sample of every NPU's resources.
    pub fn npus(&mut self, devices: &[crate::resources::NpuSample]) {
        if let Some(g) = &mut self.gpu {
            g.record_npus(devices, &self.targets);
        }
    }

    fn target_attrs(&self, pid: u32) -> &[KeyValue] {
        self.targets.get(&pid).map_or(&[], Vec::as_slice)
    }

    pub fn record(&mut self, r: &RequestRecord, l: &Labels, clock: &Clock) {
        if let Some(i) = &self.instruments {
            record_metrics(i, r, l, self.target_attrs(r.pid));
        }
        if let Some(tracer) = &self.tracer {
            emit_spans(tracer, &self.opts, r, l, clock, self.target_attrs(r.pid));
            self.spans_submitted += 2;
            if self.opts.tracing_level >= 1 && r.engine.is_some() {
                self.spans_submitted += 3;
            }
        }
    }

    /// A `device` span for one engine step: from the step's first accelerator-runtime call to
    /// its last, with what the step asked of the device as attributes (tracing level 1+).
    pub fn device_step(
        &mut self,
        step: &crate::engine::EngineStep,
        d: &crate::device::summary::DeviceSummary,
        clock: &Clock,
    ) {
        let Some(tracer) = &self.tracer else { return };
        if self.opts.tracing_level < 1 || d.is_empty() {
            return;
        }
        let i = |v: u64| Value::I64(v.min(i64::MAX as u64) as i64);
        let f = |ns: u64| Value::F64(ns as f64 / 1e9);
        let mut attrs = vec![
            KeyValue::new("process.pid", i64::from(step.pid)),
            KeyValue::new("inferscope.engine.index", i64::from(step.engine.unwrap_or(0))),
            KeyValue::new("inferscope.step.batch_size", step.batch_size() as i64),
            KeyValue::new("inferscope.step.tokens", i(step.tokens)),
            KeyValue::new("inferscope.step.phase", step.phase()),
            KeyValue::new("inferscope.device.launches", i(d.launch.launches)),
            KeyValue::new("inferscope.device.graph_launches", i(d.launch.graph_launches)),
            KeyValue::new("inferscope.device.launch_time", f(d.launch.launch_ns)),
            KeyValue::new("inferscope.device.launch_gap_time", f(d.launch.gap_ns)),
            KeyValue::new("inferscope.device.copy_bytes", i(d.copy_bytes())),
            KeyValue::new("inferscope.device.sync_wait_time", f(d.sync_ns)),
            KeyValue::new("inferscope.device.host_observed_time", f(d.host_observed_ns().unwrap_or(0))),
            KeyValue::new("inferscope.device.collectives", i(d.collectives)),
            KeyValue::new("inferscope.device.collective_bytes", i(d.collective_bytes)),
            KeyValue::new("inferscope.device.errors", i(d.errors)),
        ];
        attrs.extend_from_slice(self.target_attrs(step.pid));
        let mut span = tracer
            .span_builder("device")
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.system_time(d.first_ns))
            .with_attributes(attrs)
            .start(tracer);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, clock.system_time(d.last_ns.max(d.first_ns)));
        self.spans_submitted += 1;
    }

    /// One span per call of a timed Python function (tracing level 1 and up), named after the
    /// function, on the thread that ran it.
    pub fn python_call(
        &mut self,
        r: &crate::python::timers::CallRecord,
        spec: &crate::python::timers::TimerSpec,
        location: Option<(&str, &str, u32)>,
        clock: &Clock,
        step: Option<(u64, usize)>,
    ) {
        let Some(tracer) = &self.tracer else { return };
        let Some(end) = r.end_ns else { return };
        if self.opts.tracing_level < 1 {
            return;
        }
        let mut attrs = vec![
            KeyValue::new("process.pid", i64::from(r.pid)),
            KeyValue::new("thread.id", i64::from(r.tid)),
            KeyValue::new("code.function.name", spec.symbol.clone()),
            KeyValue::new("inferscope.python.mode", r.mode.label()),
            KeyValue::new("inferscope.python.depth", i64::from(r.depth)),
        ];
        attrs.extend_from_slice(self.target_attrs(r.pid));
        if let Some((_, file, line)) = location {
            attrs.push(KeyValue::new("code.file.path", file.to_string()));
            attrs.push(KeyValue::new("code.line.number", i64::from(line)));
        }
        // The engine step it belongs to: when the engine stamped its outputs, and its batch.
        if let Some((ts, batch)) = step {
            attrs.push(KeyValue::new("inferscope.engine.step_time_unix_nano", ts.min(i64::MAX as u64) as i64));
            attrs.push(KeyValue::new("inferscope.step.batch_size", batch as i64));
        }
        let mut span = tracer
            .span_builder(format!("python {}", spec.function()))
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.system_time(r.start_ns))
            .with_attributes(attrs)
            .start(tracer);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, clock.system_time(end));
        self.spans_submitted += 1;
    }

    /// Flushes and stops the exporters (bounded by their timeouts).
    pub fn shutdown(&mut self) {
        if let Some(p) = self.tracer_provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
        if let Some(p) = self.meter_provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn instruments(m: &Meter) -> Instruments {
    let secs = |name: &'static str, desc: &'static str, b: &[f64]| {
        m.f64_histogram(name).with_unit("s").with_description(desc).with_boundaries(b.to_vec()).build()
    };
    Instruments {
        duration: secs(
            "gen_ai.server.request.duration",
            "Time from the first request byte to the last response byte.",
            &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
        ),
        ttft: secs(
            "gen_ai.server.time_to_first_token",
            "Time from the first request byte to the first streamed chunk carrying output.",
            &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
        ),
        tpot: secs(
            "gen_ai.server.time_per_output_token",
            "Time per output token after the first.",
            &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
        ),
        itl: secs(
            "gen_ai.server.inter_token_latency",
            "Time between consecutive streamed output chunks of one choice.",
            &[0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
        ),
        tokens: m
            .u64_histogram("gen_ai.server.token.usage")
            .with_unit("{token}")
            .with_description("Tokens per request by type (input, output).")
            .with_boundaries(vec![
                1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
                16777216.0, 67108864.0,
            ])
            .build(),
        requests: m
            .u64_counter("inferscope.requests")
            .with_unit("{request}")
            .with_description("Finished HTTP requests.")
            .build(),
    }
}

fn record_metrics(i: &Instruments, r: &RequestRecord, l: &Labels, target: &[KeyValue]) {
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", l.operation),
        KeyValue::new("gen_ai.request.model", l.model.clone()),
        KeyValue::new("gen_ai.provider.name", l.provider),
    ];
    if !l.server_port.is_empty() {
        attrs.push(KeyValue::new("server.port", l.server_port.parse::<i64>().unwrap_or(0)));
    }
    attrs.extend_from_slice(target);
    let mut req_attrs = attrs.clone();
    req_attrs.push(KeyValue::new("http.route", l.route));
    req_attrs.push(KeyValue::new("http.response.status_code", l.status.clone()));
    req_attrs.push(KeyValue::new("gen_ai.response.finish_reason", l.finish_reason.clone()));
    i.requests.add(1, &req_attrs);
    if !r.operation.is_llm() {
        return;
    }
    let mut dur_attrs = attrs.clone();
    if !l.error_type.is_empty() {
        dur_attrs.push(KeyValue::new("error.type", l.error_type.clone()));
    }
    i.duration.record(r.e2e_s(), &dur_attrs);
    if let Some(t) = r.ttft_s() {
        i.ttft.record(t, &attrs);
    }
    if let Some(t) = r.tpot_s() {
        i.tpot.record(t, &attrs);
    }
    for &g in &r.itl_ns {
        i.itl.record(g as f64 / 1e9, &attrs);
    }
    let with_type = |t: &'static str| {
        let mut a = attrs.clone();
        a.push(KeyValue::new("gen_ai.token.type", t));
        a
    };
    if let Some(p) = r.prompt_tokens {
        i.tokens.record(p, &with_type("input"));
    }
    if let Some(c) = r.completion_tokens.filter(|_| r.operation.generates()) {
        i.tokens.record(c, &with_type("output"));
    }
}

/// Parses a W3C `traceparent` header (`00-<trace>-<span>-<flags>`).
pub fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let mut it = v.trim().split('-');
    let (version, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default()))
}

fn emit_spans(
    tracer: &SdkTracer,
    opts: &OtlpOptions,
    r: &RequestRecord,
    l: &Labels,
    clock: &Clock,
    target: &[KeyValue],
) {
    let parent = match r.traceparent.as_deref().and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    let failed = r.status.is_some_and(|s| s >= 500) || (r.error_type.is_some() && !r.aborted);
    let mut http_attrs = vec![
        KeyValue::new("http.request.method", r.method.clone()),
        KeyValue::new("url.path", r.path.clone()),
        KeyValue::new("url.scheme", if r.tls { "https" } else { "http" }),
        KeyValue::new("http.route", l.route),
        KeyValue::new("network.protocol.version", "1.1"),
        KeyValue::new("process.pid", i64::from(r.pid)),
    ];
    http_attrs.extend_from_slice(target);
    if let Some(s) = r.status {
        http_attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    if let Some(p) = r.server_port {
        http_attrs.push(KeyValue::new("server.port", i64::from(p)));
    }
    if let Some(peer) = r.peer {
        http_attrs.push(KeyValue::new("client.address", peer.ip().to_string()));
        http_attrs.push(KeyValue::new("client.port", i64::from(peer.port())));
    }
    if let Some(ua) = &r.user_agent {
        http_attrs.push(KeyValue::new("user_agent.original", ua.clone()));
    }
    if !l.error_type.is_empty() {
        http_attrs.push(KeyValue::new("error.type", l.error_type.clone()));
    }
    let name = if l.route == "other" { r.method.clone() } else { format!("{} {}", r.method, l.route) };
    let http_span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(clock.system_time(r.start_ns))
        .with_attributes(http_attrs)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(http_span);

    if r.operation.is_llm() {
        let mut a = vec![
            KeyValue::new("gen_ai.operation.name", l.operation),
            KeyValue::new("gen_ai.provider.name", l.provider),
            KeyValue::new("gen_ai.request.stream", r.stream),
            KeyValue::new("gen_ai.latency.e2e", r.e2e_s()),
            KeyValue::new("inferscope.output_events", r.output_events as i64),
            KeyValue::new("inferscope.aborted", r.aborted),
            KeyValue::new("inferscope.capture_gaps", r.capture_gaps),
            KeyValue::new("inferscope.head_truncated", r.head_truncated),
        ];
        let mut opt = |k: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                a.push(KeyValue::new(k, v));
            }
        };
        opt("gen_ai.request.model", r.model.clone().map(Value::from));
        opt("gen_ai.response.model", r.response_model.clone().map(Value::from));
        opt("gen_ai.response.id", r.request_id.clone().map(Value::from));
        opt("gen_ai.request.id", r.request_id.clone().map(Value::from));
        opt("gen_ai.usage.input_tokens", r.prompt_tokens.map(|v| Value::I64(v as i64)));
        opt("gen_ai.usage.output_tokens", r.completion_tokens.map(|v| Value::I64(v as i64)));
        opt("gen_ai.usage.cache_read.input_tokens", r.cached_tokens.map(|v| Value::I64(v as i64)));
        opt("inferscope.tokens_from", r.tokens_from.map(|t| Value::from(t.as_str())));
        opt("gen_ai.request.max_tokens", r.max_tokens.map(|v| Value::I64(v as i64)));
        opt("gen_ai.request.temperature", r.temperature.map(Value::F64));
        opt("gen_ai.request.top_p", r.top_p.map(Value::F64));
        opt("gen_ai.request.choice.count", (r.n != 1).then_some(Value::I64(i64::from(r.n))));
        opt("gen_ai.latency.time_to_first_token", r.ttft_s().map(Value::F64));
        opt("gen_ai.latency.time_per_output_token", r.tpot_s().map(Value::F64));
        opt("error.type", r.error_type.clone().map(Value::from));
        // Engine layer: phases from the engine's own timestamps.
        let e = r.engine.as_ref();
        opt("gen_ai.latency.time_in_queue", e.and_then(|e| e.queue_s()).map(Value::F64));
        opt("gen_ai.latency.time_in_scheduler", e.and_then(|e| e.inference_s()).map(Value::F64));
        opt("gen_ai.latency.time_in_model_prefill", e.and_then(|e| e.prefill_s()).map(Value::F64));
        opt("gen_ai.latency.time_in_model_decode", e.and_then(|e| e.decode_s()).map(Value::F64));
        opt("inferscope.engine.index", e.map(|e| Value::I64(i64::from(e.engine.unwrap_or(0)))));
        opt("inferscope.engine.preemptions", e.map(|e| Value::I64(i64::from(e.preemptions))));
        opt("inferscope.engine.request_id", e.and_then(|e| e.request_ids.first()).map(|id| Value::from(id.clone())));
        opt("gen_ai.prompt", r.prompt.clone().map(Value::from));
        opt("gen_ai.completion", r.completion.clone().map(Value::from));
        if !r.finish_reasons.is_empty() {
            let arr: Vec<StringValue> = r.finish_reasons.iter().map(|f| StringValue::from(f.clone())).collect();
            a.push(KeyValue::new("gen_ai.response.finish_reasons", Value::Array(Array::String(arr))));
        }
        a.extend_from_slice(target);
        let mut b = tracer
            .span_builder("llm_request")
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.system_time(r.request_end_ns.unwrap_or(r.start_ns).min(r.end_ns)))
            .with_attributes(a);
        if opts.tracing_level >= 2 {
            let events: Vec<Event> = r
                .chunk_times
                .iter()
                .take(opts.max_span_events as usize)
                .enumerate()
                .map(|(k, (ts, choice))| {
                    Event::new(
                        "gen_ai.output.chunk",
                        clock.system_time(*ts),
                        vec![
                            KeyValue::new("gen_ai.choice.index", i64::from(*choice)),
                            KeyValue::new("inferscope.chunk.index", k as i64),
                        ],
                        0,
                    )
                })
                .collect();
            b = b.with_events(events);
        }
        let llm = b.start_with_context(tracer, &cx);
        let llm_cx = cx.with_span(llm);
        // Tracing level 1: the engine's stages as child spans of `llm_request`.
        if opts.tracing_level >= 1
            && let Some(e) = &r.engine
        {
            for (name, from, to) in [
                ("wait", e.queued_ns, e.scheduled_ns),
                ("prefill", e.scheduled_ns, e.first_token_ns),
                ("decode", e.first_token_ns, e.last_token_ns),
            ] {
                let (Some(from), Some(to)) = (from, to) else { continue };
                if to < from {
                    continue;
                }
                let mut s = tracer
                    .span_builder(name)
                    .with_kind(SpanKind::Internal)
                    .with_start_time(clock.system_time(from))
                    .with_attributes(
                        [
                            KeyValue::new("gen_ai.operation.name", l.operation),
                            KeyValue::new("inferscope.engine.index", i64::from(e.engine.unwrap_or(0))),
                        ]
                        .into_iter()
                        .chain(target.iter().cloned()),
                    )
                    .start_with_context(tracer, &llm_cx);
                opentelemetry::trace::Span::end_with_timestamp(&mut s, clock.system_time(to));
            }
        }
        let llm = llm_cx.span();
        if failed {
            llm.set_status(Status::error(r.error_type.clone().unwrap_or_default()));
        }
        llm.end_with_timestamp(clock.system_time(r.end_ns));
    }
    let span = cx.span();
    if failed {
        span.set_status(Status::error(r.error_type.clone().unwrap_or_default()));
    }
    span.end_with_timestamp(clock.system_time(r.end_ns));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(sc.is_sampled());
        assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn http_urls() {
        assert_eq!(http_url("http://c:4318", "traces"), "http://c:4318/v1/traces");
        assert_eq!(http_url("http://c:4318/", "metrics"), "http://c:4318/v1/metrics");
        assert_eq!(http_url("http://c:4318/custom/v1/traces", "traces"), "http://c:4318/custom/v1/traces");
    }
}
