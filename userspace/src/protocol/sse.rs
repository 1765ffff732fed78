//! Server-sent events (text/event-stream) parser, fed decoded HTTP body bytes.
//!
//! Follows the WHATWG event-stream rules: lines end with LF, CRLF or CR; `data:` lines of one
//! event are joined with LF; `:` lines are comments; an empty line dispatches the event; unknown
//! fields are ignored. After a gap the partial event is dropped and parsing restarts at a line
//! start (a fragment then reads as an unknown field and is ignored).

/// Largest event kept; larger ones are dropped and counted.
pub const MAX_EVENT: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// Timestamp of the bytes that completed the event (its blank line).
    pub ts_ns: u64,
    /// `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with LF.
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// Previous byte was CR (a following LF belongs to the same line end).
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    /// The current event grew past MAX_EVENT: it is dropped when dispatched.
    oversized: bool,
    /// Events dropped (oversized, or cut by a gap).
    pub dropped: u64,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes were lost: drop the partial event.
    pub fn gap(&mut self) {
        if self.has_data || !self.line.is_empty() {
            self.dropped += 1;
        }
        self.reset_event();
        self.line.clear();
        self.after_cr = false;
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.event = None;
        self.oversized = false;
    }

    pub fn feed(&mut self, ts_ns: u64, bytes: &[u8], out: &mut Vec<SseEvent>) {
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if self.after_cr {
                self.after_cr = false;
                if c == b'\n' {
                    i += 1;
                    start = i;
                    continue;
                }
            }
            if c == b'\n' || c == b'\r' {
                self.push_line_part(&bytes[start..i]);
                self.end_line(ts_ns, out);
                self.after_cr = c == b'\r';
                i += 1;
                start = i;
                continue;
            }
            // Fast path: jump to the next line end.
            match memchr::memchr2(b'\n', b'\r', &bytes[i..]) {
                Some(k) => i += k,
                None => i = bytes.len(),
            }
        }
        self.push_line_part(&bytes[start..]);
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.line.len() + part.len() > MAX_EVENT {
            self.oversized = true;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self, ts_ns: u64, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.oversized {
                self.dropped += 1;
            } else if self.has_data {
                out.push(SseEvent { ts_ns, event: self.event.take(), data: std::mem::take(&mut self.data) });
            }
            self.reset_event();
            self.line = line;
            return;
        }
        if line[0] != b':' {
            let (field, value) = match memchr::memchr(b':', &line) {
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"data" => {
                    if self.data.len() + value.len() + 1 > MAX_EVENT {
                        self.oversized = true;
                    } else {
                        if self.has_data {
                            self.data.push(b'\n');
                        }
                        self.data.extend_from_slice(value);
                        self.has_data = true;
                    }
                }
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
        let mut line = line;
        line.clear();
        self.line = line;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            p.feed(i as u64, c, &mut out);
        }
        out
    }

    #[test]
    fn events_comments_multiline_and_done() {
        let evs = parse(&[b": ping\n\ndata: {\"a\":1}\n\nevent: x\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n"]);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].data, b"{\"a\":1}");
        assert_eq!(evs[1].event.as_deref(), Some("x"));
        assert_eq!(evs[1].data, b"l1\nl2");
        assert_eq!(evs[2].data, b"[DONE]");
    }

    #[test]
    fn crlf_and_cr_line_ends_and_splits() {
        let whole = b"data: one\r\n\r\ndata: two\r\rdata:three\n\n";
        for cut in 0..whole.len() {
            let evs = parse(&[&whole[..cut], &whole[cut..]]);
            let datas: Vec<_> = evs.iter().map(|e| e.data.clone()).collect();
            assert_eq!(datas, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()], "cut {cut}");
        }
    }

    #[test]
    fn event_timestamp_is_when_it_completed() {
        let evs = parse(&[b"data: a", b"bc\n", b"\n"]);
        assert_eq!(evs[0].ts_ns, 2);
        assert_eq!(evs[0].data, b"abc");
    }

    #[test]
    fn gap_drops_partial_event_only() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(1, b"data: {\"par", &mut out);
        p.gap();
        p.feed(2, b"tial\"}\n\ndata: next\n\n", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, b"next");
        assert_eq!(p.dropped, 1);
    }
}
