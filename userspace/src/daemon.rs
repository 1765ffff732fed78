//! The running daemon: loads the probes, decides which processes to trace (one PID tree, or
//! every vLLM/SGLang server found), drains the ring buffer into the tracker, and feeds every
//! finished request to the exporters. Runs until interrupted, `--duration` passes, or (with
//! `attach`) the target is gone. Dropping the probes detaches everything.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use inferscope_common::{SockInfo, USER_CONN_ID_BIT};
use log::{debug, info, warn};
use tokio::io::unix::AsyncFd;

use crate::{
    bpf::{self, LoadOptions, Probes},
    cli::RunOptions,
    clock::{self, Clock},
    correlate::Correlator,
    device::{
        DeviceRecord, IntervalReport,
        manager::{self, DeviceManager, DeviceOptions},
    },
    engine::{EngineEvent, EngineKind, EngineTracker},
    events::{self, Event},
    export::{
        BoundedLabel, Health, Labels,
        jsonl::JsonlWriter,
        otlp::{Otlp, OtlpOptions},
        prom::{self, PromMetrics},
        sink::{ConsoleSink, JsonlSink, OtlpSink, Output, PromSink, Sinks},
    },
    layers::{Cx, Layer},
    procfs::{self, Engine},
    python::timers::PyTimers,
    request::{Limits, RequestRecord},
    tracker::{ExistingConn, Tracker},
};

/// How often the ring buffer is drained when no wakeup came (the BPF side wakes the reader only
/// when `WAKEUP_BYTES` are waiting). Bounds how late a request is reported at low traffic.
const DRAIN_MS: u64 = 10;

/// What to trace.
#[derive(Clone, Debug)]
pub enum Target {
    /// One process, and its descendants unless `children` is false.
    Pid { pid: u32, children: bool },
    /// Every process `procfs::classify` recognises.
    Discover { matches: Vec<String>, interval: Duration },
}

struct Traced {
    engine: Engine,
    /// TCP ports it listens on (empty until it does).
    ports: Vec<u16>,
    /// When to look for listening ports again, and the current back-off (reading
    /// /proc/PID/net/tcp walks the kernel's whole TCP hash table: not for every tick).
    next_port_check: std::time::Instant,
    port_check_every: Duration,
}

struct Daemon {
    probes: Probes,
    tracker: Tracker,
    sinks: Sinks,
    /// Model label values (bounded), for requests and engine metrics.
    models: BoundedLabel,
    procs: HashMap<u32, Traced>,
    decode_errors: HashMap<&'static str, u64>,
    next_conn_id: u64,
    records: Vec<RequestRecord>,
    children: bool,
    last_loss_report: std::time::Instant,
    /// Processes seen exiting, and when.
    exited: HashMap<u32, std::time::Instant>,
    /// The engine layer: requests and steps from engine IPC.
    engine: EngineTracker,
    engine_events: Vec<EngineEvent>,
    /// Served model per process (its command line, else its last request), for engine metrics.
    served_model: HashMap<u32, String>,
    /// When a process's engine kind was last looked for (it can load vLLM after we attach).
    kind_checked: HashMap<u32, std::time::Instant>,
    /// The device layer (None with --no-device or when its programs could not load).
    device: Option<DeviceManager>,
    device_recs: Vec<DeviceRecord>,
    device_interval: Duration,
    last_device_interval: std::time::Instant,
    last_device_account: std::time::Instant,
    /// Library scans done on blocking threads come back here.
    scan_tx: tokio::sync::mpsc::UnboundedSender<crate::device::manager::ScanResult>,
    /// The Python layer's function timers (with --python-timers).
    python: Option<PyTimers>,
    python_recs: Vec<crate::python::timers::CallRecord>,
    /// Every join between layers: HTTP <-> engine requests, steps <-> timed calls, topology.
    correlate: Correlator,
    /// Engine state readers per traced CPython process (with --engine-state-interval > 0).
    /// The layers behind the [`Layer`] interface.
    layers: Vec<Box<dyn Layer>>,
}

impl Daemon {
    /// Starts tracing `pid`: kernel filter, and its TCP connections that are already open.
    fn trace(&mut self, pid: u32, engine: Engine) {
        if self.procs.contains_key(&pid) {
            return;
        }
        if let Err(e) = self.probes.track(pid) {
            warn!("cannot trace pid {pid}: {e:#}");
            return;
        }
        self.procs.insert(
            pid,
            Traced {
                engine,
                ports: Vec::new(),
                next_port_check: std::time::Instant::now() + Duration::from_secs(5),
                port_check_every: Duration::from_secs(5),
            },
        );
        let (conns, ports) = procfs::open_tcp(pid);
        self.set_ports(pid, &ports);
        let now = clock::monotonic_ns();
        for c in conns.into_iter().filter(|c| c.server_side) {
            self.next_conn_id += 1;
            let conn_id = USER_CONN_ID_BIT | self.next_conn_id;
            let info = SockInfo { conn_id, pos: [0, 0], role: inferscope_common::ROLE_SERVER, flags: 0, _pad: [0; 6] };
            match self.probes.add_socket(pid, c.fd as u32, info) {
                Ok(true) => self.tracker.add_existing(
                    ExistingConn {
                        tgid: pid,
                        fd: c.fd,
                        conn_id,
                        peer: Some(c.peer),
                        local_port: Some(c.local_port),
                        unix: false,
                    },
                    now,
                ),
                Ok(false) => {}
                Err(e) => debug!("pid {pid} fd {}: {e:#}", c.fd),
            }
        }
        // Unix stream sockets: engine IPC (ZeroMQ ipc://), captured whole.
        for fd in procfs::open_unix(pid) {
            self.next_conn_id += 1;
            let conn_id = USER_CONN_ID_BIT | self.next_conn_id;
            let info = SockInfo {
                conn_id,
                pos: [0, 0],
                role: inferscope_common::ROLE_UNKNOWN,
                flags: inferscope_common::SOCK_FLAG_FULL,
                _pad: [0; 6],
            };
            if let Ok(true) = self.probes.add_socket(pid, fd as u32, info) {
                self.tracker.add_existing(
                    ExistingConn { tgid: pid, fd, conn_id, peer: None, local_port: None, unix: true },
                    now,
                );
            }
        }
        if let Some(m) = procfs::served_model(pid) {
            self.served_model.insert(pid, m);
        }
        let ancestors = procfs::ancestors(pid);
        self.correlate.process_added(pid, ancestors.clone());
        if let Some(job) = self.device.as_mut().and_then(|dm| dm.add_process(pid)) {
            self.spawn_scan(job);
        }
        // The Python layer: the process's CPython, found once for timers and state.
        let interp = if self.python.is_some() || self.layers.iter().any(|l| l.wants_python()) {
            crate::python::find(pid).map_err(|e| debug!("pid {pid}: no CPython: {e:#}")).ok()
        } else {
            None
        };
        if let (Some(t), Some(i)) = (&mut self.python, &interp)
            && let Err(e) = t.add_interpreter(i.clone())
        {
            eprintln!("inferscope: pid {pid}: {e:#}");
        }
        let mut cx = Cx { sinks: &mut self.sinks, probes: &mut self.probes };
        for l in &mut self.layers {
            l.process_added(&mut cx, pid, interp.as_ref());
        }
        let version = self.detect_kind(pid);
        let comm = procfs::comm(pid).unwrap_or_default();
        eprintln!("inferscope: tracing pid {pid} ({comm}, {}{}{})", engine.name(), version, ports_note(&ports));
    }

    /// Looks for the engine a process runs (vLLM's release from its installed package);
    /// returns a note for the operator.
    fn detect_kind(&mut self, pid: u32) -> String {
        self.kind_checked.insert(pid, std::time::Instant::now());
        if let Some(v) = procfs::vllm_version(pid) {
            self.engine.set_kind(pid, EngineKind::Vllm { version: Some(v) });
            if let Some(t) = self.procs.get_mut(&pid) {
                t.engine = Engine::Vllm;
            }
            let known = crate::engine::vllm_layouts::for_version(v).is_some();
            return format!(
                ", vLLM {}.{}.{}{}",
                v.0,
                v.1,
                v.2,
                if known { "" } else { " (unknown wire layout: steps and tokens only)" }
            );
        }
        if self.procs.get(&pid).is_some_and(|t| t.engine == Engine::Sglang) {
            self.engine.set_kind(pid, EngineKind::Sglang);
        }
        String::new()
    }

    /// Records the ports `pid` listens on: `server.port`, and arrival times for their traffic.
    fn set_ports(&mut self, pid: u32, ports: &[u16]) {
        self.tracker.set_server_port(pid, (ports.len() == 1).then(|| ports[0]));
        for p in ports {
            self.probes.watch_port(*p);
        }
        if let Some(t) = self.procs.get_mut(&pid) {
            t.ports = ports.to_vec();
        }
    }

    /// Servers open their listening sockets after they start (vLLM: once the model is loaded);
    /// look again for processes that have none yet.
    fn refresh_ports(&mut self) {
        let now = std::time::Instant::now();
        let pids: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, t)| t.ports.is_empty() && t.next_port_check <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in pids {
            if let Some(t) = self.procs.get_mut(&pid) {
                // 5 s, 10 s, 20 s ... up to 5 min: servers bind once they are ready; workers never.
                t.port_check_every = (t.port_check_every * 2).min(Duration::from_secs(300));
                t.next_port_check = now + t.port_check_every;
            }
            let (_, ports) = procfs::open_tcp(pid);
            if !ports.is_empty() {
                eprintln!(
                    "inferscope: pid {pid} listens on {}",
                    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
                );
                self.set_ports(pid, &ports);
            }
        }
    }

    fn untrace(&mut self, pid: u32, ts: u64) {
        if self.procs.remove(&pid).is_some() {
            eprintln!("inferscope: pid {pid} exited");
        }
        self.exited.insert(pid, std::time::Instant::now());
        self.probes.untrack(pid);
        let mut cx = Cx { sinks: &mut self.sinks, probes: &mut self.probes };
        for l in &mut self.layers {
            l.process_gone(&mut cx, pid);
        }
        for r in self.correlate.process_gone(pid) {
            self.export_python_call(&r, None);
        }
        if let Some(t) = &mut self.python {
            t.remove_process(pid);
        }
        if let Some(dm) = &mut self.device {
            let (n, libs) = dm.attached(pid);
            let disabled = dm.disabled(pid);
            dm.remove_process(&mut self.probes, pid);
            let mut recs = Vec::new();
            let last = dm.tracker.process_gone(pid, &mut recs);
            self.sinks.emit(Output::DeviceCalls(&recs));
            if let Some(r) = last {
                self.device_interval_line(&r, (n, &libs), &disabled, true);
            }
        }
        self.sinks.emit(Output::ProcessGone { pid });
        self.tracker.process_gone(pid, ts, &mut self.records);
        self.tracker.set_server_port(pid, None);
        self.engine.process_gone(pid);
        self.served_model.remove(&pid);
        self.kind_checked.remove(&pid);
    }

    fn trace_tree(&mut self, root: u32, engine: Engine) {
        let pids = if self.children { procfs::tree(root, &procfs::parents()) } else { vec![root] };
        for p in pids {
            self.trace(p, engine);
        }
    }

    /// Traces what a /proc scan found, except processes that exited moments ago (a dying
    /// process is still listed while the kernel tears it down).
    fn apply_discovery(&mut self, found: Vec<(u32, Engine)>) {
        let now = std::time::Instant::now();
        self.exited.retain(|_, t| now.duration_since(*t) < Duration::from_secs(30));
        for (pid, engine) in found {
            if !self.exited.contains_key(&pid) {
                self.trace(pid, engine);
            }
        }
    }

    /// Forgets processes whose exit was not seen (events lost).
    fn forget_gone(&mut self) {
        let gone: Vec<u32> = self.procs.keys().copied().filter(|p| !procfs::exists(*p)).collect();
        for p in gone {
            self.untrace(p, clock::monotonic_ns());
        }
    }

    fn on_record(&mut self, bytes: &[u8]) {
        let ev = match events::decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                *self.decode_errors.entry(e.cause()).or_default() += 1;
                return;
            }
        };
        match &ev {
            Event::ProcFork { tgid, child, .. } => {
                let (tgid, child) = (*tgid, *child);
                match procfs::status_ids(child) {
                    // A thread of a traced process: the kernel filter works on thread groups.
                    Some((_, tg)) if tg != child => self.probes.untrack(child),
                    Some(_) if self.children => {
                        let engine = self.procs.get(&tgid).map_or(Engine::Other, |t| t.engine);
                        self.trace(child, engine);
                    }
                    Some(_) => self.probes.untrack(child),
                    None => self.probes.untrack(child),
                }
            }
            Event::ProcExit { tgid, ts_ns } => self.untrace(*tgid, *ts_ns),
            Event::ProcMmap { tgid, .. } => {
                if let Some(d) = &mut self.device {
                    d.mark_dirty(*tgid);
                }
                return;
            }
            Event::Device(c) => {
                if let Some(d) = &mut self.device {
                    d.tracker.on_call(c, &mut self.device_recs);
                    self.export_device_recs();
                }
                return;
            }
            Event::PySite { .. } => {
                let mut cx = Cx { sinks: &mut self.sinks, probes: &mut self.probes };
                for l in &mut self.layers {
                    l.on_event(&mut cx, &ev);
                }
                return;
            }
            Event::DeviceName { tgid, probe, handle, name } => {
                if let Some(d) = &mut self.device {
                    d.tracker.on_name(*tgid, *probe, *handle, name.clone());
                }
                return;
            }
            _ => self.tracker.handle(&ev, &mut self.records),
        }
        // Engine messages first: a request's last engine output precedes its last HTTP bytes,
        // so the HTTP record finishing now finds its engine side already complete.
        if self.tracker.has_ipc() {
            self.engine_messages();
        }
        self.flush_records();
    }

    fn engine_messages(&mut self) {
        for m in self.tracker.take_ipc() {
            if self.engine.kind(m.tgid).is_none()
                && self.kind_checked.get(&m.tgid).is_none_or(|t| t.elapsed() > Duration::from_secs(10))
            {
                let note = self.detect_kind(m.tgid);
                if !note.is_empty() {
                    eprintln!("inferscope: pid {} runs{}", m.tgid, note.trim_start_matches(','));
                }
            }
            if m.lost {
                self.engine.lost(m.tgid, m.direction);
            } else {
                self.engine.message(m.tgid, m.direction, &m.msg, &mut self.engine_events);
            }
        }
        for ev in std::mem::take(&mut self.engine_events) {
            let pid = match &ev {
                EngineEvent::Step(s) => s.pid,
                EngineEvent::Gauges { pid, .. } => *pid,
                EngineEvent::Finished(r) => r.pid,
            };
            // What the device did for the step: calls of the process and its descendants (the
            // engine core, its workers) since the previous step, up to this step's outputs.
            let device = match (&ev, &mut self.device) {
                (EngineEvent::Step(s), Some(d)) => {
                    d.tracker.flush_held(u64::MAX, 0, &mut self.device_recs);
                    self.export_device_recs();
                    self.correlate.device_step(s.pid, s.ts_ns)
                }
                _ => None,
            };
            for (r, step) in self.correlate.engine_event(clock::monotonic_ns(), &ev) {
                self.export_python_call(&r, step);
            }
            let model = self.models.get(self.served_model.get(&pid).map(String::as_str));
            self.sinks.emit(Output::Engine { event: &ev, model: &model, device: device.as_ref() });
        }
    }

    fn flush_records(&mut self) {
        for mut r in std::mem::take(&mut self.records) {
            self.correlate.join_request(&mut r);
            if let Some(m) = r.model_label()
                && !self.served_model.contains_key(&r.pid)
            {
                self.served_model.insert(r.pid, m.to_string());
            }
            let engine = self.procs.get(&r.pid).map(|t| t.engine);
            let labels = Labels::of(&r, &mut self.models, engine.map_or("openai_compatible", Engine::name));
            self.sinks.emit(Output::Request { record: &r, labels: &labels, provider: engine.map(Engine::name) });
        }
    }

    fn health(&self) -> Health {
        let export_errors = self.sinks.errors();
        let mut h = Health {
            bpf: self.probes.stats().map(|s| s.to_vec()).unwrap_or_default(),
            tracker: self.tracker.stats().clone(),
            decode_errors: self.decode_errors.iter().map(|(k, v)| (*k, *v)).collect(),
            attached_processes: self.procs.len() as u64,
            in_flight: self.tracker.in_flight(),
            export_errors,
            map_write_errors: self.probes.map_write_errors(),
            engine: self.engine.stats.clone(),
            device: self.device.as_ref().map_or_else(Default::default, |d| crate::export::DeviceHealth {
                unclaimed: self.correlate.unclaimed_device_calls(),
                ..d.health()
            }),
            python: self.python.as_ref().map(|t| t.health()).unwrap_or_default(),
        };
        for l in &self.layers {
            l.health(&mut h);
        }
        h
    }

    /// Breakpoint hits of the function timers -> calls -> exporters.
    fn python_drain(&mut self) {
        let Some(t) = &mut self.python else { return };
        t.poll(&mut self.python_recs);
        for n in t.notes.drain(..) {
            eprintln!("{n}");
        }
        if self.python_recs.is_empty() {
            return;
        }
        let mut pids: Vec<u32> = self.python_recs.iter().map(|r| r.pid).collect();
        pids.dedup();
        let unfinished: Vec<(u32, u64)> = pids.into_iter().map(|p| (p, t.unfinished(p))).collect();
        self.sinks.emit(Output::PythonCalls { records: &self.python_recs, specs: &t.specs, unfinished: &unfinished });
        // A call of an engine core belongs to the engine step the engine stamped first after
        // the call began: already seen (its IPC can be read before the call's hits), or still
        // to come (the call waits for it). Others go out now.
        for r in std::mem::take(&mut self.python_recs) {
            if let Some((r, step)) = self.correlate.python_call(r, procfs::dp_index) {
                self.export_python_call(&r, step);
            }
        }
    }

    /// Pending calls no step claimed within 2 s (or all, at the stop) go out without one;
    /// join candidates past their window are forgotten.
    fn python_expire(&mut self, all: bool) {
        for r in self.correlate.expire((!all).then(clock::monotonic_ns)) {
            self.export_python_call(&r, None);
        }
    }

    /// One timed call to the JSONL and OTLP exporters, with its engine step when known
    /// (monotonic ts, batch size).
    fn export_python_call(&mut self, r: &crate::python::timers::CallRecord, step: Option<(u64, usize)>) {
        let Some(t) = &self.python else { return };
        let Some(spec) = t.specs.get(r.spec) else { return };
        self.sinks.emit(Output::PythonCall { record: r, spec, location: t.location(r.pid, r.spec), step });
    }

    /// Hands the calls the device tracker committed to the correlation stage (they wait for
    /// their engine step) and the exporters (the buffer is kept).
    fn export_device_recs(&mut self) {
        if !self.device_recs.is_empty() {
            self.correlate.device_calls(&self.device_recs);
            self.sinks.emit(Output::DeviceCalls(&self.device_recs));
            self.device_recs.clear();
        }
    }

    /// Looks at a process's libraries for runtime symbols on a blocking thread; the result
    /// comes back through `scan_rx` to [`Self::device_scanned`].
    fn spawn_scan(&self, job: crate::device::manager::ScanJob) {
        let tx = self.scan_tx.clone();
        tokio::task::spawn_blocking(move || drop(tx.send(job.run())));
    }

    /// Attaches the probes a scan found.
    fn device_scanned(&mut self, r: crate::device::manager::ScanResult) {
        let Some(dm) = &mut self.device else { return };
        let pid = r.pid();
        dm.apply(&mut self.probes, r);
        self.sinks.emit(Output::DeviceProbes { pid, attached: dm.attached(pid).0 });
    }

    /// Attaches to libraries loaded since the last look, and reports driver calls no runtime
    /// call claimed. Runs on the drain timer.
    fn device_drain(&mut self) {
        let Some(d) = &mut self.device else { return };
        for job in d.dirty_jobs() {
            self.spawn_scan(job);
        }
        let Some(d) = &mut self.device else { return };
        // A driver call is held until the next call on its thread (it may be the inside of a
        // runtime call); 50 ms later it was not.
        d.tracker.flush_held(clock::monotonic_ns(), 50_000_000, &mut self.device_recs);
        self.export_device_recs();
    }

    fn device_interval_line(
        &mut self,
        r: &IntervalReport,
        probes: (usize, &[String]),
        disabled: &[String],
        last: bool,
    ) {
        let seconds = self.last_device_interval.elapsed().as_secs_f64();
        let top_kernels = self.device.as_ref().map_or(20, |d| d.opts.top_kernels);
        self.sinks.emit(Output::DeviceInterval { report: r, seconds, top_kernels, probes, disabled, last });
    }

    /// Overhead budget and probe hits every second; interval lines every --device-interval.
    fn device_tick(&mut self, force_interval: bool) {
        let Some(d) = &mut self.device else { return };
        let elapsed = self.last_device_account.elapsed().as_secs_f64();
        self.last_device_account = std::time::Instant::now();
        let (hits, off) = d.account(&mut self.probes, elapsed);
        for (pid, f, n) in &hits {
            self.sinks.emit(Output::DeviceProbeHits { pid: *pid, function: f, hits: *n });
        }
        for b in &off {
            self.sinks.emit(Output::DeviceProbeOff { pid: b.pid, function: &b.symbol });
            self.sinks.emit(Output::DeviceProbes { pid: b.pid, attached: d.attached(b.pid).0 });
        }
        if !force_interval && self.last_device_interval.elapsed() < self.device_interval {
            return;
        }
        d.tracker.flush_held(u64::MAX, 0, &mut self.device_recs);
        let reports = d.tracker.take_intervals();
        // (probes attached, their libraries) and probes switched off, per reported process.
        type Meta = ((usize, Vec<String>), Vec<String>);
        let meta: Vec<Meta> = reports.iter().map(|r| (d.attached(r.pid), d.disabled(r.pid))).collect();
        self.export_device_recs();
        for (r, ((n, libs), dis)) in reports.iter().zip(meta) {
            self.device_interval_line(r, (n, &libs), &dis, false);
        }
        self.last_device_interval = std::time::Instant::now();
    }

    /// Every layer behind the interface, with its context.
    fn each_layer(&mut self, f: impl Fn(&mut dyn Layer, &mut Cx)) {
        let mut cx = Cx { sinks: &mut self.sinks, probes: &mut self.probes };
        for l in &mut self.layers {
            f(l.as_mut(), &mut cx);
        }
    }

    fn tick(&mut self, idle_ns: u64) {
        self.each_layer(|l, cx| l.tick(cx));
        self.refresh_ports();
        self.python_expire(false);
        self.device_tick(false);
        self.tracker.expire(clock::monotonic_ns(), idle_ns, &mut self.records);
        self.engine.expire(clock::monotonic_ns());
        self.flush_records();
        let h = self.health();
        let report = self.last_loss_report.elapsed() >= Duration::from_secs(10);
        self.sinks.emit(Output::Health { health: &h, report, last: false });
        self.sinks.flush();
        if report {
            self.last_loss_report = std::time::Instant::now();
        }
    }
}

fn ports_note(ports: &[u16]) -> String {
    if ports.is_empty() {
        String::new()
    } else {
        format!(", listening on {}", ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","))
    }
}

/// Runs until interrupted. Errors are for the operator: one line, with what to do.
pub async fn run(target: Target, o: RunOptions) -> Result<()> {
    if let Target::Pid { pid, .. } = target
        && !procfs::exists(pid)
    {
        bail!(
            "no process with PID {pid} (if it runs in a container, use the PID the host sees, and run inferscope in the host PID namespace)"
        );
    }
    if procfs::in_child_pid_namespace() {
        bail!(
            "inferscope runs in a child PID namespace, where its PIDs do not match the kernel's: run it in the host PID namespace (Kubernetes: hostPID: true; docker: --pid=host)"
        );
    }
    let load = LoadOptions {
        capture_head: o.capture_bytes,
        capture_tail: o.capture_tail_bytes,
        ring_buffer_bytes: o.ring_buffer_size,
        arrival_times: !o.no_arrival_times,
        device: !o.no_device,
        uprobe_multi: !o.no_uprobe_multi,
    };
    let device_opts = if o.no_device {
        None
    } else {
        let (groups, symbols) =
            DeviceOptions::parse_probes(&o.device_probes).map_err(|e| anyhow::anyhow!("--device-probes: {e}"))?;
        for n in &o.no_device_probe {
            if crate::device::catalog::Group::parse(n).is_none() && crate::device::catalog::lookup_symbol(n).is_none() {
                bail!("--no-device-probe {n}: not a device probe group or function inferscope knows (see --help)");
            }
        }
        Some(DeviceOptions {
            groups,
            symbols,
            off: o.no_device_probe.iter().cloned().collect(),
            rate_limit: o.device_rate_limit,
            overhead_budget: o.device_overhead_budget.max(0.0),
            top_kernels: o.device_top_kernels.max(1),
        })
    };
    let mut probes = bpf::load(&load)?;
    for (cap, loss) in crate::privileges::missing_optional(crate::privileges::effective_caps()) {
        eprintln!("inferscope: warning: no {cap}: {loss}");
    }
    let device = match device_opts {
        Some(opts) if probes.has_device() => {
            let cost = manager::calibrate(&mut probes, inferscope_common::MAX_DEVICE_PROBES - 1);
            eprintln!(
                "inferscope: device probes: {}; attached {} (a probe hit costs {:.1} us here, {:.1} us with its return probe)",
                opts.describe(),
                if probes.device_multi() { "with one uprobe_multi link per library" } else { "one perf event each" },
                cost.entry_ns / 1e3,
                cost.pair_ns / 1e3
            );
            Some(DeviceManager::new(opts, cost))
        }
        _ => None,
    };
    let python = match &o.python_timers {
        Some(arg) => {
            let specs = crate::python::timers::load_config(arg).with_context(|| format!("--python-timers {arg}"))?;
            let n = specs.len();
            match PyTimers::new(specs, o.python_timers_eval_uprobes) {
                Ok(t) => {
                    eprintln!(
                        "inferscope: Python function timers: {n} function(s) from {arg}, looked for in every traced CPython {}",
                        if o.python_timers_eval_uprobes {
                            "3.9-3.14 (3.9/3.10 with eval-frame uprobes)"
                        } else {
                            "3.11-3.14"
                        }
                    );
                    Some(t)
                }
                Err(e) => {
                    eprintln!("inferscope: warning: Python function timers unavailable ({e:#})");
                    None
                }
            }
        }
        None => None,
    };
    let has_device = device.is_some();
    let ring = probes.take_events()?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for its lifetime.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;

    let mut prom =
        if o.vllm_metrics || o.prometheus_listen.is_some() { Some(PromMetrics::new(o.vllm_metrics)?) } else { None };
    if let (Some(p), Some(d)) = (&mut prom, &device) {
        p.device = Some(crate::export::prom_device::DeviceMetrics::new(&p.registry, d.opts.top_kernels)?);
    }
    if let (Some(p), Some(_)) = (&mut prom, &python) {
        p.python = Some(crate::export::prom_python::PythonMetrics::new(&p.registry)?);
    }
    let layers = crate::layers::build(&o, has_device, prom.as_mut())?;
    if let (Some(addr), Some(p)) = (o.prometheus_listen, &prom) {
        prom::serve(addr, p.registry.clone()).await?;
        eprintln!("inferscope: Prometheus metrics at http://{addr}/metrics");
    }
    let device_spans_on = o.device_spans;
    let otlp = match &o.otlp_endpoint {
        Some(endpoint) => {
            let otlp = Otlp::new(OtlpOptions {
                endpoint: endpoint.clone(),
                protocol: o.otlp_protocol,
                service_name: o.service_name.clone(),
                tracing_level: o.tracing_level,
                max_span_events: o.max_span_events,
                metrics_interval: Duration::from_secs_f64(o.otlp_metrics_interval.max(0.1)),
                traces: !o.no_otlp_traces,
                metrics: !o.no_otlp_metrics,
            })?;
            eprintln!("inferscope: sending OTLP ({:?}) to {endpoint}", o.otlp_protocol);
            Some(otlp)
        }
        None => None,
    };
    let jsonl = o.jsonl.as_deref().map(JsonlWriter::open).transpose()?;
    let mut sinks = Sinks::new(Clock::new());
    if let Some(p) = prom {
        sinks.add(PromSink::new(p));
    }
    if let Some(o) = otlp {
        sinks.add(OtlpSink { o, device_spans: device_spans_on });
    }
    if let Some(j) = jsonl {
        sinks.add(JsonlSink(j));
    }
    sinks.add(ConsoleSink::new(!o.quiet && o.jsonl.as_deref() != Some("-")));
    let limits = Limits { content_bytes: if o.capture_content { o.max_content_bytes } else { 0 }, ..Limits::default() };

    let (children, discover) = match &target {
        Target::Pid { children, .. } => (*children, None),
        Target::Discover { matches, interval } => (true, Some((matches.clone(), *interval))),
    };
    let (scan_tx, mut scan_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut d = Daemon {
        probes,
        tracker: Tracker::new(limits),
        sinks,
        models: BoundedLabel::new(o.max_models),
        procs: HashMap::new(),
        decode_errors: HashMap::new(),
        next_conn_id: 0,
        records: Vec::new(),
        children,
        last_loss_report: std::time::Instant::now(),
        exited: HashMap::new(),
        engine: EngineTracker::new(),
        engine_events: Vec::new(),
        served_model: HashMap::new(),
        kind_checked: HashMap::new(),
        device,
        device_recs: Vec::new(),
        device_interval: Duration::from_secs_f64(o.device_interval.max(0.1)),
        last_device_interval: std::time::Instant::now(),
        last_device_account: std::time::Instant::now(),
        scan_tx,
        python,
        python_recs: Vec::new(),
        correlate: Correlator::default(),
        layers,
    };
    match &target {
        Target::Pid { pid, .. } => d.trace_tree(*pid, Engine::Other),
        Target::Discover { matches, .. } => {
            d.apply_discovery(procfs::discover(matches, std::process::id()));
            if d.procs.is_empty() {
                eprintln!("inferscope: no vLLM or SGLang process found yet; watching for new ones");
            }
        }
    }
    for (pid, t) in &d.procs {
        debug!("traced: {pid} {:?}", t.engine);
    }

    let idle_ns = (o.idle_timeout.max(1.0) * 1e9) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Records below the BPF wakeup threshold arrive without a wakeup: drain them on a timer.
    let mut drain = tokio::time::interval(Duration::from_millis(DRAIN_MS));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let discover_every =
        discover.as_ref().map_or(Duration::from_secs(3600), |(_, i)| (*i).max(Duration::from_millis(100)));
    let mut discover_tick = tokio::time::interval(discover_every);
    let mut scan: Option<tokio::task::JoinHandle<Vec<(u32, Engine)>>> = None;
    let deadline = o.duration.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let sleep_until = async {
        match deadline {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    // Both signal streams live across loop iterations: a `ctrl_c()` future made afresh in each
    // `select!` misses a signal that arrives while a record batch is being processed.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    info!("running");
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer poll")?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    d.on_record(&item);
                }
                guard.clear_ready();
            }
            _ = drain.tick() => {
                let rb = ring.get_mut();
                while let Some(item) = rb.next() {
                    d.on_record(&item);
                }
                d.device_drain();
                d.python_drain();
                d.each_layer(|l, cx| l.drain(cx));
            }
            _ = tick.tick() => {
                d.tick(idle_ns);
                if let Target::Pid { pid, .. } = target
                    && d.procs.is_empty()
                {
                    eprintln!("inferscope: target pid {pid} and its children have exited; stopping");
                    break;
                }
            }
            // The /proc scan runs on a blocking thread: reading a dying process's cmdline waits
            // for its memory to be torn down, and the event loop must not.
            _ = discover_tick.tick(), if discover.is_some() && scan.is_none() => {
                if let Some((m, _)) = &discover {
                    let m = m.clone();
                    let me = std::process::id();
                    scan = Some(tokio::task::spawn_blocking(move || procfs::discover(&m, me)));
                }
                d.forget_gone();
            }
            found = async { scan.as_mut().expect("guarded").await }, if scan.is_some() => {
                scan = None;
                if let Ok(found) = found {
                    d.apply_discovery(found);
                }
            }
            Some(r) = scan_rx.recv() => d.device_scanned(r),
            _ = &mut sleep_until => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Drain what is left.
    {
        let rb = ring.get_mut();
        while let Some(item) = rb.next() {
            d.on_record(&item);
        }
    }
    d.python_drain();
    d.python_expire(true);
    d.each_layer(|l, cx| l.finish(cx));
    // Requests still in flight are not reported: they did not end while we watched.
    d.flush_records();
    d.tick(idle_ns);
    d.device_tick(true);
    d.sinks.shutdown();
    // The final counters (JSONL), what was lost since the last report, and the summary line.
    let h = d.health();
    d.sinks.emit(Output::Health { health: &h, report: true, last: true });
    Ok(())
}
