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
const STEP_LABELS: &[&str] = &["gen_ai_request_model", "engine", "step_phase"];
/// Requests in the running batch or the queue at one engine report.
const QUEUE_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// ms_service_metric's SIZE_BUCKETS and default timer buckets (its `vllm_profiling_*` families).
const MS_SIZE_BUCKETS: &[f64] = &[
    0.0, 1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 125.0, 150.0, 175.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0,
    800.0, 900.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 262144.0,
];
const MS_LABELS: &[&str] = &["engine", "dp", "role"];
/// The buckets of `engine_core_outputs_len` in ms_service_metric's default YAML.
const MS_OUTPUTS_LEN_BUCKETS: &[f64] = &[
    0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0,
    5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 262144.0,
];

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
    prefix_queries: IntCounterVec,
    prefix_hits: IntCounterVec,
    spec_drafts: IntCounterVec,
    spec_draft_tokens: IntCounterVec,
    spec_accepted: IntCounterVec,
}

/// The families Huawei's ms_service_metric exports for vLLM (`vllm_profiling_*`, labels
/// `engine`, `dp`, `role`), fed from the engine's IPC instead of hooks in the API server.
/// ms_service_metric histograms sizes with its SIZE_BUCKETS, latencies included.
struct Profiling {
    kv_total: HistogramVec,
    kv_free: HistogramVec,
    kv_allocated: HistogramVec,
    batch_size: HistogramVec,
    waiting_batch_size: HistogramVec,
    num_spec_tokens: HistogramVec,
    total_tokens: HistogramVec,
    input: HistogramVec,
    output: HistogramVec,
    second_token_latency: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    outputs_len: HistogramVec,
}

pub struct EngineMetrics {
    phases: Phases,
    engine_ttft: HistogramVec,
    finished: IntCounterVec,
    preemptions: IntCounterVec,
    running: GaugeVec,
    waiting: GaugeVec,
    kv: GaugeVec,
    kv_blocks: GaugeVec,
    steps: IntCounterVec,
    batch: HistogramVec,
    step_tokens: HistogramVec,
    step_device: HistogramVec,
    messages: IntCounterVec,
    lost: IntCounterVec,
    running_hist: HistogramVec,
    waiting_hist: HistogramVec,
    prefix_queries: IntCounterVec,
    prefix_hits: IntCounterVec,
    prefix_requests: IntCounterVec,
    spec_drafts: IntCounterVec,
    spec_draft_tokens: IntCounterVec,
    spec_accepted: IntCounterVec,
    scheduled_requests: HistogramVec,
    scheduled_tokens: HistogramVec,
    second_token: HistogramVec,
    vllm: Option<Vllm>,
    profiling: Option<Profiling>,
    prev: EngineStats,
}

impl EngineMetrics {
    /// `vllm_names`: also vLLM's own names; `profiling_names`: also ms_service_metric's.
    pub fn new(reg: &Registry, vllm_names: bool, profiling_names: bool) -> Result<Self> {
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
                prefix_queries: counter(
                    reg,
                    "vllm:prefix_cache_queries_total",
                    "Prefix cache queries, in terms of number of queried tokens (inferscope, from engine IPC).",
                    l,
                )?,
                prefix_hits: counter(
                    reg,
                    "vllm:prefix_cache_hits_total",
                    "Prefix cache hits, in terms of number of cached tokens (inferscope, from engine IPC).",
                    l,
                )?,
                spec_drafts: counter(
                    reg,
                    "vllm:spec_decode_num_drafts_total",
                    "Number of spec decoding drafts (inferscope, from engine IPC).",
                    l,
                )?,
                spec_draft_tokens: counter(
                    reg,
                    "vllm:spec_decode_num_draft_tokens_total",
                    "Number of draft tokens (inferscope, from engine IPC).",
                    l,
                )?,
                spec_accepted: counter(
                    reg,
                    "vllm:spec_decode_num_accepted_tokens_total",
                    "Number of accepted tokens (inferscope, from engine IPC).",
                    l,
                )?,
            })
        } else {
            None
        };
        let profiling = if profiling_names {
            let h = |name: &str, help: &str| hist(reg, name, help, MS_SIZE_BUCKETS, MS_LABELS);
            Some(Profiling {
                kv_total: h(
                    "vllm_profiling_total_kvcache_blocks",
                    "KV-cache blocks in all at each scheduler report (ms_service_metric's family; inferscope, from the engine's ready message).",
                )?,
                kv_free: h(
                    "vllm_profiling_free_kvcache_blocks",
                    "Free KV-cache blocks at each scheduler report (ms_service_metric's family; inferscope, from the reported usage and the engine's size).",
                )?,
                kv_allocated: h(
                    "vllm_profiling_allocated_kvcache_blocks",
                    "Allocated KV-cache blocks (total - free - the null block) at each scheduler report (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                batch_size: h(
                    "vllm_profiling_batch_size",
                    "Running requests at each scheduler report (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                waiting_batch_size: h(
                    "vllm_profiling_waiting_batch_size",
                    "Waiting requests at each scheduler report (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                num_spec_tokens: h(
                    "vllm_profiling_num_spec_tokens",
                    "Speculative tokens per draft at each report that has them (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                total_tokens: h(
                    "vllm_profiling_total_tokens",
                    "Prompt plus generated tokens per engine step (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                input: h(
                    "vllm_profiling_input",
                    "Prompt tokens of the requests whose prefill ended in an engine step (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                output: h(
                    "vllm_profiling_output",
                    "Tokens generated per engine step (ms_service_metric's family; inferscope, from engine IPC).",
                )?,
                second_token_latency: h(
                    "vllm_profiling_second_token_latency",
                    "Per engine step, the gap the API server saw before the step's output for the first request in it that already had a token (ms_service_metric's family and definition; inferscope, from engine IPC).",
                )?,
                ttft: h(
                    "vllm_profiling_fine_grained_ttft",
                    "Seconds from the API server's arrival stamp to its receipt of the first token, as vLLM's own TTFT (ms_service_metric's family; inferscope, from engine IPC; the engine's part when the stamp is unknown).",
                )?,
                outputs_len: hist(
                    reg,
                    "vllm_profiling_engine_core_outputs_len",
                    "Request outputs in one engine step's message (ms_service_metric's default expr len(engine_core_outputs); inferscope, from engine IPC).",
                    MS_OUTPUTS_LEN_BUCKETS,
                    MS_LABELS,
                )?,
                tpot: h(
                    "vllm_profiling_fine_grained_tpot",
                    "Mean seconds per output token after the first, per finished request (ms_service_metric's family; inferscope, engine timestamps).",
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
            kv_blocks: gauge_vec(
                reg,
                "inferscope_engine_kv_cache_blocks",
                "KV-cache blocks by state: total (the engine's size, from its ready message when inferscope saw the engine start) and free (from the last reported usage).",
                &["gen_ai_request_model", "engine", "state"],
            )?,
            steps: counter(
                reg,
                "inferscope_engine_steps_total",
                "Engine steps that produced output for a traced API server, by what they ran as their outputs show: prefill (every request got its first token), decode (none did) or mixed (rate() gives steps per second).",
                STEP_LABELS,
            )?,
            batch: hist(
                reg,
                "inferscope_engine_step_batch_size",
                "Requests advanced by one engine step, by step phase.",
                BATCH_BUCKETS,
                STEP_LABELS,
            )?,
            step_tokens: hist(
                reg,
                "inferscope_engine_step_tokens",
                "Tokens generated by one engine step (all requests), by step phase.",
                STEP_TOKEN_BUCKETS,
                STEP_LABELS,
            )?,
            running_hist: hist(
                reg,
                "inferscope_engine_scheduler_running_requests",
                "Requests in the running batch at each scheduler report (a distribution; the gauge inferscope_engine_requests_running holds the last).",
                QUEUE_BUCKETS,
                LABELS,
            )?,
            waiting_hist: hist(
                reg,
                "inferscope_engine_scheduler_waiting_requests",
                "Requests waiting in the queue at each scheduler report (a distribution; the gauge inferscope_engine_requests_waiting holds the last).",
                QUEUE_BUCKETS,
                LABELS,
            )?,
            prefix_queries: counter(
                reg,
                "inferscope_engine_prefix_cache_queries_total",
                "Prompt tokens looked up in the engine's prefix cache.",
                LABELS,
            )?,
            prefix_hits: counter(
                reg,
                "inferscope_engine_prefix_cache_hits_total",
                "Prompt tokens found in the engine's prefix cache (hits / queries is the hit rate).",
                LABELS,
            )?,
            prefix_requests: counter(
                reg,
                "inferscope_engine_prefix_cache_requests_total",
                "Requests that looked up the engine's prefix cache.",
                LABELS,
            )?,
            spec_drafts: counter(
                reg,
                "inferscope_engine_spec_decode_drafts_total",
                "Speculative-decoding drafts proposed.",
                LABELS,
            )?,
            spec_draft_tokens: counter(
                reg,
                "inferscope_engine_spec_decode_draft_tokens_total",
                "Speculative-decoding tokens proposed.",
                LABELS,
            )?,
            spec_accepted: counter(
                reg,
                "inferscope_engine_spec_decode_accepted_tokens_total",
                "Speculative-decoding tokens the target model accepted (accepted / draft tokens is the acceptance rate).",
                LABELS,
            )?,
            scheduled_requests: hist(
                reg,
                "inferscope_engine_iteration_scheduled_requests",
                "Requests the scheduler put in one iteration, prefill or decode (vLLM with iteration details on: --enable-logging-iteration-details).",
                BATCH_BUCKETS,
                STEP_LABELS,
            )?,
            scheduled_tokens: hist(
                reg,
                "inferscope_engine_iteration_scheduled_tokens",
                "Tokens the scheduler put in one iteration, prefill or decode (vLLM with iteration details on).",
                STEP_TOKEN_BUCKETS,
                STEP_LABELS,
            )?,
            second_token: hist(
                reg,
                "inferscope_engine_second_token_latency_seconds",
                "Time from a request's first token to its second (engine timestamps): the first decode step after its prefill.",
                PHASE_BUCKETS,
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
            profiling,
            prev: EngineStats::default(),
        })
    }

    fn gauges(&self, model: &str, engine: &str, g: &EngineGauges) {
        let l = [model, engine];
        // Per-report increments and distributions (each report is seen once, here).
        if let Some(v) = g.running {
            self.running_hist.with_label_values(&l).observe(v as f64);
        }
        if let Some(v) = g.waiting {
            self.waiting_hist.with_label_values(&l).observe(v as f64);
        }
        for (c, v) in [
            (&self.prefix_queries, g.prefix_cache_queries),
            (&self.prefix_hits, g.prefix_cache_hits),
            (&self.prefix_requests, g.prefix_cache_requests),
        ] {
            if let Some(v) = v.filter(|v| *v > 0) {
                c.with_label_values(&l).inc_by(v);
            }
        }
        if let Some(d) = &g.spec_decode {
            self.spec_drafts.with_label_values(&l).inc_by(d.drafts);
            self.spec_draft_tokens.with_label_values(&l).inc_by(d.draft_tokens);
            self.spec_accepted.with_label_values(&l).inc_by(d.accepted_tokens);
        }
        if let Some(i) = &g.iteration {
            for (phase, reqs, toks) in
                [("prefill", i.prefill_requests, i.prefill_tokens), ("decode", i.decode_requests, i.decode_tokens)]
            {
                if reqs > 0 {
                    self.scheduled_requests.with_label_values(&[model, engine, phase]).observe(reqs as f64);
                    self.scheduled_tokens.with_label_values(&[model, engine, phase]).observe(toks as f64);
                }
            }
        }
        if let Some(p) = &self.profiling {
            let m = ms_labels(engine);
            if let Some(v) = g.running {
                p.batch_size.with_label_values(&m).observe(v as f64);
            }
            if let Some(v) = g.waiting {
                p.waiting_batch_size.with_label_values(&m).observe(v as f64);
            }
            if let Some(d) = &g.spec_decode {
                p.num_spec_tokens.with_label_values(&m).observe(d.num_spec_tokens as f64);
            }
            // vLLM's usage is 1 - free / (total - 1): the null block is never free nor counted.
            if let (Some(total), Some(usage), Some(_)) = (g.kv_cache_blocks, g.kv_cache_usage, g.running) {
                let free = ((1.0 - usage) * total.saturating_sub(1) as f64).round().max(0.0);
                p.kv_total.with_label_values(&m).observe(total as f64);
                p.kv_free.with_label_values(&m).observe(free);
                p.kv_allocated.with_label_values(&m).observe((total as f64 - free - 1.0).max(0.0));
            }
        }
        if let Some(v) = g.running {
            self.running.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = g.waiting {
            self.waiting.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = g.kv_cache_usage {
            self.kv.with_label_values(&l).set(v);
            if let Some(total) = g.kv_cache_blocks {
                let free = ((1.0 - v) * total.saturating_sub(1) as f64).round().max(0.0);
                self.kv_blocks.with_label_values(&[model, engine, "total"]).set(total as f64);
                self.kv_blocks.with_label_values(&[model, engine, "free"]).set(free);
            }
        }
        if let Some(x) = &self.vllm {
            if let Some(v) = g.prefix_cache_queries {
                x.prefix_queries.with_label_values(&l).inc_by(v);
            }
            if let Some(v) = g.prefix_cache_hits {
                x.prefix_hits.with_label_values(&l).inc_by(v);
            }
            if let Some(d) = &g.spec_decode {
                x.spec_drafts.with_label_values(&l).inc_by(d.drafts);
                x.spec_draft_tokens.with_label_values(&l).inc_by(d.draft_tokens);
                x.spec_accepted.with_label_values(&l).inc_by(d.accepted_tokens);
            }
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
                let sl = [model, e.as_str(), s.phase()];
                self.steps.with_label_values(&sl).inc();
                self.batch.with_label_values(&sl).observe(s.batch_size() as f64);
                self.step_tokens.with_label_values(&sl).observe(s.tokens as f64);
                self.gauges(model, &e, &s.gauges);
                if let Some(x) = &self.vllm {
                    x.iteration_tokens.with_label_values(&l).observe((s.tokens + s.prompt_tokens) as f64);
                }
                if let Some(p) = &self.profiling {
                    let m = ms_labels(&e);
                    p.total_tokens.with_label_values(&m).observe((s.tokens + s.prompt_tokens) as f64);
                    p.input.with_label_values(&m).observe(s.prompt_tokens as f64);
                    p.output.with_label_values(&m).observe(s.tokens as f64);
                    p.outputs_len.with_label_values(&m).observe(s.batch_size() as f64);
                    if let Some(ns) = s.first_itl_ns {
                        p.second_token_latency.with_label_values(&m).observe(ns as f64 / 1e9);
                    }
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
                if let Some(t) = r.second_token_s() {
                    self.second_token.with_label_values(&l).observe(t);
                }
                if let Some(p) = &self.profiling {
                    let m = ms_labels(&e);
                    let api_ttft = r.api_ttft_ns.map(|ns| ns as f64 / 1e9);
                    if let Some(t) = api_ttft.or_else(|| r.engine_ttft_s()) {
                        p.ttft.with_label_values(&m).observe(t);
                    }
                    if let Some(t) = r.decode_s().filter(|_| r.output_tokens > 1) {
                        p.tpot.with_label_values(&m).observe(t / (r.output_tokens - 1) as f64);
                    }
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

/// ms_service_metric's labels: the engine index, its data-parallel rank (the engine index: each
/// data-parallel engine is one rank) and the disaggregation role (inferscope does not tell
/// prefill and decode instances apart yet: `mixed`, ms_service_metric's default).
fn ms_labels(engine: &str) -> [&str; 3] {
    [engine, engine, "mixed"]
}
