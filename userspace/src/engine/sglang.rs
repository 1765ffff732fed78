//! SGLang's tokenizer manager <-> scheduler/detokenizer messages: pickled Python objects in
//! ZMTP frames (`send_pyobj`), read with [`crate::protocol::pickle`], which executes nothing.
//!
//! Seen from the traced main process (HTTP server + TokenizerManager):
//! - egress to the scheduler: `TokenizedGenerateReqInput` / `TokenizedEmbeddingReqInput` (a
//!   request enters the engine: `rid`, `input_ids`), their `Batch...` forms, `AbortReq`;
//! - ingress from the detokenizer: `BatchStrOutput` / `BatchEmbeddingOutput` (`BatchStrOut`...
//!   before 0.4.7): per `rids[i]` the new `output_ids[i]`, `finished_reasons[i]`
//!   (`{"type": "stop"|"length"|"abort", ...}` or None), `prompt_tokens`, `cached_tokens`, and
//!   with `--enable-metrics` `time_stats[i]`, the scheduler's `SchedulerReqTimeStats`:
//!   `wait_queue_entry_time`, `forward_entry_time`, `prefill_finished_time` (`time.perf_counter()`,
//!   which is CLOCK_MONOTONIC on Linux, the clock of every other timestamp here).
//!
//! Classes are found by name whatever their form: dataclasses (NEWOBJ + BUILD with a dict
//! state, older releases) or msgspec Structs (`msgspec._utils.rebuild(cls, {field: value})`,
//! 0.5.x). Other processes' messages (scheduler -> detokenizer) are counted as foreign, so the
//! whole process tree can be traced without double counting.

use super::{Decoded, EventType, Outputs, RequestOutput, Undecodable};
use crate::{
    events::Direction,
    protocol::{
        pickle::{self, PyValue},
        zmtp::Message,
    },
};

/// (class short name, fields) of a pickled object, in either form.
fn object(v: &PyValue) -> Option<(&str, &PyValue)> {
    let PyValue::Object { class, args, state } = v else { return None };
    if class == "msgspec._utils.rebuild" {
        let (PyValue::Global { name, .. }, fields) = (args.first()?, args.get(1)?) else { return None };
        return Some((name.as_str(), fields));
    }
    let short = class.rsplit('.').next().unwrap_or(class);
    Some((short, state.as_deref()?))
}

fn get<'v>(fields: &'v PyValue, key: &str) -> Option<&'v PyValue> {
    fields.get(key).filter(|v| !v.is_none())
}

fn list<'v>(fields: &'v PyValue, key: &str) -> &'v [PyValue] {
    get(fields, key).and_then(PyValue::as_list).unwrap_or(&[])
}

pub fn decode_message(dir: Direction, msg: &Message) -> Result<Decoded, Undecodable> {
    let [payload] = msg.frames.as_slice() else {
        return Err(Undecodable::Foreign);
    };
    // Pickles of protocol 2+ start with PROTO; anything else is not SGLang's.
    if payload.first() != Some(&0x80) {
        return Err(Undecodable::Foreign);
    }
    let v = pickle::parse(payload).map_err(|_| if msg.gaps { Undecodable::Gaps } else { Undecodable::Malformed })?;
    let (class, fields) = object(&v).ok_or(Undecodable::Foreign)?;
    match (dir, class) {
        (Direction::Egress, "TokenizedGenerateReqInput" | "TokenizedEmbeddingReqInput") => {
            add(fields, msg.ts_ns).ok_or(Undecodable::Malformed)
        }
        (Direction::Egress, "BatchTokenizedGenerateReqInput" | "BatchTokenizedEmbeddingReqInput") => {
            let batch = list(fields, "batch");
            let adds: Option<Vec<Decoded>> =
                batch.iter().map(|r| object(r).and_then(|(_, f)| add(f, msg.ts_ns))).collect();
            adds.map(Decoded::Many).ok_or(Undecodable::Malformed)
        }
        (Direction::Egress, "AbortReq") => {
            let rid = get(fields, "rid").and_then(PyValue::as_str).map(str::to_string);
            Ok(Decoded::Abort { request_ids: rid.into_iter().collect() })
        }
        (
            Direction::Ingress,
            "BatchStrOutput" | "BatchStrOut" | "BatchEmbeddingOutput" | "BatchEmbeddingOut" | "BatchMultimodalOutput",
        ) => outputs(fields),
        _ => Err(Undecodable::Foreign),
    }
}

fn add(fields: &PyValue, ts_ns: u64) -> Option<Decoded> {
    let rid = get(fields, "rid")?.as_str()?.to_string();
    let prompt_tokens = get(fields, "input_ids").and_then(PyValue::as_list).map(|l| l.len() as u64);
    Some(Decoded::Add { request_id: rid, external_id: None, prompt_tokens, ts_ns, queued_ns: Some(ts_ns) })
}

fn outputs(fields: &PyValue) -> Result<Decoded, Undecodable> {
    let rids = list(fields, "rids");
    let (reasons, out_ids) = (list(fields, "finished_reasons"), list(fields, "output_ids"));
    let (prompt, cached) = (list(fields, "prompt_tokens"), list(fields, "cached_tokens"));
    let stats = list(fields, "time_stats");
    let u = |l: &[PyValue], i: usize| l.get(i).and_then(PyValue::as_i64).and_then(|n| u64::try_from(n).ok());
    let mut outputs = Vec::with_capacity(rids.len());
    for (i, rid) in rids.iter().enumerate() {
        let request_id = rid.as_str().ok_or(Undecodable::Malformed)?.to_string();
        let finish_reason = reasons.get(i).filter(|r| !r.is_none()).map(|r| {
            let ty = r.get("type").and_then(PyValue::as_str).or_else(|| r.as_str());
            ty.unwrap_or("unknown").to_string()
        });
        // The scheduler's stamps, when it keeps them (0.0 until a stage is reached).
        let st = stats.get(i).and_then(object).map(|(_, f)| f);
        let stamp = |k: &str| st.and_then(|f| get(f, k)).and_then(PyValue::as_f64).and_then(super::engine_secs_to_ns);
        let events = [(EventType::Queued, "wait_queue_entry_time"), (EventType::Scheduled, "forward_entry_time")]
            .into_iter()
            .filter_map(|(ty, k)| Some((ty, stamp(k)?)))
            .collect();
        outputs.push(RequestOutput {
            request_id,
            new_tokens: out_ids.get(i).and_then(PyValue::as_list).map_or(0, |l| l.len() as u64),
            finish_reason,
            events,
            cached_tokens: u(cached, i),
            prompt_tokens: u(prompt, i),
            ts_ns: None,
            first_token_ns: stamp("prefill_finished_time"),
        });
    }
    let engine = list(fields, "dp_ranks").first().and_then(PyValue::as_i64).and_then(|n| u32::try_from(n).ok());
    Ok(Decoded::Outputs(Outputs { engine, ts_ns: None, outputs, gauges: Default::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(hex: &str) -> Message {
        let b = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        Message { ts_ns: 7, frames: vec![b], gaps: false }
    }

    /// Pickles made by SGLang's own classes (tests/fixtures/sglang_pickles.py).
    #[test]
    fn sglang_own_pickles() {
        let path = crate::checkout_file("tests/data/sglang/pickles.json");
        let all: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(!all.is_empty());
        for s in &all {
            let ver = s["version"].as_str().unwrap();
            let add = decode_message(Direction::Egress, &msg(s["generate"].as_str().unwrap()));
            assert_eq!(
                add,
                Ok(Decoded::Add {
                    request_id: "rid-1".into(),
                    external_id: None,
                    prompt_tokens: Some(5),
                    ts_ns: 7,
                    queued_ns: Some(7)
                }),
                "{ver}"
            );
            let Ok(Decoded::Outputs(o)) = decode_message(Direction::Ingress, &msg(s["batch_out"].as_str().unwrap()))
            else {
                panic!("{ver}: batch output not decoded")
            };
            let got: Vec<(&str, u64, Option<&str>)> =
                o.outputs.iter().map(|r| (r.request_id.as_str(), r.new_tokens, r.finish_reason.as_deref())).collect();
            assert_eq!(
                got,
                vec![("rid-1", 1, None), ("rid-2", 2, Some("stop")), ("rid-3", 3, Some("length"))],
                "{ver}"
            );
            assert_eq!(o.outputs[1].prompt_tokens, Some(6), "{ver}");
            assert_eq!(o.outputs[2].cached_tokens, Some(2), "{ver}");
            assert!(o.outputs.iter().all(|r| r.events.is_empty() && r.first_token_ns.is_none()), "{ver}");
            // With the scheduler's timestamps (--enable-metrics).
            if let Some(timed) = s["batch_out_timed"].as_str() {
                let Ok(Decoded::Outputs(o)) = decode_message(Direction::Ingress, &msg(timed)) else {
                    panic!("{ver}: timed batch output not decoded")
                };
                let a = &o.outputs[0];
                assert_eq!(
                    a.events,
                    vec![(EventType::Queued, 100_250_000_000), (EventType::Scheduled, 100_500_000_000)]
                );
                assert_eq!(a.first_token_ns, Some(101_000_000_000), "{ver}");
                assert_eq!(o.outputs[1].first_token_ns, Some(101_500_000_000), "{ver}");
            }
            assert_eq!(
                decode_message(Direction::Egress, &msg(s["abort"].as_str().unwrap())),
                Ok(Decoded::Abort { request_ids: vec!["rid-2".into()] }),
                "{ver}"
            );
            // The scheduler -> detokenizer message is another process's business.
            assert_eq!(
                decode_message(Direction::Ingress, &msg(s["token_ids_out"].as_str().unwrap())),
                Err(Undecodable::Foreign),
                "{ver}"
            );
        }
    }

    #[test]
    fn not_sglang() {
        let m = Message { ts_ns: 1, frames: vec![b"\x92\x01\x02".to_vec()], gaps: false };
        assert_eq!(decode_message(Direction::Ingress, &m), Err(Undecodable::Foreign));
        let m = Message { ts_ns: 1, frames: vec![vec![0x80, 5, 0xff]], gaps: false };
        assert_eq!(decode_message(Direction::Ingress, &m), Err(Undecodable::Malformed));
    }
}
