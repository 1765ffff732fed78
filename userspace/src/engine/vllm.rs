//! vLLM v1's API server <-> EngineCore messages (msgspec msgpack in ZMTP frames), decoded with
//! the wire layout of the vLLM release the process runs ([`super::vllm_layouts`]).
//!
//! Seen from the API server (the traced side whose messages are used):
//! - egress, input socket (ROUTER): `[request type byte, msgpack payload, tensor buffers...]`;
//!   ADD carries an `EngineCoreRequest` array, ABORT a list of request ids.
//! - ingress, output socket (PULL): `[msgpack EngineCoreOutputs, tensor buffers...]`.
//!
//! The EngineCore's side of the same sockets has the directions swapped; its messages do not
//! fit these shapes and are counted as foreign. An unknown release is read with the positions
//! every known release shares ([`super::vllm_layouts::stable`]): requests, tokens and steps,
//! but no finish reasons or phase events, which would risk reading the wrong field.

use super::{
    Decoded, EngineGauges, EventType, Iteration, Outputs, RequestOutput, SpecDecode, Undecodable,
    vllm_layouts::{self, VllmLayout},
};
use crate::{
    events::Direction,
    protocol::{
        msgpack::{self, Value},
        zmtp::Message,
    },
};

/// Seconds (Python `time.monotonic()`) to ns.
fn ns(v: &Value<'_>) -> Option<u64> {
    super::engine_secs_to_ns(v.as_f64()?)
}

/// Field `i` of an array-like struct; a missing trailing field is its default (omitted by
/// msgspec's `omit_defaults`), read as nil.
fn field<'v, 'a>(a: &'v [Value<'a>], i: Option<usize>) -> Option<&'v Value<'a>> {
    a.get(i?).filter(|v| !v.is_nil())
}

pub fn decode(version: Option<(u16, u16, u16)>, dir: Direction, msg: &Message) -> Result<Decoded, Undecodable> {
    let layout = version.and_then(vllm_layouts::for_version);
    match dir {
        Direction::Egress => decode_request(layout, msg),
        Direction::Ingress => decode_outputs(layout, msg),
    }
}

fn decode_request(layout: Option<&'static VllmLayout>, msg: &Message) -> Result<Decoded, Undecodable> {
    let [ty, payload, ..] = msg.frames.as_slice() else {
        return Err(Undecodable::Foreign);
    };
    let &[ty] = ty.as_slice() else {
        return Err(Undecodable::Foreign);
    };
    let types = layout.map(|l| &l.request_types);
    let (add, abort) = types.map(|t| (t.add, t.abort)).unwrap_or((0, 1));
    if ty == add {
        let st = vllm_layouts::stable();
        let rl = layout.map(|l| &l.request);
        let id_at = rl.map(|r| r.request_id).or(st.request_id).ok_or(Undecodable::Malformed)?;
        let prompt_at = match rl {
            Some(r) => r.prompt_token_ids,
            None => st.prompt_token_ids,
        };
        let external_at = rl.and_then(|r| r.external_req_id);
        let whole;
        let prefix;
        // A long prompt makes an ADD larger than one capture: its head (request id, then the
        // prompt's token count in the array header) still arrives, so read as far as it goes.
        let (a, cut_prompt_len): (&[Value<'_>], Option<usize>) = if msg.gaps {
            prefix = msgpack::decode_array_prefix(payload).map_err(|_| Undecodable::Gaps)?;
            let cut = (prompt_at == Some(prefix.items.len())).then_some(prefix.cut_array_len).flatten();
            (&prefix.items, cut)
        } else {
            whole = msgpack::decode(payload).map_err(|_| Undecodable::Malformed)?.0;
            (whole.as_array().ok_or(Undecodable::Malformed)?, None)
        };
        let request_id = field(a, Some(id_at))
            .and_then(Value::as_str)
            .ok_or(if msg.gaps { Undecodable::Gaps } else { Undecodable::Malformed })?
            .to_string();
        let prompt_tokens =
            field(a, prompt_at).and_then(Value::as_array).map(|p| p.len()).or(cut_prompt_len).map(|n| n as u64);
        let external_id = field(a, external_at).and_then(Value::as_str).map(str::to_string);
        // `arrival_time`: the API server's time.time() when the request came in.
        let arrival_unix_ns =
            field(a, rl.and_then(|r| r.arrival_time)).and_then(Value::as_f64).and_then(super::engine_secs_to_ns);
        Ok(Decoded::Add { request_id, external_id, prompt_tokens, ts_ns: msg.ts_ns, queued_ns: None, arrival_unix_ns })
    } else if ty == abort {
        let (v, _) = msgpack::decode(payload).map_err(|_| gaps_or(msg, Undecodable::Malformed))?;
        let ids = v.as_array().ok_or(Undecodable::Malformed)?;
        let request_ids: Vec<String> = ids.iter().filter_map(Value::as_str).map(str::to_string).collect();
        if request_ids.len() != ids.len() {
            return Err(Undecodable::Malformed);
        }
        Ok(Decoded::Abort { request_ids })
    } else if ty < 0x10 {
        // START_DP_WAVE, UTILITY and the like.
        Ok(Decoded::Ignored)
    } else {
        Err(Undecodable::Foreign)
    }
}

fn gaps_or(msg: &Message, why: Undecodable) -> Undecodable {
    if msg.gaps { Undecodable::Gaps } else { why }
}

fn decode_outputs(layout: Option<&'static VllmLayout>, msg: &Message) -> Result<Decoded, Undecodable> {
    let Some(payload) = msg.frames.first() else {
        return Err(Undecodable::Foreign);
    };
    // The engine's ready message is a map (a dataclass) naming its KV-cache size.
    if matches!(payload.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        let (v, _) = msgpack::decode(payload).map_err(|_| gaps_or(msg, Undecodable::Foreign))?;
        let Some(kv_cache_blocks) = v.get("num_gpu_blocks").and_then(Value::as_u64) else {
            return Err(Undecodable::Foreign);
        };
        let engine = v.get("data_parallel_rank").and_then(Value::as_u64).map(|e| e as u32);
        return Ok(Decoded::Ready { engine, kv_cache_blocks });
    }
    // The input side's first frame is one type byte; outputs start with an array header.
    if payload.len() < 2 || !matches!(payload[0], 0x90..=0x9f | 0xdc | 0xdd) {
        return Err(Undecodable::Foreign);
    }
    let (v, _) = msgpack::decode(payload).map_err(|_| gaps_or(msg, Undecodable::Malformed))?;
    let a = v.as_array().ok_or(Undecodable::Malformed)?;
    let st = vllm_layouts::stable();
    let ol = layout.map(|l| &l.outputs);
    if let Some(ol) = ol
        && a.len() > ol.len
    {
        return Err(Undecodable::Malformed);
    }
    let outputs_at = ol.map(|o| o.outputs).or(st.outputs).ok_or(Undecodable::Malformed)?;
    let engine_at = match ol {
        Some(o) => o.engine_index,
        None => st.engine_index,
    };
    let engine = field(a, engine_at).map(|v| v.as_u64().map(|e| e as u32).ok_or(Undecodable::Malformed)).transpose()?;
    let ts_ns = ol.and_then(|o| o.timestamp).and_then(|i| field(a, Some(i))).and_then(ns);
    let gauges = ol
        .and_then(|o| o.scheduler_stats)
        .and_then(|i| field(a, Some(i)))
        .map(|s| gauges(s, layout))
        .unwrap_or_default();
    let list = match field(a, Some(outputs_at)) {
        None => &[][..],
        Some(v) => v.as_array().ok_or(Undecodable::Malformed)?,
    };
    let mut outputs = Vec::with_capacity(list.len());
    for o in list {
        outputs.push(output(o, layout)?);
    }
    Ok(Decoded::Outputs(Outputs { engine, ts_ns, outputs, gauges }))
}

fn output(o: &Value<'_>, layout: Option<&'static VllmLayout>) -> Result<RequestOutput, Undecodable> {
    let a = o.as_array().ok_or(Undecodable::Malformed)?;
    let st = vllm_layouts::stable();
    let l = layout.map(|l| &l.output);
    if let Some(l) = l
        && a.len() > l.len
    {
        return Err(Undecodable::Malformed);
    }
    let id_at = l.map(|l| l.request_id).or(st.request_id_out).ok_or(Undecodable::Malformed)?;
    let request_id = field(a, Some(id_at)).and_then(Value::as_str).ok_or(Undecodable::Malformed)?.to_string();
    let tok_at = l.map(|l| l.new_token_ids).or(st.new_token_ids).ok_or(Undecodable::Malformed)?;
    let new_tokens = match field(a, Some(tok_at)) {
        None => 0,
        Some(Value::Array(t)) => t.len() as u64,
        // msgspec may encode a token array as a tensor/ndarray ext; its length is unknown.
        Some(_) => return Err(Undecodable::Malformed),
    };
    let mut r = RequestOutput { request_id, new_tokens, ..Default::default() };
    let Some((l, full)) = l.zip(layout) else {
        return Ok(r);
    };
    if let Some(v) = field(a, l.finish_reason) {
        let i = v.as_u64().ok_or(Undecodable::Malformed)? as usize;
        r.finish_reason = Some(full.finish_reasons.get(i).map(|s| s.to_string()).unwrap_or_else(|| format!("{i}")));
    }
    if let Some(evs) = field(a, l.events) {
        for e in evs.as_array().ok_or(Undecodable::Malformed)? {
            // EngineCoreEvent is a plain struct: a map by name (or, in some releases, a pair).
            let (ty, ts) = match e {
                Value::Map(_) => (e.get("type"), e.get("timestamp")),
                Value::Array(p) => (p.first(), p.get(1)),
                _ => return Err(Undecodable::Malformed),
            };
            let (Some(ty), Some(ts)) = (ty.and_then(Value::as_i64), ts.and_then(ns)) else {
                return Err(Undecodable::Malformed);
            };
            let t = &full.event_types;
            let ty = if ty == t.queued {
                EventType::Queued
            } else if ty == t.scheduled {
                EventType::Scheduled
            } else if ty == t.preempted {
                EventType::Preempted
            } else {
                continue;
            };
            r.events.push((ty, ts));
        }
    }
    if let Some(v) = field(a, l.num_cached_tokens) {
        r.cached_tokens = v.as_u64();
    }
    if let Some(p) = field(a, l.prefill_stats) {
        r.cached_tokens = p.get("num_cached_tokens").and_then(Value::as_u64).or(r.cached_tokens);
        r.prompt_tokens = p.get("num_prompt_tokens").and_then(Value::as_u64);
    }
    Ok(r)
}

/// `SchedulerStats` is a dataclass: a map by field name, and so are the stats inside it.
fn gauges(s: &Value<'_>, _layout: Option<&'static VllmLayout>) -> EngineGauges {
    let u = |k: &str| s.get(k).and_then(Value::as_u64);
    let prefix = s.get("prefix_cache_stats");
    let pu = |k: &str| prefix.and_then(|p| p.get(k)).and_then(Value::as_u64);
    let spec_decode = s.get("spec_decoding_stats").filter(|v| matches!(v, Value::Map(_))).map(|d| {
        let du = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
        SpecDecode {
            num_spec_tokens: du("num_spec_tokens"),
            drafts: du("num_drafts"),
            draft_tokens: du("num_draft_tokens"),
            accepted_tokens: du("num_accepted_tokens"),
        }
    });
    let iteration = s.get("iteration_details").filter(|v| matches!(v, Value::Map(_))).map(|d| {
        let du = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
        Iteration {
            prefill_requests: du("num_ctx_requests"),
            prefill_tokens: du("num_ctx_tokens"),
            decode_requests: du("num_generation_requests"),
            decode_tokens: du("num_generation_tokens"),
            elapsed_s: d.get("elapsed_ms").and_then(Value::as_f64).map(|ms| ms / 1e3),
        }
    });
    EngineGauges {
        running: u("num_running_reqs"),
        waiting: u("num_waiting_reqs"),
        kv_cache_usage: s.get("kv_cache_usage").or_else(|| s.get("gpu_cache_usage")).and_then(Value::as_f64),
        prefix_cache_queries: pu("queries"),
        prefix_cache_hits: pu("hits"),
        prefix_cache_requests: pu("requests"),
        spec_decode,
        iteration,
        kv_cache_blocks: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EventType;

    /// A minimal msgpack writer for building messages in vLLM 0.32's layout.
    enum M {
        Nil,
        I(i64),
        F(f64),
        S(&'static str),
        A(Vec<M>),
        Map(Vec<(&'static str, M)>),
    }

    fn enc(m: &M, out: &mut Vec<u8>) {
        match m {
            M::Nil => out.push(0xc0),
            M::I(i) if (0..128).contains(i) => out.push(*i as u8),
            M::I(i) => {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            }
            M::F(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            M::S(s) => {
                out.push(0xd9);
                out.push(s.len() as u8);
                out.extend_from_slice(s.as_bytes());
            }
            M::A(a) => {
                out.push(0xdc);
                out.extend_from_slice(&(a.len() as u16).to_be_bytes());
                a.iter().for_each(|x| enc(x, out));
            }
            M::Map(kv) => {
                out.push(0xde);
                out.extend_from_slice(&(kv.len() as u16).to_be_bytes());
                for (k, v) in kv {
                    enc(&M::S(k), out);
                    enc(v, out);
                }
            }
        }
    }

    fn bytes(m: M) -> Vec<u8> {
        let mut v = Vec::new();
        enc(&m, &mut v);
        v
    }

    fn msg(frames: Vec<Vec<u8>>) -> Message {
        Message { ts_ns: 5_000_000_000, frames, gaps: false }
    }

    /// EngineCoreOutput (18 fields in 0.32); trailing defaults omitted as msgspec does.
    fn output(id: &'static str, tokens: usize, finish: Option<i64>, events: Vec<(i64, f64)>) -> M {
        let mut f = vec![M::S(id), M::A((0..tokens).map(|t| M::I(t as i64 + 100)).collect())];
        f.extend([M::Nil, M::Nil, M::Nil]);
        f.push(finish.map_or(M::Nil, M::I));
        f.push(M::Nil);
        f.push(if events.is_empty() {
            M::Nil
        } else {
            M::A(events.into_iter().map(|(t, ts)| M::Map(vec![("type", M::I(t)), ("timestamp", M::F(ts))])).collect())
        });
        f.extend([M::Nil, M::Nil, M::Nil]);
        f.push(M::Map(vec![("num_prompt_tokens", M::I(12)), ("num_cached_tokens", M::I(4))]));
        M::A(f)
    }

    fn outputs(list: Vec<M>) -> M {
        M::A(vec![
            M::I(1),
            M::A(list),
            M::Map(vec![("num_running_reqs", M::I(2)), ("num_waiting_reqs", M::I(1)), ("kv_cache_usage", M::F(0.25))]),
            M::F(100.5),
        ])
    }

    const V032: Option<(u16, u16, u16)> = Some((0, 32, 0));

    #[test]
    fn outputs_of_0_32() {
        let p = bytes(outputs(vec![
            output("chatcmpl-a-12345678", 1, None, vec![(1, 100.25), (2, 100.375)]),
            output("chatcmpl-b-87654321", 2, Some(1), vec![]),
        ]));
        let Ok(Decoded::Outputs(o)) = decode(V032, Direction::Ingress, &msg(vec![p.clone()])) else {
            panic!("not decoded")
        };
        assert_eq!((o.engine, o.ts_ns), (Some(1), Some(100_500_000_000)));
        assert_eq!((o.gauges.running, o.gauges.waiting, o.gauges.kv_cache_usage), (Some(2), Some(1), Some(0.25)));
        assert_eq!(o.outputs.len(), 2);
        let a = &o.outputs[0];
        assert_eq!(a.events, vec![(EventType::Queued, 100_250_000_000), (EventType::Scheduled, 100_375_000_000)]);
        assert_eq!((a.new_tokens, a.cached_tokens, a.prompt_tokens), (1, Some(4), Some(12)));
        assert_eq!(o.outputs[1].finish_reason.as_deref(), Some("length"));
        // An unknown release: ids and tokens only, never a guessed finish reason or event.
        let Ok(Decoded::Outputs(o)) = decode(Some((9, 0, 0)), Direction::Ingress, &msg(vec![p])) else {
            panic!("not decoded with the stable layout")
        };
        assert_eq!(o.outputs[1].new_tokens, 2);
        assert!(o.outputs.iter().all(|r| r.finish_reason.is_none() && r.events.is_empty()));
    }

    /// SchedulerStats with prefix-cache, speculative-decoding and iteration details, as vLLM
    /// 0.32's scheduler sends them (dataclasses: maps by field name).
    #[test]
    fn scheduler_reports_of_0_32() {
        let stats = M::Map(vec![
            ("num_running_reqs", M::I(3)),
            ("num_waiting_reqs", M::I(0)),
            ("kv_cache_usage", M::F(0.5)),
            (
                "prefix_cache_stats",
                M::Map(vec![("reset", M::Nil), ("requests", M::I(2)), ("queries", M::I(96)), ("hits", M::I(32))]),
            ),
            (
                "spec_decoding_stats",
                M::Map(vec![
                    ("num_spec_tokens", M::I(3)),
                    ("num_drafts", M::I(2)),
                    ("num_draft_tokens", M::I(6)),
                    ("num_accepted_tokens", M::I(5)),
                    ("num_accepted_tokens_per_pos", M::A(vec![M::I(2), M::I(2), M::I(1)])),
                ]),
            ),
            (
                "iteration_details",
                M::Map(vec![
                    ("iteration_index", M::I(7)),
                    ("num_ctx_requests", M::I(1)),
                    ("num_ctx_tokens", M::I(40)),
                    ("num_generation_requests", M::I(2)),
                    ("num_generation_tokens", M::I(2)),
                    ("elapsed_ms", M::F(12.5)),
                ]),
            ),
        ]);
        let p = bytes(M::A(vec![M::I(0), M::A(vec![]), stats, M::F(100.5)]));
        let Ok(Decoded::Outputs(o)) = decode(V032, Direction::Ingress, &msg(vec![p])) else { panic!("not decoded") };
        let g = o.gauges;
        assert_eq!(
            (g.prefix_cache_requests, g.prefix_cache_queries, g.prefix_cache_hits),
            (Some(2), Some(96), Some(32))
        );
        assert_eq!(
            g.spec_decode,
            Some(SpecDecode { num_spec_tokens: 3, drafts: 2, draft_tokens: 6, accepted_tokens: 5 })
        );
        assert_eq!(
            g.iteration,
            Some(Iteration {
                prefill_requests: 1,
                prefill_tokens: 40,
                decode_requests: 2,
                decode_tokens: 2,
                elapsed_s: Some(0.0125)
            })
        );
        // Without them (drafting off, details off): nothing invented.
        let p = bytes(outputs(vec![]));
        let Ok(Decoded::Outputs(o)) = decode(V032, Direction::Ingress, &msg(vec![p])) else { panic!("not decoded") };
        assert_eq!((o.gauges.spec_decode, o.gauges.iteration, o.gauges.prefix_cache_queries), (None, None, None));
    }

    /// The engine core's first message to its API server (0.32's `EngineCoreReadyResponse`, a
    /// dataclass: a map), and a map that is not it.
    #[test]
    fn ready_message_gives_the_kv_cache_size() {
        let ready = M::Map(vec![
            ("max_model_len", M::I(512)),
            ("num_gpu_blocks", M::I(4096)),
            ("block_size", M::I(16)),
            ("dtype", M::S("float32")),
            ("data_parallel_rank", M::I(1)),
        ]);
        let Ok(d) = decode(V032, Direction::Ingress, &msg(vec![bytes(ready)])) else { panic!("not decoded") };
        assert_eq!(d, Decoded::Ready { engine: Some(1), kv_cache_blocks: 4096 });
        let other = M::Map(vec![("status", M::S("HELLO"))]);
        assert_eq!(decode(V032, Direction::Ingress, &msg(vec![bytes(other)])), Err(Undecodable::Foreign));
    }

    #[test]
    fn requests_of_0_32() {
        let mut add = vec![M::S("chatcmpl-a-12345678"), M::A((0..7).map(M::I).collect())];
        add.extend((2..16).map(|_| M::Nil));
        add.push(M::S("chatcmpl-a"));
        let m = msg(vec![vec![0], bytes(M::A(add))]);
        assert_eq!(
            decode(V032, Direction::Egress, &m),
            Ok(Decoded::Add {
                request_id: "chatcmpl-a-12345678".into(),
                external_id: Some("chatcmpl-a".into()),
                prompt_tokens: Some(7),
                ts_ns: 5_000_000_000,
                queued_ns: None,
                arrival_unix_ns: None,
            })
        );
        let m = msg(vec![vec![1], bytes(M::A(vec![M::S("x"), M::S("y")]))]);
        assert_eq!(
            decode(V032, Direction::Egress, &m),
            Ok(Decoded::Abort { request_ids: vec!["x".into(), "y".into()] })
        );
        assert_eq!(decode(V032, Direction::Egress, &msg(vec![vec![3], vec![0x90]])), Ok(Decoded::Ignored));
    }

    #[test]
    fn an_add_larger_than_the_capture_keeps_its_id_and_prompt_length() {
        // 60,000 prompt tokens (about 180 KB of msgpack), cut after 128 KiB by the capture.
        let mut add = vec![M::S("cmpl-long-12345678"), M::A((0..60_000).map(|i| M::I(1000 + i % 30_000)).collect())];
        add.extend((2..16).map(|_| M::Nil));
        add.push(M::S("cmpl-long"));
        let mut p = bytes(M::A(add));
        assert!(p.len() > 170_000);
        p.truncate(128 << 10);
        let m = Message { gaps: true, ..msg(vec![vec![0], p.clone()]) };
        assert_eq!(
            decode(V032, Direction::Egress, &m),
            Ok(Decoded::Add {
                request_id: "cmpl-long-12345678".into(),
                // The external id is past the cut: the join falls back to the engine id.
                external_id: None,
                prompt_tokens: Some(60_000),
                ts_ns: 5_000_000_000,
                queued_ns: None,
                arrival_unix_ns: None,
            })
        );
        // Cut inside the id itself: nothing is guessed.
        p.truncate(6);
        let m = Message { gaps: true, ..msg(vec![vec![0], p]) };
        assert_eq!(decode(V032, Direction::Egress, &m), Err(Undecodable::Gaps));
    }

    #[test]
    fn the_engines_side_and_garbage_are_not_misread() {
        // The EngineCore receives ADDs (ingress) and sends outputs (egress): neither fits.
        let add = msg(vec![vec![0], bytes(M::A(vec![M::S("id")]))]);
        assert_eq!(decode(V032, Direction::Ingress, &add), Err(Undecodable::Foreign));
        let out = msg(vec![bytes(outputs(vec![]))]);
        assert_eq!(decode(V032, Direction::Egress, &out), Err(Undecodable::Foreign));
        // More fields than the release declares: a different release, not this layout.
        let long = M::A((0..12).map(M::I).collect());
        assert_eq!(decode(V032, Direction::Ingress, &msg(vec![bytes(long)])), Err(Undecodable::Malformed));
        // Truncated by a capture gap.
        let mut p = bytes(outputs(vec![output("a", 1, None, vec![])]));
        p.truncate(p.len() / 2);
        let m = Message { gaps: true, ..msg(vec![p]) };
        assert_eq!(decode(V032, Direction::Ingress, &m), Err(Undecodable::Gaps));
        assert!(decode(V032, Direction::Ingress, &msg(vec![b"\x92garbage".to_vec()])).is_err());
    }
}

#[cfg(test)]
mod layout_table {
    use crate::engine::vllm_layouts::{LAYOUTS, for_version};

    /// The generated table agrees with the field lists read from every release's source
    /// (tests/vllm/layouts.json), so neither can drift from the other.
    #[test]
    fn table_matches_every_release() {
        let path = crate::checkout_file("tests/vllm/layouts.json");
        let releases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(releases.len() >= 40, "{} releases", releases.len());
        for r in &releases {
            let v = crate::process::version::triple(r["version"].as_str().unwrap()).unwrap();
            let l = for_version(v).unwrap_or_else(|| panic!("no layout for {v:?}"));
            let p = &r["positions"];
            let u = |x: &serde_json::Value| x.as_u64().map(|n| n as usize);
            assert_eq!(Some(l.outputs.outputs), u(&p["outputs"]["outputs"]), "{v:?}");
            assert_eq!(l.outputs.len, p["outputs"]["len"].as_u64().unwrap() as usize, "{v:?}");
            assert_eq!(l.outputs.timestamp, u(&p["outputs"]["timestamp"]), "{v:?}");
            assert_eq!(Some(l.output.request_id), u(&p["output"]["request_id"]), "{v:?}");
            assert_eq!(l.output.finish_reason, u(&p["output"]["finish_reason"]), "{v:?}");
            assert_eq!(l.output.events, u(&p["output"]["events"]), "{v:?}");
            assert_eq!(l.output.len, p["output"]["len"].as_u64().unwrap() as usize, "{v:?}");
            assert_eq!(l.request.prompt_token_ids, u(&p["request"]["prompt_token_ids"]), "{v:?}");
            assert_eq!(l.request.external_req_id, u(&p["request"]["external_req_id"]), "{v:?}");
            let reasons: Vec<&str> =
                p["finish_reasons"].as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
            assert_eq!(l.finish_reasons, reasons.as_slice(), "{v:?}");
        }
        // Ranges are ordered and disjoint.
        for w in LAYOUTS.windows(2) {
            assert!(w[0].last < w[1].first);
        }
        assert!(for_version((0, 7, 3)).is_none() && for_version((9, 0, 0)).is_none());
    }
}

#[cfg(test)]
mod samples {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Messages encoded by msgspec from every release range's own declarations
    /// (tests/vllm/make_samples.py) decode to what was put in, with each release's layout.
    #[test]
    fn every_release_layout_decodes() {
        let path = crate::checkout_file("tests/data/vllm/layout-samples.json");
        let samples: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(samples.len() >= 20);
        for s in &samples {
            let ver = s["version"].as_str().unwrap();
            let v = crate::process::version::triple(ver);
            let e = &s["expect"];
            let add = Message { ts_ns: 1, frames: vec![vec![0], hex(s["add"].as_str().unwrap())], gaps: false };
            match decode(v, Direction::Egress, &add) {
                Ok(Decoded::Add { request_id, external_id, prompt_tokens, .. }) => {
                    assert_eq!(request_id, "chatcmpl-abc123-1a2b3c4d", "{ver}");
                    assert_eq!(prompt_tokens, Some(7), "{ver}");
                    assert_eq!(external_id.as_deref(), e["external_id"].as_str(), "{ver}");
                }
                other => panic!("{ver}: ADD decoded as {other:?}"),
            }
            let m = Message { ts_ns: 1, frames: vec![hex(s["outputs"].as_str().unwrap())], gaps: false };
            let Ok(Decoded::Outputs(o)) = decode(v, Direction::Ingress, &m) else {
                panic!("{ver}: outputs not decoded: {:?}", decode(v, Direction::Ingress, &m))
            };
            assert_eq!(o.engine, e["engine"].as_u64().map(|n| n as u32), "{ver}");
            assert_eq!(o.ts_ns, e["timestamp_ns"].as_u64(), "{ver}");
            assert_eq!(o.gauges.running.is_some(), e["gauges"].as_bool().unwrap(), "{ver}");
            assert_eq!(o.outputs.len(), 2, "{ver}");
            let (a, b) = (&o.outputs[0], &o.outputs[1]);
            assert_eq!(
                (a.request_id.as_str(), a.new_tokens, a.finish_reason.as_deref()),
                ("chatcmpl-abc123-1a2b3c4d", 1, None),
                "{ver}"
            );
            assert_eq!(
                a.events,
                vec![(EventType::Queued, 1_000_250_000_000), (EventType::Scheduled, 1_000_500_000_000)],
                "{ver}"
            );
            assert_eq!(a.cached_tokens, e["cached_tokens"].as_u64(), "{ver}");
            assert_eq!((b.new_tokens, b.finish_reason.as_deref()), (3, e["finish_reason"].as_str()), "{ver}");
            assert_eq!(b.events, vec![(EventType::Preempted, 1_000_750_000_000)], "{ver}");
        }
    }
}

#[cfg(test)]
mod real_captures {
    use crate::engine::Engine;

    /// Replays the API server's sendto/recvfrom bytes of real vLLM releases, captured with
    /// strace after the server started (tests/vllm/capture.py), through the ZMTP parser and the
    /// release's layout; every HTTP response of the capture must find its engine requests,
    /// with the response's token counts and all four phases.
    #[test]
    fn every_response_of_real_releases_finds_its_engine_requests() {
        let files = crate::engine::real_capture_files("tests/data/vllm");
        assert!(files.len() >= 2, "{files:?}");
        for f in &files {
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let ver = doc["vllm_version"].as_str().unwrap();
            let version = crate::process::version::triple(ver);
            assert!(super::vllm_layouts::for_version(version.unwrap()).is_some(), "{ver}: no layout");
            crate::engine::check_capture(&doc, (Engine::Vllm, version), ver);
        }
    }
}
