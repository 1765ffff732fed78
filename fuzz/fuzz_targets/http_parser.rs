//! HTTP/1.1 parser on arbitrary bytes, split into segments (data, gaps, EOF) by the input.
#![no_main]
use inferscope::protocol::{Segment, http::HttpParser};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut p = if data.first().is_some_and(|b| b & 1 == 1) { HttpParser::new_unsynced() } else { HttpParser::new() };
    let mut out = Vec::new();
    // Each chunk starts with a control byte: low bits pick data/gap/eof and the length.
    let mut rest = data;
    let mut ts = 0;
    while let Some((&ctl, tail)) = rest.split_first() {
        ts += 1;
        let n = (ctl as usize >> 2).min(tail.len());
        match ctl & 3 {
            0 | 1 => p.feed(
                Segment::Data { ts_ns: ts, bytes: &tail[..n], syscall_start: ctl & 1 == 0, arrival_ns: ts / 2 },
                &mut out,
            ),
            2 => p.feed(Segment::Gap { len: n as u64 }, &mut out),
            _ => p.feed(Segment::Eof { ts_ns: ts }, &mut out),
        }
        if ctl & 3 == 2 || ctl & 3 == 3 {
            rest = tail;
        } else {
            rest = &tail[n..];
        }
        if ctl == 0xff {
            p.expect_response(true);
        }
    }
});
