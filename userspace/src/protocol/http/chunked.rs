//! Chunked transfer encoding: chunk-size, chunk-data and trailer lines decoded into body
//! bytes, and the chunk header the parser resynchronises at after lost bytes.

use super::{Chunk, HttpEvent, HttpParser, MAX_LINE, ParseError, State};

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&c| c == b';' || c == b' ' || c == b'\t').unwrap_or(line.len());
    let hex = &line[..end];
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    let s = std::str::from_utf8(hex).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// Whether `b` starts with a plausible chunk header line (`<hex>[;ext]\r\n`).
pub(super) fn starts_with_chunk_header(b: &[u8]) -> bool {
    let Some(crlf) = memchr::memmem::find(&b[..b.len().min(64)], b"\r\n") else {
        return false;
    };
    parse_chunk_size(&b[..crlf]).is_some()
}

impl HttpParser {
    pub(super) fn chunked(&mut self, ts: u64, c: Chunk, b: &[u8], out: &mut Vec<HttpEvent>) -> usize {
        match c {
            Chunk::Data(rem) => {
                let n = (rem.min(b.len() as u64)) as usize;
                out.push(HttpEvent::Body { ts_ns: ts, bytes: b[..n].to_vec() });
                self.state = State::Chunked(if n as u64 == rem { Chunk::DataEnd } else { Chunk::Data(rem - n as u64) });
                n
            }
            Chunk::Size | Chunk::DataEnd | Chunk::Trailers => {
                let Some((line, used)) = self.line(b) else {
                    if self.buf.len() > MAX_LINE {
                        self.lose_sync(out, ParseError::BadChunk);
                    }
                    return b.len();
                };
                match c {
                    Chunk::DataEnd => {
                        if !line.is_empty() {
                            self.lose_sync(out, ParseError::BadChunk);
                            return b.len();
                        }
                        self.state = State::Chunked(Chunk::Size);
                    }
                    Chunk::Size => match parse_chunk_size(&line) {
                        Some(0) => self.state = State::Chunked(Chunk::Trailers),
                        Some(n) => self.state = State::Chunked(Chunk::Data(n)),
                        None => {
                            self.lose_sync(out, ParseError::BadChunk);
                            return b.len();
                        }
                    },
                    Chunk::Trailers => {
                        if line.is_empty() {
                            out.push(HttpEvent::End { ts_ns: ts, complete: true });
                            self.state = State::Head;
                        }
                    }
                    Chunk::Data(_) => {}
                }
                used
            }
        }
    }

    /// Takes one CRLF-terminated line, joining with bytes buffered from earlier segments.
    /// Returns the line (without CRLF) and the bytes of `b` consumed.
    fn line(&mut self, b: &[u8]) -> Option<(Vec<u8>, usize)> {
        // A CR carried over from the previous segment may pair with an LF here.
        if self.buf.last() == Some(&b'\r') && b.first() == Some(&b'\n') {
            self.buf.pop();
            return Some((std::mem::take(&mut self.buf), 1));
        }
        match memchr::memmem::find(b, b"\r\n") {
            Some(i) => {
                let mut line = std::mem::take(&mut self.buf);
                line.extend_from_slice(&b[..i]);
                Some((line, i + 2))
            }
            None => {
                self.buf.extend_from_slice(b);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{body, data, run};
    use super::super::*;

    #[test]
    fn chunked_response_split_anywhere() {
        let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        for cut in 0..msg.len() {
            let mut p = HttpParser::new();
            let segs = [
                Segment::Data { ts_ns: 1, bytes: &msg[..cut], syscall_start: true, arrival_ns: 0 },
                Segment::Data { ts_ns: 2, bytes: &msg[cut..], syscall_start: false, arrival_ns: 0 },
            ];
            let evs = run(&mut p, &segs);
            assert_eq!(body(&evs), b"hello world", "cut at {cut}");
            assert!(matches!(evs.last(), Some(HttpEvent::End { complete: true, .. })), "cut at {cut}: {evs:?}");
        }
    }

    #[test]
    fn gap_inside_chunk_is_skipped_and_resync_at_chunk_header() {
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[
                data(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                data(2, b"a\r\n01"),
                Segment::Gap { len: 4 },
                Segment::Data { ts_ns: 3, bytes: b"6789\r\n", syscall_start: false, arrival_ns: 0 },
                // a whole chunk lost across boundaries
                Segment::Gap { len: 30 },
                Segment::Data { ts_ns: 4, bytes: b"still lost", syscall_start: false, arrival_ns: 0 },
                data(5, b"3\r\nxyz\r\n"),
                data(6, b"0\r\n\r\n"),
            ],
        );
        assert_eq!(body(&evs), b"016789xyz");
        assert_eq!(evs.last(), Some(&HttpEvent::End { ts_ns: 6, complete: true }));
    }

    #[test]
    fn lost_terminator_ends_message_incomplete_at_next_head() {
        let mut p = HttpParser::new();
        let evs = run(
            &mut p,
            &[
                data(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                Segment::Gap { len: 50 },
                data(2, b"HTTP/1.1 204 No Content\r\n\r\n"),
            ],
        );
        assert!(evs.contains(&HttpEvent::End { ts_ns: 2, complete: false }));
        assert!(matches!(evs.last(), Some(HttpEvent::End { complete: true, .. })));
    }
}
