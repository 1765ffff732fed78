//! The function timers' pure parts on arbitrary input: breakpoint hits in any order (entries,
//! returns, frames, threads, times) into the matcher, arbitrary bytes as live bytecode of every
//! supported CPython, and arbitrary bytes before a trap's instruction pointer. None may panic,
//! and the matcher's open calls stay bounded.
#![no_main]
use inferscope::python::{
    objects::decode,
    opcodes,
    timers::{CallKey, Matcher, ends_with_plain_load},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut m = Matcher::default();
    for c in data.chunks(12) {
        if c.len() < 12 {
            break;
        }
        let tid = u32::from(c[0] % 4);
        let spec = usize::from(c[1] % 3);
        let frame = u64::from(c[2] % 8) * 0x50;
        let ts = u64::from(u32::from_le_bytes([c[4], c[5], c[6], c[7]]));
        let caller = u64::from(c[8] % 8) * 0x50;
        let key = match c[9] % 3 {
            0 => CallKey { callee: frame, caller },
            1 => CallKey { callee: 0, caller },
            _ => CallKey::default(),
        };
        if c[3] & 1 == 0 {
            m.entry(tid, spec, key, ts);
        } else if let Some((start, _depth)) = m.exit(tid, spec, frame, caller, ts) {
            assert!(start <= ts);
        }
        if c[3] & 0x80 != 0 {
            m.forget_thread(tid);
        }
    }
    for (caches, resume, ret) in [
        (&opcodes::CACHES_3_11, opcodes::RESUME_3_11, opcodes::RETURN_3_11),
        (&opcodes::CACHES_3_12, opcodes::RESUME_3_12, opcodes::RETURN_3_12),
        (&opcodes::CACHES_3_13, opcodes::RESUME_3_13, opcodes::RETURN_3_13),
    ] {
        let (r, returns) = decode(data, caches, resume, ret);
        assert!(r.is_none_or(|r| 2 * r < data.len()));
        assert!(returns.iter().all(|i| 2 * i < data.len()));
    }
    if data.len() >= 16 {
        let _ = ends_with_plain_load(data[..16].try_into().unwrap());
    }
});
