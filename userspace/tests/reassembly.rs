//! Property tests for reassembly: however the same bytes are split into syscalls, and however
//! captured pieces are truncated, the tracker reports the same requests, and never panics.

use inferscope::{
    events::{Conn, Data, Direction, Event, Role},
    request::{Limits, RequestRecord, TokensFrom},
    tracker::Tracker,
};
use proptest::prelude::*;

const SSE: &[u8] = include_bytes!("../../tests/data/vllm-0.32-sse.bin");

fn vllm_request() -> Vec<u8> {
    let body = br#"{"messages":[{"role":"user","content":"Tell me a story"}],"model":"tiny-llama","max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}"#;
    let mut v = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8011\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn vllm_response() -> Vec<u8> {
    let mut v = b"HTTP/1.1 200 OK\r\ndate: Sun, 22 Nov 2026 06:27:56 GMT\r\nserver: uvicorn\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    v.extend_from_slice(SSE);
    v
}

fn unary_exchange() -> (Vec<u8>, Vec<u8>) {
    let body = br#"{"model":"m","prompt":"hi","max_tokens":3}"#;
    let mut req = format!("POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    let rbody = br#"{"id":"cmpl-7","object":"text_completion","model":"m","choices":[{"index":0,"text":"a b c","finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;
    let mut resp =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", rbody.len())
            .into_bytes();
    resp.extend_from_slice(rbody);
    (req, resp)
}

/// Feeds `messages` (direction, bytes) split at `cuts` into syscalls, as the BPF side would
/// report them with a capture of `cap` head bytes and `tail` tail bytes.
fn replay(messages: &[(Direction, Vec<u8>)], cuts: &[usize], cap: usize, tail: usize) -> Vec<RequestRecord> {
    let mut t = Tracker::new(Limits::default());
    let mut out = Vec::new();
    t.handle(
        &Event::ConnOpen(Conn { tgid: 1, fd: 5, conn_id: 9, ts_ns: 1, role: Role::Server, peer: None, unix: false }),
        &mut out,
    );
    let mut pos = [0u64; 2];
    let mut ts = 10u64;
    let mut k = 0;
    for (dir, bytes) in messages {
        let mut start = 0;
        while start < bytes.len() {
            let n = cuts.get(k).copied().unwrap_or(usize::MAX).clamp(1, bytes.len() - start);
            k += 1;
            let sys = &bytes[start..start + n];
            ts += 1000;
            let i = dir.index();
            let mut pieces = vec![(0usize, &sys[..sys.len().min(cap)])];
            if sys.len() > cap {
                let t0 = sys.len() - tail.min(sys.len() - cap);
                pieces.push((t0, &sys[t0..]));
            }
            for (off, piece) in pieces {
                if piece.is_empty() {
                    continue;
                }
                let d = Data {
                    tgid: 1,
                    tid: 1,
                    fd: 5,
                    conn_id: 9,
                    ts_ns: ts,
                    direction: *dir,
                    syscall_pos: pos[i],
                    syscall_len: sys.len() as u64,
                    offset: off as u64,
                    bytes: piece,
                    truncated: sys.len() > cap,
                    eof: false,
                    arrival_ns: 0,
                    tls: false,
                    tls_start: false,
                };
                t.handle(&Event::Data(d), &mut out);
            }
            pos[i] += sys.len() as u64;
            start += n;
        }
    }
    t.handle(
        &Event::ConnClose(Conn {
            tgid: 1,
            fd: 5,
            conn_id: 9,
            ts_ns: ts + 1,
            role: Role::Server,
            peer: None,
            unix: false,
        }),
        &mut out,
    );
    out
}

/// The fields that must not depend on how bytes were split.
fn shape(r: &RequestRecord) -> String {
    format!(
        "{} {} {:?} {:?} {:?} {} {:?} {:?} {:?} {:?} {} {:?} {} {}",
        r.method,
        r.path,
        r.status,
        r.model,
        r.response_model,
        r.stream,
        r.request_id,
        r.prompt_tokens,
        r.completion_tokens,
        r.tokens_from,
        r.output_events,
        r.finish_reasons,
        r.aborted,
        r.complete
    )
}

fn conversation() -> Vec<(Direction, Vec<u8>)> {
    let (ureq, uresp) = unary_exchange();
    vec![
        (Direction::Ingress, vllm_request()),
        (Direction::Egress, vllm_response()),
        (Direction::Ingress, ureq),
        (Direction::Egress, uresp),
    ]
}

#[test]
fn whole_messages_give_the_expected_requests() {
    let recs = replay(&conversation(), &[], usize::MAX, 0);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let s = &recs[0];
    assert_eq!(s.path, "/v1/chat/completions");
    assert_eq!(s.status, Some(200));
    assert!(s.stream);
    assert_eq!(s.model.as_deref(), Some("tiny-llama"));
    assert_eq!(s.response_model.as_deref(), Some("tiny-llama"));
    assert_eq!(s.request_id.as_deref(), Some("chatcmpl-84269ae8a95d288d"));
    assert_eq!(s.prompt_tokens, Some(16));
    assert_eq!(s.completion_tokens, Some(16));
    assert_eq!(s.tokens_from, Some(TokensFrom::Usage));
    // 18 data events: role chunk (no output), 16 token chunks, usage chunk (no output).
    assert_eq!(s.output_events, 16);
    assert_eq!(s.finish_reasons, vec!["length".to_string()]);
    assert!(s.complete && !s.aborted && !s.capture_gaps);
    assert!(s.first_token_ns.unwrap() > s.start_ns);
    assert_eq!(s.itl_ns.len(), 15);
    let u = &recs[1];
    assert_eq!(u.path, "/v1/completions");
    assert!(!u.stream);
    assert_eq!(u.completion_tokens, Some(3));
    assert_eq!(u.finish_reasons, vec!["length".to_string()]);
    assert_eq!(u.request_id.as_deref(), Some("cmpl-7"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any split of the same bytes into syscalls gives the same requests.
    #[test]
    fn any_split_gives_the_same_requests(cuts in proptest::collection::vec(1usize..400, 0..200)) {
        let want: Vec<String> = replay(&conversation(), &[], usize::MAX, 0).iter().map(shape).collect();
        let got: Vec<String> = replay(&conversation(), &cuts, usize::MAX, 0).iter().map(shape).collect();
        prop_assert_eq!(got, want);
    }

    /// Truncated capture (head and tail of long syscalls only) keeps every request whose head
    /// fits in the capture, reports exactly what a full capture reports when no byte was lost,
    /// and marks the requests that lost bytes.
    #[test]
    fn truncated_capture_keeps_requests(cuts in proptest::collection::vec(1usize..2000, 0..50), cap in 300usize..600, tail in 0usize..300) {
        let full: Vec<String> = replay(&conversation(), &[], usize::MAX, 0).iter().map(shape).collect();
        let recs = replay(&conversation(), &cuts, cap, tail);
        prop_assert_eq!(recs.len(), 2);
        prop_assert_eq!(&recs[0].path, "/v1/chat/completions");
        prop_assert_eq!(&recs[1].path, "/v1/completions");
        for (r, want) in recs.iter().zip(&full) {
            prop_assert!(r.end_ns >= r.start_ns);
            if !r.capture_gaps {
                prop_assert_eq!(&shape(r), want);
            }
        }
    }

    /// Short captures (heads may be cut) never panic and never invent requests.
    #[test]
    fn tiny_captures_never_invent_requests(cuts in proptest::collection::vec(1usize..2000, 0..50), cap in 1usize..300, tail in 0usize..300) {
        let recs = replay(&conversation(), &cuts, cap, tail);
        prop_assert!(recs.len() <= 2);
        for r in &recs {
            prop_assert!(r.path == "/v1/chat/completions" || r.path == "/v1/completions");
        }
    }

    /// Garbage on a socket is never fatal.
    #[test]
    fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..30)) {
        let msgs: Vec<(Direction, Vec<u8>)> = chunks.into_iter().enumerate()
            .map(|(i, c)| (if i % 2 == 0 { Direction::Ingress } else { Direction::Egress }, c))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        let _ = replay(&msgs, &[], usize::MAX, 0);
    }
}

#[test]
fn client_abort_mid_stream_is_reported() {
    let mut t = Tracker::new(Limits::default());
    let mut out = Vec::new();
    let req = vllm_request();
    let resp = vllm_response();
    let cut = resp.len() / 2;
    fn d(dir: Direction, pos: u64, ts: u64, bytes: &[u8], eof: bool) -> Event<'_> {
        Event::Data(Data {
            tgid: 1,
            tid: 1,
            fd: 5,
            conn_id: 3,
            ts_ns: ts,
            direction: dir,
            syscall_pos: pos,
            syscall_len: bytes.len() as u64,
            offset: 0,
            bytes,
            truncated: false,
            eof,
            arrival_ns: 0,
            tls: false,
            tls_start: false,
        })
    }
    for ev in [
        d(Direction::Ingress, 0, 100, &req, false),
        d(Direction::Egress, 0, 200, &resp[..cut], false),
        d(Direction::Ingress, req.len() as u64, 300, &[], true),
    ] {
        t.handle(&ev, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert!(out[0].aborted);
    assert_eq!(out[0].end_ns, 300);
    assert_eq!(out[0].finish_reason(), Some("abort"));
    assert!(out[0].output_events > 0);
    assert_eq!(out[0].error_type, None);
}

#[test]
fn capture_starting_mid_connection_waits_for_the_next_request() {
    let mut t = Tracker::new(Limits::default());
    let mut out = Vec::new();
    t.add_existing(
        inferscope::tracker::ExistingConn {
            tgid: 1,
            fd: 5,
            conn_id: 4,
            peer: None,
            local_port: Some(8000),
            unix: false,
        },
        0,
    );
    let resp = vllm_response();
    let (ureq, uresp) = unary_exchange();
    let mut pos = [0u64; 2];
    let mut feed = |t: &mut Tracker, dir: Direction, bytes: &[u8], ts: u64, out: &mut Vec<RequestRecord>| {
        let i = dir.index();
        t.handle(
            &Event::Data(Data {
                tgid: 1,
                tid: 1,
                fd: 5,
                conn_id: 4,
                ts_ns: ts,
                direction: dir,
                syscall_pos: pos[i],
                syscall_len: bytes.len() as u64,
                offset: 0,
                bytes,
                truncated: false,
                eof: false,
                arrival_ns: 0,
                tls: false,
                tls_start: false,
            }),
            out,
        );
        pos[i] += bytes.len() as u64;
    };
    // The tail of a response to a request we never saw, then a whole new exchange.
    feed(&mut t, Direction::Egress, &resp[300..], 1, &mut out);
    feed(&mut t, Direction::Ingress, &ureq, 2, &mut out);
    feed(&mut t, Direction::Egress, &uresp, 3, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].path, "/v1/completions");
    assert_eq!(out[0].server_port, Some(8000));
}

/// A TLS connection: the announcement (no bytes), then plaintext at plaintext positions from
/// 0, then the peer's EOF. The request is read as from a plain socket and marked TLS. A second
/// connection announced TLS whose plaintext never comes is counted unread at its close.
#[test]
fn tls_plaintext_is_reassembled_like_plain_bytes() {
    let mut t = Tracker::new(Limits::default());
    let mut out = Vec::new();
    let req = vllm_request();
    let resp = vllm_response();
    fn d(conn: u64, dir: Direction, pos: u64, ts: u64, bytes: &[u8], eof: bool, start: bool) -> Event<'_> {
        Event::Data(Data {
            tgid: 1,
            tid: 1,
            fd: 5,
            conn_id: conn,
            ts_ns: ts,
            direction: dir,
            syscall_pos: pos,
            syscall_len: bytes.len() as u64,
            offset: 0,
            bytes,
            truncated: false,
            eof,
            arrival_ns: 0,
            tls: true,
            tls_start: start,
        })
    }
    t.handle(
        &Event::ConnOpen(inferscope::events::Conn {
            tgid: 1,
            fd: 5,
            conn_id: 3,
            ts_ns: 50,
            role: inferscope::events::Role::Server,
            peer: None,
            unix: false,
        }),
        &mut out,
    );
    for ev in [
        d(3, Direction::Ingress, 0, 90, &[], false, true),
        d(3, Direction::Ingress, 0, 100, &req[..7], false, false),
        d(3, Direction::Ingress, 7, 101, &req[7..], false, false),
        d(3, Direction::Egress, 0, 200, &resp, false, false),
        d(3, Direction::Ingress, req.len() as u64, 300, &[], true, false),
        // Announced, never read.
        d(9, Direction::Ingress, 0, 310, &[], false, true),
    ] {
        t.handle(&ev, &mut out);
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].tls);
    assert!(out[0].complete && !out[0].capture_gaps && !out[0].aborted);
    assert_eq!(out[0].path, "/v1/chat/completions");
    assert!(out[0].output_events > 0);
    assert_eq!(t.stats().tls_connections, 2);
    assert_eq!(t.stats().discarded_bytes, 0);
    t.expire(u64::MAX, 0, &mut out);
    assert_eq!(t.stats().tls_unread, 1);
}

/// A connection captured mid-stream whose first records turn out to be TLS: what was parsed
/// of the ciphertext is dropped and its plaintext, joined mid-stream, is parsed from the next
/// message head on.
#[test]
fn tls_found_mid_stream_restarts_at_the_next_request() {
    let mut t = Tracker::new(Limits::default());
    let mut out = Vec::new();
    let (ureq, uresp) = unary_exchange();
    let data = |dir: Direction, pos: u64, ts: u64, bytes: &'static [u8], tls: bool| {
        Event::Data(Data {
            tgid: 1,
            tid: 1,
            fd: 5,
            conn_id: 4,
            ts_ns: ts,
            direction: dir,
            syscall_pos: pos,
            syscall_len: bytes.len() as u64,
            offset: 0,
            bytes,
            truncated: false,
            eof: false,
            arrival_ns: 0,
            tls,
            tls_start: false,
        })
    };
    let ureq: &'static [u8] = Box::leak(ureq.into_boxed_slice());
    let uresp: &'static [u8] = Box::leak(uresp.into_boxed_slice());
    // Ciphertext seen before the connection was known to be TLS, then the tail of a request
    // already in flight, then a whole exchange.
    t.handle(&data(Direction::Ingress, 0, 10, b"\x17\x03\x03\x00\x20garbage-ciphertext", false), &mut out);
    t.handle(&data(Direction::Ingress, 0, 20, b"", true), &mut out);
    t.handle(&data(Direction::Ingress, 0, 30, b"\"max_tokens\": 4}", true), &mut out);
    t.handle(&data(Direction::Ingress, 16, 40, ureq, true), &mut out);
    t.handle(&data(Direction::Egress, 0, 50, uresp, true), &mut out);
    t.expire(u64::MAX, 0, &mut out);
    let complete: Vec<_> = out.iter().filter(|r| r.complete).collect();
    assert_eq!(complete.len(), 1, "{out:?}");
    assert!(complete[0].tls);
    assert_eq!(t.stats().tls_connections, 1);
}
