//! ZMTP 3.x, ZeroMQ's wire protocol, one direction of a connection: the greeting, handshake
//! commands (skipped) and multipart messages (returned).
//!
//! Frames: a flags byte (bit 0 MORE, bit 1 LONG, bit 2 COMMAND), the size (1 byte, or 8 bytes
//! big-endian when LONG), the body. A message is the frames up to one without MORE.
//!
//! Capture that starts mid-stream, or bytes lost in a frame header, leave the parser out of
//! sync; it tries again only where a syscall's data starts (ZeroMQ's I/O thread reads and
//! writes whole batches of frames per syscall), and the bytes in between are counted as
//! discarded. A frame whose middle was lost keeps its size, so framing survives; the message is
//! marked as having gaps and the layer above decides what it can still use.

use crate::protocol::Segment;

/// Largest frame body buffered; the rest of a longer frame is counted, not kept.
pub const MAX_FRAME: usize = 4 << 20;
/// Most frames kept per message.
pub const MAX_FRAMES: usize = 64;
/// Frame sizes above this are taken as a sign of garbage while resynchronising.
const MAX_PLAUSIBLE_FRAME: u64 = 1 << 30;

const GREETING_LEN: usize = 64;
const FLAG_MORE: u8 = 1;
const FLAG_LONG: u8 = 2;
const FLAG_COMMAND: u8 = 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// When the syscall that completed the message ended.
    pub ts_ns: u64,
    pub frames: Vec<Vec<u8>>,
    /// Some bytes of a frame were not captured (or were past [`MAX_FRAME`]). A frame with a gap
    /// holds only the bytes before it: what follows is kept out, so that a frame's bytes are
    /// always a true prefix of what was sent and can be read as far as they go.
    pub gaps: bool,
}

#[derive(Debug)]
enum State {
    /// Expecting the 64-byte greeting; `got` bytes of it seen.
    Greeting { got: usize },
    /// Expecting a frame header; `hdr` holds the bytes of it seen so far.
    Header,
    /// Inside a frame body.
    Body { remaining: u64 },
    /// Lost: waiting for a syscall boundary.
    Unsynced,
}

/// Looks at the first bytes of a direction: a ZMTP greeting starts with 0xFF, eight bytes
/// (a length in ZMTP 1.0, padding since) and 0x7F.
pub fn is_greeting(b: &[u8]) -> bool {
    b.len() >= 10 && b[0] == 0xff && b[9] == 0x7f
}

#[derive(Debug)]
pub struct ZmtpParser {
    state: State,
    hdr: Vec<u8>,
    /// The frame being read.
    frame: Vec<u8>,
    frame_flags: u8,
    /// The frame being read lost bytes: later ones are not appended.
    frame_cut: bool,
    frames: Vec<Vec<u8>>,
    gaps: bool,
    /// The frames of the current message are being dropped (too many, or its start was lost).
    dropping: bool,
    /// Bytes skipped while out of sync.
    pub discarded: u64,
    /// Messages dropped whole (start lost, or more than [`MAX_FRAMES`] frames).
    pub dropped_messages: u64,
    /// The peer's greeting was seen, so this is certainly ZMTP.
    pub greeted: bool,
}

impl ZmtpParser {
    /// A parser for a connection seen from its start: the greeting comes first.
    pub fn new() -> Self {
        Self::with_state(State::Greeting { got: 0 })
    }

    /// A parser for a connection whose capture starts mid-stream.
    pub fn new_unsynced() -> Self {
        Self::with_state(State::Unsynced)
    }

    fn with_state(state: State) -> Self {
        Self {
            state,
            hdr: Vec::new(),
            frame: Vec::new(),
            frame_flags: 0,
            frame_cut: false,
            frames: Vec::new(),
            gaps: false,
            dropping: false,
            discarded: 0,
            dropped_messages: 0,
            greeted: false,
        }
    }

    /// Whether the parser follows the framing now.
    pub fn synced(&self) -> bool {
        !matches!(self.state, State::Unsynced)
    }

    pub fn feed(&mut self, seg: Segment<'_>, out: &mut Vec<Message>) {
        match seg {
            Segment::Data { ts_ns, bytes, syscall_start, .. } => self.data(ts_ns, bytes, syscall_start, out),
            Segment::Gap { len } => self.gap(len),
            Segment::Eof { .. } => {
                self.reset_message();
                self.state = State::Unsynced;
            }
        }
    }

    fn reset_message(&mut self) {
        self.frames.clear();
        self.frame.clear();
        self.frame_cut = false;
        self.hdr.clear();
        self.gaps = false;
        self.dropping = false;
    }

    fn gap(&mut self, len: u64) {
        match &mut self.state {
            State::Body { remaining } if len < *remaining => {
                *remaining -= len;
                self.gaps = true;
                self.frame_cut = true;
            }
            State::Body { remaining } if len == *remaining => {
                self.gaps = true;
                self.frame_cut = true;
                self.state = State::Header;
                self.end_frame(None);
            }
            _ => {
                if !self.frames.is_empty() || !self.frame.is_empty() {
                    self.dropped_messages += 1;
                }
                self.reset_message();
                self.state = State::Unsynced;
            }
        }
    }

    fn data(&mut self, ts: u64, mut b: &[u8], syscall_start: bool, out: &mut Vec<Message>) {
        if matches!(self.state, State::Unsynced) {
            if !syscall_start || !self.plausible_start(b) {
                self.discarded += b.len() as u64;
                return;
            }
            self.state = if is_greeting(b) { State::Greeting { got: 0 } } else { State::Header };
            // A message already under way when capture began can not be completed.
            self.reset_message();
        }
        while !b.is_empty() {
            match &mut self.state {
                State::Greeting { got } => {
                    let n = (GREETING_LEN - *got).min(b.len());
                    *got += n;
                    b = &b[n..];
                    if *got == GREETING_LEN {
                        self.greeted = true;
                        self.state = State::Header;
                    }
                }
                State::Header => {
                    if self.hdr.is_empty() {
                        self.hdr.push(b[0]);
                        b = &b[1..];
                        continue;
                    }
                    let need: usize = if self.hdr[0] & FLAG_LONG != 0 { 9 } else { 2 };
                    let n = need.saturating_sub(self.hdr.len()).min(b.len());
                    self.hdr.extend_from_slice(&b[..n]);
                    b = &b[n..];
                    if self.hdr.len() < need {
                        continue;
                    }
                    let flags = self.hdr[0];
                    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                        // Not a frame header: garbage, or framing lost without a visible gap.
                        self.discarded += (self.hdr.len() + b.len()) as u64;
                        self.reset_message();
                        self.state = State::Unsynced;
                        return;
                    }
                    let size = if flags & FLAG_LONG != 0 {
                        self.hdr.get(1..9).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
                    } else {
                        self.hdr[1] as u64
                    };
                    self.hdr.clear();
                    self.frame_flags = flags;
                    self.frame.clear();
                    if size == 0 {
                        self.end_frame(Some((ts, out)));
                    } else {
                        self.state = State::Body { remaining: size };
                    }
                }
                State::Body { remaining } => {
                    let n = (*remaining).min(b.len() as u64) as usize;
                    let room = MAX_FRAME.saturating_sub(self.frame.len());
                    if !self.dropping && !self.frame_cut && self.frame_flags & FLAG_COMMAND == 0 {
                        self.frame.extend_from_slice(&b[..n.min(room)]);
                        if n > room {
                            self.gaps = true;
                            self.frame_cut = true;
                        }
                    }
                    *remaining -= n as u64;
                    b = &b[n..];
                    if *remaining == 0 {
                        self.state = State::Header;
                        self.end_frame(Some((ts, out)));
                    }
                }
                State::Unsynced => {
                    self.discarded += b.len() as u64;
                    return;
                }
            }
        }
    }

    /// A frame ended; `out` is None when it ended inside a gap (no timestamp of its own).
    fn end_frame(&mut self, out: Option<(u64, &mut Vec<Message>)>) {
        let flags = self.frame_flags;
        let frame = std::mem::take(&mut self.frame);
        self.frame_cut = false;
        if flags & FLAG_COMMAND != 0 {
            return;
        }
        if !self.dropping {
            if self.frames.len() >= MAX_FRAMES {
                self.dropping = true;
                self.dropped_messages += 1;
            } else {
                self.frames.push(frame);
            }
        }
        if flags & FLAG_MORE != 0 {
            return;
        }
        let frames = std::mem::take(&mut self.frames);
        let gaps = std::mem::take(&mut self.gaps);
        let dropping = std::mem::take(&mut self.dropping);
        match out {
            Some((ts_ns, out)) if !dropping => out.push(Message { ts_ns, frames, gaps }),
            // Ended in a gap: its last bytes are missing and so is its time.
            _ => {
                if !dropping {
                    self.dropped_messages += 1;
                }
            }
        }
    }

    /// Whether bytes at a syscall boundary can start a greeting or a frame.
    fn plausible_start(&self, b: &[u8]) -> bool {
        if is_greeting(b) {
            return true;
        }
        let Some(&flags) = b.first() else { return false };
        if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
            return false;
        }
        if flags & FLAG_LONG != 0 {
            match b.get(1..9) {
                Some(s) => u64::from_be_bytes(s.try_into().unwrap_or([0xff; 8])) <= MAX_PLAUSIBLE_FRAME,
                None => false,
            }
        } else {
            b.len() >= 2
        }
    }
}

impl Default for ZmtpParser {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(b: &[u8], start: bool) -> Segment<'_> {
        Segment::Data { ts_ns: 7, bytes: b, syscall_start: start, arrival_ns: 0 }
    }

    fn greeting() -> Vec<u8> {
        let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1];
        let mut mech = b"NULL".to_vec();
        mech.resize(20, 0);
        g.extend_from_slice(&mech);
        g.push(0);
        g.resize(64, 0);
        g
    }

    fn frame(body: &[u8], more: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let more = if more { FLAG_MORE } else { 0 };
        if body.len() > 255 {
            f.push(FLAG_LONG | more);
            f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            f.push(more);
            f.push(body.len() as u8);
        }
        f.extend_from_slice(body);
        f
    }

    /// A READY command as libzmq sends it after the greeting.
    fn ready() -> Vec<u8> {
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        body.push(11);
        body.extend_from_slice(b"Socket-Type");
        body.extend_from_slice(&6u32.to_be_bytes());
        body.extend_from_slice(b"DEALER");
        let mut f = vec![FLAG_COMMAND, body.len() as u8];
        f.extend_from_slice(&body);
        f
    }

    fn stream() -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
        let big = vec![0xabu8; 1000];
        let msgs = vec![vec![vec![0u8], b"payload one".to_vec()], vec![big], vec![vec![], b"x".to_vec()]];
        let mut s = greeting();
        s.extend(ready());
        for m in &msgs {
            for (i, f) in m.iter().enumerate() {
                s.extend(frame(f, i + 1 < m.len()));
            }
        }
        (s, msgs)
    }

    #[test]
    fn any_split_gives_the_same_messages() {
        let (s, msgs) = stream();
        for cut in [1, 2, 3, 9, 64, 65, 67, 100, 500] {
            let mut p = ZmtpParser::new();
            let mut out = Vec::new();
            for (i, c) in s.chunks(cut).enumerate() {
                p.feed(data(c, i == 0), &mut out);
            }
            let got: Vec<_> = out.iter().map(|m| m.frames.clone()).collect();
            assert_eq!(got, msgs, "split every {cut} bytes");
            assert!(p.greeted && out.iter().all(|m| !m.gaps));
        }
    }

    #[test]
    fn mid_stream_start_waits_for_a_syscall_boundary() {
        let (s, _) = stream();
        let mut p = ZmtpParser::new_unsynced();
        let mut out = Vec::new();
        // The middle of the big frame, then a syscall that starts with a whole message.
        p.feed(data(&[0xab; 300], false), &mut out);
        let msg = frame(b"hello", false);
        p.feed(data(&msg, true), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].frames, vec![b"hello".to_vec()]);
        assert_eq!(p.discarded, 300);
        // Garbage at a boundary is discarded, not framed.
        p.feed(data(b"GET / HTTP/1.1\r\n", true), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!p.synced());
        drop(s);
    }

    #[test]
    fn a_gap_inside_a_frame_keeps_framing() {
        let big = vec![7u8; 20_000];
        let f = frame(&big, false);
        let mut p = ZmtpParser::new_unsynced();
        let mut out = Vec::new();
        p.feed(data(&f[..8192], true), &mut out);
        p.feed(Segment::Gap { len: (f.len() - 8192 - 1024) as u64 }, &mut out);
        p.feed(data(&f[f.len() - 1024..], false), &mut out);
        p.feed(data(&frame(b"next", false), true), &mut out);
        assert_eq!(out.len(), 2);
        assert!(out[0].gaps);
        // Only the bytes before the gap: a true prefix of the frame.
        assert_eq!(out[0].frames[0], big[..8192 - 9]);
        assert_eq!(out[1].frames, vec![b"next".to_vec()]);
    }

    #[test]
    fn a_gap_in_a_header_loses_sync_until_the_next_boundary() {
        let mut p = ZmtpParser::new();
        let mut out = Vec::new();
        let mut s = greeting();
        s.push(FLAG_LONG);
        p.feed(data(&s, true), &mut out);
        p.feed(Segment::Gap { len: 100 }, &mut out);
        p.feed(data(&[1, 2, 3], false), &mut out);
        assert!(!p.synced());
        p.feed(data(&frame(b"ok", false), true), &mut out);
        assert_eq!(out.len(), 1);
    }

    proptest::proptest! {
        /// Any split of the same bytes into syscalls gives the same messages.
        #[test]
        fn any_split_gives_the_same_messages_prop(cuts in proptest::collection::vec(1usize..300, 1..40)) {
            let (s, msgs) = stream();
            let mut p = ZmtpParser::new();
            let mut out = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < s.len() {
                let n = cuts[i % cuts.len()].min(s.len() - at);
                p.feed(data(&s[at..at + n], true), &mut out);
                at += n;
                i += 1;
            }
            let got: Vec<_> = out.iter().map(|m| m.frames.clone()).collect();
            proptest::prop_assert_eq!(got, msgs);
        }
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0..200u32 {
            let junk: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(seed).wrapping_add(seed * 7) >> 1) as u8).collect();
            let mut p = ZmtpParser::new_unsynced();
            let mut out = Vec::new();
            for (i, c) in junk.chunks(1 + seed as usize % 17).enumerate() {
                p.feed(data(c, i % 3 == 0), &mut out);
            }
        }
    }
}
