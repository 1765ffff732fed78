//! `inferscope top`'s model: a sink on the pipeline ([`TopSink`]) that keeps, per traced
//! process, what the live view shows (rates over the last [`RATE_S`] seconds, percentiles over
//! the last [`WINDOW_S`], the slowest recent requests with their phases, the engine's steps and
//! gauges, the device's last interval, the Python timers and profile), and the [`Snapshot`] the
//! view renders from. A running daemon sends the same snapshot over its control socket, so
//! `inferscope top --connect` shows what the daemon sees without loading probes of its own.
//!
//! Bounded: per process at most [`MAX_REQUESTS`] requests and [`MAX_SAMPLES`] token gaps and
//! timed calls are kept, and only those of the last [`WINDOW_S`] seconds.

pub mod view;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::{self, Clock},
    engine::EngineEvent,
    request::RequestRecord,
    {export::sink::Sink, output::Output},
};

/// Percentiles are over this many seconds.
pub const WINDOW_S: u64 = 60;
/// Rates are over this many seconds.
pub const RATE_S: u64 = 10;
/// Most requests kept per process.
pub const MAX_REQUESTS: usize = 4096;
/// Most token gaps, steps and timed calls kept per process.
pub const MAX_SAMPLES: usize = 16384;
/// Slowest requests in the snapshot.
pub const SLOWEST: usize = 64;

const S: u64 = 1_000_000_000;

/// One finished request, reduced to what the view shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRow {
    pub pid: u32,
    /// Monotonic ns of its end.
    pub end_ns: u64,
    pub id: String,
    pub path: String,
    pub model: String,
    pub stream: bool,
    pub status: u16,
    pub error: bool,
    pub aborted: bool,
    pub e2e_s: f64,
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Engine phases, when the engine layer saw the request: queue, prefill, decode.
    pub queue_s: Option<f64>,
    pub prefill_s: Option<f64>,
    pub decode_s: Option<f64>,
}

impl RequestRow {
    pub fn of(r: &RequestRecord) -> Self {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
        let e = r.engine.as_ref();
        let phase = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b >= a => Some(secs(a, b)),
            _ => None,
        };
        Self {
            pid: r.pid,
            end_ns: r.end_ns,
            id: r.request_id.clone().unwrap_or_default(),
            path: r.path.clone(),
            model: r.response_model.clone().or_else(|| r.model.clone()).unwrap_or_default(),
            stream: r.stream,
            status: r.status.unwrap_or(0),
            error: r.error_type.is_some() || r.status.is_some_and(|s| s >= 400),
            aborted: r.aborted,
            e2e_s: secs(r.start_ns, r.end_ns),
            ttft_s: r.first_token_ns.map(|t| secs(r.start_ns, t)),
            tpot_s: r.tpot_s(),
            prompt_tokens: r.prompt_tokens.unwrap_or(0),
            completion_tokens: r.completion_tokens.unwrap_or(0),
            queue_s: e.and_then(|e| phase(e.queued_ns, e.scheduled_ns)),
            prefill_s: e.and_then(|e| phase(e.scheduled_ns, e.first_token_ns)),
            decode_s: e.and_then(|e| phase(e.first_token_ns, e.last_token_ns)),
        }
    }

    /// The time outside the engine's phases (HTTP, tokenising, detokenising, the network).
    pub fn overhead_s(&self) -> Option<f64> {
        let engine = self.queue_s? + self.prefill_s? + self.decode_s.unwrap_or(0.0);
        Some((self.e2e_s - engine).max(0.0))
    }
}

/// What the view shows of one process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessRow {
    pub pid: u32,
    pub engine: String,
    pub comm: String,
    /// `namespace/pod` when it runs in a pod.
    pub pod: Option<String>,
    /// Models served (the busiest first).
    pub models: Vec<String>,
    /// Requests since inferscope started to trace it.
    pub requests: u64,
    pub errors: u64,
    pub aborts: u64,
    pub req_per_s: f64,
    pub tokens_in_per_s: f64,
    pub tokens_out_per_s: f64,
    pub ttft_p50_s: Option<f64>,
    pub ttft_p99_s: Option<f64>,
    pub tpot_p50_s: Option<f64>,
    pub itl_p99_s: Option<f64>,
    pub e2e_p50_s: Option<f64>,
    pub queue_p50_s: Option<f64>,
    pub prefill_p50_s: Option<f64>,
    pub decode_p50_s: Option<f64>,
    /// Requests per second, one value per second, oldest first (the last [`WINDOW_S`]).
    pub history: Vec<f64>,
    pub engine_side: Option<EngineRow>,
    pub device: Option<DeviceRow>,
    /// Timed Python functions: (function, calls in the window, p50 s, p99 s).
    pub timers: Vec<(String, u64, f64, f64)>,
    /// The hottest Python functions of the last profile window: (function, % of samples).
    pub profile: Vec<(String, f64)>,
}

/// The engine side of a process (engine layer and engine-state reader).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineRow {
    pub steps_per_s: f64,
    pub batch_avg: f64,
    pub running: Option<u64>,
    pub waiting: Option<u64>,
    /// KV-cache in use, 0..1.
    pub kv_usage: Option<f64>,
}

/// The device side of a process: its last interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceRow {
    pub launches_per_s: f64,
    pub graphs_per_s: f64,
    /// Share of the interval the host waited in synchronisation calls.
    pub sync_share: f64,
    pub copy_bytes_per_s: f64,
    pub collectives_per_s: f64,
    /// (kernel, launches) of the interval, most first.
    pub top_kernels: Vec<(String, u64)>,
}

/// Everything the view shows, at one moment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Seconds since the model started collecting.
    pub collecting_s: f64,
    pub processes: Vec<ProcessRow>,
    /// The slowest requests of the window, slowest first.
    pub slowest: Vec<RequestRow>,
    pub in_flight: u64,
    pub ring_buffer_drops: u64,
    pub undecodable: u64,
}

#[derive(Default)]
struct Proc {
    engine: String,
    comm: String,
    pod: Option<String>,
    requests: u64,
    errors: u64,
    aborts: u64,
    recent: VecDeque<RequestRow>,
    /// (end of its request, gap ns).
    itl: VecDeque<(u64, u64)>,
    /// (ts, batch size).
    steps: VecDeque<(u64, usize)>,
    running: Option<u64>,
    waiting: Option<u64>,
    kv_usage: Option<f64>,
    device: Option<DeviceRow>,
    /// (function, start ns, duration ns).
    calls: VecDeque<(String, u64, u64)>,
    profile: Vec<(String, f64)>,
    models: HashMap<String, u64>,
}

/// The model: fed by [`TopSink`], read as a [`Snapshot`].
#[derive(Default)]
pub struct TopState {
    procs: BTreeMap<u32, Proc>,
    started_ns: u64,
    in_flight: u64,
    ring_buffer_drops: u64,
    undecodable: u64,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// The `q` quantile (0..1) of `v` (sorted in place); None when empty.
pub fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i.min(v.len() - 1)).copied()
}

impl TopState {
    pub fn new(now_ns: u64) -> Self {
        Self { started_ns: now_ns, ..Self::default() }
    }

    fn proc(&mut self, pid: u32) -> &mut Proc {
        self.procs.entry(pid).or_default()
    }

    /// Takes one output of the pipeline (monotonic `now_ns`).
    pub fn consume(&mut self, o: &Output<'_>, now_ns: u64) {
        match o {
            Output::ProcessAdded { pid, engine, identity } => {
                let p = self.proc(*pid);
                p.engine = engine.to_string();
                p.comm = crate::process::procfs::comm(*pid).unwrap_or_default();
                p.pod = match (&identity.namespace, &identity.pod_name) {
                    (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
                    (None, Some(pod)) => Some(pod.clone()),
                    _ => None,
                };
            }
            Output::ProcessGone { pid } => {
                self.procs.remove(pid);
            }
            Output::Request { record, .. } => {
                let row = RequestRow::of(record);
                let p = self.proc(record.pid);
                p.requests += 1;
                p.errors += row.error as u64;
                p.aborts += row.aborted as u64;
                if !row.model.is_empty() {
                    *p.models.entry(row.model.clone()).or_default() += 1;
                }
                for g in &record.itl_ns {
                    push_bounded(&mut p.itl, (record.end_ns, *g), MAX_SAMPLES);
                }
                push_bounded(&mut p.recent, row, MAX_REQUESTS);
            }
            Output::Engine { event: EngineEvent::Step(s), .. } => {
                let p = self.proc(s.pid);
                push_bounded(&mut p.steps, (s.ts_ns, s.batch_size()), MAX_SAMPLES);
                p.running = s.gauges.running.or(p.running);
                p.waiting = s.gauges.waiting.or(p.waiting);
                p.kv_usage = s.gauges.kv_cache_usage.or(p.kv_usage);
            }
            Output::Engine { event: EngineEvent::Gauges { pid, gauges, .. }, .. } => {
                let p = self.proc(*pid);
                p.running = gauges.running.or(p.running);
                p.waiting = gauges.waiting.or(p.waiting);
                p.kv_usage = gauges.kv_cache_usage.or(p.kv_usage);
            }
            Output::EngineState(s) => {
                let get = |n: &str| s.values.iter().find(|(k, _)| *k == n).and_then(|(_, v)| *v);
                let p = self.proc(s.pid);
                if let Some(v) = get("running") {
                    p.running = Some(v.max(0) as u64);
                }
                if let Some(v) = get("waiting") {
                    p.waiting = Some(v.max(0) as u64);
                }
                if let (Some(free), Some(total)) = (get("kv_cache_free_blocks"), get("kv_cache_total_blocks"))
                    && total > 0
                {
                    p.kv_usage = Some(1.0 - free as f64 / total as f64);
                }
            }
            Output::DeviceInterval { report, seconds, .. } => {
                let secs = seconds.max(1e-3);
                let d = &report.summary;
                let mut kernels: Vec<(String, u64)> =
                    report.kernels.by_name.iter().map(|(k, (n, _))| (k.clone(), *n)).collect();
                kernels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                kernels.truncate(5);
                let row = DeviceRow {
                    launches_per_s: d.launch.launches as f64 / secs,
                    graphs_per_s: d.launch.graph_launches as f64 / secs,
                    sync_share: (d.sync_ns as f64 / 1e9 / secs).min(1.0),
                    copy_bytes_per_s: d.copies.iter().map(|c| c.bytes).sum::<u64>() as f64 / secs,
                    collectives_per_s: d.collectives as f64 / secs,
                    top_kernels: kernels,
                };
                self.proc(report.pid).device = Some(row);
            }
            Output::PythonCall { record, spec, .. } => {
                let Some(end) = record.end_ns else { return };
                let name = spec.symbol.rsplit(':').next().unwrap_or(&spec.symbol).to_string();
                let p = self.proc(record.pid);
                push_bounded(&mut p.calls, (name, record.start_ns, end.saturating_sub(record.start_ns)), MAX_SAMPLES);
            }
            Output::ProfileWindow { pid, profile, .. } => {
                self.proc(*pid).profile = profile.top(5);
            }
            Output::Health { health, .. } => {
                self.in_flight = health.in_flight;
                self.ring_buffer_drops = health.bpf_stat(inferscope_common::stat::RINGBUF_DROPS);
                self.undecodable = health.decode_errors.iter().map(|e| e.1).sum();
            }
            // Not shown (listed, so that a new output is a decision here, not a silent drop).
            Output::Engine { .. }
            | Output::DeviceCalls(_)
            | Output::DeviceProbeHits { .. }
            | Output::DeviceProbes { .. }
            | Output::DeviceProbeOff { .. }
            | Output::LaunchSite { .. }
            | Output::LaunchSites { .. }
            | Output::PythonCalls { .. }
            | Output::Accelerators(_)
            | Output::Npus(_)
            | Output::GpuEvents(_) => {}
        }
        self.expire(now_ns);
    }

    /// Forgets what is older than the window.
    fn expire(&mut self, now_ns: u64) {
        let from = now_ns.saturating_sub(WINDOW_S * S);
        for p in self.procs.values_mut() {
            while p.recent.front().is_some_and(|r| r.end_ns < from) {
                p.recent.pop_front();
            }
            while p.itl.front().is_some_and(|g| g.0 < from) {
                p.itl.pop_front();
            }
            while p.steps.front().is_some_and(|s| s.0 < from) {
                p.steps.pop_front();
            }
            while p.calls.front().is_some_and(|c| c.1 < from) {
                p.calls.pop_front();
            }
        }
    }

    /// What the view shows now (monotonic `now_ns`).
    pub fn snapshot(&mut self, now_ns: u64) -> Snapshot {
        self.expire(now_ns);
        let collecting = now_ns.saturating_sub(self.started_ns);
        // A rate over the last RATE_S seconds, or over what was watched when that is shorter.
        let rate_span = (collecting.min(RATE_S * S) as f64 / 1e9).max(1.0);
        let rate_from = now_ns.saturating_sub(RATE_S * S);
        let mut slowest: Vec<RequestRow> = Vec::new();
        let processes = self
            .procs
            .iter()
            .map(|(pid, p)| {
                let in_rate: Vec<&RequestRow> = p.recent.iter().filter(|r| r.end_ns >= rate_from).collect();
                let pick = |f: fn(&RequestRow) -> Option<f64>| p.recent.iter().filter_map(f).collect::<Vec<f64>>();
                let mut ttft = pick(|r| r.ttft_s);
                let mut tpot = pick(|r| r.tpot_s);
                let mut e2e = pick(|r| Some(r.e2e_s));
                let mut queue = pick(|r| r.queue_s);
                let mut prefill = pick(|r| r.prefill_s);
                let mut decode = pick(|r| r.decode_s);
                let mut itl: Vec<f64> = p.itl.iter().map(|g| g.1 as f64 / 1e9).collect();
                let mut history = vec![0.0; WINDOW_S as usize];
                for r in &p.recent {
                    let ago = now_ns.saturating_sub(r.end_ns) / S;
                    if ago < WINDOW_S {
                        history[(WINDOW_S - 1 - ago) as usize] += 1.0;
                    }
                }
                let steps: Vec<&(u64, usize)> = p.steps.iter().filter(|s| s.0 >= rate_from).collect();
                let engine_side =
                    (!p.steps.is_empty() || p.running.is_some() || p.kv_usage.is_some()).then(|| EngineRow {
                        steps_per_s: steps.len() as f64 / rate_span,
                        batch_avg: if steps.is_empty() {
                            0.0
                        } else {
                            steps.iter().map(|s| s.1 as f64).sum::<f64>() / steps.len() as f64
                        },
                        running: p.running,
                        waiting: p.waiting,
                        kv_usage: p.kv_usage,
                    });
                let mut by_fn: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
                for (f, _, d) in &p.calls {
                    by_fn.entry(f.as_str()).or_default().push(*d as f64 / 1e9);
                }
                let timers = by_fn
                    .into_iter()
                    .map(|(f, mut v)| {
                        let n = v.len() as u64;
                        let p50 = quantile(&mut v, 0.5).unwrap_or(0.0);
                        let p99 = quantile(&mut v, 0.99).unwrap_or(0.0);
                        (f.to_string(), n, p50, p99)
                    })
                    .collect();
                let mut models: Vec<(&String, &u64)> = p.models.iter().collect();
                models.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                slowest.extend(p.recent.iter().cloned());
                ProcessRow {
                    pid: *pid,
                    engine: p.engine.clone(),
                    comm: p.comm.clone(),
                    pod: p.pod.clone(),
                    models: models.into_iter().map(|(m, _)| m.clone()).collect(),
                    requests: p.requests,
                    errors: p.errors,
                    aborts: p.aborts,
                    req_per_s: in_rate.len() as f64 / rate_span,
                    tokens_in_per_s: in_rate.iter().map(|r| r.prompt_tokens).sum::<u64>() as f64 / rate_span,
                    tokens_out_per_s: in_rate.iter().map(|r| r.completion_tokens).sum::<u64>() as f64 / rate_span,
                    ttft_p50_s: quantile(&mut ttft, 0.5),
                    ttft_p99_s: quantile(&mut ttft, 0.99),
                    tpot_p50_s: quantile(&mut tpot, 0.5),
                    itl_p99_s: quantile(&mut itl, 0.99),
                    e2e_p50_s: quantile(&mut e2e, 0.5),
                    queue_p50_s: quantile(&mut queue, 0.5),
                    prefill_p50_s: quantile(&mut prefill, 0.5),
                    decode_p50_s: quantile(&mut decode, 0.5),
                    history,
                    engine_side,
                    device: p.device.clone(),
                    timers,
                    profile: p.profile.clone(),
                }
            })
            .collect();
        slowest.sort_by(|a, b| b.e2e_s.total_cmp(&a.e2e_s));
        slowest.truncate(SLOWEST);
        Snapshot {
            collecting_s: collecting as f64 / 1e9,
            processes,
            slowest,
            in_flight: self.in_flight,
            ring_buffer_drops: self.ring_buffer_drops,
            undecodable: self.undecodable,
        }
    }
}

/// The model, shared between the sink (the daemon's loop) and whoever reads snapshots (the
/// terminal, the control endpoint).
pub type Shared = Arc<Mutex<TopState>>;

pub fn shared() -> Shared {
    Arc::new(Mutex::new(TopState::new(clock::monotonic_ns())))
}

/// The sink that feeds a [`Shared`] model.
pub struct TopSink(pub Shared);

impl Sink for TopSink {
    fn consume(&mut self, _clock: &Clock, o: &Output<'_>) {
        // Only what the view uses takes the lock (every variant named: a new one is a choice).
        let used = match o {
            Output::ProcessAdded { .. }
            | Output::ProcessGone { .. }
            | Output::Request { .. }
            | Output::Engine { .. }
            | Output::EngineState(_)
            | Output::DeviceInterval { .. }
            | Output::PythonCall { .. }
            | Output::ProfileWindow { .. }
            | Output::Health { .. } => true,
            Output::DeviceCalls(_)
            | Output::DeviceProbeHits { .. }
            | Output::DeviceProbes { .. }
            | Output::DeviceProbeOff { .. }
            | Output::LaunchSite { .. }
            | Output::LaunchSites { .. }
            | Output::PythonCalls { .. }
            | Output::Accelerators(_)
            | Output::Npus(_)
            | Output::GpuEvents(_) => false,
        };
        if used && let Ok(mut s) = self.0.lock() {
            s.consume(o, clock::monotonic_ns());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::EnginePhases,
        output::{BoundedLabel, Labels},
        process::identity::Identity,
        protocol::openai::Operation,
        request::TokensFrom,
    };

    const MS: u64 = 1_000_000;

    fn record(pid: u32, end_s: u64, e2e_ms: u64, ttft_ms: u64, tokens: u64) -> RequestRecord {
        let end = end_s * S;
        let start = end - e2e_ms * MS;
        RequestRecord {
            pid,
            conn_id: 1,
            peer: None,
            server_port: Some(8000),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            operation: Operation::Chat,
            status: Some(200),
            model: Some("tiny".into()),
            response_model: None,
            stream: true,
            request_id: Some(format!("req-{end_s}-{e2e_ms}")),
            traceparent: None,
            user_agent: None,
            start_ns: start,
            request_end_ns: Some(start),
            response_start_ns: Some(start),
            first_token_ns: Some(start + ttft_ms * MS),
            last_token_ns: Some(end),
            end_ns: end,
            output_events: tokens,
            itl_ns: vec![5 * MS; tokens.saturating_sub(1) as usize],
            chunk_times: vec![],
            prompt_tokens: Some(10),
            completion_tokens: Some(tokens),
            cached_tokens: None,
            tokens_from: Some(TokensFrom::Usage),
            finish_reasons: vec!["length".into()],
            n: 1,
            max_tokens: None,
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

    fn feed(s: &mut TopState, r: &RequestRecord, now: u64) {
        let labels = Labels::of(r, &mut BoundedLabel::new(8), "vllm");
        s.consume(&Output::Request { record: r, labels: &labels, provider: None }, now);
    }

    #[test]
    fn rates_percentiles_and_the_slowest_requests() {
        let mut s = TopState::new(0);
        let id = Identity { namespace: Some("llm".into()), pod_name: Some("vllm-0".into()), ..Identity::default() };
        s.consume(&Output::ProcessAdded { pid: 7, engine: "vllm", identity: &id }, 0);
        // 100 s of traffic: one request a second, the last 10 of them 20 ms slower.
        for i in 1..=100 {
            let slow = if i > 90 { 20 } else { 0 };
            feed(&mut s, &record(7, i, 100 + slow, 10 + slow, 8), i * S);
        }
        let snap = s.snapshot(100 * S);
        let p = &snap.processes[0];
        assert_eq!(p.pod.as_deref(), Some("llm/vllm-0"));
        assert_eq!(p.requests, 100, "every request counted");
        // The last 10 s: requests 91..=100 ended in [90 s, 100 s].
        assert!((p.req_per_s - 1.1).abs() < 1e-9, "{}", p.req_per_s);
        assert!((p.tokens_out_per_s - 8.8).abs() < 1e-9);
        assert!((p.tokens_in_per_s - 11.0).abs() < 1e-9);
        // The window keeps 60 s (requests 40..=100): TTFT p50 10 ms, p99 30 ms.
        assert!((p.ttft_p50_s.unwrap() - 0.010).abs() < 1e-9);
        assert!((p.ttft_p99_s.unwrap() - 0.030).abs() < 1e-9);
        assert!((p.itl_p99_s.unwrap() - 0.005).abs() < 1e-9);
        assert_eq!(p.history.len(), WINDOW_S as usize);
        // The sparkline covers the last 60 one-second buckets (41..=100 s).
        assert_eq!(p.history.iter().sum::<f64>(), 60.0);
        assert_eq!(p.models, vec!["tiny".to_string()]);
        // Slowest first: the 120 ms ones.
        assert_eq!(snap.slowest.len(), SLOWEST.min(61));
        assert!((snap.slowest[0].e2e_s - 0.120).abs() < 1e-9);
        // Gone: forgotten.
        s.consume(&Output::ProcessGone { pid: 7 }, 100 * S);
        assert!(s.snapshot(100 * S).processes.is_empty());
    }

    #[test]
    fn engine_phases_give_the_request_bar() {
        let mut r = record(3, 10, 100, 30, 4);
        let start = r.start_ns;
        r.engine = Some(EnginePhases {
            queued_ns: Some(start + 5 * MS),
            scheduled_ns: Some(start + 15 * MS),
            first_token_ns: Some(start + 25 * MS),
            last_token_ns: Some(start + 95 * MS),
            ..EnginePhases::default()
        });
        let row = RequestRow::of(&r);
        assert!((row.queue_s.unwrap() - 0.010).abs() < 1e-9);
        assert!((row.prefill_s.unwrap() - 0.010).abs() < 1e-9);
        assert!((row.decode_s.unwrap() - 0.070).abs() < 1e-9);
        assert!((row.overhead_s().unwrap() - 0.010).abs() < 1e-9);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&mut [], 0.5), None);
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&mut [1.0], 0.99), Some(1.0));
    }
}
