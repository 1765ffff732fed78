//! Per-thread hardware watchpoints: which debug registers a function gets (`Watched`, its
//! `Mode`), putting them on every Python thread and taking them off, and noticing the
//! kernel's throttling of a watchpoint that fires too often.

use std::collections::HashSet;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        PerfEvent,
        perf_event::{
            BreakpointConfig, PerfBreakpointLength, PerfBreakpointType, PerfEventConfig, PerfEventLinkId,
            PerfEventScope, SamplePolicy,
        },
    },
};

use super::{Mode, Proc, PyTimers, TimerSpec, version_in_range};
use crate::python::{
    bpf::{PyBpf, PyUser},
    objects::{CO_AWAITED, CO_GENERATOR_LIKE},
};

/// Debug registers per thread (x86: DR0-DR3).
pub const SLOTS_PER_THREAD: usize = 4;

/// The kernel stops a perf event that fires more than `perf_event_max_sample_rate / HZ` times
/// in one scheduler tick until the next tick: a breakpoint hit then is lost, not counted. A
/// watched function called that fast is undercounted, and the operator is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleLimit {
    pub per_tick: usize,
    pub tick_ns: u64,
}

impl ThrottleLimit {
    /// From `kernel.perf_event_max_sample_rate` and the kernel's HZ (its config, else 1000:
    /// the shortest tick, the earliest warning).
    pub fn of_this_kernel() -> Self {
        let rate: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100_000);
        Self::new(rate, kernel_hz().unwrap_or(1000))
    }

    pub fn new(max_sample_rate: u64, hz: u64) -> Self {
        let hz = hz.max(1);
        Self { per_tick: max_sample_rate.div_ceil(hz).max(1) as usize, tick_ns: 1_000_000_000 / hz }
    }
}

/// CONFIG_HZ of the running kernel, from its config file or /proc/config.gz (uncompressed
/// there only by `zcat`: not tried).
fn kernel_hz() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

/// Hits of one watchpoint on one thread, to notice the kernel's throttling.
#[derive(Default)]
pub(super) struct Burst {
    recent: std::collections::VecDeque<u64>,
}

impl Burst {
    /// True when this hit makes `per_tick` hits within one tick: the kernel has stopped (or is
    /// about to stop) the event until the next tick.
    pub(super) fn hit(&mut self, ts: u64, limit: ThrottleLimit) -> bool {
        self.recent.push_back(ts);
        if self.recent.len() > limit.per_tick {
            self.recent.pop_front();
        }
        self.recent.len() == limit.per_tick && ts.saturating_sub(self.recent[0]) < limit.tick_ns
    }
}

/// A function watched in one process.
#[derive(Clone, Debug)]
pub struct Watched {
    pub spec: usize,
    pub mode: Mode,
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    /// Where its bytecode starts.
    pub(super) code_start: u64,
    /// Address and code unit (as read when the function was found) of the RESUME and returns.
    pub(super) resume: (u64, u32),
    pub(super) returns: Vec<(u64, u32)>,
    /// A coroutine or async generator: its calls run interleaved with others on one thread,
    /// from its first resumption (the first RESUME, in its own frame) to its return.
    pub(super) awaited: bool,
}

impl Watched {
    pub(super) fn addresses(&self) -> Vec<(u64, u32)> {
        let mut v = vec![self.resume];
        if self.mode == Mode::Breakpoint {
            v.extend(&self.returns);
        }
        v
    }
}

/// What happened to a spec in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecState {
    /// Its module is not imported (yet).
    Pending,
    Watched,
    /// Will not be watched in this process; why.
    Skipped(String),
}

impl PyTimers {
    pub(super) fn watch_spec(&self, p: &Proc, i: usize, spec: &TimerSpec) -> Result<Watched> {
        if spec.min_version.is_some() || spec.max_version.is_some() {
            let module = spec.symbol.split_once(':').map_or("", |(m, _)| m);
            let package = spec.package.clone().unwrap_or_else(|| module.split('.').next().unwrap_or("").to_string());
            let version = p
                .interp
                .module(&p.mem, &package)?
                .map(|m| p.interp.attr(&p.mem, m, "__version__"))
                .transpose()?
                .flatten()
                .map(|s| p.interp.ascii(&p.mem, s))
                .transpose()?
                .with_context(|| format!("{package}.__version__ not found to compare with min/max_version"))?;
            if !version_in_range(&version, spec.min_version.as_deref(), spec.max_version.as_deref()) {
                bail!(
                    "{package} {version} is outside [{}, {}]",
                    spec.min_version.as_deref().unwrap_or(""),
                    spec.max_version.as_deref().unwrap_or("")
                );
            }
        }
        let r = p.interp.resolve(&p.mem, &spec.symbol)?.context("module not imported")?;
        let awaited = r.flags & CO_AWAITED != 0;
        if r.flags & CO_GENERATOR_LIKE != 0 && !awaited {
            bail!(
                "{} is a generator: not timed (it runs a piece per next() and may never be exhausted; coroutines and async generators are)",
                r.qualname
            );
        }
        if awaited && p.eval.is_some() {
            bail!("{} is a coroutine: timed on CPython 3.11 and later only", r.qualname);
        }
        if p.eval.is_some() {
            // 3.9/3.10: the code object itself is what the eval-frame probes watch for.
            return Ok(Watched {
                spec: i,
                mode: Mode::EvalUprobe,
                qualname: r.qualname,
                filename: r.filename,
                first_line: r.first_line,
                code_start: r.code,
                resume: (0, 0),
                returns: Vec::new(),
                awaited,
            });
        }
        let bc = p.interp.bytecode(&p.mem, r.code)?;
        let free = SLOTS_PER_THREAD.saturating_sub(p.slots_used);
        let full = 1 + bc.returns.len();
        let mode = if spec.wants_durations() && full <= free {
            Mode::Breakpoint
        } else if free >= 1 {
            if spec.wants_durations() {
                log::info!("{}: {} returns do not fit the debug registers left", spec.symbol, bc.returns.len());
            }
            Mode::BreakpointEntry
        } else {
            bail!("no debug register left ({SLOTS_PER_THREAD} per thread, used by the functions listed before it)");
        };
        if mode == Mode::BreakpointEntry && spec.wants_durations() {
            log::warn!("{}: needs {full} debug registers for durations, {free} left: counting calls only", spec.symbol);
        }
        Ok(Watched {
            spec: i,
            mode,
            qualname: r.qualname,
            filename: r.filename,
            first_line: r.first_line,
            code_start: bc.start,
            resume: bc.resume,
            returns: bc.returns,
            awaited,
        })
    }

    /// Puts every watched address on every Python thread (new threads, and all threads again
    /// when `all` because new functions were found); forgets threads that are gone.
    pub(super) fn sync_threads(&mut self, pid: u32, p: &mut Proc, all: bool, bpf: &mut dyn PyBpf) {
        // Eval-frame probes follow every thread of the process by themselves.
        if p.watched.is_empty() || p.eval.is_some() {
            return;
        }
        let threads = match p.interp.threads() {
            Ok(t) => t,
            Err(e) => {
                log::debug!("pid {pid}: threads: {e:#}");
                return;
            }
        };
        let live: HashSet<u32> =
            threads.iter().filter_map(|t| t.native_thread_id.and_then(|n| u32::try_from(n).ok())).collect();
        let gone: Vec<u32> = p.threads.keys().filter(|t| !live.contains(t)).copied().collect();
        for tid in gone {
            self.detach_thread(p, tid, bpf);
            p.matcher.forget_thread(tid);
        }
        let addrs: Vec<u64> = p.watched.iter().flat_map(Watched::addresses).map(|(a, _)| a).collect();
        for t in &threads {
            let Some(tid) = t.native_thread_id.and_then(|n| u32::try_from(n).ok()).filter(|t| *t != 0) else {
                continue;
            };
            if p.threads.contains_key(&tid) && !all {
                continue;
            }
            if p.threads.contains_key(&tid) {
                self.detach_thread(p, tid, bpf);
            }
            let (ebpf, maps) = bpf.py_parts();
            if maps.add_thread(PyUser::Timers, pid, tid, t.tstate).is_err() {
                continue;
            }
            let mut links = Vec::new();
            let mut error = None;
            for a in &addrs {
                match attach(ebpf, tid, *a) {
                    Ok(l) => links.push(l),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = error
                && p.refused.insert(tid)
            {
                self.notes.push(format!(
                    "inferscope: pid {pid} thread {tid}: a watchpoint was refused ({e:#}); its calls are not timed \
                     (a debugger holding debug registers?)"
                ));
            }
            p.threads.insert(tid, links);
        }
    }

    pub(super) fn detach_thread(&mut self, p: &mut Proc, tid: u32, bpf: &mut dyn PyBpf) {
        let links = p.threads.remove(&tid).unwrap_or_default();
        let (ebpf, maps) = bpf.py_parts();
        maps.remove_thread(PyUser::Timers, p.interp.pid, tid);
        if let Some(prog) = ebpf.program_mut("py_call").and_then(|p| <&mut PerfEvent>::try_from(p).ok()) {
            for l in links {
                let _ = prog.detach(l);
            }
        }
    }
}

/// A watchpoint on `addr` for thread `tid`, running `py_call`.
fn attach(ebpf: &mut Ebpf, tid: u32, addr: u64) -> Result<PerfEventLinkId> {
    let prog: &mut PerfEvent = ebpf.program_mut("py_call").context("py_call")?.try_into()?;
    Ok(prog.attach(
        PerfEventConfig::Breakpoint(BreakpointConfig::Data {
            // x86 has no read-only watchpoints; RESUME and returns are written at most once.
            r#type: PerfBreakpointType::ReadWrite,
            address: addr,
            // The opcode byte only: 3.12+ load the opcode and its argument separately,
            // and a 2-byte watch would fire twice per instruction.
            length: PerfBreakpointLength::Len1,
        }),
        PerfEventScope::OneProcess { pid: tid, cpu: None },
        SamplePolicy::Period(1),
        false,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_noticed_at_the_kernels_limit() {
        let limit = ThrottleLimit::new(100_000, 250);
        assert_eq!(limit, ThrottleLimit { per_tick: 400, tick_ns: 4_000_000 });
        let mut b = Burst::default();
        // 399 hits in a tick: fine; the 400th within the same tick: throttled.
        assert!(!(0..399u64).any(|i| b.hit(i * 1_000, limit)));
        assert!(b.hit(399_000, limit));
        // Spread out (one per 20 us = 200 per tick): never.
        let mut b = Burst::default();
        assert!(!(0..10_000u64).any(|i| b.hit(i * 20_000, limit)));
    }
}
