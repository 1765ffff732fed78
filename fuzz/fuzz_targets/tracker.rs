//! The whole user-space pipeline on arbitrary event streams: decoded records of any kind, in
//! any order, with any positions. Must never panic.
#![no_main]
use inferscope::{
    events::{Data, Direction, Event},
    request::Limits,
    tracker::Tracker,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::new(Limits::default());
    let mut out = Vec::new();
    let mut rest = data;
    let mut ts = 0u64;
    while rest.len() >= 4 {
        let (hdr, tail) = rest.split_at(4);
        let n = (hdr[1] as usize).min(tail.len());
        ts += hdr[2] as u64;
        let conn = u64::from(hdr[3] & 3);
        let ev = match hdr[0] & 7 {
            0 => Event::ProcExit { tgid: 1, ts_ns: ts },
            1 => Event::ConnClose(inferscope::events::Conn {
                tgid: 1,
                fd: 3,
                conn_id: conn,
                ts_ns: ts,
                role: inferscope::events::Role::Server,
                peer: None,
                unix: false,
            }),
            _ => Event::Data(Data {
                tgid: 1,
                tid: 1,
                fd: 3,
                conn_id: conn,
                ts_ns: ts,
                direction: if hdr[0] & 8 == 0 { Direction::Ingress } else { Direction::Egress },
                syscall_pos: u64::from(hdr[3]) * 64,
                syscall_len: n as u64 + u64::from(hdr[2]),
                offset: u64::from(hdr[0] >> 6),
                bytes: &tail[..n],
                truncated: hdr[0] & 16 != 0,
                eof: hdr[0] & 32 != 0,
                arrival_ns: 0,
                // A TLS connection's records (plaintext, or the announcement when empty): the
                // tracker restarts that connection's streams.
                tls: hdr[3] & 4 != 0,
                tls_start: hdr[3] & 8 != 0,
            }),
        };
        t.handle(&ev, &mut out);
        rest = &tail[n..];
    }
    t.expire(u64::MAX, 0, &mut out);
});
