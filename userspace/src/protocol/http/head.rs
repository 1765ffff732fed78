//! Message heads: recognising a start line, accumulating a head across segments, parsing it
//! (httparse), and the body framing it announces (Content-Length, chunked, until close, none).

use super::{Chunk, Head, HttpEvent, HttpParser, MAX_HEAD, MAX_HEADERS, ParseError, StartLine, State};

impl Head {
    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.split(',').next_back().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked")))
    }
    fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }
}

pub(super) fn looks_like_start(b: &[u8]) -> bool {
    const METHODS: &[&[u8]] =
        &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
    b.starts_with(b"HTTP/1.") || METHODS.iter().any(|m| b.starts_with(m))
}

/// Whether `b` could be the beginning of a message start (a prefix of one, for short inputs).
pub(super) fn could_be_start(b: &[u8]) -> bool {
    const STARTS: &[&[u8]] = &[
        b"HTTP/1.",
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
        b"PRI * HTTP/2",
    ];
    STARTS.iter().any(|s| {
        let n = s.len().min(b.len());
        b[..n] == s[..n]
    })
}

impl HttpParser {
    /// Accumulates and parses a head. Returns bytes consumed from `b`.
    pub(super) fn head(&mut self, ts: u64, b: &[u8], out: &mut Vec<HttpEvent>) -> usize {
        let mut skip = 0;
        if self.buf.is_empty() {
            // Tolerate empty lines between messages.
            while skip < b.len() && (b[skip] == b'\r' || b[skip] == b'\n') {
                skip += 1;
            }
            if skip == b.len() {
                return skip;
            }
            // A message that starts a read starts when its bytes arrived, if known.
            self.first_ts = if self.arrival != 0 { self.arrival } else { ts };
        }
        let old = self.buf.len();
        self.buf.extend_from_slice(&b[skip..]);
        if !could_be_start(&self.buf) {
            let err = if self.synced_once { ParseError::BadHead } else { ParseError::NotHttp };
            self.lose_sync(out, err);
            return b.len();
        }
        if self.buf.starts_with(b"PRI * HTTP/2") {
            out.push(HttpEvent::Error(ParseError::Http2));
            self.make_opaque();
            return b.len();
        }
        let from = old.saturating_sub(3);
        let Some(end) = memchr::memmem::find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
            if self.buf.len() > MAX_HEAD {
                self.lose_sync(out, ParseError::HeadTooLarge);
            }
            return b.len();
        };
        // Bytes of `b` that belong to the head; the rest is returned for the body.
        let consumed = skip + (end - old);
        let head = match parse_head(&self.buf[..end], self.first_ts, ts) {
            Some(h) => h,
            None => {
                self.lose_sync(out, ParseError::BadHead);
                return b.len();
            }
        };
        self.buf.clear();
        self.synced_once = true;
        self.state = self.body_state(&head);
        let ends_now = self.state == State::Head;
        out.push(HttpEvent::Head(Box::new(head)));
        if ends_now {
            out.push(HttpEvent::End { ts_ns: ts, complete: true });
        }
        consumed
    }

    fn body_state(&mut self, head: &Head) -> State {
        match &head.start {
            StartLine::Request { .. } => {
                if head.chunked() {
                    State::Chunked(Chunk::Size)
                } else {
                    match head.content_length() {
                        Some(0) | None => State::Head,
                        Some(n) => State::Length(n),
                    }
                }
            }
            StartLine::Response { status, .. } => {
                let status = *status;
                if (100..200).contains(&status) {
                    // Interim response: the final one for the same request follows.
                    if status == 101 {
                        return State::Opaque;
                    }
                    return State::Head;
                }
                let is_head = self.head_requests.pop_front().unwrap_or(false);
                if is_head || status == 204 || status == 304 {
                    State::Head
                } else if head.chunked() {
                    State::Chunked(Chunk::Size)
                } else {
                    match head.content_length() {
                        Some(0) => State::Head,
                        Some(n) => State::Length(n),
                        None => State::UntilClose,
                    }
                }
            }
        }
    }
}

fn parse_head(bytes: &[u8], first_ts: u64, ts: u64) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let to_vec = |hs: &[httparse::Header<'_>]| {
        hs.iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect::<Vec<_>>()
    };
    if bytes.starts_with(b"HTTP/") {
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => Some(Head {
                start: StartLine::Response { status: r.code?, reason: r.reason.unwrap_or("").to_string() },
                minor_version: r.version?,
                headers: to_vec(r.headers),
                first_ts_ns: first_ts,
                ts_ns: ts,
            }),
            _ => None,
        }
    } else {
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => Some(Head {
                start: StartLine::Request { method: r.method?.to_string(), target: r.path?.to_string() },
                minor_version: r.version?,
                headers: to_vec(r.headers),
                first_ts_ns: first_ts,
                ts_ns: ts,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{body, data, run};
    use super::super::*;

    #[test]
    fn request_with_content_length() {
        let mut p = HttpParser::new();
        let evs =
            run(&mut p, &[data(1, b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel"), data(2, b"lo")]);
        let HttpEvent::Head(h) = &evs[0] else { panic!("{evs:?}") };
        assert_eq!(h.start, StartLine::Request { method: "POST".into(), target: "/v1/x".into() });
        assert_eq!(h.header("host"), Some("a"));
        assert_eq!(body(&evs), b"hello");
        assert_eq!(evs.last(), Some(&HttpEvent::End { ts_ns: 2, complete: true }));
    }

    #[test]
    fn response_until_close_and_head_request() {
        let mut p = HttpParser::new();
        p.expect_response(true);
        p.expect_response(false);
        let evs = run(
            &mut p,
            &[
                data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
                data(2, b"HTTP/1.0 200 OK\r\n\r\nabc"),
                Segment::Eof { ts_ns: 3 },
            ],
        );
        assert_eq!(body(&evs), b"abc");
        assert_eq!(evs.iter().filter(|e| matches!(e, HttpEvent::End { complete: true, .. })).count(), 2);
    }

    #[test]
    fn garbage_is_counted_then_ignored_until_a_head() {
        let mut p = HttpParser::new();
        let evs =
            run(&mut p, &[data(1, b"\x00\x01binary junk"), data(2, b"more junk"), data(3, b"GET / HTTP/1.1\r\n\r\n")]);
        assert_eq!(evs[0], HttpEvent::Error(ParseError::NotHttp));
        assert!(matches!(evs[1], HttpEvent::Head(_)));
    }

    #[test]
    fn upgrade_and_h2_become_opaque() {
        let mut p = HttpParser::new();
        let evs =
            run(&mut p, &[data(1, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")]);
        assert!(matches!(evs[0], HttpEvent::Head(_)));
        assert!(p.is_opaque());
        let mut p = HttpParser::new();
        let evs = run(&mut p, &[data(1, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]);
        assert_eq!(evs, vec![HttpEvent::Error(ParseError::Http2)]);
    }

    #[test]
    fn oversized_head_is_an_error() {
        let mut p = HttpParser::new();
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let evs = run(&mut p, &[data(1, &big)]);
        assert_eq!(evs, vec![HttpEvent::Error(ParseError::HeadTooLarge)]);
    }
}
