//! The engine state machine: [`EngineTracker`] decodes each ZMTP message with its process's
//! engine, and rebuilds from the decoded messages the requests inside the engine and what each
//! step did; [`EngineStats`] counts what it could not use.

use std::collections::HashMap;

use super::{
    Decoded, Engine, EngineEvent, EngineRequest, EngineStep, EventType, Undecodable, sglang, strip_sampling_prefix,
    vllm, vllm_layouts,
};
use crate::{events::Direction, protocol::zmtp::Message};

/// Engine requests tracked per process at most; older ones are dropped and counted.
const MAX_REQUESTS: usize = 65_536;
/// A request with no message for this long is forgotten (its end was lost).
const REQUEST_IDLE_NS: u64 = 600 * 1_000_000_000;

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
    /// The parallel-sampling request being sent (SGLang): (input hash, API id, samples to come).
    sampling: Option<(u64, String, u32)>,
    /// KV-cache blocks of each engine (by index), from its ready message.
    kv_cache_blocks: HashMap<u32, u64>,
}

/// Rebuilds engine requests and steps from decoded messages, per process.
#[derive(Debug, Default)]
pub struct EngineTracker {
    /// What each process runs, and its release when found.
    kinds: HashMap<u32, (Engine, Option<super::Version>)>,
    procs: HashMap<u32, ProcState>,
    pub stats: EngineStats,
    /// Capture clock to Unix time, for the API server's wall-clock arrival stamps (made when
    /// the first one comes).
    clock: Option<crate::clock::Clock>,
}

impl EngineTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Says which engine a process runs (from its command line and installed packages).
    pub fn set_kind(&mut self, pid: u32, engine: Engine, version: Option<super::Version>) {
        self.kinds.insert(pid, (engine, version));
    }

    pub fn kind(&self, pid: u32) -> Option<Engine> {
        self.kinds.get(&pid).map(|k| k.0)
    }

    /// A ZMTP message on a connection of `pid`.
    pub fn message(&mut self, pid: u32, dir: Direction, msg: &Message, out: &mut Vec<EngineEvent>) {
        self.stats.messages += 1;
        self.stats.messages_with_gaps += msg.gaps as u64;
        let decoded = match self.kinds.get(&pid) {
            Some((Engine::Vllm, version)) => vllm::decode(*version, dir, msg),
            Some((Engine::Sglang, _)) => sglang::decode_message(dir, msg),
            // Unknown process: a pickle is SGLang's; else try vLLM's stable layout.
            None | Some((Engine::Other, _)) if msg.frames.first().and_then(|f| f.first()) == Some(&0x80) => {
                sglang::decode_message(dir, msg)
            }
            None | Some((Engine::Other, _)) => vllm::decode(None, dir, msg),
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
            Some((Engine::Vllm, Some(v))) => {
                vllm_layouts::for_version(*v).is_some_and(|l| l.request.external_req_id.is_none())
            }
            Some((Engine::Sglang, _)) => true,
            _ => false,
        }
    }

    fn apply(&mut self, pid: u32, now: u64, d: Decoded, out: &mut Vec<EngineEvent>) {
        let unsuffixed = self.unsuffixed(pid);
        let api_id = |id: &str| unsuffixed.then(|| strip_sampling_prefix(id).to_string());
        let st = self.procs.entry(pid).or_default();
        match d {
            Decoded::Ignored => {}
            Decoded::Ready { engine, kv_cache_blocks } => {
                st.kv_cache_blocks.insert(engine.unwrap_or(0), kv_cache_blocks);
            }
            Decoded::Many(list) => {
                for d in list {
                    self.apply(pid, now, d, out);
                }
            }
            Decoded::Sample { n, input, add } => {
                let mut add = *add;
                match (&mut st.sampling, &mut add) {
                    (Some((h, leader, left)), Decoded::Add { external_id, .. }) if *h == input && *left > 0 => {
                        *external_id = Some(leader.clone());
                        *left -= 1;
                    }
                    (_, Decoded::Add { request_id, .. }) => {
                        st.sampling = Some((input, request_id.clone(), n.saturating_sub(1)));
                    }
                    _ => {}
                }
                self.apply(pid, now, add, out);
            }
            Decoded::Add { request_id, external_id, prompt_tokens, ts_ns, queued_ns, arrival_unix_ns } => {
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
                r.arrival_unix_ns = arrival_unix_ns.or(r.arrival_unix_ns);
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
            Decoded::Outputs(mut o) => {
                self.stats.output_messages += 1;
                o.gauges.kv_cache_blocks = st.kv_cache_blocks.get(&o.engine.unwrap_or(0)).copied();
                if o.outputs.is_empty() {
                    if !o.gauges.is_empty() {
                        out.push(EngineEvent::Gauges { pid, engine: o.engine, ts_ns: o.ts_ns, gauges: o.gauges });
                    }
                    return;
                }
                let ts = o.ts_ns.unwrap_or(now);
                let mut step = EngineStep { pid, engine: o.engine, ts_ns: ts, gauges: o.gauges, ..Default::default() };
                let now_unix = self.clock.get_or_insert_with(crate::clock::Clock::new).unix_ns(now);
                // Prefix-cache use of the requests whose prefill ended here (prompt tokens,
                // cached tokens, requests), for engines that report no scheduler stats (SGLang).
                let mut prefix = (0u64, 0u64, 0u64);
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
                    if let Some(n) = ro.retractions {
                        r.preemptions = r.preemptions.max(n);
                    }
                    let t = ro.ts_ns.unwrap_or(ts);
                    if r.first_token_ns.is_none() && !r.first_output_lost {
                        if !r.seen_from_start {
                            // Its first output may have gone by before capture began.
                            self.stats.partial_requests += 1;
                        }
                        r.first_token_ns = Some(ro.first_token_ns.unwrap_or(t));
                        step.prompt_tokens += ro.prompt_tokens.or(r.prompt_tokens).unwrap_or(0);
                        step.first_tokens += 1;
                        if let (Some(p), Some(c)) = (ro.prompt_tokens.or(r.prompt_tokens), ro.cached_tokens) {
                            prefix = (prefix.0 + p, prefix.1 + c.min(p), prefix.2 + 1);
                        }
                        if ro.new_tokens >= 2 {
                            r.second_token_ns = r.first_token_ns;
                        }
                        if let Some(a) = r.arrival_unix_ns {
                            r.api_ttft_ns = now_unix.checked_sub(a);
                        }
                    } else if r.first_token_ns.is_some() && ro.new_tokens > 0 {
                        if r.second_token_ns.is_none() {
                            r.second_token_ns = Some(t);
                        }
                        if step.first_itl_ns.is_none() {
                            step.first_itl_ns = r.last_output_seen_ns.map(|l| now.saturating_sub(l));
                        }
                    }
                    if ro.new_tokens > 0 {
                        r.last_output_seen_ns = Some(now);
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
                if step.gauges.prefix_cache_queries.is_none() && prefix.2 > 0 {
                    let g = &mut step.gauges;
                    (g.prefix_cache_queries, g.prefix_cache_hits, g.prefix_cache_requests) =
                        (Some(prefix.0), Some(prefix.1), Some(prefix.2));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Outputs, Phases as _, RequestOutput};

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
                arrival_unix_ns: None,
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
        assert_eq!(r.second_token_s(), Some(1_000e-9), "first token at 2 us, second at 3 us");
        let steps: Vec<_> =
            ev.iter().filter_map(|e| if let EngineEvent::Step(s) = e { Some(s) } else { None }).collect();
        assert_eq!(steps.len(), 3);
        assert_eq!(
            steps.iter().map(|s| (s.first_tokens, s.phase())).collect::<Vec<_>>(),
            [(1, "prefill"), (0, "decode"), (0, "decode")]
        );
        assert_eq!(steps[0].prompt_tokens, 12);
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
        t.set_kind(1, Engine::Sglang, None);
        let mut ev = Vec::new();
        let add = Decoded::Add {
            request_id: "abc".into(),
            external_id: None,
            prompt_tokens: Some(3),
            ts_ns: 10,
            queued_ns: Some(10),
            arrival_unix_ns: None,
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
                arrival_unix_ns: None,
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
