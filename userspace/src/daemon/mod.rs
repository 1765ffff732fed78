//! The running daemon: the process registry (one PID tree, or every vLLM/SGLang server found)
//! and the loop: ring-buffer records and the notes layers post go to every layer, drains and
//! ticks, the health snapshot to the sinks. It knows no layer (cmd/daemon.rs builds them with
//! [`crate::layers::build`]). Runs until interrupted, `--duration` passes, or (with `attach`)
//! the target is gone. Dropping the probes detaches everything. The control endpoint's
//! requests are answered in the loop ([`control`]).

mod control;

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::io::unix::AsyncFd;

use crate::{
    bpf::Probes,
    clock,
    correlate::Correlator,
    engine::Engine,
    events::{self, Event},
    export::sink::Sinks,
    layers::{Cx, Facts, Layer, Note},
    output::{Health, Output},
    process::procfs,
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

/// What the daemon runs: built from the options by the CLI verb.
pub struct Parts {
    pub probes: Probes,
    pub layers: Vec<Box<dyn Layer>>,
    pub sinks: Sinks,
    pub max_models: usize,
    /// `k8s.node.name` for processes in pods.
    pub node_name: Option<String>,
    /// Pod metadata from the Kubernetes API, when used.
    pub pods: Option<crate::process::kubernetes::PodSource>,
    /// Container names and the kubelet's labels from the container runtime, when asked.
    pub containers: Option<crate::process::runtime::RuntimeSource>,
    /// Control requests that came over HTTP (`--control-token-file`).
    pub http_calls: Option<tokio::sync::mpsc::Receiver<crate::control::Call>>,
    /// `--tracing-level`, as the OTLP sink starts with it.
    pub tracing_level: u8,
    /// The control socket, unless `--control-socket off`.
    pub control: Option<std::path::PathBuf>,
    /// Resolves when the daemon is to stop (`--duration`, SIGINT, SIGTERM).
    pub stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

struct Daemon {
    probes: Probes,
    sinks: Sinks,
    layers: Vec<Box<dyn Layer>>,
    /// Every join between layers.
    correlate: Correlator,
    /// The traced processes, and what the layers share about them.
    facts: Facts,
    notes: VecDeque<Note>,
    decode_errors: HashMap<&'static str, u64>,
    children: bool,
    last_loss_report: Instant,
    /// Processes seen exiting, and when (a dying one is still listed in /proc a while).
    exited: HashMap<u32, Instant>,
    /// Per layer: whether it is on (`inferscope ctl disable` switches it off).
    on: Vec<bool>,
    /// Per layer: time spent in its callbacks, ns (records sampled 1 in [`SAMPLE`]).
    busy_ns: Vec<u64>,
    records_seen: u64,
    /// Each traced process's CPython, when one was found (layers switched on later get it).
    interps: HashMap<u32, Option<crate::python::Interpreter>>,
    /// Processes whose CPython is being looked for on a blocking thread (reading their ELF
    /// files takes milliseconds to a second: not on the loop that drains the ring buffer).
    finding: std::collections::HashSet<u32>,
    /// Where those lookups answer.
    found_tx: tokio::sync::mpsc::UnboundedSender<(u32, Option<crate::python::Interpreter>)>,
    started: Instant,
    tracing_level: u8,
    /// The live view's model, from the first `inferscope top --connect` on.
    top: Option<crate::top::Shared>,
}

/// One record in this many is timed per layer for `inferscope ctl status`.
const SAMPLE: u64 = 16;

/// Runs `f`, adding its time times `scale` to `slot` (scale 0: not timed).
fn timed(scale: u64, slot: &mut u64, f: impl FnOnce()) {
    if scale == 0 {
        return f();
    }
    let t = Instant::now();
    f();
    *slot += t.elapsed().as_nanos() as u64 * scale;
}

impl Daemon {
    /// Every layer that is on, with its context; then the notes they posted, to every layer
    /// that is on, in order (those posted while one is handled come before the ones queued).
    fn each(&mut self, f: impl FnMut(&mut dyn Layer, &mut Cx)) {
        self.each_where(1, |_| true, f)
    }

    /// [`Self::each`] over the layers `pick` chooses (by index) of those that are on, timed
    /// with `scale` (0: not timed).
    fn each_where(&mut self, scale: u64, pick: impl Fn(usize) -> bool, mut f: impl FnMut(&mut dyn Layer, &mut Cx)) {
        let mut posted = Vec::new();
        let mut cx = Cx {
            sinks: &mut self.sinks,
            probes: &mut self.probes,
            correlate: &mut self.correlate,
            facts: &mut self.facts,
            notes: &mut posted,
        };
        for (i, l) in self.layers.iter_mut().enumerate() {
            if self.on[i] && pick(i) {
                timed(scale, &mut self.busy_ns[i], || f(l.as_mut(), &mut cx));
            }
        }
        posted.into_iter().rev().for_each(|n| self.notes.push_front(n));
        while let Some(note) = self.notes.pop_front() {
            let mut posted = Vec::new();
            let mut cx = Cx {
                sinks: &mut self.sinks,
                probes: &mut self.probes,
                correlate: &mut self.correlate,
                facts: &mut self.facts,
                notes: &mut posted,
            };
            for (i, l) in self.layers.iter_mut().enumerate() {
                if self.on[i] {
                    timed(scale, &mut self.busy_ns[i], || l.on_note(&mut cx, &note));
                }
            }
            posted.into_iter().rev().for_each(|n| self.notes.push_front(n));
        }
    }

    /// Starts tracing `pid`: kernel filter, then every layer.
    fn trace(&mut self, pid: u32, engine: Engine) {
        if self.facts.get(pid).is_some() {
            return;
        }
        if let Err(e) = self.probes.track(pid) {
            log::warn!("cannot trace pid {pid}: {e:#}");
            return;
        }
        self.facts.learn(pid, engine);
        self.correlate.process_added(pid, procfs::ancestors(pid));
        // Its CPython, found once for every layer that reads it, on a blocking thread: those
        // layers get the process when it answers ([`Self::python_found`]), the others now.
        let python: Vec<bool> = self.layers.iter().map(|l| l.wants_python()).collect();
        if python.contains(&true) {
            self.finding.insert(pid);
            let tx = self.found_tx.clone();
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let interp = crate::python::find(pid).map_err(|e| log::debug!("pid {pid}: no CPython: {e:#}")).ok();
                log::debug!("pid {pid}: CPython looked for in {:?}", t.elapsed());
                let _ = tx.send((pid, interp));
            });
        } else {
            self.interps.insert(pid, None);
        }
        self.each_where(1, |i| !python[i], |l, cx| l.process_added(cx, pid, None));
        let comm = procfs::comm(pid).unwrap_or_default();
        let notes: String =
            self.layers.iter().zip(&self.on).filter(|(_, on)| **on).map(|(l, _)| l.describe(pid)).collect();
        let Some(f) = self.facts.get(pid) else { return };
        self.sinks.emit(Output::ProcessAdded { pid, engine: f.engine.name(), identity: &f.identity });
        eprintln!("inferscope: tracing pid {pid} ({comm}, {}{}{notes})", f.engine.name(), f.identity.describe());
    }

    fn untrace(&mut self, pid: u32, ts: u64) {
        if self.facts.get(pid).is_some() {
            eprintln!("inferscope: pid {pid} exited");
        }
        self.exited.insert(pid, Instant::now());
        self.probes.untrack(pid);
        self.correlate.process_gone(pid);
        self.each(|l, cx| l.process_gone(cx, pid, ts));
        self.sinks.emit(Output::ProcessGone { pid });
        self.facts.remove(pid);
        self.interps.remove(&pid);
        self.finding.remove(&pid);
    }

    /// The lookup of `pid`'s CPython answered: the layers that read it get the process.
    fn python_found(&mut self, pid: u32, interp: Option<crate::python::Interpreter>) {
        // Gone (or gone and traced again, looked for again) since it was asked.
        if !self.finding.remove(&pid) || self.facts.get(pid).is_none() {
            return;
        }
        let python: Vec<bool> = self.layers.iter().map(|l| l.wants_python()).collect();
        self.each_where(1, |i| python[i], |l, cx| l.process_added(cx, pid, interp.as_ref()));
        self.interps.insert(pid, interp);
    }

    /// The Kubernetes API told of a new or changed pod: the processes in it are named again,
    /// and the sinks told.
    fn pod_changed(&mut self, uid: &str) {
        let Some(ix) = self.facts.pods.clone() else { return };
        let Some(pod) = ix.find(Some(uid), None) else { return };
        let pids: Vec<u32> = self
            .facts
            .pids()
            .filter(|p| {
                self.facts.get(*p).is_some_and(|f| {
                    f.identity.pod_uid.as_deref() == Some(uid)
                        || f.identity
                            .container_id
                            .as_ref()
                            .is_some_and(|c| pod.containers.iter().any(|(id, _)| id == c))
                })
            })
            .collect();
        self.name_again(pids, "Kubernetes API");
    }

    /// The container runtime answered about container `id`: its processes are named again.
    fn container_changed(&mut self, id: &str) {
        let pids: Vec<u32> = self
            .facts
            .pids()
            .filter(|p| self.facts.get(*p).is_some_and(|f| f.identity.container_id.as_deref() == Some(id)))
            .collect();
        self.name_again(pids, "container runtime");
    }

    /// Reads the identity of `pids` again; those that changed are said (`source`: what told)
    /// and the sinks told.
    fn name_again(&mut self, pids: Vec<u32>, source: &str) {
        for pid in pids {
            let id = self.facts.identity_of(pid);
            let Some(f) = self.facts.get_mut(pid) else { continue };
            if f.identity == id {
                continue;
            }
            f.identity = id;
            let f = &self.facts.get(pid).expect("just updated");
            eprintln!("inferscope: pid {pid}{} ({source})", f.identity.describe());
            self.sinks.emit(Output::ProcessAdded { pid, engine: f.engine.name(), identity: &f.identity });
        }
    }

    /// Traces what a /proc scan found, except processes that exited moments ago.
    fn apply_discovery(&mut self, found: Vec<(u32, Engine)>) {
        let now = Instant::now();
        self.exited.retain(|_, t| now.duration_since(*t) < Duration::from_secs(30));
        for (pid, engine) in found {
            if !self.exited.contains_key(&pid) {
                self.trace(pid, engine);
            }
        }
    }

    /// Forgets processes whose exit was not seen (events lost).
    fn forget_gone(&mut self) {
        let gone: Vec<u32> = self.facts.pids().filter(|p| !procfs::exists(*p)).collect();
        for p in gone {
            self.untrace(p, clock::monotonic_ns());
        }
    }

    fn records(&mut self, rb: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        while let Some(item) = rb.next() {
            self.on_record(&item);
        }
    }

    fn on_record(&mut self, bytes: &[u8]) {
        let ev = match events::decode(bytes) {
            Ok(ev) => ev,
            Err(e) => return *self.decode_errors.entry(e.cause()).or_default() += 1,
        };
        match &ev {
            Event::ProcFork { tgid, child, .. } => match procfs::status_ids(*child) {
                // A thread of a traced process: the kernel filter works on thread groups.
                Some((_, tg)) if tg != *child => self.probes.untrack(*child),
                Some(_) if self.children => {
                    let engine = self.facts.get(*tgid).map_or(Engine::Other, |f| f.engine);
                    self.trace(*child, engine);
                }
                _ => self.probes.untrack(*child),
            },
            Event::ProcExit { tgid, ts_ns } => self.untrace(*tgid, *ts_ns),
            _ => {
                self.records_seen += 1;
                let scale = if self.records_seen.is_multiple_of(SAMPLE) { SAMPLE } else { 0 };
                self.each_where(scale, |_| true, |l, cx| l.on_event(cx, &ev));
            }
        }
    }

    fn health(&self) -> Health {
        let mut h = Health {
            bpf: self.probes.stats().map(|s| s.to_vec()).unwrap_or_default(),
            decode_errors: self.decode_errors.iter().map(|(k, v)| (*k, *v)).collect(),
            attached_processes: self.facts.len() as u64,
            export_errors: self.sinks.errors(),
            export_dropped: self.sinks.dropped(),
            map_write_errors: self.probes.map_write_errors(),
            ..Health::default()
        };
        for l in &self.layers {
            l.health(&mut h);
        }
        self.correlate.health(&mut h);
        h
    }

    fn tick(&mut self) {
        self.correlate.expire(Some(clock::monotonic_ns()));
        self.each(|l, cx| l.tick(cx));
        let h = self.health();
        let report = self.last_loss_report.elapsed() >= Duration::from_secs(10);
        self.sinks.emit(Output::Health { health: &h, report, last: false });
        self.sinks.flush();
        if report {
            self.last_loss_report = Instant::now();
        }
    }
}

/// Runs until interrupted. Errors are for the operator: one line, with what to do.
pub async fn run(target: Target, parts: Parts) -> Result<()> {
    let Parts {
        mut probes,
        layers,
        sinks,
        max_models,
        node_name,
        pods,
        containers,
        mut http_calls,
        control,
        tracing_level,
        mut stop,
    } = parts;
    let (pod_index, mut pod_changes) = match pods {
        Some(p) => (Some(p.index), Some(p.changes)),
        None => (None, None),
    };
    let (container_index, mut container_changes) = match containers {
        Some(c) => (Some(c.index), Some(c.changes)),
        None => (None, None),
    };
    let ring = probes.take_events()?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for its lifetime.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let children = !matches!(target, Target::Pid { children: false, .. });
    let n = layers.len();
    let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut d = Daemon {
        probes,
        sinks,
        layers,
        correlate: Correlator::default(),
        facts: Facts::new(max_models, node_name),
        notes: VecDeque::new(),
        decode_errors: HashMap::new(),
        children,
        last_loss_report: Instant::now(),
        exited: HashMap::new(),
        on: vec![true; n],
        busy_ns: vec![0; n],
        records_seen: 0,
        interps: HashMap::new(),
        finding: Default::default(),
        found_tx,
        started: Instant::now(),
        tracing_level,
        top: None,
    };
    d.facts.pods = pod_index;
    d.facts.containers = container_index;
    // Before the first process: `inferscope ctl` works from the start line on.
    let (_control, mut calls) = control::open(control.as_deref());
    match &target {
        Target::Pid { pid, .. } => {
            let pids = if children { procfs::tree(*pid, &procfs::parents()) } else { vec![*pid] };
            pids.into_iter().for_each(|p| d.trace(p, Engine::Other));
        }
        Target::Discover { matches, .. } => {
            d.apply_discovery(procfs::discover(matches, std::process::id()));
            if d.facts.is_empty() {
                eprintln!("inferscope: no vLLM or SGLang process found yet; watching for new ones");
            }
        }
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Records below the BPF wakeup threshold arrive without a wakeup: drain them on a timer.
    let mut drain = tokio::time::interval(Duration::from_millis(DRAIN_MS));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let discover = match &target {
        Target::Discover { matches, interval } => Some((matches.clone(), (*interval).max(Duration::from_millis(100)))),
        Target::Pid { .. } => None,
    };
    let mut discover_tick = tokio::time::interval(discover.as_ref().map_or(Duration::from_secs(3600), |d| d.1));
    let mut scan: Option<tokio::task::JoinHandle<Vec<(u32, Engine)>>> = None;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer poll")?;
                d.records(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain.tick() => {
                d.records(ring.get_mut());
                d.each(|l, cx| l.drain(cx));
            }
            _ = tick.tick() => {
                d.tick();
                if let Target::Pid { pid, .. } = target
                    && d.facts.is_empty()
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
            Some((pid, interp)) = found_rx.recv() => d.python_found(pid, interp),
            found = async { scan.as_mut().expect("guarded").await }, if scan.is_some() => {
                scan = None;
                if let Ok(found) = found {
                    d.apply_discovery(found);
                }
            }
            Some(uid) = async {
                match pod_changes.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => d.pod_changed(&uid),
            Some(id) = async {
                match container_changes.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => d.container_changed(&id),
            Some((req, reply)) = calls.recv() => {
                let _ = reply.send(d.control(req));
            }
            Some((req, reply)) = async {
                match http_calls.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = reply.send(d.control(req));
            }
            _ = &mut stop => break,
        }
    }
    // What is left in the ring, then what every layer buffers; requests still in flight are
    // not reported: they did not end while we watched.
    d.records(ring.get_mut());
    d.each(|l, cx| l.finish(cx));
    d.tick();
    d.sinks.shutdown();
    // The final counters (JSONL), what was lost since the last report, and the summary line.
    let h = d.health();
    d.sinks.emit(Output::Health { health: &h, report: true, last: true });
    Ok(())
}
