//! Per-connection state: each direction's stream cursor and HTTP parser, and the queue of
//! exchanges in flight. Takes decoded events, returns finished [`RequestRecord`]s, and counts
//! every byte and message it could not make sense of.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::{
    events::{Conn, Data, Direction, Event},
    protocol::{
        Segment,
        http::{HttpEvent, HttpParser, StartLine},
        zmtp::{self, ZmtpParser},
    },
    request::{Exchange, Limits, RequestRecord},
    stream::StreamCursor,
};

/// Most exchanges queued on one connection (pipelining); more are dropped and counted.
const MAX_PENDING: usize = 64;

/// Counters of what could not be used, for the health metrics. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// HTTP parse errors by cause (`ParseError::cause`).
    pub parse_errors: Vec<(&'static str, u64)>,
    /// Bytes known to be missing from captured streams.
    pub lost_bytes: u64,
    /// Gaps in captured streams.
    pub gaps: u64,
    /// Responses with no request to pair with (capture started mid-exchange).
    pub orphan_responses: u64,
    /// Streamed chunks that were not valid JSON, or SSE events dropped.
    pub bad_chunks: u64,
    /// Exchanges where the traced process was the HTTP client (not reported).
    pub client_exchanges: u64,
    /// Exchanges dropped because too many were queued on one connection.
    pub pending_overflow: u64,
    /// Bytes skipped by HTTP parsers while out of sync (before a first message head, or
    /// after lost bytes until the next one).
    pub discarded_bytes: u64,
    /// Connections currently tracked.
    pub connections: u64,
    /// Exchanges finished without a response end (lost, connection closed, process exited).
    pub incomplete: u64,
    /// Connections carrying ZeroMQ (engine IPC) now.
    pub ipc_connections: u64,
    /// Bytes on IPC connections that could not be framed (out of sync, or not ZMTP).
    pub ipc_discarded_bytes: u64,
    /// ZMTP messages lost whole (start not captured, too many frames).
    pub ipc_dropped_messages: u64,
    /// Requests reported whose head was not captured whole (longer than the capture of its
    /// syscall): marked `head_truncated`.
    pub head_truncated: u64,
    /// Connections found to carry TLS (their plaintext comes from the `SSL_*` probes).
    pub tls_connections: u64,
    /// TLS connections closed without any plaintext seen (no OpenSSL probed in that process:
    /// a TLS library inferscope does not read, or probes unavailable).
    pub tls_unread: u64,
}

impl TrackerStats {
    fn parse_error(&mut self, cause: &'static str) {
        match self.parse_errors.iter_mut().find(|(c, _)| *c == cause) {
            Some((_, n)) => *n += 1,
            None => self.parse_errors.push((cause, 1)),
        }
    }
}

#[derive(Debug)]
struct Connection {
    /// For debugging.
    #[allow(dead_code)]
    fd: i32,
    peer: Option<SocketAddr>,
    local_port: Option<u16>,
    cursors: [StreamCursor; 2],
    parsers: [HttpParser; 2],
    /// Which direction carries requests, once known.
    request_dir: Option<Direction>,
    pending: VecDeque<Exchange>,
    last_ts: u64,
    /// Scratch for parser output.
    events: Vec<HttpEvent>,
    /// Set once the connection is known to carry ZMTP (engine IPC): its messages go to the
    /// engine layer, HTTP parsing stops.
    zmtp: Option<Box<[ZmtpParser; 2]>>,
    /// Captured from its start (not mid-stream): a ZMTP greeting can be recognised.
    fresh: [bool; 2],
    /// Its capture began mid-stream (learned from /proc, or its open was lost).
    mid_stream: bool,
    /// It carries TLS: only plaintext records count (see [`Data::tls`]).
    tls: bool,
    /// With `tls`: plaintext was seen.
    tls_read: bool,
}

impl Connection {
    fn new(fd: i32, peer: Option<SocketAddr>, local_port: Option<u16>, mid_stream: bool, ts: u64) -> Self {
        let parser = || {
            if mid_stream { HttpParser::new_unsynced() } else { HttpParser::new() }
        };
        Self {
            fd,
            peer,
            local_port,
            cursors: [StreamCursor::new(), StreamCursor::new()],
            parsers: [parser(), parser()],
            request_dir: None,
            pending: VecDeque::new(),
            last_ts: ts,
            events: Vec::new(),
            zmtp: None,
            fresh: [!mid_stream, !mid_stream],
            mid_stream,
            tls: false,
            tls_read: false,
        }
    }

    /// A unix-domain socket: engine IPC, framed as ZMTP from the start.
    fn new_ipc(fd: i32, mid_stream: bool, ts: u64) -> Self {
        let mut c = Self::new(fd, None, None, mid_stream, ts);
        let p = || if mid_stream { ZmtpParser::new_unsynced() } else { ZmtpParser::new() };
        c.zmtp = Some(Box::new([p(), p()]));
        c
    }
}

/// A message of a ZMTP connection, for the engine layer.
#[derive(Debug)]
pub struct IpcMessage {
    pub tgid: u32,
    pub fd: i32,
    pub direction: Direction,
    pub msg: zmtp::Message,
    /// Messages in this direction were lost before this point (capture gap, bytes out of
    /// sync, or a message dropped whole); `msg` is then empty.
    pub lost: bool,
}

/// Identity of a connection: process and the id the BPF side (or attach) gave it.
type Key = (u32, u64);

/// What the tracker knows about a connection opened before capture began.
#[derive(Clone, Copy, Debug)]
pub struct ExistingConn {
    pub tgid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub peer: Option<SocketAddr>,
    pub local_port: Option<u16>,
    /// A unix-domain socket (engine IPC).
    pub unix: bool,
}

#[derive(Debug, Default)]
pub struct Tracker {
    conns: HashMap<Key, Connection>,
    s: Shared,
}

/// What every connection's processing updates (kept apart from `conns` so a connection is
/// processed in place, borrowed from the map, not moved out and back for every event).
#[derive(Debug, Default)]
struct Shared {
    lim: Limits,
    stats: TrackerStats,
    /// Requests whose head was seen and which have not finished.
    in_flight: u64,
    /// The one TCP port each traced server process listens on.
    listen_ports: HashMap<u32, u16>,
    /// ZMTP messages, in capture order, until the caller takes them.
    ipc: Vec<IpcMessage>,
}

impl Tracker {
    pub fn new(lim: Limits) -> Self {
        Self { conns: HashMap::new(), s: Shared { lim, ..Default::default() } }
    }

    /// What could not be used so far.
    pub fn stats(&self) -> &TrackerStats {
        &self.s.stats
    }

    /// Requests currently in flight (head seen, not finished).
    pub fn in_flight(&self) -> u64 {
        self.s.in_flight
    }

    /// Registers a connection that existed before capture started: its parsers wait for the
    /// next message head.
    pub fn add_existing(&mut self, c: ExistingConn, ts: u64) {
        self.conns.entry((c.tgid, c.conn_id)).or_insert_with(|| {
            if c.unix {
                Connection::new_ipc(c.fd, true, ts)
            } else {
                Connection::new(c.fd, c.peer, c.local_port, true, ts)
            }
        });
        self.count_conns();
    }

    /// O(1) on every open and close; the IPC connections are counted when stats are taken.
    fn count_conns(&mut self) {
        self.s.stats.connections = self.conns.len() as u64;
    }

    /// The stats with the IPC connections counted now (a walk over the connections: for
    /// health snapshots, not per event).
    pub fn stats_snapshot(&self) -> TrackerStats {
        let mut s = self.s.stats.clone();
        s.ipc_connections = self.conns.values().filter(|c| c.zmtp.is_some()).count() as u64;
        s
    }

    /// ZMTP messages decoded since the last call, in capture order.
    pub fn take_ipc(&mut self) -> Vec<IpcMessage> {
        std::mem::take(&mut self.s.ipc)
    }

    /// Whether ZMTP messages wait to be taken.
    pub fn has_ipc(&self) -> bool {
        !self.s.ipc.is_empty()
    }

    /// Processes one event; finished requests are appended to `out`.
    pub fn handle(&mut self, ev: &Event<'_>, out: &mut Vec<RequestRecord>) {
        match ev {
            Event::Data(d) => self.data(d, out),
            Event::ConnOpen(c) => self.open(c),
            Event::ConnClose(c) => {
                if let Some(conn) = self.conns.remove(&(c.tgid, c.conn_id)) {
                    self.s.close(c.tgid, c.conn_id, conn, c.ts_ns, out);
                }
            }
            Event::ProcExit { tgid, ts_ns } => self.process_gone(*tgid, *ts_ns, out),
            Event::ProcFork { .. } => {}
            // Not about connections (the device layer takes these).
            Event::ProcMmap { .. }
            | Event::SocketUnknown { .. }
            | Event::Device(_)
            | Event::DeviceName { .. }
            | Event::PySample { .. }
            | Event::PyCall { .. }
            | Event::PySite { .. }
            | Event::PyEval { .. } => return,
        }
        if !matches!(ev, Event::Data(_)) {
            self.count_conns();
        }
    }

    /// Finishes every connection of a process that is gone.
    pub fn process_gone(&mut self, tgid: u32, ts: u64, out: &mut Vec<RequestRecord>) {
        let keys: Vec<Key> = self.conns.keys().filter(|(p, _)| *p == tgid).copied().collect();
        for k in keys {
            if let Some(conn) = self.conns.remove(&k) {
                self.s.close(k.0, k.1, conn, ts, out);
            }
        }
        self.count_conns();
    }

    /// Finishes connections idle for longer than `idle_ns` (their close was never seen).
    pub fn expire(&mut self, now: u64, idle_ns: u64, out: &mut Vec<RequestRecord>) {
        let keys: Vec<Key> =
            // Engine IPC connections live as long as the engine and may idle: never expired.
            self.conns
                .iter()
                .filter(|(_, c)| c.zmtp.is_none() && now.saturating_sub(c.last_ts) > idle_ns)
                .map(|(k, _)| *k)
                .collect();
        for k in keys {
            if let Some(conn) = self.conns.remove(&k) {
                let ts = conn.last_ts;
                self.s.close(k.0, k.1, conn, ts, out);
            }
        }
        self.count_conns();
    }

    fn open(&mut self, c: &Conn) {
        // The role (who sends requests) is decided by the bytes, not by accept/connect: a
        // connection whose capture began mid-stream has no open event at all.
        let local_port = self.s.listen_ports.get(&c.tgid).copied();
        // A connection seen from its start is HTTP until its first bytes are a ZMTP greeting
        // (engine IPC, on unix or TCP sockets).
        let conn = Connection::new(c.fd, c.peer, if c.unix { None } else { local_port }, false, c.ts_ns);
        self.conns.insert((c.tgid, c.conn_id), conn);
    }

    /// Records the port a process serves on, for `server.port` (when it has exactly one).
    pub fn set_server_port(&mut self, tgid: u32, port: Option<u16>) {
        match port {
            Some(p) => {
                self.s.listen_ports.insert(tgid, p);
            }
            None => {
                self.s.listen_ports.remove(&tgid);
            }
        }
    }

    fn data(&mut self, d: &Data<'_>, out: &mut Vec<RequestRecord>) {
        let key = (d.tgid, d.conn_id);
        // Data for a connection whose open was lost (ring buffer) or that predates capture
        // starts a connection whose parsers wait for a message head.
        let conn = self.conns.entry(key).or_insert_with(|| Connection::new(d.fd, None, None, true, d.ts_ns));
        self.s.feed(conn, d, key, out);
    }
}

impl Shared {
    fn feed(&mut self, conn: &mut Connection, d: &Data<'_>, key: Key, out: &mut Vec<RequestRecord>) {
        conn.last_ts = d.ts_ns;
        if d.tls != conn.tls {
            if !d.tls || conn.zmtp.is_some() {
                // Ciphertext of a connection already read as plaintext (or TLS on engine IPC,
                // which never carries it): nothing to parse.
                return;
            }
            self.start_tls(conn, d, key, out);
        }
        if d.tls {
            if d.bytes.is_empty() && !d.eof {
                return;
            }
            conn.tls_read |= !d.bytes.is_empty();
        }
        let dir = d.direction;
        let i = dir.index();
        if conn.fresh[i] {
            conn.fresh[i] = false;
            // ZeroMQ over TCP (multi-node engines) opens with its greeting.
            if conn.zmtp.is_none() && d.pos() == 0 && zmtp::is_greeting(d.bytes) {
                conn.zmtp = Some(Box::new([ZmtpParser::new(), ZmtpParser::new()]));
            }
        }
        if let Some(z) = &mut conn.zmtp {
            let before = (conn.cursors[i].lost_bytes, conn.cursors[i].gaps, z[i].discarded, z[i].dropped_messages);
            let mut msgs = Vec::new();
            {
                let p = &mut z[i];
                conn.cursors[i].feed(d, |seg: Segment<'_>| p.feed(seg, &mut msgs));
            }
            self.stats.lost_bytes += conn.cursors[i].lost_bytes - before.0;
            self.stats.gaps += conn.cursors[i].gaps - before.1;
            self.stats.ipc_discarded_bytes += z[i].discarded - before.2;
            self.stats.ipc_dropped_messages += z[i].dropped_messages - before.3;
            let lost = (z[i].discarded, z[i].dropped_messages) != (before.2, before.3);
            if lost {
                self.ipc.push(IpcMessage { tgid: key.0, fd: conn.fd, direction: dir, msg: Default::default(), lost });
            }
            for msg in msgs {
                self.ipc.push(IpcMessage { tgid: key.0, fd: conn.fd, direction: dir, msg, lost: false });
            }
            return;
        }
        let before = (conn.cursors[i].lost_bytes, conn.cursors[i].gaps, conn.parsers[i].discarded);
        let mut events = std::mem::take(&mut conn.events);
        {
            let Connection { cursors, parsers, .. } = conn;
            let parser = &mut parsers[i];
            cursors[i].feed(d, |seg: Segment<'_>| parser.feed(seg, &mut events));
        }
        self.stats.lost_bytes += conn.cursors[i].lost_bytes - before.0;
        self.stats.gaps += conn.cursors[i].gaps - before.1;
        let discarded = conn.parsers[i].discarded - before.2;
        if discarded > 0 {
            self.stats.discarded_bytes += discarded;
            if dir == Direction::Egress {
                // Response bytes were not understood: whatever awaits a response is partial.
                for ex in conn.pending.iter_mut().filter(|e| !e.response_complete) {
                    ex.capture_gaps = true;
                }
            }
        }
        for ev in events.drain(..) {
            self.http_event(conn, dir, ev, key, out);
        }
        conn.events = events;
        if d.eof && dir == Direction::Ingress {
            self.peer_closed(conn, d.ts_ns, key, out);
        }
    }

    /// The connection turned out to carry TLS: what was parsed of its ciphertext is dropped,
    /// and its streams restart at the plaintext's position 0 (from a message head when the
    /// handshake was seen, else at the next one).
    fn start_tls(&mut self, conn: &mut Connection, d: &Data<'_>, key: Key, out: &mut Vec<RequestRecord>) {
        while let Some(mut ex) = conn.pending.pop_front() {
            ex.capture_gaps = true;
            ex.end_ns = Some(d.ts_ns);
            self.finish(conn, ex, key, out);
        }
        let synced = d.tls_start || (d.pos() == 0 && !conn.mid_stream && !d.bytes.is_empty());
        let parser = || if synced { HttpParser::new() } else { HttpParser::new_unsynced() };
        conn.parsers = [parser(), parser()];
        conn.cursors = [StreamCursor::new(), StreamCursor::new()];
        conn.request_dir = None;
        conn.fresh = [false, false];
        conn.tls = true;
        self.stats.tls_connections += 1;
    }

    /// The peer stopped sending. If it is the client and responses are unfinished, it gave up.
    fn peer_closed(&mut self, conn: &mut Connection, ts: u64, key: Key, out: &mut Vec<RequestRecord>) {
        if conn.request_dir != Some(Direction::Ingress) {
            return;
        }
        while let Some(mut ex) = conn.pending.pop_front() {
            ex.aborted = true;
            ex.end_ns = Some(ts);
            self.finish(conn, ex, key, out);
        }
        // Whatever the server still writes is not a response to anything.
        conn.parsers[Direction::Egress.index()] = HttpParser::new_unsynced();
    }

    fn http_event(
        &mut self,
        conn: &mut Connection,
        dir: Direction,
        ev: HttpEvent,
        key: Key,
        out: &mut Vec<RequestRecord>,
    ) {
        let other = if dir == Direction::Ingress { Direction::Egress } else { Direction::Ingress };
        match ev {
            HttpEvent::Error(e) => self.stats.parse_error(e.cause()),
            HttpEvent::Head(head) => {
                if head.is_request() {
                    if conn.request_dir.is_none() {
                        conn.request_dir = Some(dir);
                    }
                    if conn.request_dir != Some(dir) {
                        self.stats.parse_error("request_both_ways");
                        return;
                    }
                    let is_head = matches!(&head.start, StartLine::Request { method, .. } if method == "HEAD");
                    conn.parsers[other.index()].expect_response(is_head);
                    if dir == Direction::Egress {
                        // The traced process is the client: not a request it serves.
                        self.stats.client_exchanges += 1;
                        return;
                    }
                    if conn.pending.len() >= MAX_PENDING {
                        self.stats.pending_overflow += 1;
                        return;
                    }
                    self.in_flight += 1;
                    if head.truncated {
                        self.stats.head_truncated += 1;
                    }
                    conn.pending.push_back(Exchange::new(head));
                } else {
                    if conn.request_dir == Some(Direction::Egress) || dir == Direction::Ingress {
                        return;
                    }
                    if let StartLine::Response { status, .. } = head.start {
                        if status == 101 {
                            conn.parsers[0].make_opaque();
                            conn.parsers[1].make_opaque();
                        }
                        if (100..200).contains(&status) {
                            return;
                        }
                    }
                    match conn.pending.iter_mut().find(|e| !e.has_response()) {
                        Some(ex) => ex.response_head(head),
                        None => self.stats.orphan_responses += 1,
                    }
                }
            }
            HttpEvent::Body { ts_ns, bytes } => {
                if dir == Direction::Ingress && conn.request_dir == Some(Direction::Ingress) {
                    if let Some(ex) = conn.pending.back_mut().filter(|e| e.request_end_ns.is_none()) {
                        ex.request_body(&bytes, &self.lim);
                    }
                } else if dir == Direction::Egress
                    && let Some(ex) = conn.pending.iter_mut().find(|e| e.has_response() && !e.response_complete)
                {
                    ex.response_body(ts_ns, &bytes, &self.lim);
                }
            }
            HttpEvent::BodyGap { .. } => {
                if dir == Direction::Ingress {
                    if let Some(ex) = conn.pending.back_mut().filter(|e| e.request_end_ns.is_none()) {
                        ex.request_gap();
                    }
                } else if let Some(ex) = conn.pending.iter_mut().find(|e| e.has_response() && !e.response_complete) {
                    ex.response_gap();
                }
            }
            HttpEvent::End { ts_ns, complete } => {
                if dir == Direction::Ingress {
                    if let Some(ex) = conn.pending.back_mut().filter(|e| e.request_end_ns.is_none()) {
                        ex.request_end_ns = Some(ts_ns);
                        if !complete {
                            ex.capture_gaps = true;
                        }
                    }
                } else if conn.request_dir == Some(Direction::Ingress) {
                    let Some(pos) = conn.pending.iter().position(|e| e.has_response() && !e.response_complete) else {
                        return;
                    };
                    // Responses come in request order; anything queued before it got no response.
                    for _ in 0..pos {
                        if let Some(mut lost) = conn.pending.pop_front() {
                            lost.end_ns = Some(ts_ns);
                            self.finish(conn, lost, key, out);
                        }
                    }
                    if let Some(mut ex) = conn.pending.pop_front() {
                        ex.response_complete = complete;
                        if !complete {
                            ex.capture_gaps = true;
                        }
                        ex.end_ns = Some(ts_ns);
                        self.finish(conn, ex, key, out);
                    }
                }
            }
        }
    }

    fn finish(&mut self, conn: &Connection, ex: Exchange, key: Key, out: &mut Vec<RequestRecord>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.bad_chunks += ex.bad_chunks();
        let port = conn.local_port.or_else(|| self.listen_ports.get(&key.0).copied());
        let mut rec = ex.finish(key.0, key.1, conn.peer, port, &self.lim);
        rec.tls = conn.tls;
        if !rec.complete && !rec.aborted {
            self.stats.incomplete += 1;
        }
        out.push(rec);
    }

    fn close(&mut self, tgid: u32, conn_id: u64, mut conn: Connection, ts: u64, out: &mut Vec<RequestRecord>) {
        let key = (tgid, conn_id);
        if conn.tls && !conn.tls_read {
            self.stats.tls_unread += 1;
        }
        // A response running until close ends here.
        let mut events = std::mem::take(&mut conn.events);
        conn.parsers[Direction::Egress.index()].feed(Segment::Eof { ts_ns: ts }, &mut events);
        for ev in events.drain(..) {
            self.http_event(&mut conn, Direction::Egress, ev, key, out);
        }
        while let Some(mut ex) = conn.pending.pop_front() {
            ex.end_ns = Some(ts);
            self.finish(&conn, ex, key, out);
        }
    }
}
