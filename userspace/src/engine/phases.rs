//! The phases vLLM defines on a request's four engine timestamps (queue, prefill, decode,
//! inference, engine TTFT), for one engine request or several merged into one HTTP request's.

use super::EngineRequest;

fn secs(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1e9),
        _ => None,
    }
}

/// Seconds of an engine's monotonic clock (Python `time.monotonic()` / `perf_counter()`, both
/// CLOCK_MONOTONIC on Linux) to ns; 0.0 (a stage not reached) and nonsense are None.
pub(crate) fn engine_secs_to_ns(s: f64) -> Option<u64> {
    (s.is_finite() && s > 0.0 && s < 1e10).then(|| (s * 1e9).round() as u64)
}

/// A request's four engine timestamps, and the phases vLLM defines on them.
pub trait Phases {
    /// (queued, first scheduled, first token, last token), CLOCK_MONOTONIC ns.
    fn stamps(&self) -> [Option<u64>; 4];
    /// First scheduling minus queueing (vLLM's `request_queue_time`).
    fn queue_s(&self) -> Option<f64> {
        let [q, s, _, _] = self.stamps();
        secs(q, s)
    }
    /// First token minus first scheduling (preemptions during prefill included).
    fn prefill_s(&self) -> Option<f64> {
        let [_, s, f, _] = self.stamps();
        secs(s, f)
    }
    /// Last token minus first token.
    fn decode_s(&self) -> Option<f64> {
        let [_, _, f, l] = self.stamps();
        secs(f, l)
    }
    /// Last token minus first scheduling.
    fn inference_s(&self) -> Option<f64> {
        let [_, s, _, l] = self.stamps();
        secs(s, l)
    }
    /// Time to first token as the engine saw it: from queueing to the first output.
    fn engine_ttft_s(&self) -> Option<f64> {
        let [q, _, f, _] = self.stamps();
        secs(q, f)
    }
}

impl Phases for EngineRequest {
    fn stamps(&self) -> [Option<u64>; 4] {
        [self.queued_ns, self.scheduled_ns, self.first_token_ns, self.last_token_ns]
    }
}

impl EngineRequest {
    /// Second token minus first token: the first decode step after its prefill.
    pub fn second_token_s(&self) -> Option<f64> {
        secs(self.first_token_ns, self.second_token_ns)
    }
}

/// The engine side of a joined HTTP request: several engine requests (parallel sampling)
/// merge into one view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnginePhases {
    pub engine: Option<u32>,
    pub request_ids: Vec<String>,
    pub queued_ns: Option<u64>,
    pub scheduled_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub last_token_ns: Option<u64>,
    pub preemptions: u32,
    pub cached_tokens: Option<u64>,
    pub output_tokens: u64,
    /// An output message was lost while one of them was in flight.
    pub outputs_lost: bool,
}

impl EnginePhases {
    pub fn merge(reqs: &[EngineRequest]) -> Option<Self> {
        let first = reqs.first()?;
        let min = |f: fn(&EngineRequest) -> Option<u64>| reqs.iter().filter_map(f).min();
        Some(Self {
            engine: first.engine,
            request_ids: reqs.iter().map(|r| r.request_id.clone()).collect(),
            queued_ns: min(|r| r.queued_ns),
            scheduled_ns: min(|r| r.scheduled_ns),
            first_token_ns: min(|r| r.first_token_ns),
            last_token_ns: reqs.iter().filter_map(|r| r.last_token_ns).max(),
            preemptions: reqs.iter().map(|r| r.preemptions).sum(),
            cached_tokens: reqs.iter().filter_map(|r| r.cached_tokens).min(),
            output_tokens: reqs.iter().map(|r| r.output_tokens).sum(),
            outputs_lost: reqs.iter().any(|r| r.outputs_lost),
        })
    }
}

impl Phases for EnginePhases {
    fn stamps(&self) -> [Option<u64>; 4] {
        [self.queued_ns, self.scheduled_ns, self.first_token_ns, self.last_token_ns]
    }
}
