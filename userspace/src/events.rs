//! Decoding ring-buffer records into typed events. Input is whatever bytes the kernel handed
//! over: short, unknown or inconsistent records become [`DecodeError`]s, never panics.

use inferscope_common::{
    ConnEvent, DATA_FLAG_EOF, DATA_FLAG_TLS, DATA_FLAG_TLS_START, DATA_FLAG_TRUNCATED, DATA_HEADER_LEN, DIR_EGRESS,
    DataEvent, DeviceEvent, DeviceName, EventKind, MAX_PY_FRAMES, ProcEvent, PyCall, PyEval, PySample, PySite,
};

/// Which way bytes moved, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the process (read, recv...).
    Ingress,
    /// Out of the process (write, send...).
    Egress,
}

impl Direction {
    pub fn index(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
}

/// Bytes of one syscall on a tracked socket (or one captured part of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub direction: Direction,
    /// Stream position of the syscall's first byte.
    pub syscall_pos: u64,
    /// Bytes the syscall moved.
    pub syscall_len: u64,
    /// Offset of `bytes` inside the syscall's bytes.
    pub offset: u64,
    pub bytes: &'a [u8],
    pub truncated: bool,
    /// A read returned 0: the peer closed its sending side.
    pub eof: bool,
    /// For reads: when the first unread bytes arrived at the socket (0: unknown).
    pub arrival_ns: u64,
    /// The connection carries TLS: these are plaintext bytes (from the `SSL_*` probes) at
    /// plaintext positions; with no bytes, the announcement that the socket carries TLS.
    pub tls: bool,
    /// With `tls`: the handshake was seen, so the plaintext is captured from its start.
    pub tls_start: bool,
}

impl Data<'_> {
    /// Stream position of `bytes[0]`.
    pub fn pos(&self) -> u64 {
        self.syscall_pos.saturating_add(self.offset)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub tgid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub role: Role,
    /// Peer address, when the syscall told it.
    pub peer: Option<std::net::SocketAddr>,
    /// A unix-domain socket (engine IPC), when the syscall told it.
    pub unix: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Data(Data<'a>),
    ConnOpen(Conn),
    ConnClose(Conn),
    ProcFork {
        tgid: u32,
        child: u32,
        ts_ns: u64,
    },
    ProcExit {
        tgid: u32,
        ts_ns: u64,
    },
    /// A traced process mapped an executable file (a library loaded with `dlopen`).
    ProcMmap {
        tgid: u32,
        ts_ns: u64,
    },
    /// A traced process moved bytes on a socket capture did not see (an fd not known, or an
    /// untraced syscall); at most one a second per process.
    SocketUnknown {
        tgid: u32,
        /// Address family of that socket (AF_INET, AF_INET6, AF_UNIX).
        family: u16,
        ts_ns: u64,
    },
    /// A probed accelerator-runtime call.
    Device(DeviceCall),
    /// A runtime gave a kernel handle a name.
    DeviceName {
        tgid: u32,
        probe: u32,
        handle: u64,
        name: String,
    },
    /// A sampled Python stack: code-object pointers, innermost first.
    PySample {
        tgid: u32,
        tid: u32,
        ts_ns: u64,
        codes: Vec<u64>,
    },
    /// The innermost Python frames of a thread entering a probed launch (innermost first; 0 for
    /// a shim or past the outermost frame).
    PySite {
        tgid: u32,
        tid: u32,
        probe: u32,
        ts_ns: u64,
        handle: u64,
        codes: [u64; inferscope_common::PY_SITE_FRAMES],
    },
    /// A watched function's call returned (eval-frame uprobes, 3.9/3.10); `ret` 0: it raised.
    PyEval {
        tgid: u32,
        tid: u32,
        spec: u32,
        start_ns: u64,
        end_ns: u64,
        frame: u64,
        ret: u64,
    },
    /// A hardware breakpoint on a timed Python function's entry or return fired.
    PyCall {
        tgid: u32,
        tid: u32,
        ts_ns: u64,
        /// The watched code unit.
        addr: u64,
        /// The thread's current interpreter frame (0 when it could not be read), its caller,
        /// and its instruction pointer.
        frame: u64,
        frame_prev: u64,
        frame_instr: u64,
        /// The code unit at `addr` after the access (`u32::MAX`: unreadable).
        unit: u32,
        /// The instruction pointer after the access.
        ip: u64,
    },
}

/// One call of a probed accelerator-runtime function, as the BPF side reported it. What
/// `args` mean depends on the probe (see `device::catalog`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCall {
    pub tgid: u32,
    pub tid: u32,
    pub probe: u32,
    pub start_ns: u64,
    /// None when the probe has no return probe.
    pub end_ns: Option<u64>,
    pub args: [u64; 4],
    pub ret: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record's header.
    Short,
    /// An unknown kind tag.
    UnknownKind(u32),
    /// A data record whose length field disagrees with its size.
    BadLength,
}

impl DecodeError {
    pub fn cause(&self) -> &'static str {
        match self {
            DecodeError::Short => "short_record",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::BadLength => "bad_length",
        }
    }
}

fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short);
    }
    // SAFETY: length checked; T is a plain #[repr(C)] record valid for any bit pattern, and
    // read_unaligned copes with the ring buffer's alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn role(r: u8) -> Role {
    match r {
        inferscope_common::ROLE_SERVER => Role::Server,
        inferscope_common::ROLE_CLIENT => Role::Client,
        _ => Role::Unknown,
    }
}

fn peer(ev: &ConnEvent) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    match ev.family {
        2 => {
            let a = [ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]];
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), ev.port))
        }
        10 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ev.addr)), ev.port)),
        _ => None,
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind: u32 = read_pod(bytes)?;
    match EventKind::from_u32(kind) {
        Some(EventKind::Data) => {
            let h: DataEvent = read_pod(bytes)?;
            let payload = &bytes[DATA_HEADER_LEN..];
            let len = h.len as usize;
            if len > payload.len() {
                return Err(DecodeError::BadLength);
            }
            Ok(Event::Data(Data {
                tgid: h.tgid,
                tid: h.tid,
                fd: h.fd,
                conn_id: h.conn_id,
                ts_ns: h.ts_ns,
                direction: if h.direction == DIR_EGRESS { Direction::Egress } else { Direction::Ingress },
                syscall_pos: h.syscall_pos,
                syscall_len: h.syscall_len,
                offset: h.offset as u64,
                bytes: &payload[..len],
                truncated: h.flags & DATA_FLAG_TRUNCATED != 0,
                eof: h.flags & DATA_FLAG_EOF != 0,
                arrival_ns: h.arrival_ns,
                tls: h.flags & DATA_FLAG_TLS != 0,
                tls_start: h.flags & DATA_FLAG_TLS_START != 0,
            }))
        }
        Some(k @ (EventKind::ConnOpen | EventKind::ConnClose)) => {
            let c: ConnEvent = read_pod(bytes)?;
            let conn = Conn {
                tgid: c.tgid,
                fd: c.fd,
                conn_id: c.conn_id,
                ts_ns: c.ts_ns,
                role: role(c.role),
                peer: peer(&c),
                unix: c.family == 1,
            };
            Ok(if k == EventKind::ConnOpen { Event::ConnOpen(conn) } else { Event::ConnClose(conn) })
        }
        Some(EventKind::ProcFork) => {
            let p: ProcEvent = read_pod(bytes)?;
            Ok(Event::ProcFork { tgid: p.tgid, child: p.child, ts_ns: p.ts_ns })
        }
        Some(EventKind::ProcExit) => {
            let p: ProcEvent = read_pod(bytes)?;
            Ok(Event::ProcExit { tgid: p.tgid, ts_ns: p.ts_ns })
        }
        Some(EventKind::ProcMmap) => {
            let p: ProcEvent = read_pod(bytes)?;
            Ok(Event::ProcMmap { tgid: p.tgid, ts_ns: p.ts_ns })
        }
        Some(EventKind::SocketUnknown) => {
            let p: ProcEvent = read_pod(bytes)?;
            Ok(Event::SocketUnknown { tgid: p.tgid, family: p.child as u16, ts_ns: p.ts_ns })
        }
        Some(EventKind::Device) => {
            let d: DeviceEvent = read_pod(bytes)?;
            if d.end_ns != 0 && d.end_ns < d.start_ns {
                return Err(DecodeError::BadLength);
            }
            Ok(Event::Device(DeviceCall {
                tgid: d.tgid,
                tid: d.tid,
                probe: d.probe,
                start_ns: d.start_ns,
                end_ns: (d.end_ns != 0).then_some(d.end_ns),
                args: d.args,
                ret: d.ret,
            }))
        }
        Some(EventKind::DeviceName) => {
            let n: DeviceName = read_pod(bytes)?;
            let len = (n.len as usize).min(n.name.len());
            let raw = &n.name[..len];
            let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
            Ok(Event::DeviceName {
                tgid: n.tgid,
                probe: n.probe,
                handle: n.handle,
                name: String::from_utf8_lossy(raw).into_owned(),
            })
        }
        Some(EventKind::PySample) => {
            let s: PySample = read_pod(bytes)?;
            let depth = s.depth as usize;
            if depth > MAX_PY_FRAMES {
                return Err(DecodeError::BadLength);
            }
            Ok(Event::PySample { tgid: s.tgid, tid: s.tid, ts_ns: s.ts_ns, codes: s.codes[..depth].to_vec() })
        }
        Some(EventKind::PySite) => {
            let s: PySite = read_pod(bytes)?;
            Ok(Event::PySite {
                tgid: s.tgid,
                tid: s.tid,
                probe: s.probe,
                ts_ns: s.ts_ns,
                handle: s.handle,
                codes: s.codes,
            })
        }
        Some(EventKind::PyEval) => {
            let e: PyEval = read_pod(bytes)?;
            Ok(Event::PyEval {
                tgid: e.tgid,
                tid: e.tid,
                spec: e.spec,
                start_ns: e.start_ns,
                end_ns: e.end_ns,
                frame: e.frame,
                ret: e.ret,
            })
        }
        Some(EventKind::PyCall) => {
            let c: PyCall = read_pod(bytes)?;
            Ok(Event::PyCall {
                tgid: c.tgid,
                tid: c.tid,
                ts_ns: c.ts_ns,
                addr: c.addr,
                frame: c.frame,
                frame_prev: c.frame_prev,
                frame_instr: c.frame_instr,
                unit: c.unit,
                ip: c.ip,
            })
        }
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// Encodes a data record the way the BPF side does (tests, fuzzing and replay use this).
pub fn encode_data(d: &Data<'_>) -> Vec<u8> {
    let h = DataEvent {
        kind: EventKind::Data as u32,
        tgid: d.tgid,
        tid: d.tid,
        fd: d.fd,
        conn_id: d.conn_id,
        ts_ns: d.ts_ns,
        syscall_pos: d.syscall_pos,
        syscall_len: d.syscall_len,
        offset: d.offset as u32,
        len: d.bytes.len() as u32,
        arrival_ns: d.arrival_ns,
        direction: if d.direction == Direction::Egress { DIR_EGRESS } else { 0 },
        syscall: 0,
        flags: (if d.truncated { DATA_FLAG_TRUNCATED } else { 0 })
            | (if d.eof { DATA_FLAG_EOF } else { 0 })
            | (if d.tls { DATA_FLAG_TLS } else { 0 })
            | (if d.tls_start { DATA_FLAG_TLS_START } else { 0 }),
        _pad: [0; 5],
    };
    let mut out = Vec::with_capacity(DATA_HEADER_LEN + d.bytes.len());
    // SAFETY: DataEvent is #[repr(C)] with explicit padding; viewing it as bytes is sound.
    out.extend_from_slice(unsafe {
        std::slice::from_raw_parts((&h as *const DataEvent).cast::<u8>(), DATA_HEADER_LEN)
    });
    out.extend_from_slice(d.bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(bytes: &'a [u8]) -> Data<'a> {
        Data {
            tgid: 7,
            tid: 8,
            fd: 9,
            conn_id: 10,
            ts_ns: 11,
            direction: Direction::Egress,
            syscall_pos: 100,
            syscall_len: 5000,
            offset: 3,
            bytes,
            truncated: true,
            eof: false,
            arrival_ns: 12,
            tls: true,
            tls_start: false,
        }
    }

    #[test]
    fn data_round_trips() {
        let d = sample(b"hello");
        let enc = encode_data(&d);
        assert_eq!(decode(&enc).unwrap(), Event::Data(d.clone()));
        assert_eq!(d.pos(), 103);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(DecodeError::Short));
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short));
        assert_eq!(decode(&[99, 0, 0, 0, 0, 0, 0, 0]), Err(DecodeError::UnknownKind(99)));
        // A data header claiming more bytes than present.
        let mut enc = encode_data(&sample(b"abc"));
        enc.truncate(enc.len() - 1);
        assert_eq!(decode(&enc), Err(DecodeError::BadLength));
        // Truncated header of every kind.
        for kind in 1u32..=5 {
            let b = kind.to_ne_bytes();
            assert_eq!(decode(&b), Err(DecodeError::Short));
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
