//! Prometheus families of the engine layer: request phases, scheduler gauges and engine steps,
//! labelled by model and engine index; with `--vllm-metrics`, also under vLLM's own names and
//! buckets (`vllm:request_queue_time_seconds`, ...), so its dashboards work unchanged.

use anyhow::Result;
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, Registry};

use super::common::{counter, gauge_vec, hist};
use crate::engine::{EngineEvent, EngineGauges, EngineStats, Phases as _};

/// Phase durations: from 1 ms (a CPU-only test engine) to two hours (vLLM's longest bucket).
const PHASE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 7200.0,
];
/// A step's device time: 100 us (a tiny model's decode) to 5 s (a long prefill).
const STEP_DEVICE_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
const STEP_TOKEN_BUCKETS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];
// vLLM's REQUEST_LATENCY_BUCKETS and ITERATION_TOKENS_BUCKETS.
const VLLM_LATENCY: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];
const VLLM_ITERATION_TOKENS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

const LABELS: &[&str] = &["gen_ai_request_model", "engine"];

struct Phases {
    queue: HistogramVec,
    prefill: HistogramVec,
    decode: HistogramVec,
    inference: HistogramVec,
}

struct Vllm {
    phases: Phases,
    running: GaugeVec,
    waiting: GaugeVec,
    kv: GaugeVec,
    preemptions: IntCounterVec,
    iteration_tokens: HistogramVec,
}

pub struct EngineMetrics {
    phases: Phases,
    engine_ttft: HistogramVec,
    finished: IntCounterVec,
    preemptions: IntCounterVec,
    running: GaugeVec,
    waiting: GaugeVec,
    kv: GaugeVec,
    steps: IntCounterVec,
    batch: HistogramVec,
    step_tokens: HistogramVec,
    step_device: HistogramVec,
    messages: IntCounterVec,
    lost: IntCounterVec,
    vllm: Option<Vllm>,
    prev: EngineStats,
}

impl EngineMetrics {
    pub fn new(reg: &Registry, vllm_names: bool) -> Result<Self> {
        let vllm = if vllm_names {
            let l = &["model_name", "engine"];
            Some(Vllm {
                phases: Phases {
                    queue: hist(
                        reg,
                        "vllm:request_queue_time_seconds",
                        "Histogram of time spent in WAITING phase for request (inferscope, from engine IPC).",
                        VLLM_LATENCY,
                        l,
                    )?,
                    prefill: hist(
                        reg,
                        "vllm:request_prefill_time_seconds",
                        "Histogram of time spent in PREFILL phase for request (inferscope, from engine IPC).",
                        VLLM_LATENCY,
                        l,
                    )?,
                    decode: hist(
                        reg,
                        "vllm:request_decode_time_seconds",
                        "Histogram of time spent in DECODE phase for request (inferscope, from engine IPC).",
                        VLLM_LATENCY,
                        l,
                    )?,
                    inference: hist(
                        reg,
                        "vllm:request_inference_time_seconds",
                        "Histogram of time spent in RUNNING phase for request (inferscope, from engine IPC).",
                        VLLM_LATENCY,
                        l,
                    )?,
                },
                running: gauge_vec(
                    reg,
                    "vllm:num_requests_running",
                    "Number of requests in model execution batches (inferscope, from engine IPC).",
                    l,
                )?,
                waiting: gauge_vec(
                    reg,
                    "vllm:num_requests_waiting",
                    "Number of requests waiting to be processed (inferscope, from engine IPC).",
                    l,
                )?,
                kv: gauge_vec(
                    reg,
                    "vllm:kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage (inferscope, from engine IPC).",
                    l,
                )?,
                preemptions: counter(
                    reg,
                    "vllm:num_preemptions_total",
                    "Cumulative number of preemption from the engine (inferscope, from engine IPC).",
                    l,
                )?,
                iteration_tokens: hist(
                    reg,
                    "vllm:iteration_tokens_total",
                    "Histogram of number of tokens per engine_step (inferscope, from engine IPC).",
                    VLLM_ITERATION_TOKENS,
                    l,
                )?,
            })
        } else {
            None
        };
        Ok(Self {
            phases: Phases {
                queue: hist(
                    reg,
                    "inferscope_engine_request_queue_time_seconds",
                    "Time a request waited in the engine's queue: first scheduling minus queueing (engine timestamps).",
                    PHASE_BUCKETS,
                    LABELS,
                )?,
                prefill: hist(
                    reg,
                    "inferscope_engine_request_prefill_time_seconds",
                    "Time from a request's first scheduling to its first token (engine timestamps; preemptions included).",
                    PHASE_BUCKETS,
                    LABELS,
                )?,
                decode: hist(
                    reg,
                    "inferscope_engine_request_decode_time_seconds",
                    "Time from a request's first token to its last (engine timestamps).",
                    PHASE_BUCKETS,
                    LABELS,
                )?,
                inference: hist(
                    reg,
                    "inferscope_engine_request_inference_time_seconds",
                    "Time from a request's first scheduling to its last token (engine timestamps).",
                    PHASE_BUCKETS,
                    LABELS,
                )?,
            },
            engine_ttft: hist(
                reg,
                "inferscope_engine_time_to_first_token_seconds",
                "Time from a request entering the engine's queue to its first token (excludes HTTP, tokenisation and detokenisation).",
                PHASE_BUCKETS,
                LABELS,
            )?,
            finished: counter(
                reg,
                "inferscope_engine_requests_finished_total",
                "Requests that left the engine, by finish reason (abort: the API server gave up on them).",
                &["gen_ai_request_model", "engine", "finish_reason"],
            )?,
            preemptions: counter(
                reg,
                "inferscope_engine_preemptions_total",
                "Preemptions of running requests (the engine ran out of KV-cache blocks).",
                LABELS,
            )?,
            running: gauge_vec(
                reg,
                "inferscope_engine_requests_running",
                "Requests in the engine's running batch, as the engine last reported.",
                LABELS,
            )?,
            waiting: gauge_vec(
                reg,
                "inferscope_engine_requests_waiting",
                "Requests waiting in the engine's queue, as the engine last reported.",
                LABELS,
            )?,
            kv: gauge_vec(
                reg,
                "inferscope_engine_kv_cache_usage_ratio",
                "Fraction of KV-cache blocks in use (0 to 1), as the engine last reported.",
                LABELS,
            )?,
            steps: counter(
                reg,
                "inferscope_engine_steps_total",
                "Engine steps that produced output for a traced API server (rate() gives steps per second).",
                LABELS,
            )?,
            batch: hist(
                reg,
                "inferscope_engine_step_batch_size",
                "Requests advanced by one engine step.",
                BATCH_BUCKETS,
                LABELS,
            )?,
            step_tokens: hist(
                reg,
                "inferscope_engine_step_tokens",
                "Tokens generated by one engine step (all requests).",
                STEP_TOKEN_BUCKETS,
                LABELS,
            )?,
            step_device: hist(
                reg,
                "inferscope_engine_step_device_seconds",
                "Device time of one engine step as the host observes it (device layer): from the step's first kernel or graph launch to the end of the last synchronisation after it. Not measured on the device.",
                STEP_DEVICE_BUCKETS,
                LABELS,
            )?,
            messages: counter(
                reg,
                "inferscope_engine_messages_total",
                "Engine IPC messages seen, by result (decoded, or why not).",
                &["result"],
            )?,
            lost: counter(
                reg,
                "inferscope_engine_lost_requests_total",
                "Engine requests forgotten without an end (idle too long, capacity, process gone).",
                &[],
            )?,
            vllm,
            prev: EngineStats::default(),
        })
    }

    fn gauges(&self, model: &str, engine: &str, g: &EngineGauges) {
        let l = [model, engine];
        if let Some(v) = g.running {
            self.running.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = g.waiting {
            self.waiting.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = g.kv_cache_usage {
            self.kv.with_label_values(&l).set(v);
        }
        if let Some(x) = &self.vllm {
            if let Some(v) = g.running {
                x.running.with_label_values(&l).set(v as f64);
            }
            if let Some(v) = g.waiting {
                x.waiting.with_label_values(&l).set(v as f64);
            }
            if let Some(v) = g.kv_cache_usage {
                x.kv.with_label_values(&l).set(v);
            }
        }
    }

    /// A step's host-observed device time (steps that launched and waited).
    pub fn step_device(&self, s: &crate::engine::EngineStep, d: &crate::device::summary::DeviceSummary, model: &str) {
        if let Some(ns) = d.host_observed_ns() {
            let e = s.engine.map_or_else(|| "0".to_string(), |e| e.to_string());
            self.step_device.with_label_values(&[model, e.as_str()]).observe(ns as f64 / 1e9);
        }
    }

    pub fn observe(&self, ev: &EngineEvent, model: &str) {
        let idx = |e: Option<u32>| e.map_or_else(|| "0".to_string(), |e| e.to_string());
        match ev {
            EngineEvent::Gauges { engine, gauges, .. } => self.gauges(model, &idx(*engine), gauges),
            EngineEvent::Step(s) => {
                let e = idx(s.engine);
                let l = [model, e.as_str()];
                self.steps.with_label_values(&l).inc();
                self.batch.with_label_values(&l).observe(s.batch_size() as f64);
                self.step_tokens.with_label_values(&l).observe(s.tokens as f64);
                self.gauges(model, &e, &s.gauges);
                if let Some(x) = &self.vllm {
                    x.iteration_tokens.with_label_values(&l).observe((s.tokens + s.prompt_tokens) as f64);
                }
            }
            EngineEvent::Finished(r) => {
                let e = idx(r.engine);
                let l = [model, e.as_str()];
                let reason = r.finish_reason.as_deref().unwrap_or("unknown");
                self.finished.with_label_values(&[model, &e, reason]).inc();
                if r.preemptions > 0 {
                    self.preemptions.with_label_values(&l).inc_by(r.preemptions as u64);
                    if let Some(x) = &self.vllm {
                        x.preemptions.with_label_values(&l).inc_by(r.preemptions as u64);
                    }
                }
                // Like vLLM: phases of requests that finished in the engine, not of aborts, and
                // only what was seen from its start.
                if r.aborted || !r.seen_from_start {
                    return;
                }
                let mut sets = vec![&self.phases];
                if let Some(x) = &self.vllm {
                    sets.push(&x.phases);
                }
                for p in sets {
                    for (h, v) in [
                        (&p.queue, r.queue_s()),
                        (&p.prefill, r.prefill_s()),
                        (&p.decode, r.decode_s()),
                        (&p.inference, r.inference_s()),
                    ] {
                        if let Some(v) = v {
                            h.with_label_values(&l).observe(v);
                        }
                    }
                }
                if let Some(t) = r.engine_ttft_s() {
                    self.engine_ttft.with_label_values(&l).observe(t);
                }
            }
        }
    }

    /// Turns the engine layer's monotonic counters into counter increments.
    pub fn health(&mut self, s: &EngineStats) {
        let decoded = s.messages.saturating_sub(s.undecodable.iter().map(|(_, n)| n).sum::<u64>());
        let prev_decoded = self.prev.messages.saturating_sub(self.prev.undecodable.iter().map(|(_, n)| n).sum::<u64>());
        self.messages.with_label_values(&["decoded"]).inc_by(decoded.saturating_sub(prev_decoded));
        for (cause, n) in &s.undecodable {
            let p = self.prev.undecodable.iter().find(|(c, _)| c == cause).map_or(0, |(_, n)| *n);
            self.messages.with_label_values(&[cause]).inc_by(n.saturating_sub(p));
        }
        self.lost.with_label_values(&[] as &[&str]).inc_by(s.lost_requests.saturating_sub(self.prev.lost_requests));
        self.prev = s.clone();
    }
}
