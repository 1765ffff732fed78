//! The engine layer: what happened to each request inside the engine (queue, prefill, decode,
//! preemptions) and what every scheduler step did, decoded from the engine's own IPC messages
//! (vLLM: ZMTP + msgpack between API server and EngineCore; SGLang: ZMTP + pickle).
//!
//! Messages come from [`crate::tracker`] (ZMTP connections) with the direction seen from the
//! traced process. The engine's timestamps are `time.monotonic()`, the same CLOCK_MONOTONIC as
//! the capture, so engine and HTTP times share one clock.
//!
//! This file holds the types the decoders and the tracker exchange; `tracker.rs` rebuilds
//! requests and steps from them ([`EngineTracker`]), `phases.rs` holds the phases vLLM defines
//! on a request's timestamps, `ids.rs` the joining of engine ids to the API's.

mod ids;
mod phases;
pub mod sglang;
mod tracker;
pub mod vllm;
pub mod vllm_layouts;

pub use ids::{strip_engine_id, strip_sampling_prefix};
pub(crate) use phases::engine_secs_to_ns;
pub use phases::{EnginePhases, Phases};
pub use tracker::{EngineStats, EngineTracker};

/// The inference server a process runs: what discovery says of it (process/procfs.rs), and
/// whose IPC its engine messages are (with the release found in its installed package, the
/// engine tracker picks the wire layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    Vllm,
    Sglang,
    /// Matched by an operator's `--match` pattern: an OpenAI-compatible server of another kind.
    Other,
}

impl Engine {
    /// `gen_ai.provider.name`-style value.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::Other => "openai_compatible",
        }
    }
}

/// A release, (major, minor, patch).
pub type Version = (u16, u16, u16);

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
    /// When its second token came (the first decode step after its prefill).
    pub second_token_ns: Option<u64>,
    /// vLLM's own TTFT: from the API server's arrival stamp to the API server's receipt of the
    /// first token (its read of the engine's message).
    pub api_ttft_ns: Option<u64>,
    /// The API server's arrival stamp, Unix ns.
    pub arrival_unix_ns: Option<u64>,
    /// When the API server received its latest output (capture clock).
    pub last_output_seen_ns: Option<u64>,
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
    /// Requests whose first token came in this step: the step ran (the last chunk of) their
    /// prefill.
    pub first_tokens: u32,
    /// The gap the API server saw before this step's output for the first request in it that
    /// already had a token (what vLLM's iteration stats list first): ms_service_metric's
    /// "second token latency".
    pub first_itl_ns: Option<u64>,
    pub gauges: EngineGauges,
}

impl EngineStep {
    pub fn batch_size(&self) -> usize {
        self.request_ids.len()
    }

    /// What the step ran, as its outputs show: `prefill` when every request in it produced its
    /// first token, `decode` when none did, `mixed` otherwise (chunked prefill batched with
    /// decodes). A prefill chunk that produced no token is not seen here (see
    /// [`EngineGauges::iteration`] for the scheduler's own count, when the engine sends it).
    pub fn phase(&self) -> &'static str {
        match self.first_tokens as usize {
            0 => "decode",
            n if n >= self.batch_size() => "prefill",
            _ => "mixed",
        }
    }
}

/// What the engine reports of its scheduler, when it does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineGauges {
    pub running: Option<u64>,
    pub waiting: Option<u64>,
    /// Fraction of KV-cache blocks in use, 0..1.
    pub kv_cache_usage: Option<f64>,
    /// Prefix-cache lookups since the engine's previous report (vLLM resets its counts at
    /// every report): tokens looked up and tokens found. For engines without such reports
    /// (SGLang), the prompt and cached tokens of the requests whose prefill ended in the step.
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
    /// Requests that looked up the prefix cache since the previous report.
    pub prefix_cache_requests: Option<u64>,
    /// Speculative decoding since the previous report, when the engine drafts.
    pub spec_decode: Option<SpecDecode>,
    /// The scheduler's own account of the iteration (vLLM with iteration details on).
    pub iteration: Option<Iteration>,
    /// KV-cache blocks the engine has in all, from its ready message (seen when inferscope
    /// watched the engine start).
    pub kv_cache_blocks: Option<u64>,
}

/// Speculative decoding in one engine report (vLLM's `SpecDecodingStats`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecDecode {
    /// Tokens the drafter proposes per request and step (its configuration).
    pub num_spec_tokens: u64,
    /// Drafts proposed, their tokens, and how many of those the target model accepted.
    pub drafts: u64,
    pub draft_tokens: u64,
    pub accepted_tokens: u64,
}

/// One scheduler iteration as the scheduler counts it (vLLM's `SchedulerIterationDetails`):
/// prefill ("context") and decode ("generation") requests and tokens scheduled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Iteration {
    pub prefill_requests: u64,
    pub prefill_tokens: u64,
    pub decode_requests: u64,
    pub decode_tokens: u64,
    pub elapsed_s: Option<f64>,
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
        /// When the API server received the request (its own wall-clock stamp, vLLM's
        /// `arrival_time`): where vLLM starts its TTFT.
        arrival_unix_ns: Option<u64>,
    },
    /// Several messages in one (SGLang's batched requests).
    Many(Vec<Decoded>),
    /// One of the `n` requests of a parallel-sampling request, for engines that send one request
    /// per sample and name only the first with the API's id (SGLang): the `n` adds that follow
    /// one another with the same `input` (a hash of the input ids) answer one HTTP request.
    Sample { n: u32, input: u64, add: Box<Decoded> },
    /// The API server aborted these requests.
    Abort { request_ids: Vec<String> },
    /// One step's outputs (vLLM EngineCoreOutputs; SGLang batch outputs).
    Outputs(Outputs),
    /// The engine is ready (vLLM's `EngineCoreReadyResponse`, the first message an engine core
    /// sends its API server): its KV-cache size in blocks.
    Ready { engine: Option<u32>, kv_cache_blocks: u64 },
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
    /// How many times the engine has retracted (preempted) the request so far, for engines that
    /// count instead of sending events (SGLang's `retraction_counts`).
    pub retractions: Option<u32>,
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

/// Replays a capture of real IPC bytes (tests/vllm/capture.py, tests/sglang/capture.py: the
/// traced process's sendto/recvfrom calls, strace attached after the server started) through
/// the ZMTP parser and the tracker, as pid 1 of the given engine.
#[cfg(test)]
pub(crate) fn replay_capture(
    doc: &serde_json::Value,
    kind: (Engine, Option<Version>),
) -> (EngineTracker, Vec<EngineEvent>) {
    use crate::{
        events::Direction,
        protocol::{Segment, zmtp::ZmtpParser},
    };
    let mut t = EngineTracker::new();
    t.set_kind(1, kind.0, kind.1);
    let mut parsers: std::collections::HashMap<(i64, String), ZmtpParser> = Default::default();
    let mut events = Vec::new();
    for c in doc["calls"].as_array().unwrap() {
        let call = c["call"].as_str().unwrap();
        let dir = if call == "sendto" { Direction::Egress } else { Direction::Ingress };
        let hex = c["hex"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let p = parsers.entry((c["fd"].as_i64().unwrap(), call.to_string())).or_insert_with(ZmtpParser::new_unsynced);
        let mut msgs = Vec::new();
        let ts_ns = c["ts_ns"].as_u64().unwrap();
        p.feed(Segment::Data { ts_ns, bytes: &bytes, syscall_start: true, arrival_ns: 0 }, &mut msgs);
        for m in &msgs {
            t.message(1, dir, m, &mut events);
        }
    }
    (t, events)
}

/// The captures `real-*.json` in a test data folder of the checkout, sorted.
#[cfg(test)]
pub(crate) fn real_capture_files(rel: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(crate::checkout_file(rel))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("real-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    files
}

/// Replays a capture and checks every HTTP response of it against the engine requests it
/// joins: as many as it asked for (`n`), seen whole, its prompt and completion tokens, all
/// three phases on the engine's clock in order. Returns the events and the completion tokens.
#[cfg(test)]
pub(crate) fn check_capture(
    doc: &serde_json::Value,
    kind: (Engine, Option<Version>),
    ver: &str,
) -> (Vec<EngineEvent>, u64) {
    let (t, events) = replay_capture(doc, kind);
    let malformed: Vec<_> = t.stats.undecodable.iter().filter(|(k, _)| *k != "foreign").collect();
    assert!(malformed.is_empty(), "{ver}: {malformed:?}");
    let responses = doc["responses"].as_array().unwrap();
    assert!(responses.len() >= 7, "{ver}");
    let mut joins = crate::correlate::requests::RequestJoin::of(&events);
    let mut completion = 0;
    for r in responses {
        let id = r["id"].as_str().unwrap();
        let kind = r["kind"].as_str().unwrap();
        let reqs = joins.join(1, id);
        assert_eq!(reqs.len() as u64, r["n"].as_u64().unwrap(), "{ver} {kind} {id}: engine requests");
        for q in &reqs {
            assert!(q.seen_from_start && !q.outputs_lost && !q.aborted, "{ver} {kind}: {q:?}");
            assert_eq!(q.prompt_tokens, r["prompt_tokens"].as_u64(), "{ver} {kind}: prompt tokens");
            assert_eq!(q.finish_reason.as_deref(), Some("length"), "{ver} {kind}");
        }
        let e = EnginePhases::merge(&reqs).unwrap();
        assert_eq!(e.output_tokens, r["completion_tokens"].as_u64().unwrap(), "{ver} {kind}: output tokens");
        completion += e.output_tokens;
        for (name, v) in [("queue", e.queue_s()), ("prefill", e.prefill_s()), ("decode", e.decode_s())] {
            assert!(v.is_some_and(|v| (0.0..30.0).contains(&v)), "{ver} {kind}: {name} {v:?}");
        }
        // The engine's own clock: first token after scheduling after queueing.
        assert!(e.queued_ns <= e.scheduled_ns && e.scheduled_ns <= e.first_token_ns, "{ver} {kind}: {e:?}");
    }
    let steps = events.iter().filter(|e| matches!(e, EngineEvent::Step(_))).count();
    eprintln!("{ver}: {} responses joined, {steps} steps, {} messages", responses.len(), t.stats.messages);
    (events, completion)
}
