//! Prometheus families of finished HTTP requests: the OpenTelemetry GenAI server metrics under
//! their Prometheus names, a request counter by route, status and finish reason, and (with
//! `--vllm-metrics`) the same observations under vLLM's own names and buckets.

use anyhow::Result;
use prometheus::{HistogramVec, IntCounterVec, Registry};

use super::common::{counter, hist};
use crate::{output::Labels, request::RequestRecord};

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

/// A gap between two output chunks longer than this is a slow decode step (ms_service_metric's
/// threshold).
const SLOW_GAP_S: f64 = 1.0;
/// Time to first token past each of these is a slow prefill (ms_service_metric's thresholds).
const SLOW_TTFT_S: &[(f64, &str)] = &[(5.0, "5"), (10.0, "10"), (20.0, "20")];
/// Paths load balancers and kubelets probe.
const HEALTH_PATHS: &[&str] = &["/health", "/healthz", "/ping", "/ready", "/readyz", "/live", "/livez", "/v1/health"];

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

/// The families of finished HTTP requests.
pub(super) struct RequestMetrics {
    duration: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    itl: HistogramVec,
    tokens: HistogramVec,
    requests: IntCounterVec,
    slow_gaps: IntCounterVec,
    slow_ttft: IntCounterVec,
    health_failures: IntCounterVec,
    vllm: Option<VllmCompat>,
    /// Whether every family ends with the identity labels.
    identity: bool,
}

impl RequestMetrics {
    /// `identity`: every family also has these container and pod labels
    /// ([`super::identity::label_names`]).
    pub(super) fn new(reg: &Registry, vllm_names: bool, identity: Option<&[&'static str]>) -> Result<Self> {
        let ext = |base: &[&'static str]| -> Vec<&'static str> {
            base.iter().copied().chain(identity.unwrap_or_default().iter().copied()).collect()
        };
        let genai = &ext(GENAI_LABELS);
        let dur_labels = ext(&[GENAI_LABELS, &["error_type"]].concat());
        let tok_labels = ext(&[GENAI_LABELS, &["gen_ai_token_type"]].concat());
        let vllm = if vllm_names {
            let l = &ext(&["model_name"]);
            Some(VllmCompat {
                ttft: hist(
                    reg,
                    "vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds (inferscope, from the wire).",
                    VLLM_TTFT,
                    l,
                )?,
                itl: hist(
                    reg,
                    "vllm:inter_token_latency_seconds",
                    "Histogram of inter-token latency in seconds (inferscope, from the wire).",
                    VLLM_ITL,
                    l,
                )?,
                tpot: hist(
                    reg,
                    "vllm:request_time_per_output_token_seconds",
                    "Histogram of time per output token in seconds (inferscope, from the wire).",
                    VLLM_ITL,
                    l,
                )?,
                e2e: hist(
                    reg,
                    "vllm:e2e_request_latency_seconds",
                    "Histogram of end to end request latency in seconds (inferscope, from the wire).",
                    VLLM_E2E,
                    l,
                )?,
                prompt: hist(
                    reg,
                    "vllm:request_prompt_tokens",
                    "Number of prefill tokens processed (inferscope, from usage).",
                    VLLM_TOKENS,
                    l,
                )?,
                generation: hist(
                    reg,
                    "vllm:request_generation_tokens",
                    "Number of generation tokens processed (inferscope, from usage).",
                    VLLM_TOKENS,
                    l,
                )?,
                prompt_total: counter(
                    reg,
                    "vllm:prompt_tokens_total",
                    "Number of prefill tokens processed (inferscope).",
                    l,
                )?,
                generation_total: counter(
                    reg,
                    "vllm:generation_tokens_total",
                    "Number of generation tokens processed (inferscope).",
                    l,
                )?,
                success: counter(
                    reg,
                    "vllm:request_success_total",
                    "Count of successfully processed requests (inferscope).",
                    &ext(&["model_name", "finished_reason"]),
                )?,
            })
        } else {
            None
        };
        Ok(Self {
            duration: hist(
                reg,
                "gen_ai_server_request_duration_seconds",
                "Time from the first request byte to the last response byte (OpenTelemetry gen_ai.server.request.duration).",
                DURATION_BUCKETS,
                &dur_labels,
            )?,
            ttft: hist(
                reg,
                "gen_ai_server_time_to_first_token_seconds",
                "Time from the first request byte to the first streamed chunk carrying output (gen_ai.server.time_to_first_token).",
                TTFT_BUCKETS,
                genai,
            )?,
            tpot: hist(
                reg,
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token after the first, per request (gen_ai.server.time_per_output_token).",
                TPOT_BUCKETS,
                genai,
            )?,
            itl: hist(
                reg,
                "gen_ai_server_inter_token_latency_seconds",
                "Time between consecutive streamed output chunks of one choice (inferscope).",
                ITL_BUCKETS,
                genai,
            )?,
            tokens: hist(
                reg,
                "gen_ai_server_token_usage",
                "Tokens per request by type: input (prompt) or output (completion) (gen_ai.server.token.usage).",
                TOKEN_BUCKETS,
                &tok_labels,
            )?,
            requests: counter(
                reg,
                "inferscope_requests_total",
                "Finished HTTP requests by operation, model, route, status and finish reason.",
                &ext(&[
                    "gen_ai_operation_name",
                    "gen_ai_request_model",
                    "http_route",
                    "http_response_status_code",
                    "gen_ai_response_finish_reason",
                    "server_port",
                ]),
            )?,
            slow_gaps: counter(
                reg,
                "inferscope_slow_token_gaps_total",
                "Gaps of over 1 s between consecutive streamed output chunks of one choice (stalled decoding).",
                genai,
            )?,
            slow_ttft: counter(
                reg,
                "inferscope_slow_first_tokens_total",
                "Requests whose first streamed output came more than over_seconds (5, 10, 20) after their first byte; a request counts under every threshold it passed.",
                &ext(&[GENAI_LABELS, &["over_seconds"]].concat()),
            )?,
            health_failures: counter(
                reg,
                "inferscope_health_check_failures_total",
                "Requests to a health path (/health, /healthz, /ping, /ready[z], /live[z]) answered with a status of 400 or more, or not answered.",
                &ext(&["http_route", "server_port"]),
            )?,
            vllm,
            identity: identity.is_some(),
        })
    }

    /// `id`: the process's identity label values (used when the families have them).
    pub(super) fn record(&self, r: &RequestRecord, l: &Labels, id: &[&str]) {
        let id: &[&str] = if self.identity { id } else { &[] };
        fn w<'a>(base: &[&'a str], id: &[&'a str]) -> Vec<&'a str> {
            base.iter().chain(id).copied().collect()
        }
        self.requests
            .with_label_values(&w(&[l.operation, &l.model, l.route, &l.status, &l.finish_reason, &l.server_port], id))
            .inc();
        if HEALTH_PATHS.contains(&r.path.as_str()) && (r.status.is_none_or(|s| s >= 400) || r.aborted) {
            self.health_failures.with_label_values(&w(&[r.path.as_str(), &l.server_port], id)).inc();
        }
        if !r.operation.is_llm() {
            return;
        }
        let g = w(&[l.operation, l.model.as_str(), l.server_port.as_str()], id);
        self.duration
            .with_label_values(&w(&[l.operation, &l.model, &l.server_port, &l.error_type], id))
            .observe(r.e2e_s());
        if let Some(t) = r.ttft_s() {
            self.ttft.with_label_values(&g).observe(t);
        }
        if let Some(t) = r.tpot_s() {
            self.tpot.with_label_values(&g).observe(t);
        }
        let itl = self.itl.with_label_values(&g);
        let mut slow = 0;
        for &gap in &r.itl_ns {
            let s = gap as f64 / 1e9;
            itl.observe(s);
            slow += u64::from(s > SLOW_GAP_S);
        }
        if slow > 0 {
            self.slow_gaps.with_label_values(&g).inc_by(slow);
        }
        if let Some(t) = r.ttft_s() {
            for (_, label) in SLOW_TTFT_S.iter().filter(|(over, _)| t > *over) {
                self.slow_ttft.with_label_values(&w(&[l.operation, &l.model, &l.server_port, label], id)).inc();
            }
        }
        if let Some(p) = r.prompt_tokens {
            self.tokens.with_label_values(&w(&[l.operation, &l.model, &l.server_port, "input"], id)).observe(p as f64);
        }
        if let Some(c) = r.completion_tokens.filter(|_| r.operation.generates()) {
            self.tokens.with_label_values(&w(&[l.operation, &l.model, &l.server_port, "output"], id)).observe(c as f64);
        }
        if let Some(vc) = &self.vllm {
            let m = w(&[l.model.as_str()], id);
            if let Some(t) = r.ttft_s() {
                vc.ttft.with_label_values(&m).observe(t);
            }
            let itl = vc.itl.with_label_values(&m);
            for &gap in &r.itl_ns {
                itl.observe(gap as f64 / 1e9);
            }
            if let Some(t) = r.tpot_s() {
                vc.tpot.with_label_values(&m).observe(t);
            }
            let ok = r.status.is_some_and(|s| s < 400) && r.error_type.is_none() || r.aborted;
            if ok && r.operation.generates() {
                vc.e2e.with_label_values(&m).observe(r.e2e_s());
                if let Some(p) = r.prompt_tokens {
                    vc.prompt.with_label_values(&m).observe(p as f64);
                    vc.prompt_total.with_label_values(&m).inc_by(p);
                }
                if let Some(c) = r.completion_tokens {
                    vc.generation.with_label_values(&m).observe(c as f64);
                    vc.generation_total.with_label_values(&m).inc_by(c);
                }
                vc.success.with_label_values(&w(&[&l.model, &l.finish_reason], id)).inc();
            }
        }
    }
}
