//! The daemon's side of `inferscope ctl`: requests from the control endpoint
//! ([`crate::control`]), answered between two records of the event loop. A layer switched off
//! is told every traced process is gone (it detaches what it attached for them: device uprobes,
//! breakpoints, samplers) and the tracepoint groups no layer still on needs are detached; on
//! again, the tracepoints attach and every traced process is added to it afresh.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Result, anyhow, bail};
use tokio::sync::mpsc;

use super::Daemon;
use crate::{
    bpf, clock,
    control::{self, Call, LayerStatus, ProcessStatus, ProgramStatus, Request, Response, Status, TracepointStatus},
};

/// What keeps the endpoint open (and the channel pending when there is none).
pub struct Guard {
    _endpoint: Option<control::Endpoint>,
    _idle: Option<mpsc::Sender<Call>>,
}

/// Opens the control endpoint at `path` (None: `--control-socket off`). One that cannot be
/// opened is said in one line; the daemon runs without it.
pub fn open(path: Option<&Path>) -> (Guard, mpsc::Receiver<Call>) {
    if let Some(p) = path {
        match control::listen(p) {
            Ok((endpoint, rx)) => {
                eprintln!("inferscope: control socket at {} (`inferscope ctl status`)", p.display());
                return (Guard { _endpoint: Some(endpoint), _idle: None }, rx);
            }
            Err(e) => eprintln!(
                "inferscope: warning: no control socket ({e:#}); this daemon cannot be switched while it runs \
                 (--control-socket PATH gives it one elsewhere)"
            ),
        }
    }
    let (tx, rx) = mpsc::channel(1);
    (Guard { _endpoint: None, _idle: Some(tx) }, rx)
}

impl Daemon {
    /// Answers one request; what changed is also said on standard error.
    pub(super) fn control(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Status => return Response { ok: true, status: Some(self.status()), ..Response::default() },
            Request::Top => {
                let model = match &self.top {
                    Some(m) => m.clone(),
                    None => {
                        // From now on it sees what the sinks see; the processes traced so far
                        // it is told now.
                        let m = crate::top::shared();
                        self.sinks.add(crate::top::TopSink(m.clone()));
                        if let Ok(mut state) = m.lock() {
                            let now = clock::monotonic_ns();
                            for pid in self.facts.pids() {
                                if let Some(f) = self.facts.get(pid) {
                                    let o = crate::output::Output::ProcessAdded {
                                        pid,
                                        engine: f.engine.name(),
                                        identity: &f.identity,
                                    };
                                    state.consume(&o, now);
                                }
                            }
                        }
                        self.top = Some(m.clone());
                        m
                    }
                };
                let snap = model.lock().map(|mut m| m.snapshot(clock::monotonic_ns())).unwrap_or_default();
                return Response { ok: true, top: Some(snap), ..Response::default() };
            }
            Request::Enable { name } => self.switch(&name, true),
            Request::Disable { name } => self.switch(&name, false),
            Request::Reload => self.reload(),
            Request::TracingLevel { level } => self.set_tracing_level(level),
            Request::LogLevel { level } => crate::logging::set_level(&level).map(|l| format!("log level {l}")),
        };
        match r {
            Ok(m) => {
                eprintln!("inferscope: control: {m}");
                Response::done(m)
            }
            Err(e) => Response::refused(&e),
        }
    }

    fn layer_index(&self, name: &str) -> Result<usize> {
        self.layers.iter().position(|l| l.name() == name).ok_or_else(|| {
            let have: Vec<&str> = self.layers.iter().map(|l| l.name()).collect();
            anyhow!(
                "no layer `{name}` in this daemon (it runs {}); a layer left out at start (device: --no-device; \
                 timers: --python-timers; sites, engine_state, profile: their flags) needs a restart with its flag",
                have.join(", ")
            )
        })
    }

    /// `device` switches the device layer; `device.launch` one of its probe groups.
    fn switch(&mut self, name: &str, on: bool) -> Result<String> {
        let (layer, group) = match name.split_once('.') {
            Some((l, g)) => (l, Some(g)),
            None => (name, None),
        };
        let i = self.layer_index(layer)?;
        if let Some(g) = group {
            // A layer that is off keeps the choice for when it is on again.
            let was = std::mem::replace(&mut self.on[i], true);
            let mut msg = Err(anyhow!("the {layer} layer did not answer"));
            self.each_where(1, |j| j == i, |l, cx| msg = l.set_group(cx, g, on));
            self.on[i] = was;
            return msg;
        }
        let state = if on { "on" } else { "off" };
        if self.on[i] == on {
            return Ok(format!("{layer} is already {state}"));
        }
        // What it reads goes on first; what reads it goes off first.
        let mut with = Vec::new();
        let linked: Vec<&'static str> = if on {
            self.layers[i].needs().iter().copied().filter(|n| self.layer_index(n).is_ok_and(|j| !self.on[j])).collect()
        } else {
            (0..self.layers.len())
                .filter(|&j| self.on[j] && self.layers[j].needs().contains(&layer))
                .map(|j| self.layers[j].name())
                .collect()
        };
        for n in linked {
            with.push(self.switch(n, on)?);
        }
        let pids: Vec<u32> = self.facts.pids().collect();
        let mut changed = 0;
        if on {
            for g in self.layers[i].tracepoints() {
                changed += self.probes.set_tracepoints(g, true)?;
            }
            self.on[i] = true;
            for pid in &pids {
                // A CPython still being looked for reaches the layer when it answers.
                if self.finding.contains(pid) && self.layers[i].wants_python() {
                    continue;
                }
                let interp = self.interps.get(pid).cloned().flatten();
                self.each_where(1, |j| j == i, |l, cx| l.process_added(cx, *pid, interp.as_ref()));
            }
        } else {
            let now = clock::monotonic_ns();
            for pid in &pids {
                self.each_where(1, |j| j == i, |l, cx| l.process_gone(cx, *pid, now));
            }
            self.on[i] = false;
            for g in self.layers[i].tracepoints() {
                let needed = (0..self.layers.len()).any(|j| self.on[j] && self.layers[j].tracepoints().contains(g));
                if !needed {
                    changed += self.probes.set_tracepoints(g, false)?;
                }
            }
        }
        with.push(format!(
            "{layer} {state}: {changed} tracepoint(s) {}, {} traced process(es) {}",
            if on { "attached" } else { "detached" },
            pids.len(),
            if on { "added to it" } else { "let go" }
        ));
        Ok(with.join("; "))
    }

    /// Every layer that is on reads its configuration again.
    fn reload(&mut self) -> Result<String> {
        let procs: Vec<(u32, Option<crate::python::Interpreter>)> =
            self.interps.iter().map(|(p, i)| (*p, i.clone())).collect();
        let mut said = Vec::new();
        let mut failed = None;
        for i in 0..self.layers.len() {
            let mut r = None;
            self.each_where(
                1,
                |j| j == i,
                |l, cx| {
                    let refs: Vec<(u32, Option<&crate::python::Interpreter>)> =
                        procs.iter().map(|(p, i)| (*p, i.as_ref())).collect();
                    r = l.reload(cx, &refs).map(|r| r.map(|m| format!("{}: {m}", l.name())));
                },
            );
            match r {
                Some(Ok(m)) => said.push(m),
                Some(Err(e)) => failed = Some(e),
                None => {}
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if said.is_empty() {
            bail!("nothing to reload: no layer that is on reads a configuration file (--python-timers PATH does)");
        }
        Ok(format!("reloaded: {}", said.join("; ")))
    }

    fn set_tracing_level(&mut self, level: u8) -> Result<String> {
        if level > 2 {
            bail!("tracing level {level}: use 0 (request spans), 1 (+ engine stage spans) or 2 (+ chunk events)");
        }
        if !self.sinks.set_tracing_level(level) {
            bail!("no OTLP exporter here (--otlp-endpoint): the tracing level shapes OTLP spans only");
        }
        let was = std::mem::replace(&mut self.tracing_level, level);
        Ok(format!("tracing level {was} -> {level}"))
    }

    fn status(&self) -> Status {
        let programs: Vec<ProgramStatus> = self
            .probes
            .program_stats()
            .into_iter()
            .map(|p| {
                let group = if p.name.starts_with("device_") {
                    "device".to_string()
                } else if p.name.starts_with("ssl_") {
                    "tls".to_string()
                } else if p.name.starts_with("sys_")
                    || p.name.starts_with("sock_")
                    || p.name.starts_with("tcp_")
                    || p.name.starts_with("sched_")
                {
                    bpf::tracepoint_group(&p.name).to_string()
                } else {
                    "other".to_string()
                };
                ProgramStatus { name: p.name, group, run_time_ns: p.run_time_ns, run_count: p.run_count }
            })
            .collect();
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let tps = l.tracepoints();
                let bpf_ns: u64 = programs
                    .iter()
                    .filter(|p| tps.contains(&p.group.as_str()) || p.group == l.name())
                    .map(|p| p.run_time_ns)
                    .sum();
                LayerStatus {
                    name: l.name().to_string(),
                    on: self.on[i],
                    tracepoints: tps.iter().map(|s| s.to_string()).collect(),
                    groups: l.groups().into_iter().map(|(g, on)| (g.to_string(), on)).collect(),
                    cpu_s: self.busy_ns[i] as f64 / 1e9,
                    bpf_s: bpf_ns as f64 / 1e9,
                    counters: l.counters().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                }
            })
            .collect();
        let tracepoints = [bpf::TP_SOCKETS, bpf::TP_MMAP, bpf::TP_SCHED]
            .into_iter()
            .map(|g| {
                let (attached, total) = self.probes.tracepoints(g);
                TracepointStatus { group: g.to_string(), attached, total }
            })
            .filter(|t| t.total > 0)
            .collect();
        let mut processes: Vec<ProcessStatus> = self
            .facts
            .pids()
            .filter_map(|pid| {
                let f = self.facts.get(pid)?;
                let identity: BTreeMap<String, String> =
                    f.identity.attributes().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                Some(ProcessStatus { pid, engine: f.engine.name().to_string(), identity })
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            cpu_s: own_cpu().as_secs_f64(),
            tracing_level: self.tracing_level,
            log_level: crate::logging::level(),
            bpf_stats_enabled: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|s| s.trim() == "1"),
            processes,
            layers,
            tracepoints,
            programs,
        }
    }
}

/// This process's CPU time so far (user + system).
fn own_cpu() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}
