//! Exact Python function timers from outside the interpreter (CPython 3.11+).
//!
//! Operators name functions (`module:Class.method`, see default-timers.yaml). For each process
//! running CPython, the function's code object is found through `sys.modules`
//! (python/objects.rs), its live bytecode decoded for the addresses of its RESUME (first
//! instruction executed on every call, inlined Python-to-Python calls included) and its return
//! instructions, and a hardware read/write watchpoint (1 byte) is put on each of those code
//! units' opcode byte on every Python thread of the process (`PERF_TYPE_BREAKPOINT`, one perf event per
//! thread and address). The BPF program `py_call` runs when one fires and sends the time, the
//! address and the thread's current interpreter frame; [`Matcher`] pairs entries with returns
//! by frame, which keeps recursion apart and notices calls that left by an exception.
//!
//! Costs fall only on calls of the watched functions (one debug trap each, entry and return).
//! x86 has four debug registers per thread: a function takes one for its entry and one per
//! return instruction. What does not fit is counted without durations (entry only), or left
//! out, and said.
//!
//! Generators and coroutines are excluded (their RESUME runs at every resumption and their
//! yields leave without a return).
//!
//! 3.9 and 3.10 have no inline RESUME, but every Python call is a C call of
//! `_PyEval_EvalFrameDefault(tstate, frame, throwflag)`: with `eval_uprobes` (opt-in), a uprobe
//! and a uretprobe on it (`py_eval_enter`/`py_eval_exit`) time the calls whose frame runs a
//! watched code object, exactly, raised ones included. Every Python call of the process then
//! traps twice, watched or not.
//!
//! Here: [`PyTimers`], which follows processes and turns hits into calls. Its parts: config.rs
//! (what to time), watch.rs (the watchpoints), eval.rs (3.9/3.10), decode.rs (which instruction
//! hit), matcher.rs (entries and returns into calls), record.rs (what comes out).

mod config;
mod decode;
mod eval;
mod matcher;
mod record;
mod watch;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::programs::perf_event::PerfEventLinkId;

pub use config::{DEFAULT_CONFIG, MetricKind, MetricSpec, TimerSpec, load_config, parse_config, version_in_range};
pub use decode::ends_with_plain_load;
pub use matcher::{CallKey, MatchStats, Matcher};
pub use record::{CallRecord, Mode};
use watch::Burst;
pub use watch::{SLOTS_PER_THREAD, SpecState, ThrottleLimit, Watched};

use super::{
    Interpreter, Memory,
    bpf::{PyBpf, PyUser},
    find,
};
use crate::events::Event;

/// How long after a process is first watched a function its module does not define yet is
/// still looked for (imports of a large engine take tens of seconds on a loaded host).
const DEFINE_GRACE: Duration = Duration::from_secs(120);

struct Proc {
    interp: Interpreter,
    mem: Memory,
    states: Vec<SpecState>,
    watched: Vec<Watched>,
    /// Watched address -> (index into `watched`, is entry, the code unit last seen there).
    addrs: HashMap<u64, (usize, bool, u32)>,
    /// Instruction pointers of hits: whether the access was a plain load (an instruction fetch
    /// of the dispatch loop).
    fetch_ips: HashMap<u64, bool>,
    /// Recent hits per (thread, watched address), and the functions already said to be
    /// throttled.
    bursts: HashMap<(u32, u64), Burst>,
    throttled_said: HashSet<usize>,
    slots_used: usize,
    threads: HashMap<u32, Vec<PerfEventLinkId>>,
    /// Threads a watchpoint could not be set on (reported once).
    refused: HashSet<u32>,
    /// 3.9/3.10 with eval-frame uprobes: (links once attached).
    eval: Option<Vec<aya::programs::uprobe::UProbeLinkId>>,
    next_resolve: Instant,
    resolve_every: Duration,
    /// When it was first watched: a function its module does not define yet is looked for
    /// again until [`DEFINE_GRACE`] has passed (the module may be mid-import).
    since: Instant,
    next_threads: Instant,
    matcher: Matcher,
    calls: u64,
}

/// Counters for the operator.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimerHealth {
    pub processes: u64,
    pub watched_functions: u64,
    pub breakpoints: u64,
    pub calls: u64,
    pub unfinished: u64,
    pub unmatched_returns: u64,
    pub write_hits: u64,
    pub other_accesses: u64,
    pub throttled: u64,
    pub undecodable: u64,
}

/// Function timers over any number of processes. Its programs (`py_call`, and the eval-frame
/// uprobes) and maps are those of the object it is handed ([`PyBpf`]); the records of its
/// programs are handed to [`Self::on_event`].
pub struct PyTimers {
    pub specs: Vec<TimerSpec>,
    procs: HashMap<u32, Proc>,
    /// Records that did not decode (counted by the caller that reads the ring).
    pub undecodable: u64,
    throttle: ThrottleLimit,
    /// CPython 3.9/3.10 are timed with the eval-frame uprobes.
    eval_uprobes: bool,
    /// Lines for the operator (one per event worth knowing), taken by the caller.
    pub notes: Vec<String>,
}

impl PyTimers {
    /// Loads the timer programs into `bpf`'s object (the first time). `eval_uprobes`: also
    /// time CPython 3.9/3.10 processes, with uprobes on their eval function (every Python call
    /// of such a process then traps twice).
    pub fn new(specs: Vec<TimerSpec>, eval_uprobes: bool, bpf: &mut dyn PyBpf) -> Result<Self> {
        let (ebpf, maps) = bpf.py_parts();
        maps.load_perf_event(ebpf, "py_call", "Python timer program")?;
        if eval_uprobes {
            maps.eval_watch(ebpf)?;
        }
        Ok(Self {
            specs,
            procs: HashMap::new(),
            undecodable: 0,
            throttle: ThrottleLimit::of_this_kernel(),
            eval_uprobes,
            notes: Vec::new(),
        })
    }

    /// Starts watching `pid` (its functions are looked for now and every 2 s until found).
    /// Err: the process runs no CPython these timers support.
    pub fn add_process(&mut self, pid: u32, bpf: &mut dyn PyBpf) -> Result<()> {
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        self.add_interpreter(find(pid)?, bpf)
    }

    /// [`Self::add_process`] with the interpreter already found.
    pub fn add_interpreter(&mut self, interp: Interpreter, bpf: &mut dyn PyBpf) -> Result<()> {
        let pid = interp.pid;
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        let eval = match interp.version.1 {
            11..=14 => None,
            9 | 10 if self.eval_uprobes => Some(Vec::new()),
            9 | 10 => bail!(
                "CPython {}: function timers need --eval-uprobes on 3.9/3.10 (uprobes on the eval function: every \
                 Python call of the process then traps twice); not timed",
                interp.version_string()
            ),
            _ => bail!("CPython {}: function timers support 3.9-3.14; not timed", interp.version_string()),
        };
        if !cfg!(target_arch = "x86_64") {
            bail!("function timers use x86 debug registers; this architecture is not supported yet");
        }
        bpf.py_parts().1.add_process(PyUser::Timers, pid, super::profile::bpf_layout(&interp))?;
        let now = Instant::now();
        self.procs.insert(
            pid,
            Proc {
                mem: Memory::new(pid),
                interp,
                states: vec![SpecState::Pending; self.specs.len()],
                watched: Vec::new(),
                addrs: HashMap::new(),
                fetch_ips: HashMap::new(),
                bursts: HashMap::new(),
                throttled_said: HashSet::new(),
                slots_used: 0,
                threads: HashMap::new(),
                refused: HashSet::new(),
                eval,
                next_resolve: now,
                resolve_every: Duration::from_secs(1),
                since: now,
                next_threads: now,
                matcher: Matcher::default(),
                calls: 0,
            },
        );
        Ok(())
    }

    /// Stops watching `pid` (its breakpoints go with it).
    pub fn remove_process(&mut self, pid: u32, bpf: &mut dyn PyBpf) {
        let Some(mut p) = self.procs.remove(&pid) else { return };
        self.detach_eval(&mut p, bpf);
        let tids: Vec<u32> = p.threads.keys().copied().collect();
        for tid in tids {
            self.detach_thread(&mut p, tid, bpf);
        }
        bpf.py_parts().1.remove_process(PyUser::Timers, pid);
    }

    /// Stops watching every process (before the timers are replaced or dropped: their
    /// breakpoints live in a shared object).
    pub fn close(&mut self, bpf: &mut dyn PyBpf) {
        for pid in self.pids() {
            self.remove_process(pid, bpf);
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// Whether `pid` is watched yet: watchpoints on some thread, or the eval-frame probes on.
    pub fn is_watching(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| !p.threads.is_empty() || p.eval.as_ref().is_some_and(|l| !l.is_empty()))
    }

    /// What each spec became in `pid`.
    pub fn states(&self, pid: u32) -> Option<(&[SpecState], &[Watched])> {
        self.procs.get(&pid).map(|p| (p.states.as_slice(), p.watched.as_slice()))
    }

    /// Calls of `pid` seen leaving without a return so far.
    pub fn unfinished(&self, pid: u32) -> u64 {
        self.procs.get(&pid).map_or(0, |p| p.matcher.stats.unfinished)
    }

    /// Where `spec` is watched in `pid`: (qualified name, file, first line).
    pub fn location(&self, pid: u32, spec: usize) -> Option<(&str, &str, u32)> {
        let p = self.procs.get(&pid)?;
        p.watched.iter().find(|w| w.spec == spec).map(|w| (w.qualname.as_str(), w.filename.as_str(), w.first_line))
    }

    pub fn health(&self) -> TimerHealth {
        let mut h = TimerHealth { undecodable: self.undecodable, ..Default::default() };
        for p in self.procs.values() {
            h.processes += 1;
            h.watched_functions += p.watched.len() as u64;
            h.breakpoints += p.threads.values().map(|v| v.len() as u64).sum::<u64>();
            h.calls += p.calls;
            h.unfinished += p.matcher.stats.unfinished;
            h.unmatched_returns += p.matcher.stats.unmatched_returns;
            h.write_hits += p.matcher.stats.write_hits;
            h.other_accesses += p.matcher.stats.other_accesses;
            h.throttled += p.matcher.stats.throttled;
        }
        h
    }

    /// Resolves pending functions and follows new and gone threads. Call every few
    /// milliseconds.
    pub fn poll(&mut self, bpf: &mut dyn PyBpf) {
        let now = Instant::now();
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            let Some(mut p) = self.procs.remove(&pid) else { continue };
            let mut changed = false;
            if now >= p.next_resolve && p.states.contains(&SpecState::Pending) {
                // Every second at first, backing off to 8 s while nothing new turns up (a
                // process that never imports the module costs one sys.modules scan per 8 s).
                changed = self.resolve(pid, &mut p, bpf);
                p.resolve_every =
                    if changed { Duration::from_secs(1) } else { (p.resolve_every * 2).min(Duration::from_secs(8)) };
                p.next_resolve = now + p.resolve_every;
            }
            if changed || now >= p.next_threads {
                p.next_threads = now + Duration::from_secs(1);
                self.sync_threads(pid, &mut p, changed, bpf);
            }
            self.procs.insert(pid, p);
        }
    }

    /// A record of the ring buffer: breakpoint hits and eval-frame calls of the processes it
    /// watches become calls in `out` (others are not its own).
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<CallRecord>) {
        match *ev {
            Event::PyEval { tgid, tid, spec, start_ns, end_ns, ret, .. } => {
                let Some(p) = self.procs.get_mut(&tgid) else { return };
                if ret == 0 {
                    // NULL: the call raised.
                    p.matcher.stats.unfinished += 1;
                    return;
                }
                p.calls += 1;
                let spec = spec as usize;
                out.push(CallRecord {
                    pid: tgid,
                    tid,
                    spec,
                    mode: Mode::EvalUprobe,
                    start_ns,
                    end_ns: Some(end_ns),
                    depth: 0,
                });
            }
            Event::PyCall { tgid, tid, ts_ns, addr, frame, frame_prev, frame_instr, unit, ip } => {
                let Some(p) = self.procs.get_mut(&tgid) else { return };
                let Some(&mut (w, is_entry, ref mut seen)) = p.addrs.get_mut(&addr) else { return };
                log::trace!(
                    "hit tid {tid} addr {addr:#x} entry {is_entry} frame {frame:#x} unit {unit:#x} ts {ts_ns} ip {ip:#x}"
                );
                if unit != *seen && unit != u32::MAX {
                    // The interpreter wrote the instruction (read hits leave it as it was).
                    *seen = unit;
                    p.matcher.stats.write_hits += 1;
                    return;
                }
                // Only the dispatch loop's fetch is an execution: a plain load of the
                // code unit. Stores (quickening writing the same value again) and compares
                // (3.13's RESUME checks its own opcode after an eval-breaker deopt) are not.
                let mem = &p.mem;
                let fetch = *p.fetch_ips.entry(ip).or_insert_with(|| {
                    let mut b = [0u8; 16];
                    mem.read(ip.wrapping_sub(16), &mut b).is_ok_and(|_| ends_with_plain_load(&b))
                });
                if !fetch {
                    p.matcher.stats.other_accesses += 1;
                    return;
                }
                let watched = &p.watched[w];
                let (spec, mode) = (watched.spec, watched.mode);
                if p.bursts.entry((tid, addr)).or_default().hit(ts_ns, self.throttle) {
                    p.matcher.stats.throttled += 1;
                    if p.throttled_said.insert(spec) {
                        self.notes.push(format!(
                                "inferscope: pid {tgid}: {} is called faster than the kernel lets a breakpoint fire \
                                 ({} times in {} ms; kernel.perf_event_max_sample_rate / HZ): its calls are undercounted \
                                 from now on. Raise the sysctl, or time a function called less often",
                                watched.qualname,
                                self.throttle.per_tick,
                                self.throttle.tick_ns / 1_000_000
                            ));
                    }
                }
                if mode == Mode::BreakpointEntry {
                    p.calls += 1;
                    out.push(CallRecord { pid: tgid, tid, spec, mode, start_ns: ts_ns, end_ns: None, depth: 0 });
                } else if watched.awaited {
                    // A coroutine's hits happen in its own frame (the generator's).
                    if is_entry {
                        p.matcher.awaited_entry(spec, frame, ts_ns);
                    } else if let Some(start) = p.matcher.awaited_exit(spec, frame, ts_ns) {
                        p.calls += 1;
                        out.push(CallRecord {
                            pid: tgid,
                            tid,
                            spec,
                            mode,
                            start_ns: start,
                            end_ns: Some(ts_ns),
                            depth: 0,
                        });
                    }
                } else if is_entry {
                    let callee_current = frame_instr == 0
                        || (frame_instr >= watched.code_start.saturating_sub(2) && frame_instr <= watched.resume.0);
                    let key = if callee_current {
                        CallKey { callee: frame, caller: frame_prev }
                    } else {
                        CallKey { callee: 0, caller: frame }
                    };
                    p.matcher.entry(tid, spec, key, ts_ns);
                } else if let Some((start, depth)) = p.matcher.exit(tid, spec, frame, frame_prev, ts_ns) {
                    p.calls += 1;
                    out.push(CallRecord { pid: tgid, tid, spec, mode, start_ns: start, end_ns: Some(ts_ns), depth });
                }
            }
            _ => {}
        }
    }

    /// Looks for the process's pending functions; true when new ones are watched.
    fn resolve(&mut self, pid: u32, p: &mut Proc, bpf: &mut dyn PyBpf) -> bool {
        let mut added = false;
        for i in 0..self.specs.len() {
            if p.states[i] != SpecState::Pending {
                continue;
            }
            let spec = &self.specs[i].clone();
            let module = spec.symbol.split_once(':').map_or("", |(m, _)| m);
            match p.interp.module(&p.mem, module) {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => {
                    log::debug!("pid {pid}: sys.modules not readable: {e:#}");
                    return added;
                }
            }
            let found = self.watch_spec(p, i, spec);
            let watched = match found {
                Ok(w) if w.mode == Mode::EvalUprobe => self.watch_eval(pid, p, &w, bpf).map(|()| w),
                other => other,
            };
            let state = match watched {
                Ok(w) => {
                    let slots = if w.mode == Mode::EvalUprobe { 0 } else { w.addresses().len() };
                    self.notes.push(format!(
                        "inferscope: pid {pid}: timing {} ({}:{}) with {}",
                        w.qualname,
                        w.filename,
                        w.first_line,
                        match w.mode {
                            Mode::Breakpoint =>
                                format!("breakpoints on its entry and returns ({slots} debug registers per thread)"),
                            Mode::BreakpointEntry =>
                                "a breakpoint on its entry: calls only (1 debug register per thread)".into(),
                            Mode::EvalUprobe =>
                                format!("uprobes on the eval function (CPython {})", p.interp.version_string()),
                        },
                    ));
                    let idx = p.watched.len();
                    if w.mode != Mode::EvalUprobe {
                        for (k, (a, unit)) in w.addresses().into_iter().enumerate() {
                            p.addrs.insert(a, (idx, k == 0, unit));
                        }
                    }
                    p.slots_used += slots;
                    p.watched.push(w);
                    added = true;
                    SpecState::Watched
                }
                Err(e)
                    if e.downcast_ref::<crate::python::objects::NotDefined>().is_some()
                        && p.since.elapsed() < DEFINE_GRACE =>
                {
                    // A module still importing (SGLang's scheduler process, watched as it
                    // starts): looked for again at the next resolve.
                    continue;
                }
                Err(e) => {
                    self.notes.push(format!("inferscope: pid {pid}: not timing {}: {e:#}", spec.symbol));
                    SpecState::Skipped(format!("{e:#}"))
                }
            };
            p.states[i] = state;
        }
        added
    }
}
