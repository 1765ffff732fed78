//! Incremental HTTP/1.1 message parser for one direction of a connection.
//!
//! Fed [`Segment`]s (captured bytes with their syscall timestamps, and gaps where bytes were not
//! captured), it emits [`HttpEvent`]s: a message head, decoded body bytes, body gaps, and the
//! message end. It handles keep-alive, chunked transfer encoding, Content-Length bodies, bodies
//! that run until close, messages split across or packed into syscalls, and capture that starts
//! mid-connection or loses bytes: it then resynchronises at the next syscall that starts with a
//! message head (or a chunk header inside a chunked body). It never panics on any input.
//!
//! This file holds the types and the parser's state machine over segments (data, gaps, EOF,
//! resynchronisation); `head.rs` the message heads and the body framing they announce,
//! `chunked.rs` the chunked transfer encoding.

mod chunked;
mod head;

use std::collections::VecDeque;

use chunked::starts_with_chunk_header;
use head::{could_be_start, looks_like_start};

use super::Segment;

/// Largest head (start line + headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
const MAX_HEADERS: usize = 96;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, target: String },
    Response { status: u16, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start: StartLine,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names lower-cased, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// Timestamp of the syscall that carried the head's first byte.
    pub first_ts_ns: u64,
    /// Timestamp of the syscall that completed the head.
    pub ts_ns: u64,
    /// Bytes inside the head were not captured (a head longer than the capture of its syscall:
    /// a large cookie or token): `headers` holds the lines on either side of the gap.
    pub truncated: bool,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes do not start like an HTTP/1.x message (another protocol, or mid-message).
    NotHttp,
    /// A malformed start line or header.
    BadHead,
    /// Head larger than [`MAX_HEAD`].
    HeadTooLarge,
    /// A malformed chunk-size or trailer line.
    BadChunk,
    /// Bytes were missing where the parser could not skip them.
    LostSync,
    /// HTTP/2 connection preface (h2c): not parsed.
    Http2,
}

impl ParseError {
    pub fn cause(&self) -> &'static str {
        match self {
            ParseError::NotHttp => "not_http",
            ParseError::BadHead => "bad_head",
            ParseError::HeadTooLarge => "head_too_large",
            ParseError::BadChunk => "bad_chunk",
            ParseError::LostSync => "lost_sync",
            ParseError::Http2 => "http2",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent {
    Head(Box<Head>),
    /// Decoded body bytes (chunk framing removed), with the timestamp of their syscall.
    Body {
        ts_ns: u64,
        bytes: Vec<u8>,
    },
    /// Body bytes that were not captured (`len` 0: unknown amount).
    BodyGap {
        len: u64,
    },
    /// The message ended. `complete` is false when its end was not seen (lost bytes, close).
    End {
        ts_ns: u64,
        complete: bool,
    },
    Error(ParseError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a message boundary (or inside a head being accumulated in `buf`).
    Head,
    Length(u64),
    Chunked(Chunk),
    /// Inside a chunked body after losing bytes: wait for a syscall starting with a chunk header.
    ChunkResync,
    UntilClose,
    /// Waiting for a syscall that starts with a message head.
    Unsynced,
    /// Bytes of a head were lost after its start line: waiting for the head's end, the head
    /// so far kept in `cut`.
    HeadCut,
    /// Not HTTP/1.x any more (upgrade, h2): ignore everything.
    Opaque,
}

/// Parser for one direction of one connection.
#[derive(Debug)]
pub struct HttpParser {
    state: State,
    /// Partial head or line carried over between segments.
    buf: Vec<u8>,
    first_ts: u64,
    /// For the response side: whether each outstanding request was a HEAD (no body).
    head_requests: VecDeque<bool>,
    /// Whether anything parsed as HTTP yet (before that, garbage is `NotHttp`).
    synced_once: bool,
    /// Time of the last bytes fed.
    last_ts: u64,
    /// Arrival time of the first byte of the segment being parsed (0: unknown or used).
    arrival: u64,
    /// A short syscall that may begin a message head, kept while resynchronising.
    resync: Vec<u8>,
    /// The head whose middle was lost ([`State::HeadCut`]), and the bytes seen since the gap.
    cut: Option<Box<Head>>,
    after_cut: Vec<u8>,
    /// Bytes skipped while out of sync (after lost bytes, or before the first message head).
    pub discarded: u64,
}

impl Default for HttpParser {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpParser {
    pub fn new() -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            first_ts: 0,
            head_requests: VecDeque::new(),
            synced_once: false,
            last_ts: 0,
            arrival: 0,
            resync: Vec::new(),
            cut: None,
            after_cut: Vec::new(),
            discarded: 0,
        }
    }

    /// A parser for a connection whose capture starts mid-stream: it waits for a syscall that
    /// starts with a message head.
    pub fn new_unsynced() -> Self {
        Self { state: State::Unsynced, ..Self::new() }
    }

    /// Tells a response-side parser that a request was sent; `is_head` requests get no body.
    pub fn expect_response(&mut self, is_head: bool) {
        if self.head_requests.len() < 1024 {
            self.head_requests.push_back(is_head);
        }
    }

    /// Stops parsing this direction (protocol upgrade).
    pub fn make_opaque(&mut self) {
        self.state = State::Opaque;
        self.buf = Vec::new();
    }

    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// True while inside a message (head partly seen, or body not finished).
    pub fn in_message(&self) -> bool {
        match self.state {
            State::Head => !self.buf.is_empty(),
            State::Unsynced | State::Opaque => false,
            _ => true,
        }
    }

    pub fn feed(&mut self, seg: Segment<'_>, out: &mut Vec<HttpEvent>) {
        match seg {
            Segment::Data { ts_ns, bytes, syscall_start, arrival_ns } => {
                self.last_ts = ts_ns;
                // The arrival time belongs to the first byte of a read.
                self.arrival = if syscall_start && arrival_ns != 0 && arrival_ns <= ts_ns { arrival_ns } else { 0 };
                self.data(ts_ns, bytes, syscall_start, out)
            }
            Segment::Gap { len } => self.gap(len, out),
            Segment::Eof { ts_ns } => self.eof(ts_ns, out),
        }
    }

    fn lose_sync(&mut self, out: &mut Vec<HttpEvent>, err: ParseError) {
        if self.in_message() && self.state != State::Head {
            out.push(HttpEvent::End { ts_ns: self.last_ts, complete: false });
        }
        out.push(HttpEvent::Error(err));
        self.buf.clear();
        self.state = State::Unsynced;
    }

    fn gap(&mut self, len: u64, out: &mut Vec<HttpEvent>) {
        if len == 0 {
            return;
        }
        self.resync.clear();
        let state = self.state;
        match state {
            State::Head if self.cut_head() => {}
            State::HeadCut => {
                // More of the head lost: what follows starts mid-line again.
                self.after_cut.clear();
            }
            State::Head => {
                let had_partial = !self.buf.is_empty();
                self.buf.clear();
                self.state = State::Unsynced;
                if had_partial {
                    out.push(HttpEvent::Error(ParseError::LostSync));
                }
            }
            State::Length(rem) => {
                if len < rem {
                    out.push(HttpEvent::BodyGap { len });
                    self.state = State::Length(rem - len);
                } else if len == rem {
                    out.push(HttpEvent::BodyGap { len });
                    out.push(HttpEvent::End { ts_ns: self.last_ts, complete: true });
                    self.state = State::Head;
                } else {
                    out.push(HttpEvent::BodyGap { len: rem });
                    out.push(HttpEvent::End { ts_ns: self.last_ts, complete: false });
                    out.push(HttpEvent::Error(ParseError::LostSync));
                    self.state = State::Unsynced;
                }
            }
            State::Chunked(Chunk::Data(rem)) if len <= rem => {
                out.push(HttpEvent::BodyGap { len });
                self.state = State::Chunked(if len == rem { Chunk::DataEnd } else { Chunk::Data(rem - len) });
            }
            State::Chunked(_) | State::ChunkResync => {
                out.push(HttpEvent::BodyGap { len: 0 });
                self.buf.clear();
                self.state = State::ChunkResync;
            }
            State::UntilClose => out.push(HttpEvent::BodyGap { len }),
            State::Unsynced | State::Opaque => {}
        }
    }

    fn eof(&mut self, ts_ns: u64, out: &mut Vec<HttpEvent>) {
        match self.state {
            State::UntilClose => {
                out.push(HttpEvent::End { ts_ns, complete: true });
                self.state = State::Head;
            }
            State::Length(_) | State::Chunked(_) | State::ChunkResync => {
                out.push(HttpEvent::End { ts_ns, complete: false });
                self.state = State::Head;
            }
            State::HeadCut => {
                // The head never ended: nothing to report but the loss.
                out.push(HttpEvent::Error(ParseError::LostSync));
                self.cut = None;
                self.state = State::Head;
            }
            State::Head | State::Unsynced | State::Opaque => {}
        }
        self.buf.clear();
    }

    fn data(&mut self, ts: u64, b: &[u8], syscall_start: bool, out: &mut Vec<HttpEvent>) {
        match self.state {
            // Resynchronisation happens only at syscall boundaries. A syscall too short to tell
            // (a head written byte by byte) is kept and judged with the bytes that follow it.
            State::Unsynced | State::ChunkResync => {
                if !syscall_start && self.resync.is_empty() {
                    self.discarded += b.len() as u64;
                    return;
                }
                // A kept candidate continues with these bytes (a head written in several
                // syscalls); if the join is no head, the new syscall is judged on its own.
                let in_chunks = self.state == State::ChunkResync;
                let joined =
                    (!self.resync.is_empty()).then(|| [std::mem::take(&mut self.resync).as_slice(), b].concat());
                let cand: &[u8] = match &joined {
                    Some(j) if !syscall_start || could_be_start(j) || in_chunks && starts_with_chunk_header(j) => j,
                    Some(j) => {
                        self.discarded += (j.len() - b.len()) as u64;
                        b
                    }
                    None => b,
                };
                if looks_like_start(cand) {
                    if in_chunks {
                        // The terminator was lost; the next message begins here.
                        out.push(HttpEvent::End { ts_ns: ts, complete: false });
                    }
                    self.state = State::Head;
                    self.parse(ts, cand, out);
                } else if in_chunks && starts_with_chunk_header(cand) {
                    self.state = State::Chunked(Chunk::Size);
                    self.parse(ts, cand, out);
                } else if cand.len() < 16
                    && (could_be_start(cand)
                        || in_chunks && cand.iter().all(|c| c.is_ascii_hexdigit() || b";\r".contains(c)))
                {
                    self.resync = cand.to_vec();
                } else {
                    self.discarded += cand.len() as u64;
                }
            }
            State::Opaque => {}
            _ => self.parse(ts, b, out),
        }
    }

    fn parse(&mut self, ts: u64, mut b: &[u8], out: &mut Vec<HttpEvent>) {
        while !b.is_empty() {
            let used = match self.state {
                State::Head => {
                    let used = self.head(ts, b, out);
                    self.arrival = 0;
                    used
                }
                State::Length(rem) => {
                    self.arrival = 0;
                    let n = (rem.min(b.len() as u64)) as usize;
                    out.push(HttpEvent::Body { ts_ns: ts, bytes: b[..n].to_vec() });
                    if n as u64 == rem {
                        out.push(HttpEvent::End { ts_ns: ts, complete: true });
                        self.state = State::Head;
                    } else {
                        self.state = State::Length(rem - n as u64);
                    }
                    n
                }
                State::Chunked(c) => self.chunked(ts, c, b, out),
                State::HeadCut => self.head_cut(ts, b, out),
                State::UntilClose => {
                    out.push(HttpEvent::Body { ts_ns: ts, bytes: b.to_vec() });
                    b.len()
                }
                State::Unsynced | State::ChunkResync | State::Opaque => b.len(),
            };
            b = &b[used.min(b.len())..];
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn data(ts: u64, b: &[u8]) -> Segment<'_> {
        Segment::Data { ts_ns: ts, bytes: b, syscall_start: true, arrival_ns: 0 }
    }

    pub(super) fn run(p: &mut HttpParser, segs: &[Segment<'_>]) -> Vec<HttpEvent> {
        let mut out = Vec::new();
        for s in segs {
            p.feed(*s, &mut out);
        }
        out
    }

    pub(super) fn body(evs: &[HttpEvent]) -> Vec<u8> {
        evs.iter()
            .filter_map(|e| if let HttpEvent::Body { bytes, .. } = e { Some(bytes.clone()) } else { None })
            .flatten()
            .collect()
    }

    #[test]
    fn arrival_time_starts_a_message_that_begins_a_read() {
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[Segment::Data {
                ts_ns: 100,
                bytes: b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
                syscall_start: true,
                arrival_ns: 40,
            }],
        );
        let heads: Vec<&Head> =
            evs.iter().filter_map(|e| if let HttpEvent::Head(h) = e { Some(&**h) } else { None }).collect();
        assert_eq!(heads[0].first_ts_ns, 40, "the first message started arriving at 40");
        assert_eq!(heads[1].first_ts_ns, 100, "a pipelined second message has no arrival of its own");
        // An arrival after the read (clock oddity) is ignored.
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[Segment::Data { ts_ns: 100, bytes: b"GET / HTTP/1.1\r\n\r\n", syscall_start: true, arrival_ns: 150 }],
        );
        assert!(matches!(&evs[0], HttpEvent::Head(h) if h.first_ts_ns == 100));
    }

    #[test]
    fn keep_alive_and_pipelined_messages_in_one_syscall() {
        let mut p = HttpParser::new();
        let evs = run(&mut p, &[data(1, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")]);
        let heads: Vec<_> = evs.iter().filter(|e| matches!(e, HttpEvent::Head(_))).collect();
        assert_eq!(heads.len(), 2);
        assert_eq!(evs.iter().filter(|e| matches!(e, HttpEvent::End { complete: true, .. })).count(), 2);
    }

    #[test]
    fn mid_stream_start_resyncs_at_next_head() {
        let mut p = HttpParser::new_unsynced();
        let evs = run(
            &mut p,
            &[
                data(1, b"tail of a body\r\n"),
                data(2, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            ],
        );
        assert!(matches!(&evs[0], HttpEvent::Head(h) if h.is_request()));
    }

    #[test]
    fn gap_inside_known_length_is_skipped() {
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"), Segment::Gap { len: 6 }, data(2, b"yz")],
        );
        assert_eq!(body(&evs), b"abyz");
        assert!(evs.contains(&HttpEvent::BodyGap { len: 6 }));
        assert_eq!(evs.last(), Some(&HttpEvent::End { ts_ns: 2, complete: true }));
    }

    #[test]
    fn resync_on_a_head_written_in_tiny_syscalls() {
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[
                data(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
                Segment::Gap { len: 40 },
                data(2, b"H"),
                data(3, b"TT"),
                data(4, b"P/1.1 204 No Content\r\n\r\n"),
            ],
        );
        assert!(
            evs.contains(&HttpEvent::End { ts_ns: 3, complete: false })
                || evs.contains(&HttpEvent::End { ts_ns: 4, complete: false }),
            "{evs:?}"
        );
        assert!(evs.iter().any(|e| matches!(e, HttpEvent::Head(h) if h.start == StartLine::Response { status: 204, reason: "No Content".into() })), "{evs:?}");
        // Bytes that are no head are counted as discarded.
        let mut p = HttpParser::new_unsynced();
        run(&mut p, &[data(1, b"xyz"), data(2, b"H"), data(3, b"ello world, not http")]);
        assert_eq!(p.discarded, 3 + 1 + 20);
    }
}
