//! The requests layer: socket syscalls of the traced processes (the `sock` BPF programs)
//! reassembled into streams (tracker.rs): HTTP/SSE requests out as [`Output::Request`],
//! joined in the correlation stage with their engine requests; engine IPC streams (unix
//! sockets) handed to the engine layer as [`Note::Ipc`]. Connections open before we attached
//! are learned from /proc; listening ports are looked for until a server opens one.

use std::{collections::HashMap, time::Duration};

use inferscope_common::{ROLE_SERVER, ROLE_UNKNOWN, SOCK_FLAG_FULL, SockInfo, USER_CONN_ID_BIT};
use log::debug;

use super::{Cx, Layer, Note};
use crate::{
    cli::RunOptions,
    clock,
    engine::Engine,
    events::Event,
    output::{Health, Labels, Output},
    process::procfs,
    python::Interpreter,
    request::{Limits, RequestRecord},
    tracker::{ExistingConn, Tracker},
};

/// Where a process's listening ports stand.
struct Ports {
    /// TCP ports it listens on (empty until it does).
    ports: Vec<u16>,
    /// When to look again, and the current back-off (reading /proc/PID/net/tcp walks the
    /// kernel's whole TCP hash table: not for every tick).
    next_check: std::time::Instant,
    every: Duration,
}

/// When to look in /proc again for sockets of a process whose socket I/O capture did not see.
struct Rescan {
    next: std::time::Instant,
    /// 1 s after a look that found sockets, doubling up to a minute while looks find none
    /// (the unclassified I/O is then an untraced syscall on a known socket, or a socket we do
    /// not capture).
    every: Duration,
}

const RESCAN_MIN: Duration = Duration::from_secs(1);
const RESCAN_MAX: Duration = Duration::from_secs(60);

pub struct RequestsLayer {
    tracker: Tracker,
    records: Vec<RequestRecord>,
    ports: HashMap<u32, Ports>,
    /// Processes whose unclassified socket I/O was seen (said once each on stderr).
    rescans: HashMap<u32, Rescan>,
    next_conn_id: u64,
    idle_ns: u64,
    /// Requests handed to the sinks.
    reported: u64,
}

impl RequestsLayer {
    pub fn new(o: &RunOptions) -> Self {
        let limits =
            Limits { content_bytes: if o.capture_content { o.max_content_bytes } else { 0 }, ..Limits::default() };
        Self {
            tracker: Tracker::new(limits),
            records: Vec::new(),
            ports: HashMap::new(),
            rescans: HashMap::new(),
            next_conn_id: 0,
            reported: 0,
            idle_ns: (o.idle_timeout.max(1.0) * 1e9) as u64,
        }
    }

    /// A connection id user space gives a socket it found open.
    fn conn_id(&mut self) -> u64 {
        self.next_conn_id += 1;
        USER_CONN_ID_BIT | self.next_conn_id
    }

    /// Records the ports `pid` listens on: `server.port`, and arrival times for their traffic.
    fn set_ports(&mut self, cx: &mut Cx, pid: u32, ports: &[u16]) {
        self.tracker.set_server_port(pid, (ports.len() == 1).then(|| ports[0]));
        for p in ports {
            cx.probes.watch_port(*p);
        }
        if let Some(t) = self.ports.get_mut(&pid) {
            t.ports = ports.to_vec();
        }
    }

    /// Servers open their listening sockets after they start (vLLM: once the model is loaded);
    /// look again for processes that have none yet.
    fn refresh_ports(&mut self, cx: &mut Cx) {
        let now = std::time::Instant::now();
        let due: Vec<u32> =
            self.ports.iter().filter(|(_, t)| t.ports.is_empty() && t.next_check <= now).map(|(p, _)| *p).collect();
        for pid in due {
            if let Some(t) = self.ports.get_mut(&pid) {
                // 5 s, 10 s, 20 s ... up to 5 min: servers bind once they are ready; workers never.
                t.every = (t.every * 2).min(Duration::from_secs(300));
                t.next_check = now + t.every;
            }
            let (_, ports) = procfs::open_tcp(pid);
            if !ports.is_empty() {
                eprintln!("inferscope: pid {pid} listens on {}", join(&ports));
                self.set_ports(cx, pid, &ports);
            }
        }
    }

    /// Puts the sockets of `pid` that the BPF side does not know into `SOCKETS`: TCP
    /// connections on a port some traced process listens on (its own, or its parent's for a
    /// connection passed over a unix socket), and connected unix stream sockets (engine IPC,
    /// captured whole). Their parsers wait for the next message head. Returns how many.
    fn learn_sockets(&mut self, cx: &mut Cx, pid: u32, conns: Vec<procfs::OpenConn>) -> usize {
        let now = clock::monotonic_ns();
        let mut learned = 0;
        for c in conns {
            if !c.server_side && !self.ports.values().any(|p| p.ports.contains(&c.local_port)) {
                continue;
            }
            let conn_id = self.conn_id();
            let info = SockInfo { conn_id, pos: [0, 0], role: ROLE_SERVER, flags: 0, _pad: [0; 6] };
            match cx.probes.add_socket(pid, c.fd as u32, info) {
                Ok(true) => {
                    learned += 1;
                    self.tracker.add_existing(
                        ExistingConn {
                            tgid: pid,
                            fd: c.fd,
                            conn_id,
                            peer: Some(c.peer),
                            local_port: Some(c.local_port),
                            unix: false,
                        },
                        now,
                    )
                }
                Ok(false) => {}
                Err(e) => debug!("pid {pid} fd {}: {e:#}", c.fd),
            }
        }
        for fd in procfs::open_unix(pid) {
            let conn_id = self.conn_id();
            let info = SockInfo { conn_id, pos: [0, 0], role: ROLE_UNKNOWN, flags: SOCK_FLAG_FULL, _pad: [0; 6] };
            if let Ok(true) = cx.probes.add_socket(pid, fd as u32, info) {
                learned += 1;
                self.tracker.add_existing(
                    ExistingConn { tgid: pid, fd, conn_id, peer: None, local_port: None, unix: true },
                    now,
                );
            }
        }
        learned
    }

    /// `pid` moved bytes on a socket capture did not see: said once, and /proc is looked at
    /// again (rate-limited) for sockets to learn.
    fn socket_unknown(&mut self, cx: &mut Cx, pid: u32, family: u16) {
        if !self.ports.contains_key(&pid) {
            return;
        }
        let now = std::time::Instant::now();
        let r = self.rescans.entry(pid).or_insert_with(|| {
            let kind = match family {
                1 => "unix",
                _ => "TCP",
            };
            eprintln!(
                "inferscope: pid {pid} moved bytes on a {kind} socket that capture did not see (an fd it did not \
                 know, a syscall it does not trace, or a read already waiting when tracing began); looking in /proc for its sockets; counted in \
                 inferscope_unclassified_socket_io_total"
            );
            Rescan { next: now, every: RESCAN_MIN }
        });
        if r.next > now {
            return;
        }
        let (conns, _) = procfs::open_tcp(pid);
        let learned = self.learn_sockets(cx, pid, conns);
        if let Some(r) = self.rescans.get_mut(&pid) {
            r.every = if learned > 0 { RESCAN_MIN } else { (r.every * 2).min(RESCAN_MAX) };
            r.next = now + r.every;
        }
        if learned > 0 {
            debug!("pid {pid}: {learned} sockets learned from /proc");
        }
    }

    /// Finished HTTP records out, each with its engine side.
    fn flush(&mut self, cx: &mut Cx) {
        for mut r in std::mem::take(&mut self.records) {
            cx.correlate.join_request(&mut r);
            let fact = cx.facts.get_mut(r.pid);
            if let (Some(m), Some(f)) = (r.model_label(), fact)
                && f.served_model.is_none()
            {
                f.served_model = Some(m.to_string());
            }
            let engine = cx.facts.get(r.pid).map(|f| f.engine);
            let labels = Labels::of(&r, &mut cx.facts.models, engine.map_or("openai_compatible", Engine::name));
            cx.emit(Output::Request { record: &r, labels: &labels, provider: engine.map(Engine::name) });
            self.reported += 1;
        }
    }
}

fn join(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

impl Layer for RequestsLayer {
    fn name(&self) -> &'static str {
        "requests"
    }

    /// Its TCP connections already open (server side), its unix stream sockets (engine IPC,
    /// captured whole), its listening ports.
    fn process_added(&mut self, cx: &mut Cx, pid: u32, _interp: Option<&Interpreter>) {
        let every = Duration::from_secs(5);
        self.ports.insert(pid, Ports { ports: Vec::new(), next_check: std::time::Instant::now() + every, every });
        let (conns, ports) = procfs::open_tcp(pid);
        self.set_ports(cx, pid, &ports);
        self.learn_sockets(cx, pid, conns);
    }

    fn describe(&self, pid: u32) -> String {
        match self.ports.get(&pid) {
            Some(p) if !p.ports.is_empty() => format!(", listening on {}", join(&p.ports)),
            _ => String::new(),
        }
    }

    /// Its requests in flight are not reported: they did not end while we watched.
    fn process_gone(&mut self, cx: &mut Cx, pid: u32, ts_ns: u64) {
        self.tracker.process_gone(pid, ts_ns, &mut self.records);
        self.tracker.set_server_port(pid, None);
        self.ports.remove(&pid);
        self.rescans.remove(&pid);
        self.flush(cx);
        // Switched off, or the process left: the kernel side forgets its sockets (closes are
        // not seen while the socket tracepoints are detached; /proc says them again).
        cx.probes.forget_sockets(pid);
    }

    fn on_event(&mut self, cx: &mut Cx, ev: &Event) {
        if let Event::SocketUnknown { tgid, family, .. } = ev {
            self.socket_unknown(cx, *tgid, *family);
            return;
        }
        if !matches!(ev, Event::Data(_) | Event::ConnOpen(_) | Event::ConnClose(_)) {
            return;
        }
        self.tracker.handle(ev, &mut self.records);
        // Engine messages first: a request's last engine output precedes its last HTTP bytes,
        // so the HTTP record finishing now finds its engine side already complete.
        if self.tracker.has_ipc() {
            cx.post(Note::Ipc(self.tracker.take_ipc()));
        }
        if !self.records.is_empty() {
            cx.post(Note::Requests);
        }
    }

    fn on_note(&mut self, cx: &mut Cx, note: &Note) {
        if let Note::Requests = note {
            self.flush(cx);
        }
    }

    fn tick(&mut self, cx: &mut Cx) {
        self.refresh_ports(cx);
        self.tracker.expire(clock::monotonic_ns(), self.idle_ns, &mut self.records);
        self.flush(cx);
    }

    fn finish(&mut self, cx: &mut Cx) {
        self.flush(cx);
    }

    fn tracepoints(&self) -> &'static [&'static str] {
        &[crate::bpf::TP_SOCKETS]
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.tracker.stats();
        vec![
            ("requests_reported", self.reported),
            ("requests_in_flight", self.tracker.in_flight()),
            ("connections", s.connections),
            ("incomplete", s.incomplete),
            ("gaps", s.gaps),
        ]
    }

    fn health(&self, h: &mut Health) {
        h.tracker = self.tracker.stats_snapshot();
        h.in_flight = self.tracker.in_flight();
    }
}
