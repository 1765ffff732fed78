//! Prometheus metrics, served in the text exposition format at `/metrics`: [`PromMetrics`]
//! holds every family in one registry. Dependencies among these files go one way: this file
//! uses the family files, and of the others they use only common.rs:
//! - requests.rs: the OpenTelemetry GenAI server metrics of finished HTTP requests under their
//!   Prometheus names, the request counter, and (opt-in) the names vLLM's dashboards query;
//! - health.rs: inferscope's own health;
//! - identity.rs: where each traced process runs (`inferscope_target_info`, and the pod
//!   labels added at scrape time to every series with a `pid` label);
//! - engine.rs, device.rs, python.rs: the engine, device and Python layers' families;
//! - resources.rs: what the accelerators have (GPU and per-process figures from NVML);
//! - common.rs: registering a family.

mod common;
pub mod device;
pub mod engine;
mod health;
pub mod identity;
pub mod python;
mod requests;
pub mod resources;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

use self::{engine::EngineMetrics, health::HealthMetrics, identity::IdentityMetrics, requests::RequestMetrics};
use crate::{
    output::{Family, Health, Labels},
    request::RequestRecord,
};

pub struct PromMetrics {
    pub registry: Registry,
    /// Finished HTTP requests.
    request: RequestMetrics,
    /// inferscope's own health.
    health: HealthMetrics,
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
    /// Where each traced process runs.
    pub identity: IdentityMetrics,
    /// The accelerators' resources (resources layer on).
    pub resources: Option<resources::ResourceMetrics>,
    /// Also ms_service_metric's `vllm_profiling_*` names.
    profiling_names: bool,
}

impl PromMetrics {
    /// `identity`: whether the container and pod labels go (on the request families, on every
    /// series with a `pid` label); `names`: which ([`identity::label_names`]).
    /// `profiling_names`: also ms_service_metric's `vllm_profiling_*` families.
    pub fn new(
        vllm_names: bool,
        profiling_names: bool,
        identity: (bool, bool),
        names: Vec<&'static str>,
    ) -> Result<Self> {
        let reg = Registry::new();
        #[cfg(target_os = "linux")]
        reg.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let build = IntGaugeVec::new(Opts::new("inferscope_build_info", "inferscope version (value 1)"), &["version"])?;
        reg.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Self {
            request: RequestMetrics::new(&reg, vllm_names, identity.0.then_some(names.as_slice()))?,
            health: HealthMetrics::new(&reg)?,
            engine: EngineMetrics::new(&reg, vllm_names, profiling_names)?,
            device: None,
            python: None,
            engine_state: None,
            sites: None,
            identity: IdentityMetrics::new(&reg, identity.1, names)?,
            resources: None,
            registry: reg,
            profiling_names,
        })
    }

    /// Registers the families a layer declared (once each).
    pub fn declare(&mut self, f: Family) -> Result<()> {
        let reg = &self.registry;
        match f {
            Family::Device { top_kernels } => {
                if self.device.is_none() {
                    self.device = Some(device::DeviceMetrics::new(reg, top_kernels)?);
                }
            }
            Family::PythonCalls => {
                if self.python.is_none() {
                    self.python = Some(python::PythonMetrics::new(reg, self.profiling_names)?);
                }
            }
            Family::LaunchSites => {
                if self.sites.is_none() {
                    self.sites = Some(python::SiteMetrics::new(reg)?);
                }
            }
            Family::EngineState => {
                if self.engine_state.is_none() {
                    self.engine_state = Some(python::EngineStateMetrics::new(reg)?);
                }
            }
            Family::Resources => {
                if self.resources.is_none() {
                    self.resources = Some(resources::ResourceMetrics::new(reg)?);
                }
            }
        }
        Ok(())
    }

    pub fn record(&self, r: &RequestRecord, l: &Labels) {
        self.request.record(r, l, &self.identity.values(r.pid));
    }

    pub fn health(&mut self, h: &Health) {
        self.health.health(h);
    }

    /// The exposition text of every family, with the identity labels of each `pid`.
    pub fn encode(registry: &Registry, by_pid: &identity::ByPid) -> Vec<u8> {
        let mut families = registry.gather();
        identity::apply(&mut families, by_pid);
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        buf
    }
}

/// `POST /control` on the metrics server (`--control-token-file`): the token and the way into
/// the daemon's loop.
#[derive(Clone)]
pub struct HttpControl {
    pub token: Arc<str>,
    pub tx: tokio::sync::mpsc::Sender<crate::control::Call>,
}

/// Longest control request body accepted.
const MAX_CONTROL_BODY: usize = 64 << 10;

async fn serve_one(
    registry: Arc<Registry>,
    by_pid: identity::ByPid,
    control: Option<HttpControl>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/control"
        && let Some(c) = control
    {
        use http_body_util::BodyExt as _;
        let method = req.method().clone();
        let auth = req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
        let body = http_body_util::Limited::new(req.into_body(), MAX_CONTROL_BODY).collect().await;
        let (status, r) = match body {
            Ok(b) => crate::control::answer_http(&c.tx, &c.token, &method, auth.as_deref(), &b.to_bytes()).await,
            Err(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                crate::control::Response {
                    ok: false,
                    message: "request too long".into(),
                    ..crate::control::Response::default()
                },
            ),
        };
        let text = serde_json::to_vec(&r).unwrap_or_default();
        let resp = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)));
        return Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))));
    }
    let resp = match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", prometheus::TEXT_FORMAT)
            .body(Full::new(Bytes::from(PromMetrics::encode(&registry, &by_pid)))),
        "/healthz" => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
        "/" => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"inferscope: metrics at /metrics, liveness at /healthz\n"))),
        _ => Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Binds the metrics endpoint now (so a bad address fails at startup) and serves it forever.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    by_pid: identity::ByPid,
    control: Option<HttpControl>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --prometheus-listen {addr} (in use? another inferscope?)"))?;
    let registry = Arc::new(registry);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (registry, by_pid, control) = (registry.clone(), by_pid.clone(), control.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = service_fn(move |req| serve_one(registry.clone(), by_pid.clone(), control.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::BoundedLabel,
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
            head_truncated: false,
            tls: false,
            error_type: None,
            prompt: None,
            completion: None,
            engine: None,
        }
    }

    #[test]
    fn families_follow_the_record() {
        let p = PromMetrics::new(true, true, (false, true), identity::label_names(None, false)).unwrap();
        let mut models = BoundedLabel::new(8);
        for (op, path) in [(Operation::Chat, "/v1/chat/completions"), (Operation::Embeddings, "/v1/embeddings")] {
            let r = record(op, path);
            p.record(&r, &Labels::of(&r, &mut models, "vllm"));
        }
        let text = String::from_utf8(PromMetrics::encode(&p.registry, &p.identity.by_pid)).unwrap();
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

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn slow_gaps_slow_first_tokens_and_failed_health_checks_are_counted() {
        let p = PromMetrics::new(false, false, (false, true), identity::label_names(None, false)).unwrap();
        let mut models = BoundedLabel::new(8);
        let mut slow = record(Operation::Chat, "/v1/chat/completions");
        slow.first_token_ns = Some(slow.start_ns + 12_000_000_000);
        slow.last_token_ns = Some(slow.start_ns + 16_000_000_000);
        slow.end_ns = slow.start_ns + 16_000_000_000;
        slow.itl_ns = vec![10_000_000, 1_500_000_000, 1_000_000_000, 2_490_000_000];
        let fast = record(Operation::Chat, "/v1/chat/completions");
        let mut sick = record(Operation::Other, "/health");
        sick.status = Some(503);
        let mut unanswered = record(Operation::Other, "/health");
        unanswered.status = None;
        let healthy = record(Operation::Other, "/health");
        let elsewhere = {
            let mut r = record(Operation::Other, "/metrics");
            r.status = Some(500);
            r
        };
        for r in [&slow, &fast, &sick, &unanswered, &healthy, &elsewhere] {
            p.record(r, &Labels::of(r, &mut models, "vllm"));
        }
        let text = String::from_utf8(PromMetrics::encode(&p.registry, &p.identity.by_pid)).unwrap();
        // Two gaps over 1 s (1.5 and 2.49; exactly 1 s is not over).
        assert_eq!(line_value(&text, "inferscope_slow_token_gaps_total{"), Some(2.0), "{text}");
        // 12 s: past 5 and 10, not 20.
        let over = |s: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("inferscope_slow_first_tokens_total{") && l.contains(&format!("over_seconds=\"{s}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        assert_eq!((over("5"), over("10"), over("20")), (Some(1.0), Some(1.0), None), "{text}");
        assert_eq!(
            line_value(&text, "inferscope_health_check_failures_total{http_route=\"/health\""),
            Some(2.0),
            "{text}"
        );
    }

    #[test]
    fn engine_reports_feed_cache_spec_decode_phase_and_profiling_families() {
        use crate::engine::{EngineEvent, EngineGauges, EngineRequest, EngineStep, SpecDecode};
        let p = PromMetrics::new(true, true, (false, true), identity::label_names(None, false)).unwrap();
        let gauges = |q, h| EngineGauges {
            running: Some(3),
            waiting: Some(1),
            prefix_cache_queries: Some(q),
            prefix_cache_hits: Some(h),
            prefix_cache_requests: Some(1),
            spec_decode: Some(SpecDecode { num_spec_tokens: 3, drafts: 2, draft_tokens: 6, accepted_tokens: 4 }),
            ..Default::default()
        };
        // A report with no outputs, a prefill step, a mixed one and a decode one.
        p.engine.observe(&EngineEvent::Gauges { pid: 1, engine: Some(0), ts_ns: None, gauges: gauges(100, 30) }, "m");
        let step = |ids: &[&str], first: u32, q| EngineStep {
            pid: 1,
            engine: Some(0),
            request_ids: ids.iter().map(|s| s.to_string()).collect(),
            tokens: ids.len() as u64,
            prompt_tokens: u64::from(first) * 10,
            first_tokens: first,
            first_itl_ns: (first < ids.len() as u32).then_some(30_000_000),
            gauges: gauges(q, 0),
            ..Default::default()
        };
        for s in [step(&["a", "b"], 2, 20), step(&["a", "b", "c"], 1, 10), step(&["a", "b", "c"], 0, 0)] {
            p.engine.observe(&EngineEvent::Step(s), "m");
        }
        let mut r = EngineRequest::default();
        r.engine = Some(0);
        r.queued_ns = Some(1_000_000_000);
        r.scheduled_ns = Some(1_010_000_000);
        r.first_token_ns = Some(1_050_000_000);
        r.second_token_ns = Some(1_070_000_000);
        r.last_token_ns = Some(1_110_000_000);
        r.output_tokens = 4;
        r.seen_from_start = true;
        r.finish_reason = Some("length".into());
        r.api_ttft_ns = Some(80_000_000);
        p.engine.observe(&EngineEvent::Finished(r), "m");
        let text = String::from_utf8(PromMetrics::encode(&p.registry, &p.identity.by_pid)).unwrap();
        let v = |prefix: &str| line_value(&text, prefix).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        assert_eq!(v("inferscope_engine_prefix_cache_queries_total{"), 130.0);
        assert_eq!(v("inferscope_engine_prefix_cache_hits_total{"), 30.0);
        assert_eq!(v("vllm:prefix_cache_queries_total{"), 130.0);
        assert_eq!(v("inferscope_engine_spec_decode_accepted_tokens_total{"), 16.0);
        assert_eq!(v("vllm:spec_decode_num_draft_tokens_total{"), 24.0);
        for phase in ["prefill", "mixed", "decode"] {
            assert_eq!(
                v(&format!(
                    "inferscope_engine_steps_total{{engine=\"0\",gen_ai_request_model=\"m\",step_phase=\"{phase}\"}}"
                )),
                1.0
            );
        }
        assert_eq!(v("inferscope_engine_scheduler_running_requests_count{"), 4.0);
        assert_eq!(v("inferscope_engine_second_token_latency_seconds_sum{"), 0.02);
        // ms_service_metric's names, one observation per report, step and request.
        assert_eq!(v("vllm_profiling_batch_size_count{dp=\"0\",engine=\"0\",role=\"mixed\"}"), 4.0);
        assert_eq!(v("vllm_profiling_waiting_batch_size_sum{"), 4.0);
        assert_eq!(v("vllm_profiling_total_tokens_sum{"), 8.0 + 30.0);
        assert_eq!(v("vllm_profiling_input_count{"), 3.0, "every step, as vLLM's iteration stats");
        assert_eq!(v("vllm_profiling_engine_core_outputs_len_sum{"), 8.0);
        // One per step with a request past its first token (the mixed and the decode step).
        assert_eq!(v("vllm_profiling_second_token_latency_count{"), 2.0);
        assert!((v("vllm_profiling_fine_grained_tpot_sum{") - 0.02).abs() < 1e-9);
        // vLLM's TTFT (arrival stamp to the API server's receipt), not the engine's part.
        assert!((v("vllm_profiling_fine_grained_ttft_sum{") - 0.08).abs() < 1e-9);
    }
}
