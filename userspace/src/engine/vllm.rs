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
    Decoded, EngineGauges, EventType, Outputs, RequestOutput, Undecodable,
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
    let s = v.as_f64()?;
    (s.is_finite() && s > 0.0 && s < 1e10).then(|| (s * 1e9).round() as u64)
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
        let (v, _) = msgpack::decode(payload).map_err(|_| gaps_or(msg, Undecodable::Malformed))?;
        let a = v.as_array().ok_or(Undecodable::Malformed)?;
        let st = vllm_layouts::stable();
        let rl = layout.map(|l| &l.request);
        let id_at = rl.map(|r| r.request_id).or(st.request_id).ok_or(Undecodable::Malformed)?;
        let request_id = field(a, Some(id_at)).and_then(Value::as_str).ok_or(Undecodable::Malformed)?.to_string();
        let prompt_at = rl.and_then(|r| r.prompt_token_ids).or(st.prompt_token_ids);
        let prompt_tokens = field(a, prompt_at).and_then(Value::as_array).map(|p| p.len() as u64);
        let external_id = rl
            .and_then(|r| r.external_req_id)
            .and_then(|i| field(a, Some(i)))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Decoded::Add { request_id, external_id, prompt_tokens, ts_ns: msg.ts_ns })
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
    let engine = field(a, ol.and_then(|o| o.engine_index).or(st.engine_index))
        .map(|v| v.as_u64().map(|e| e as u32).ok_or(Undecodable::Malformed))
        .transpose()?;
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

/// `SchedulerStats` is a dataclass: a map by field name.
fn gauges(s: &Value<'_>, _layout: Option<&'static VllmLayout>) -> EngineGauges {
    let u = |k: &str| s.get(k).and_then(Value::as_u64);
    let prefix = s.get("prefix_cache_stats");
    EngineGauges {
        running: u("num_running_reqs"),
        waiting: u("num_waiting_reqs"),
        kv_cache_usage: s.get("kv_cache_usage").or_else(|| s.get("gpu_cache_usage")).and_then(Value::as_f64),
        prefix_cache_queries: prefix.and_then(|p| p.get("queries")).and_then(Value::as_u64),
        prefix_cache_hits: prefix.and_then(|p| p.get("hits")).and_then(Value::as_u64),
    }
}
