//! SSE parser on arbitrary bytes with gaps; every event's data must come from the input.
#![no_main]
use inferscope::protocol::sse::SseParser;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for (i, chunk) in data.split(|&b| b == 0xfe).enumerate() {
        if i % 7 == 6 {
            p.gap();
        }
        p.feed(i as u64, chunk, &mut out);
    }
    for ev in &out {
        assert!(ev.data.len() <= inferscope::protocol::sse::MAX_EVENT);
    }
});
