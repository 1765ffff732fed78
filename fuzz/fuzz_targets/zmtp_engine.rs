//! ZMTP framing and the engine decoders on arbitrary bytes: split into syscalls at 0xfe bytes,
//! with gaps; every message is handed to the vLLM decoder (with and without a known layout) and
//! the engine tracker. Must never panic; frames stay within their bounds.
#![no_main]
use inferscope::{
    engine::{Engine, EngineTracker},
    events::Direction,
    protocol::{
        Segment, msgpack,
        zmtp::{MAX_FRAME, MAX_FRAMES, ZmtpParser},
    },
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = msgpack::decode(data);
    let mut p = if data.first().is_some_and(|b| b & 1 == 0) { ZmtpParser::new() } else { ZmtpParser::new_unsynced() };
    let mut msgs = Vec::new();
    for (i, chunk) in data.split(|&b| b == 0xfe).enumerate() {
        if i % 5 == 4 {
            p.feed(Segment::Gap { len: chunk.len() as u64 % 300 }, &mut msgs);
        }
        p.feed(Segment::Data { ts_ns: i as u64, bytes: chunk, syscall_start: i % 3 != 2, arrival_ns: 0 }, &mut msgs);
    }
    let mut t = EngineTracker::new();
    t.set_kind(1, Engine::Vllm, Some((0, 32, 0)));
    t.set_kind(2, Engine::Vllm, None);
    t.set_kind(3, Engine::Sglang, None);
    let mut out = Vec::new();
    for m in &msgs {
        assert!(m.frames.len() <= MAX_FRAMES);
        assert!(m.frames.iter().all(|f| f.len() <= MAX_FRAME));
        for pid in 1..=3 {
            for dir in [Direction::Ingress, Direction::Egress] {
                t.message(pid, dir, m, &mut out);
            }
        }
    }
    // Payloads alone, as whole messages.
    let m = inferscope::protocol::zmtp::Message { ts_ns: 1, frames: vec![vec![0], data.to_vec()], gaps: false };
    t.message(1, Direction::Egress, &m, &mut out);
    let m = inferscope::protocol::zmtp::Message { ts_ns: 1, frames: vec![data.to_vec()], gaps: false };
    t.message(1, Direction::Ingress, &m, &mut out);
    t.message(3, Direction::Ingress, &m, &mut out);
    t.expire(u64::MAX);
});
