//! The pickle reader and SGLang's decoder on arbitrary bytes: never a panic, never code.
#![no_main]
use inferscope::{
    engine::sglang,
    events::Direction,
    protocol::{pickle, zmtp::Message},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pickle::parse(data);
    let m = Message { ts_ns: 1, frames: vec![data.to_vec()], gaps: false };
    let _ = sglang::decode_message(Direction::Ingress, &m);
    let _ = sglang::decode_message(Direction::Egress, &m);
});
