//! The engine layer: what happened to each request inside the engine (queue, prefill, decode,
//! preemptions) and what every scheduler step did, decoded from the engine's own IPC messages
//! (vLLM: ZMTP + msgpack between API server and EngineCore; SGLang: ZMTP + pickle).
//!
//! Messages come from [`crate::tracker`] (ZMTP connections) with the direction seen from the
//! traced process. The engine's timestamps are `time.monotonic()`, the same CLOCK_MONOTONIC as
//! the capture, so engine and HTTP times share one clock.

pub mod sglang;
pub mod vllm;
pub mod vllm_layouts;

use std::collections::HashMap;

use crate::{events::Direction, protocol::zmtp::Message};

/// Engine requests tracked per process at most; older ones are dropped and counted.
const MAX_REQUESTS: usize = 65_536;
/// A request with no message for this long is forgotten (its end was lost).
const REQUEST_IDLE_NS: u64 = 600 * 1_000_000_000;

/// Which engine's protocol a process speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// vLLM v1, with the version found in the process's installed package (None: unknown).
    Vllm {
        version: Option<(u16, u16, u16)>,
    },
    Sglang,
}

/// One request as the engine saw it. Times are CLOCK_MONOTONIC ns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineRequest {
    pub pid: u32,
    /// The engine's request id (vLLM adds a random suffix to the API's id).
    pub request_id: String,
    /// The API's id, when the engine message carried it.
    pub external_id: Option<String>,
    /// Data-parallel engine index.
    pub engine: Option<u32>,
    pub prompt_tokens: Option<u64>,
    pub queued_ns: Option<u64>,
    pub scheduled_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub last_token_ns: Option<u64>,
    pub output_tokens: u64,
    pub preemptions: u32,
    pub cached_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    /// The API server gave up on it (client abort): its phases are not observed.
    pub aborted: bool,
    /// Its start (the ADD, or a QUEUED event) was seen.
    pub seen_from_start: bool,
    /// An output message of its process was lost while it was in flight (capture gap, or a
    /// message too large): its token count is a lower bound. When that happened before its
    /// first token, the first token is unknown and so are prefill and engine TTFT.
    pub outputs_lost: bool,
    first_output_lost: bool,
    /// `queued_ns` came from the engine's own QUEUED stamp, not from the ADD's send time.
    queued_by_engine: bool,
    /// Last message about it, capture clock.
    last_seen_ns: u64,
}

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
    /// The id the API server answers with, for joining (the external id, or the engine id
    /// without vLLM's parallel-sampling prefix `N_` and random suffix `-xxxxxxxx`).
    pub fn join_key(&self) -> String {
        if let Some(e) = &self.external_id {
            return e.clone();
        }
        strip_engine_id(&self.request_id).to_string()
    }
}

/// `0_chatcmpl-abc` -> `chatcmpl-abc` (vLLM's parallel-sampling child prefix).
pub fn strip_sampling_prefix(id: &str) -> &str {
    if let Some((n, rest)) = id.split_once('_')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && rest.contains('-')
    {
        return rest;
    }
    id
}

/// `0_chatcmpl-abc-1a2b3c4d` -> `chatcmpl-abc`: the sampling prefix, and the random suffix
/// vLLM adds since 0.14. Only for engines whose ids may carry that suffix: an older release's
/// id is the API's own, which may end in `-` and 8 characters of its own (an `X-Request-Id`).
pub fn strip_engine_id(id: &str) -> &str {
    let mut s = strip_sampling_prefix(id);
    if let Some((head, tail)) = s.rsplit_once('-')
        && tail.len() == 8
        && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        && head.contains('-')
    {
        s = head;
    }
    s
}

/// What one engine step produced for the traced API server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStep {
    pub pid: u32,
    pub engine: Option<u32>,
    /// The engine's timestamp of the step's outputs, else when they were received.
    pub ts_ns: u64,
    pub request_ids: Vec<String>,
    /// Tokens generated in the step (all requests).
    pub tokens: u64,
    /// Prompt tokens of the requests whose first token came in this step (their prefill),
    /// where known: vLLM counts these into `iteration_tokens`.
    pub prompt_tokens: u64,
    /// Requests that finished in the step.
    pub finished: u32,
    pub gauges: EngineGauges,
}

impl EngineStep {
    pub fn batch_size(&self) -> usize {
        self.request_ids.len()
    }
}

/// What the engine reports of its scheduler, when it does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineGauges {
    pub running: Option<u64>,
    pub waiting: Option<u64>,
    /// Fraction of KV-cache blocks in use, 0..1.
    pub kv_cache_usage: Option<f64>,
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
}

impl EngineGauges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    Step(EngineStep),
    /// Gauges reported without a step (an idle engine, or an iteration that produced no
    /// token), stamped by the engine at `ts_ns` when it says.
    Gauges {
        pid: u32,
        engine: Option<u32>,
        ts_ns: Option<u64>,
        gauges: EngineGauges,
    },
    Finished(EngineRequest),
}

/// One decoded engine message, whatever the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A request entered the engine (vLLM ADD; SGLang tokenized request).
    /// `queued_ns`: when the engine's queue starts for it, for engines that report no QUEUED
    /// event (SGLang: when the tokenized request was sent).
    Add {
        request_id: String,
        external_id: Option<String>,
        prompt_tokens: Option<u64>,
        ts_ns: u64,
        queued_ns: Option<u64>,
    },
    /// Several messages in one (SGLang's batched requests).
    Many(Vec<Decoded>),
    /// The API server aborted these requests.
    Abort { request_ids: Vec<String> },
    /// One step's outputs (vLLM EngineCoreOutputs; SGLang batch outputs).
    Outputs(Outputs),
    /// A message of a known kind that carries nothing for us (utility calls, handshakes).
    Ignored,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    pub engine: Option<u32>,
    /// The engine's timestamp, ns, when the message has one.
    pub ts_ns: Option<u64>,
    pub outputs: Vec<RequestOutput>,
    pub gauges: EngineGauges,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOutput {
    pub request_id: String,
    pub new_tokens: u64,
    /// None: not finished (or the layout does not say).
    pub finish_reason: Option<String>,
    pub events: Vec<(EventType, u64)>,
    pub cached_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    /// When the engine's own timestamps for this output are missing, the phases still follow
    /// vLLM's rules with the message time.
    pub ts_ns: Option<u64>,
    /// The engine's own stamp of the request's first token (SGLang's `prefill_finished_time`),
    /// preferred to the time the first output arrived.
    pub first_token_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Queued,
    Scheduled,
    Preempted,
}

/// Why a message could not be used, for the health counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undecodable {
    /// Not a message of this engine (another ZMQ socket, or the engine's side of the pair).
    Foreign,
    /// Looked like one but did not match the layout.
    Malformed,
    /// Bytes of it were not captured.
    Gaps,
}

impl Undecodable {
    pub fn cause(self) -> &'static str {
        match self {
            Undecodable::Foreign => "foreign",
            Undecodable::Malformed => "malformed",
            Undecodable::Gaps => "capture_gaps",
        }
    }
}

/// Counters of the engine layer, for the health metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub messages: u64,
    /// Messages with bytes missing (a capture gap). Their frames stay delimited, so those
    /// whose needed frame is whole (vLLM's tensor frames come after it) are still used.
    pub messages_with_gaps: u64,
    /// Messages not used, by cause.
    pub undecodable: Vec<(&'static str, u64)>,
    /// Requests forgotten without an end (idle too long, or too many).
    pub lost_requests: u64,
    /// Output messages about requests never seen before (capture began mid-request).
    pub partial_requests: u64,
    /// Output messages decoded: one per engine iteration that had something to report (with
    /// the engine's stats on, vLLM reports every iteration).
    pub output_messages: u64,
}

impl EngineStats {
    fn undecodable(&mut self, why: Undecodable) {
        let c = why.cause();
        match self.undecodable.iter_mut().find(|(k, _)| *k == c) {
            Some((_, n)) => *n += 1,
            None => self.undecodable.push((c, 1)),
        }
    }
}

#[derive(Debug, Default)]
struct ProcState {
    requests: HashMap<String, EngineRequest>,
}

/// Rebuilds engine requests and steps from decoded messages, per process.
#[derive(Debug, Default)]
pub struct EngineTracker {
    kinds: HashMap<u32, EngineKind>,
    procs: HashMap<u32, ProcState>,
    pub stats: EngineStats,
}

impl EngineTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Says which engine a process runs (from its command line and installed packages).
    pub fn set_kind(&mut self, pid: u32, kind: EngineKind) {
        self.kinds.insert(pid, kind);
    }

    pub fn kind(&self, pid: u32) -> Option<&EngineKind> {
        self.kinds.get(&pid)
    }

    /// A ZMTP message on a connection of `pid`.
    pub fn message(&mut self, pid: u32, dir: Direction, msg: &Message, out: &mut Vec<EngineEvent>) {
        self.stats.messages += 1;
        self.stats.messages_with_gaps += msg.gaps as u64;
        let decoded = match self.kinds.get(&pid) {
            Some(EngineKind::Vllm { version }) => vllm::decode(*version, dir, msg),
            Some(EngineKind::Sglang) => sglang::decode_message(dir, msg),
            // Unknown process: a pickle is SGLang's; else try vLLM's stable layout.
            None if msg.frames.first().and_then(|f| f.first()) == Some(&0x80) => sglang::decode_message(dir, msg),
            None => vllm::decode(None, dir, msg),
        };
        match decoded {
            Ok(d) => self.apply(pid, msg.ts_ns, d, out),
            Err(why) => {
                self.stats.undecodable(why);
                if why == Undecodable::Gaps {
                    self.lost(pid, dir);
                }
            }
        }
    }

    /// Messages of `pid` in direction `dir` were lost. Outputs arrive on the API server's
    /// ingress: every request in flight may have missed some, so none of them reports a
    /// phase that the lost message could have changed.
    pub fn lost(&mut self, pid: u32, dir: Direction) {
        if dir != Direction::Ingress {
            // A lost ADD or ABORT: its request shows up as partial, or expires.
            return;
        }
        if let Some(st) = self.procs.get_mut(&pid) {
            for r in st.requests.values_mut() {
                r.outputs_lost = true;
                if r.first_token_ns.is_none() {
                    r.first_output_lost = true;
                }
            }
        }
    }

    /// Whether `pid`'s engine adds no suffix of its own to the API's ids (vLLM before 0.14,
    /// SGLang): its ids are then the API's, less a sampling prefix. False where it may add one.
    fn unsuffixed(&self, pid: u32) -> bool {
        match self.kinds.get(&pid) {
            Some(EngineKind::Vllm { version: Some(v) }) => {
                vllm_layouts::for_version(*v).is_some_and(|l| l.request.external_req_id.is_none())
            }
            Some(EngineKind::Sglang) => true,
            _ => false,
        }
    }

    fn apply(&mut self, pid: u32, now: u64, d: Decoded, out: &mut Vec<EngineEvent>) {
        let unsuffixed = self.unsuffixed(pid);
        let api_id = |id: &str| unsuffixed.then(|| strip_sampling_prefix(id).to_string());
        let st = self.procs.entry(pid).or_default();
        match d {
            Decoded::Ignored => {}
            Decoded::Many(list) => {
                for d in list {
                    self.apply(pid, now, d, out);
                }
            }
            Decoded::Add { request_id, external_id, prompt_tokens, ts_ns, queued_ns } => {
                if st.requests.len() >= MAX_REQUESTS {
                    self.stats.lost_requests += 1;
                    return;
                }
                let r = st.requests.entry(request_id.clone()).or_insert_with(|| EngineRequest {
                    pid,
                    request_id,
                    ..Default::default()
                });
                r.external_id = external_id.or_else(|| api_id(&r.request_id)).or(r.external_id.take());
                r.prompt_tokens = prompt_tokens.or(r.prompt_tokens);
                if r.queued_ns.is_none() {
                    r.queued_ns = queued_ns;
                }
                r.seen_from_start = true;
                r.last_seen_ns = ts_ns;
            }
            Decoded::Abort { request_ids } => {
                for id in request_ids {
                    if let Some(mut r) = st.requests.remove(&id) {
                        r.aborted = true;
                        r.finish_reason.get_or_insert_with(|| "abort".to_string());
                        out.push(EngineEvent::Finished(r));
                    }
                }
            }
            Decoded::Outputs(o) => {
                self.stats.output_messages += 1;
                if o.outputs.is_empty() {
                    if !o.gauges.is_empty() {
                        out.push(EngineEvent::Gauges { pid, engine: o.engine, ts_ns: o.ts_ns, gauges: o.gauges });
                    }
                    return;
                }
                let ts = o.ts_ns.unwrap_or(now);
                let mut step = EngineStep { pid, engine: o.engine, ts_ns: ts, gauges: o.gauges, ..Default::default() };
                for ro in o.outputs {
                    step.tokens += ro.new_tokens;
                    step.request_ids.push(ro.request_id.clone());
                    if !st.requests.contains_key(&ro.request_id) {
                        if st.requests.len() >= MAX_REQUESTS {
                            self.stats.lost_requests += 1;
                            continue;
                        }
                        st.requests.insert(
                            ro.request_id.clone(),
                            EngineRequest {
                                pid,
                                request_id: ro.request_id.clone(),
                                external_id: api_id(&ro.request_id),
                                ..Default::default()
                            },
                        );
                    }
                    let Some(r) = st.requests.get_mut(&ro.request_id) else { continue };
                    r.last_seen_ns = now;
                    r.engine = o.engine.or(r.engine);
                    for (ty, t) in &ro.events {
                        match ty {
                            EventType::Queued => {
                                // The engine's stamp replaces the ADD's send time (SGLang).
                                if !r.queued_by_engine {
                                    r.queued_ns = Some(*t);
                                    r.queued_by_engine = true;
                                }
                                r.seen_from_start = true;
                            }
                            EventType::Scheduled => {
                                r.scheduled_ns.get_or_insert(*t);
                            }
                            EventType::Preempted => r.preemptions += 1,
                        }
                    }
                    let t = ro.ts_ns.unwrap_or(ts);
                    if r.first_token_ns.is_none() && !r.first_output_lost {
                        if !r.seen_from_start {
                            // Its first output may have gone by before capture began.
                            self.stats.partial_requests += 1;
                        }
                        r.first_token_ns = Some(ro.first_token_ns.unwrap_or(t));
                        step.prompt_tokens += ro.prompt_tokens.or(r.prompt_tokens).unwrap_or(0);
                    }
                    r.last_token_ns = Some(t);
                    r.output_tokens += ro.new_tokens;
                    if ro.cached_tokens.is_some() {
                        r.cached_tokens = ro.cached_tokens;
                    }
                    if ro.prompt_tokens.is_some() {
                        r.prompt_tokens = ro.prompt_tokens;
                    }
                    if let Some(reason) = ro.finish_reason {
                        r.finish_reason = Some(reason);
                        if let Some(r) = st.requests.remove(&ro.request_id) {
                            step.finished += 1;
                            out.push(EngineEvent::Finished(r));
                        }
                    }
                }
                out.push(EngineEvent::Step(step));
            }
        }
    }

    /// Forgets requests past their time (their end was lost).
    pub fn expire(&mut self, now: u64) {
        for st in self.procs.values_mut() {
            let before = st.requests.len();
            st.requests.retain(|_, r| now.saturating_sub(r.last_seen_ns) < REQUEST_IDLE_NS);
            self.stats.lost_requests += (before - st.requests.len()) as u64;
        }
    }

    pub fn process_gone(&mut self, pid: u32) {
        if let Some(st) = self.procs.remove(&pid) {
            self.stats.lost_requests += st.requests.len() as u64;
        }
        self.kinds.remove(&pid);
    }

    /// Requests inside the engine now, over all processes.
    pub fn in_engine(&self) -> usize {
        self.procs.values().map(|s| s.requests.len()).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids_join_the_api_id() {
        assert_eq!(strip_engine_id("chatcmpl-826e64d80e7cb10e-a9a6b96e"), "chatcmpl-826e64d80e7cb10e");
        assert_eq!(strip_engine_id("0_chatcmpl-826e64d80e7cb10e-a9a6b96e"), "chatcmpl-826e64d80e7cb10e");
        assert_eq!(strip_engine_id("chatcmpl-826e64d80e7cb10e"), "chatcmpl-826e64d80e7cb10e");
        // A bare id with no suffix is left alone, even if it has eight characters at the end.
        assert_eq!(strip_engine_id("abcdefgh-12345678"), "abcdefgh-12345678");
        assert_eq!(strip_engine_id("cmpl-1234-0"), "cmpl-1234-0");
    }

    fn out(id: &str, tokens: u64, finish: Option<&str>, events: Vec<(EventType, u64)>) -> RequestOutput {
        RequestOutput {
            request_id: id.into(),
            new_tokens: tokens,
            finish_reason: finish.map(str::to_string),
            events,
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_vllm_definitions() {
        let mut t = EngineTracker::new();
        let mut ev = Vec::new();
        let id = "chatcmpl-1-abcdef12";
        t.apply(
            7,
            100,
            Decoded::Add {
                request_id: id.into(),
                external_id: None,
                prompt_tokens: Some(12),
                ts_ns: 100,
                queued_ns: None,
            },
            &mut ev,
        );
        let step = |ts: u64, o: RequestOutput| {
            Decoded::Outputs(Outputs { engine: Some(0), ts_ns: Some(ts), outputs: vec![o], ..Default::default() })
        };
        t.apply(
            7,
            0,
            step(2_000, out(id, 1, None, vec![(EventType::Queued, 1_000), (EventType::Scheduled, 1_500)])),
            &mut ev,
        );
        t.apply(7, 0, step(3_000, out(id, 1, None, vec![])), &mut ev);
        t.apply(7, 0, step(4_000, out(id, 2, Some("length"), vec![(EventType::Preempted, 3_500)])), &mut ev);
        let fin: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Finished(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(fin.len(), 1);
        let r = &fin[0];
        assert_eq!(r.queue_s(), Some(500e-9));
        assert_eq!(r.prefill_s(), Some(500e-9));
        assert_eq!(r.decode_s(), Some(2_000e-9));
        assert_eq!(r.inference_s(), Some(2_500e-9));
        assert_eq!((r.output_tokens, r.preemptions, r.prompt_tokens), (4, 1, Some(12)));
        assert_eq!(ev.iter().filter(|e| matches!(e, EngineEvent::Step(_))).count(), 3);
        let mut joins = crate::correlate::requests::RequestJoin::of(&ev);
        let joined = joins.join(7, "chatcmpl-1");
        assert_eq!(joined.len(), 1);
        assert!(joins.join(7, "chatcmpl-1").is_empty(), "taken once");
        assert_eq!(t.in_engine(), 0);
    }

    #[test]
    fn abort_finishes_without_phases_and_unknown_ids_are_partial() {
        let mut t = EngineTracker::new();
        let mut ev = Vec::new();
        let o = Outputs { outputs: vec![out("x-1-aaaaaaaa", 1, None, vec![])], ..Default::default() };
        t.apply(1, 50, Decoded::Outputs(o), &mut ev);
        assert_eq!(t.stats.partial_requests, 1);
        t.apply(1, 60, Decoded::Abort { request_ids: vec!["x-1-aaaaaaaa".into(), "nope".into()] }, &mut ev);
        let r = ev.iter().find_map(|e| if let EngineEvent::Finished(r) = e { Some(r) } else { None }).unwrap();
        assert!(r.aborted && r.queue_s().is_none());
        assert_eq!(r.finish_reason.as_deref(), Some("abort"));
    }

    #[test]
    fn the_engines_own_stamps_win_over_message_times() {
        // SGLang: the ADD's send time stands in for queueing until the scheduler's stamps come.
        let mut t = EngineTracker::new();
        t.set_kind(1, EngineKind::Sglang);
        let mut ev = Vec::new();
        let add = Decoded::Add {
            request_id: "abc".into(),
            external_id: None,
            prompt_tokens: Some(3),
            ts_ns: 10,
            queued_ns: Some(10),
        };
        t.apply(1, 10, add, &mut ev);
        let mut o = out("abc", 1, None, vec![(EventType::Queued, 12), (EventType::Scheduled, 15)]);
        o.first_token_ns = Some(30);
        t.apply(1, 40, Decoded::Outputs(Outputs { outputs: vec![o], ..Default::default() }), &mut ev);
        let o = out("abc", 1, Some("stop"), vec![(EventType::Queued, 12), (EventType::Scheduled, 15)]);
        t.apply(1, 50, Decoded::Outputs(Outputs { outputs: vec![o], ..Default::default() }), &mut ev);
        let r = ev.iter().find_map(|e| if let EngineEvent::Finished(r) = e { Some(r) } else { None }).unwrap();
        assert_eq!(
            (r.queued_ns, r.scheduled_ns, r.first_token_ns, r.last_token_ns),
            (Some(12), Some(15), Some(30), Some(50))
        );
        // SGLang's ids are the API's own.
        assert_eq!(crate::correlate::requests::RequestJoin::of(&ev).join(1, "abc").len(), 1);
    }

    #[test]
    fn a_lost_output_message_never_yields_a_wrong_first_token() {
        let mut t = EngineTracker::new();
        let mut ev = Vec::new();
        for id in ["a-1-aaaaaaaa", "b-1-bbbbbbbb"] {
            let add = Decoded::Add {
                request_id: id.into(),
                external_id: None,
                prompt_tokens: Some(3),
                ts_ns: 10,
                queued_ns: None,
            };
            t.apply(1, 10, add, &mut ev);
        }
        // a's first token arrives; then a message is lost (it may have held b's first token).
        let o = Outputs {
            outputs: vec![out("a-1-aaaaaaaa", 1, None, vec![(EventType::Queued, 11), (EventType::Scheduled, 12)])],
            ..Default::default()
        };
        t.apply(1, 20, Decoded::Outputs(o), &mut ev);
        t.lost(1, Direction::Egress);
        t.lost(1, Direction::Ingress);
        let o = Outputs {
            outputs: vec![out("a-1-aaaaaaaa", 1, Some("stop"), vec![]), out("b-1-bbbbbbbb", 1, Some("stop"), vec![])],
            ..Default::default()
        };
        t.apply(1, 40, Decoded::Outputs(o), &mut ev);
        let fin: Vec<&EngineRequest> =
            ev.iter().filter_map(|e| if let EngineEvent::Finished(r) = e { Some(r) } else { None }).collect();
        let (a, b) = (fin[0], fin[1]);
        assert!(a.outputs_lost && b.outputs_lost);
        // a's first token was seen before the loss: its phases stand.
        assert_eq!((a.first_token_ns, a.last_token_ns), (Some(20), Some(40)));
        assert!(a.prefill_s().is_some());
        // b's was not: the first token seen after the loss is not taken for its first.
        assert_eq!((b.first_token_ns, b.last_token_ns), (None, Some(40)));
        assert!(b.prefill_s().is_none() && b.decode_s().is_none() && b.engine_ttft_s().is_none());
    }
}
