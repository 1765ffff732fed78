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
//!
//! With `SGLANG_USE_PICKLE_IPC=0` (0.5.x) the same Structs go as MessagePack instead:
//! `[class name, field, field, ...]` in the order the class declares its fields, which changes
//! between releases. That order is data (`sglang_layouts.json`, made by tests/sglang/layouts.py
//! from the installed release); a message is read with the layout whose field count it has,
//! newest release first, and turned into the same values a pickle gives, so one decoder serves
//! both. Arrays of token ids go as MessagePack extension 1, timestamps as a pickle inside
//! (`PickleWrapper`).

use std::{collections::HashMap, sync::LazyLock};

use super::{Decoded, EventType, Outputs, RequestOutput, Undecodable};
use crate::{
    events::Direction,
    protocol::{
        msgpack,
        pickle::{self, PyValue},
        zmtp::Message,
    },
};

/// Release -> class -> its fields in wire order (`sglang_layouts.json`), newest release first.
type Layouts = Vec<((u16, u16, u16), HashMap<String, Vec<String>>)>;

static LAYOUTS: LazyLock<Layouts> = LazyLock::new(|| {
    let all: HashMap<String, HashMap<String, Vec<String>>> =
        serde_json::from_str(include_str!("sglang_layouts.json")).unwrap_or_default();
    let mut v: Layouts =
        all.into_iter().filter_map(|(ver, l)| Some((crate::process::version::triple(&ver)?, l))).collect();
    v.sort_by_key(|l| std::cmp::Reverse(l.0));
    v
});

/// The fields of `class` in a release whose layout has `count` of them.
fn layout(class: &str, count: usize) -> Option<&'static [String]> {
    LAYOUTS.iter().filter_map(|(_, l)| l.get(class)).find(|f| f.len() == count).map(Vec::as_slice)
}

/// A MessagePack value as the pickle of the same object would read: tagged Structs as
/// `msgspec._utils.rebuild(cls, {field: value})`, token-id arrays as `array` objects, pickles
/// inside `PickleWrapper` parsed. `struct_as`: the untagged Struct this value is (SamplingParams).
fn from_msgpack(v: &msgpack::Value, struct_as: Option<&str>) -> PyValue {
    use msgpack::Value as M;
    match v {
        M::Nil => PyValue::None,
        M::Bool(b) => PyValue::Bool(*b),
        M::Int(i) => PyValue::Int(*i),
        M::UInt(u) => PyValue::BigInt(u.to_le_bytes().to_vec()),
        M::Float(f) => PyValue::Float(*f),
        M::Str(s) => PyValue::Str(s.to_string()),
        M::Bin(b) => PyValue::Bytes(b.to_vec()),
        M::Map(kv) => PyValue::Dict(kv.iter().map(|(k, v)| (from_msgpack(k, None), from_msgpack(v, None))).collect()),
        M::Ext(1, data) => ext_array(data).unwrap_or(PyValue::None),
        M::Ext(..) => PyValue::None,
        M::Array(items) => {
            if let Some(class) = struct_as
                && let Some(fields) = layout(class, items.len())
            {
                return rebuilt(class, fields, items);
            }
            match items.split_first() {
                Some((M::Str("PickleWrapper"), [M::Bin(p)])) => pickle::parse(p).unwrap_or(PyValue::None),
                Some((M::Str(tag), rest)) if let Some(fields) = layout(tag, rest.len()) => rebuilt(tag, fields, rest),
                _ => PyValue::List(items.iter().map(|i| from_msgpack(i, None)).collect()),
            }
        }
    }
}

fn rebuilt(class: &str, fields: &[String], items: &[msgpack::Value]) -> PyValue {
    let dict = fields
        .iter()
        .zip(items)
        .map(|(f, v)| {
            let nested = (f == "sampling_params").then_some("SamplingParams");
            (PyValue::Str(f.clone()), from_msgpack(v, nested))
        })
        .collect();
    PyValue::Object {
        class: "msgspec._utils.rebuild".into(),
        args: vec![PyValue::Global { module: "sglang".into(), name: class.into() }, PyValue::Dict(dict)],
        state: None,
    }
}

/// SGLang's MessagePack extension 1, an `array.array`: a big-endian u32 length of MessagePack
/// metadata (the typecode), then the items' bytes.
fn ext_array(data: &[u8]) -> Option<PyValue> {
    let n = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let meta = data.get(4..4 + n)?;
    let raw = data.get(4 + n..)?;
    let (tc, _) = msgpack::decode(meta).ok()?;
    // The machine format code of a signed integer of the typecode's size (enough to count).
    let code = match tc.as_str()? {
        "b" | "B" => 1,
        "h" | "H" | "u" => 4,
        "i" | "I" | "f" => 8,
        "l" | "L" | "q" | "Q" | "d" => 12,
        _ => return None,
    };
    Some(PyValue::Object {
        class: "array._array_reconstructor".into(),
        args: vec![
            PyValue::Global { module: "array".into(), name: "array".into() },
            PyValue::Str(tc.as_str()?.to_string()),
            PyValue::Int(code),
            PyValue::Bytes(raw.to_vec()),
        ],
        state: None,
    })
}

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

/// The length of a sequence of token ids: a list, or a Python `array.array` (SGLang 0.5.x sends
/// `output_ids` as `array('q', ...)`, pickled as `array._array_reconstructor(array, typecode,
/// machine format code, bytes)`, or with protocol 2 as `array.array(typecode, list)`).
fn token_count(v: &PyValue) -> Option<u64> {
    if let Some(l) = v.as_list() {
        return Some(l.len() as u64);
    }
    let PyValue::Object { class, args, .. } = v else { return None };
    match (class.as_str(), args.as_slice()) {
        ("array._array_reconstructor", [_, _, PyValue::Int(code), PyValue::Bytes(b)]) => {
            // CPython's enum machine_format_code: 0-1 one byte, 2-5 two, 6-9 four, 10-13 eight,
            // 14-15 float, 16-17 double, 18-19 UTF-16, 20-21 UTF-32.
            let size = match code {
                0..=1 => 1,
                2..=5 | 18..=19 => 2,
                6..=9 | 14..=15 | 20..=21 => 4,
                10..=13 | 16..=17 => 8,
                _ => return None,
            };
            Some((b.len() / size) as u64)
        }
        ("array.array", [_, l]) => l.as_list().map(|l| l.len() as u64),
        _ => None,
    }
}

pub fn decode_message(dir: Direction, msg: &Message) -> Result<Decoded, Undecodable> {
    let [payload] = msg.frames.as_slice() else {
        return Err(Undecodable::Foreign);
    };
    let broken = || if msg.gaps { Undecodable::Gaps } else { Undecodable::Malformed };
    let v = match payload.first() {
        // Pickles of protocol 2+ start with PROTO.
        Some(0x80) => pickle::parse(payload).map_err(|_| broken())?,
        // MessagePack arrays (fixarray, array 16, array 32) whose first item names a class.
        Some(0x90..=0x9f | 0xdc | 0xdd) => {
            let (m, _) = msgpack::decode(payload).map_err(|_| broken())?;
            let tagged = m.as_array().and_then(|a| a.first()).and_then(msgpack::Value::as_str);
            if !tagged.is_some_and(|t| LAYOUTS.iter().any(|(_, l)| l.contains_key(t))) {
                return Err(Undecodable::Foreign);
            }
            from_msgpack(&m, None)
        }
        _ => return Err(Undecodable::Foreign),
    };
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
    let input = get(fields, "input_ids");
    let prompt_tokens = input.and_then(token_count);
    let add = Decoded::Add {
        request_id: rid,
        external_id: None,
        prompt_tokens,
        ts_ns,
        queued_ns: Some(ts_ns),
        arrival_unix_ns: None,
    };
    // Parallel sampling (n > 1): SGLang sends one request per sample, the first under the id
    // the API answers with and the others under fresh ids, back to back with the same input.
    // (Before them, a request with max_new_tokens 0 fills the prefix cache: a request of its
    // own, joined to nothing.)
    let params = get(fields, "sampling_params").and_then(object).map(|(_, f)| f);
    let n = params.and_then(|p| get(p, "n")).and_then(PyValue::as_i64).unwrap_or(1);
    let max_new = params.and_then(|p| get(p, "max_new_tokens")).and_then(PyValue::as_i64);
    if n > 1 && max_new != Some(0) {
        let n = u32::try_from(n).ok()?;
        return Some(Decoded::Sample { n, input: fingerprint(input?), add: Box::new(add) });
    }
    Some(add)
}

/// A hash of a request's input ids (a list of ints, or an array's bytes).
fn fingerprint(v: &PyValue) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h = (h ^ *x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    match v {
        PyValue::Object { args, .. } => {
            if let Some(PyValue::Bytes(b)) = args.last() {
                eat(b);
            }
        }
        other => {
            for x in other.as_list().unwrap_or(&[]) {
                eat(&x.as_i64().unwrap_or(-1).to_le_bytes());
            }
        }
    }
    h
}

fn outputs(fields: &PyValue) -> Result<Decoded, Undecodable> {
    let rids = list(fields, "rids");
    let (reasons, out_ids) = (list(fields, "finished_reasons"), list(fields, "output_ids"));
    let (prompt, cached) = (list(fields, "prompt_tokens"), list(fields, "cached_tokens"));
    let stats = list(fields, "time_stats");
    let retractions = list(fields, "retraction_counts");
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
            new_tokens: out_ids.get(i).and_then(token_count).unwrap_or(0),
            finish_reason,
            events,
            cached_tokens: u(cached, i),
            prompt_tokens: u(prompt, i),
            ts_ns: None,
            first_token_ns: stamp("prefill_finished_time"),
            retractions: u(retractions, i).and_then(|n| u32::try_from(n).ok()),
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
                    queued_ns: Some(7),
                    arrival_unix_ns: None,
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

    /// Replays the main process's sendto/recvfrom bytes of a real SGLang (tests/sglang/
    /// capture.py, strace attached after the server started): every HTTP response of the
    /// capture finds its engine requests, with the response's token counts, the scheduler's
    /// own stamps for queue and prefill, and steps whose tokens add up to the responses'.
    #[test]
    fn real_captures() {
        use crate::engine::{Engine, EngineEvent};
        let files = crate::engine::real_capture_files("tests/data/sglang");
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert!(names.iter().any(|f| f.ends_with("-msgpack.json")) && names.len() >= 2, "{names:?}");
        for f in &files {
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let ver = format!("{} ({} IPC)", doc["sglang_version"].as_str().unwrap(), doc["ipc"].as_str().unwrap());
            let (events, completion) = crate::engine::check_capture(&doc, (Engine::Sglang, None), &ver);
            let step_tokens: u64 =
                events.iter().filter_map(|e| if let EngineEvent::Step(s) = e { Some(s.tokens) } else { None }).sum();
            assert_eq!(step_tokens, completion, "{ver}: tokens of the steps");
        }
    }
}
