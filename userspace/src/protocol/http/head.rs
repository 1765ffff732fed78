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

    /// A gap inside a head: when its start line and some header lines were seen, the head is
    /// kept (those lines) and the parser waits for its end ([`State::HeadCut`]) instead of
    /// losing the message. True when it did.
    pub(super) fn cut_head(&mut self) -> bool {
        let Some(last) = memchr::memmem::rfind(&self.buf, b"\r\n") else { return false };
        let mut lines = self.buf[..last + 2].to_vec();
        lines.extend_from_slice(b"\r\n");
        let Some(mut head) = parse_head(&lines, self.first_ts, self.last_ts) else { return false };
        head.truncated = true;
        self.buf.clear();
        self.cut = Some(Box::new(head));
        self.after_cut.clear();
        self.state = State::HeadCut;
        true
    }

    /// Bytes after a gap inside a head: the head ends at the first empty line. Complete header
    /// lines after the gap (the first line is skipped: it may have begun in the gap) join the
    /// kept head. Then its body: as announced, or for a request that announced nothing that
    /// was seen, the rest of this syscall's bytes (a request body is sent with its head).
    pub(super) fn head_cut(&mut self, ts: u64, b: &[u8], out: &mut Vec<HttpEvent>) -> usize {
        let old = self.after_cut.len();
        let keep = b.len().min(MAX_HEAD.saturating_sub(old));
        self.after_cut.extend_from_slice(&b[..keep]);
        let from = old.saturating_sub(3);
        let Some(end) = memchr::memmem::find(&self.after_cut[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
            if self.after_cut.len() >= MAX_HEAD {
                // Keep the tail only: the end may straddle the next bytes.
                let tail = self.after_cut.split_off(self.after_cut.len() - 3);
                self.after_cut = tail;
            }
            return b.len();
        };
        let Some(mut head) = self.cut.take() else {
            self.state = State::Head;
            return b.len();
        };
        let lines = &self.after_cut[..end - 4];
        for line in lines.split(|&c| c == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&c| c == b':') else { continue };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.is_empty() || !name.iter().all(|c| c.is_ascii_alphanumeric() || b"-_".contains(c)) {
                continue;
            }
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            if head.header(&name).is_none() && head.headers.len() < MAX_HEADERS {
                head.headers.push((name, String::from_utf8_lossy(value).trim().to_string()));
            }
        }
        head.ts_ns = ts;
        self.after_cut.clear();
        self.synced_once = true;
        let consumed = (end - old).min(b.len());
        let announced = head.chunked() || head.content_length().is_some();
        let request = head.is_request();
        self.state = self.body_state(&head);
        out.push(HttpEvent::Head(head));
        if request && !announced {
            let rest = &b[consumed..];
            if !rest.is_empty() {
                out.push(HttpEvent::Body { ts_ns: ts, bytes: rest.to_vec() });
            }
            out.push(HttpEvent::End { ts_ns: ts, complete: false });
            self.state = State::Head;
            return b.len();
        }
        if self.state == State::Head {
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
                truncated: false,
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
                truncated: false,
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

    /// A request head longer than its syscall's capture (head and tail kept, a gap between):
    /// reported with its start line and the header lines on either side of the gap, its body as
    /// announced (Content-Length after the gap) or, announced nowhere, the rest of the syscall.
    #[test]
    fn a_head_cut_by_a_gap_is_kept() {
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[
                data(1, b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nCookie: xxxxxxxx"),
                Segment::Gap { len: 9000 },
                Segment::Data {
                    ts_ns: 1,
                    bytes: b"xxxx\r\nContent-Length: 5\r\nX-Late: 1\r\n\r\nhel",
                    syscall_start: false,
                    arrival_ns: 0,
                },
                data(2, b"lo"),
                data(3, b"GET /health HTTP/1.1\r\n\r\n"),
            ],
        );
        let heads: Vec<&Head> =
            evs.iter().filter_map(|e| if let HttpEvent::Head(h) = e { Some(&**h) } else { None }).collect();
        assert_eq!(heads.len(), 2, "{evs:?}");
        let h = heads[0];
        assert!(h.truncated && !heads[1].truncated);
        assert_eq!(h.start, StartLine::Request { method: "POST".into(), target: "/v1/chat/completions".into() });
        assert_eq!(
            (h.header("host"), h.header("content-length"), h.header("x-late")),
            (Some("a"), Some("5"), Some("1"))
        );
        assert_eq!(h.header("cookie"), None, "a line cut by the gap is not a header");
        assert_eq!(body(&evs), b"hello");
        assert!(!evs.iter().any(|e| matches!(e, HttpEvent::Error(_))), "{evs:?}");

        // Nothing announces the body: it is the rest of the syscall.
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[
                data(1, b"POST /v1/completions HTTP/1.1\r\nContent-Length: 7\r\nAuthorization: Bearer abc"),
                Segment::Gap { len: 70_000 },
                data(2, b"def\r\n\r\n{\"a\":1}"),
            ],
        );
        assert!(matches!(&evs[0], HttpEvent::Head(h) if h.truncated && h.header("content-length") == Some("7")));
        assert_eq!(body(&evs), b"{\"a\":1}");
        assert_eq!(evs.last(), Some(&HttpEvent::End { ts_ns: 2, complete: true }));
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[
                data(1, b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer abc"),
                Segment::Gap { len: 70_000 },
                data(2, b"def\r\n\r\n{\"b\":2}"),
            ],
        );
        assert_eq!(body(&evs), b"{\"b\":2}");
        assert_eq!(evs.last(), Some(&HttpEvent::End { ts_ns: 2, complete: false }));
        // A gap before the start line's end loses the message, as before.
        let mut p = HttpParser::new();
        let evs = run(&mut p, &[data(1, b"POST /v1/comp"), Segment::Gap { len: 100 }, data(2, b"x\r\n\r\n")]);
        assert!(!evs.iter().any(|e| matches!(e, HttpEvent::Head(_))), "{evs:?}");
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
