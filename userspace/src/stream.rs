//! Turns captured pieces of one direction of a connection into an ordered sequence of
//! [`Segment`]s. The BPF side stamps every piece with its position in the byte stream, so
//! missing bytes (a syscall longer than the capture, a ring-buffer drop) become explicit gaps.

use crate::{events::Data, protocol::Segment};

#[derive(Debug, Default, Clone)]
pub struct StreamCursor {
    /// Position of the next expected byte.
    next: u64,
    /// Bytes known to be missing so far.
    pub lost_bytes: u64,
    /// Number of gaps so far.
    pub gaps: u64,
}

impl StreamCursor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one captured piece; calls `out` with the segments it produces, in order.
    pub fn feed<'a>(&mut self, d: &Data<'a>, mut out: impl FnMut(Segment<'a>)) {
        if d.eof {
            out(Segment::Eof { ts_ns: d.ts_ns });
            return;
        }
        let pos = d.pos();
        let end = pos.saturating_add(d.bytes.len() as u64);
        if end <= self.next {
            // Already seen (or nothing): the stream never goes backwards.
            return;
        }
        let mut bytes = d.bytes;
        let mut syscall_start = d.offset == 0;
        if pos > self.next {
            let len = pos - self.next;
            self.lost_bytes += len;
            self.gaps += 1;
            out(Segment::Gap { len });
        } else if pos < self.next {
            let skip = (self.next - pos) as usize;
            bytes = &bytes[skip.min(bytes.len())..];
            syscall_start = false;
        }
        self.next = end;
        if !bytes.is_empty() {
            let arrival_ns = if syscall_start { d.arrival_ns } else { 0 };
            out(Segment::Data { ts_ns: d.ts_ns, bytes, syscall_start, arrival_ns });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Direction;

    fn piece(pos: u64, offset: u64, bytes: &[u8]) -> Data<'_> {
        Data {
            tgid: 1,
            tid: 1,
            fd: 3,
            conn_id: 1,
            ts_ns: 5,
            direction: Direction::Ingress,
            syscall_pos: pos,
            syscall_len: offset + bytes.len() as u64,
            offset,
            bytes,
            truncated: false,
            eof: false,
            arrival_ns: 0,
            tls: false,
            tls_start: false,
        }
    }

    #[test]
    fn gaps_and_overlaps() {
        let mut c = StreamCursor::new();
        let mut segs = Vec::new();
        c.feed(&piece(0, 0, b"abc"), |s| segs.push(format!("{s:?}")));
        c.feed(&piece(10, 0, b"xyz"), |s| segs.push(format!("{s:?}")));
        c.feed(&piece(10, 1, b"yzw"), |s| segs.push(format!("{s:?}")));
        assert_eq!(c.lost_bytes, 7);
        assert_eq!(segs.len(), 4);
        assert!(segs[1].contains("Gap { len: 7 }"));
        assert!(segs[3].contains("[119]"), "only the new byte 'w' is passed on: {}", segs[3]);
    }
}
