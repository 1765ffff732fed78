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
use super::{Health, Labels};
use crate::request::RequestRecord;

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
}

impl PromMetrics {
    /// `identity`: whether the container and pod labels go (on the request families, on every
    /// series with a `pid` label); `names`: which ([`identity::label_names`]).
    pub fn new(vllm_names: bool, identity: (bool, bool), names: Vec<&'static str>) -> Result<Self> {
        let reg = Registry::new();
        #[cfg(target_os = "linux")]
        reg.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let build = IntGaugeVec::new(Opts::new("inferscope_build_info", "inferscope version (value 1)"), &["version"])?;
        reg.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Self {
            request: RequestMetrics::new(&reg, vllm_names, identity.0.then_some(names.as_slice()))?,
            health: HealthMetrics::new(&reg)?,
            engine: EngineMetrics::new(&reg, vllm_names)?,
            device: None,
            python: None,
            engine_state: None,
            sites: None,
            identity: IdentityMetrics::new(&reg, identity.1, names)?,
            resources: None,
            registry: reg,
        })
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
        let p = PromMetrics::new(true, (false, true), identity::label_names(None, false)).unwrap();
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
}
