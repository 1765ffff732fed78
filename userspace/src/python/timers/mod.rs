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

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{
        PerfEvent,
        perf_event::{
            BreakpointConfig, PerfBreakpointLength, PerfBreakpointType, PerfEventConfig, PerfEventLinkId,
            PerfEventScope, SamplePolicy,
        },
    },
};
use inferscope_common::PyLayout;
use serde::Deserialize;

use super::{Interpreter, Memory, find, objects::CO_GENERATOR_LIKE};
use crate::events::{self, Event};

/// The default set (vLLM and SGLang scheduling functions).
pub const DEFAULT_CONFIG: &str = include_str!("../default-timers.yaml");

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
struct Burst {
    recent: std::collections::VecDeque<u64>,
}

impl Burst {
    /// True when this hit makes `per_tick` hits within one tick: the kernel has stopped (or is
    /// about to stop) the event until the next tick.
    fn hit(&mut self, ts: u64, limit: ThrottleLimit) -> bool {
        self.recent.push_back(ts);
        if self.recent.len() > limit.per_tick {
            self.recent.pop_front();
        }
        self.recent.len() == limit.per_tick && ts.saturating_sub(self.recent[0]) < limit.tick_ns
    }
}

/// One function to time, as the operator wrote it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    /// `module:Class.method` or `module:function`.
    pub symbol: String,
    /// Package whose `__version__` min/max_version compare with (default: the module's
    /// top-level name).
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Ignored apart from documentation: series are named by the function.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: MetricKind,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// A duration histogram and a call count.
    Timer,
    /// A call count only.
    Counter,
}

fn default_metrics() -> Vec<MetricSpec> {
    vec![MetricSpec { name: None, kind: MetricKind::Timer }]
}

impl TimerSpec {
    fn wants_durations(&self) -> bool {
        self.metrics.iter().any(|m| m.kind == MetricKind::Timer)
    }

    /// The short name series carry: the qualified name after the module.
    pub fn function(&self) -> &str {
        self.symbol.split_once(':').map_or(&self.symbol, |(_, q)| q)
    }
}

/// Parses a timer file (a YAML list of [`TimerSpec`]).
pub fn parse_config(text: &str) -> Result<Vec<TimerSpec>> {
    let specs: Vec<TimerSpec> =
        serde_yaml::from_str(text).context("not a list of `- symbol: module:Class.method` entries")?;
    for s in &specs {
        let Some((m, q)) = s.symbol.split_once(':') else {
            bail!("{}: expected module:Class.method or module:function", s.symbol);
        };
        if m.is_empty() || q.is_empty() || q.split('.').any(str::is_empty) {
            bail!("{}: expected module:Class.method or module:function", s.symbol);
        }
        if s.metrics.is_empty() {
            bail!("{}: `metrics` is empty (say `- type: timer` or `- type: counter`)", s.symbol);
        }
    }
    Ok(specs)
}

/// Loads `default` (the built-in set) or a YAML file.
pub fn load_config(arg: &str) -> Result<Vec<TimerSpec>> {
    if arg == "default" {
        return parse_config(DEFAULT_CONFIG);
    }
    let text = std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?;
    parse_config(&text).with_context(|| arg.to_string())
}

/// `0.10.1rc1+cpu` -> [0, 10, 1]: the leading numeric components, trailing zeros dropped
/// (`0.32` = `0.32.0`).
pub fn version_key(v: &str) -> Vec<u64> {
    let mut k: Vec<u64> = v
        .split(['.', '+', '-'])
        .map_while(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok().filter(|_| !digits.is_empty())
        })
        .collect();
    while k.last() == Some(&0) {
        k.pop();
    }
    k
}

/// Whether `version` lies in [min, max] (inclusive; missing bounds are open).
pub fn version_in_range(version: &str, min: Option<&str>, max: Option<&str>) -> bool {
    let v = version_key(version);
    min.is_none_or(|m| v >= version_key(m)) && max.is_none_or(|m| v <= version_key(m))
}

/// Whether the x86-64 instruction ending at the end of `b` is a plain load from memory into a
/// register (`mov r8/r16/r32/r64, m`, `movzx`, `movsx`): how the interpreter's dispatch loop
/// fetches an instruction. Tried for every start 2-12 bytes back; a data breakpoint traps
/// after the accessing instruction, so it ends where the trap's instruction pointer is.
pub fn ends_with_plain_load(b: &[u8; 16]) -> bool {
    (2..=12).any(|k| plain_load_len(&b[16 - k..]) == Some(k))
}

fn plain_load_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() && s[i] == 0x66 {
        i += 1;
    }
    if i < s.len() && (0x40..=0x4f).contains(&s[i]) {
        i += 1; // REX
    }
    match *s.get(i)? {
        0x0f => match *s.get(i + 1)? {
            0xb6 | 0xb7 | 0xbe | 0xbf => i += 2,
            _ => return None,
        },
        0x8a | 0x8b => i += 1,
        _ => return None,
    }
    let modrm = *s.get(i)?;
    i += 1;
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None; // a register, not memory
    }
    if rm == 4 {
        let sib = *s.get(i)?;
        i += 1;
        if md == 0 && sib & 7 == 5 {
            i += 4;
        }
    } else if md == 0 && rm == 5 {
        i += 4; // RIP-relative
    }
    i += match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    Some(i)
}

/// How a series' numbers were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Hardware breakpoints on entry and every return: exact counts and durations.
    Breakpoint,
    /// A breakpoint on the entry only: exact counts, no durations.
    BreakpointEntry,
    /// Uprobes on the eval function (3.9/3.10): exact counts and durations.
    EvalUprobe,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Breakpoint => "breakpoint",
            Mode::BreakpointEntry => "breakpoint_entry",
            Mode::EvalUprobe => "eval_uprobe",
        }
    }
}

/// One finished (or counted) call of a watched function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub pid: u32,
    pub tid: u32,
    /// Index into the configured specs.
    pub spec: usize,
    pub mode: Mode,
    /// Monotonic ns of the entry.
    pub start_ns: u64,
    /// Monotonic ns of the return; None in entry-only mode.
    pub end_ns: Option<u64>,
    /// Calls of watched functions open below this one on the thread (0 = outermost).
    pub depth: u32,
}

/// Calls that did not end with a return the matcher saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Left by an exception (or another way without a return instruction).
    pub unfinished: u64,
    /// Returns of calls that began before the watch.
    pub unmatched_returns: u64,
    /// Hits of the interpreter writing a watched instruction (quickening rewrites RESUME once,
    /// e.g. to RESUME_CHECK; a read/write watchpoint fires for the write too): not calls.
    pub write_hits: u64,
    /// Hits by instructions other than a plain load (compares, same-value stores).
    pub other_accesses: u64,
    /// Ticks in which a watchpoint fired as often as the kernel allows: later hits in the
    /// tick are lost (calls undercounted).
    pub throttled: u64,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    spec: usize,
    key: CallKey,
    ts: u64,
}

/// Which call an entry hit belongs to: the callee's frame and its caller's, where known (0:
/// unknown). At a RESUME fetch the thread's current frame is the new callee's on most builds,
/// but some compilers fetch the callee's first instruction before storing the new frame
/// (Debian's 3.13, for inlined calls): then it is still the caller's, and only the caller is
/// known. The hit says which (the frame's instruction pointer is at the callee's start, or at
/// the caller's CALL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallKey {
    pub callee: u64,
    pub caller: u64,
}

impl CallKey {
    /// Whether a call with this key, still open, must have ended for `new` to begin: its
    /// callee frame is reused, or its caller calls again (a frame runs one call at a time).
    fn ended_by(&self, new: &CallKey) -> bool {
        (new.callee != 0 && self.callee == new.callee) || (new.caller != 0 && self.caller == new.caller)
    }

    /// Whether a return from `frame`, called by `caller`, ends this call.
    fn returns_from(&self, frame: u64, caller: u64) -> bool {
        frame == 0 || if self.callee != 0 { self.callee == frame } else { self.caller == 0 || self.caller == caller }
    }
}

/// Pairs entry and return hits per thread. Pure: fed by [`PyTimers`], tested and fuzzed alone.
#[derive(Default)]
pub struct Matcher {
    stacks: HashMap<u32, Vec<Open>>,
    pub stats: MatchStats,
}

/// Most open calls kept per thread (deeper recursion is counted as unfinished).
const MAX_OPEN: usize = 256;

impl Matcher {
    /// A watched function was entered.
    pub fn entry(&mut self, tid: u32, spec: usize, key: CallKey, ts: u64) {
        let stack = self.stacks.entry(tid).or_default();
        // A callee frame is reused, and a caller calls again, only after the call ended: what
        // is open with the same key (and above it) left without a return.
        if let Some(i) = stack.iter().position(|o| o.key.ended_by(&key)) {
            self.stats.unfinished += (stack.len() - i) as u64;
            stack.truncate(i);
        }
        if stack.len() >= MAX_OPEN {
            stack.remove(0);
            self.stats.unfinished += 1;
        }
        stack.push(Open { spec, key, ts });
    }

    /// A watched function returned from `frame`, called by `caller`. The finished call:
    /// (start, depth).
    pub fn exit(&mut self, tid: u32, spec: usize, frame: u64, caller: u64, ts: u64) -> Option<(u64, u32)> {
        let stack = self.stacks.entry(tid).or_default();
        let found = stack.iter().rposition(|o| o.spec == spec && o.key.returns_from(frame, caller));
        let Some(i) = found else {
            self.stats.unmatched_returns += 1;
            return None;
        };
        self.stats.unfinished += (stack.len() - 1 - i) as u64;
        let open = stack[i];
        stack.truncate(i);
        Some((open.ts.min(ts), i as u32))
    }

    pub fn forget_thread(&mut self, tid: u32) {
        if let Some(s) = self.stacks.remove(&tid) {
            self.stats.unfinished += s.len() as u64;
        }
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
    code_start: u64,
    /// Address and code unit (as read when the function was found) of the RESUME and returns.
    resume: (u64, u32),
    returns: Vec<(u64, u32)>,
}

impl Watched {
    fn addresses(&self) -> Vec<(u64, u32)> {
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

/// Function timers over any number of processes. Owns its own copy of the BPF object (the
/// `py_call` program, its maps and a small ring buffer).
pub struct PyTimers {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    layouts: BpfHashMap<MapData, u32, PyLayout>,
    tstates: BpfHashMap<MapData, u32, u64>,
    pub specs: Vec<TimerSpec>,
    procs: HashMap<u32, Proc>,
    undecodable: u64,
    throttle: ThrottleLimit,
    /// Watched code objects of the eval-frame uprobes (with `eval_uprobes`).
    eval_watch: Option<BpfHashMap<MapData, u64, inferscope_common::PyEvalWatch>>,
    /// Lines for the operator (one per event worth knowing), taken by the caller.
    pub notes: Vec<String>,
}

impl PyTimers {
    /// `eval_uprobes`: also time CPython 3.9/3.10 processes, with uprobes on their eval
    /// function (every Python call of such a process then traps twice).
    pub fn new(specs: Vec<TimerSpec>, eval_uprobes: bool) -> Result<Self> {
        let super::profile::OwnBpf { mut ebpf, ring, layouts, tstates } =
            super::profile::OwnBpf::open(1 << 20, "py_call", "Python timer program")?;
        let eval_watch = if eval_uprobes {
            for name in ["py_eval_enter", "py_eval_exit"] {
                let p: &mut aya::programs::UProbe = ebpf.program_mut(name).context(name)?.try_into()?;
                p.load().map_err(|e| anyhow!("the kernel rejected {name}: {e:#}"))?;
            }
            Some(BpfHashMap::try_from(ebpf.take_map("PY_EVAL_WATCH").context("PY_EVAL_WATCH")?)?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            ring,
            layouts,
            tstates,
            specs,
            procs: HashMap::new(),
            undecodable: 0,
            throttle: ThrottleLimit::of_this_kernel(),
            eval_watch,
            notes: Vec::new(),
        })
    }

    /// Starts watching `pid` (its functions are looked for now and every 2 s until found).
    /// Err: the process runs no CPython these timers support.
    pub fn add_process(&mut self, pid: u32) -> Result<()> {
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        self.add_interpreter(find(pid)?)
    }

    /// [`Self::add_process`] with the interpreter already found.
    pub fn add_interpreter(&mut self, interp: Interpreter) -> Result<()> {
        let pid = interp.pid;
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        let eval = match interp.version.1 {
            11..=14 => None,
            9 | 10 if self.eval_watch.is_some() => Some(Vec::new()),
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
        self.layouts.insert(pid, super::profile::bpf_layout(&interp), 0)?;
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
                next_threads: now,
                matcher: Matcher::default(),
                calls: 0,
            },
        );
        Ok(())
    }

    /// Stops watching `pid` (its breakpoints go with it).
    pub fn remove_process(&mut self, pid: u32) {
        let Some(mut p) = self.procs.remove(&pid) else { return };
        let _ = self.layouts.remove(&pid);
        if let Some(links) = p.eval.take() {
            // Attached in pairs: the entry program's link, then the return program's.
            for (i, l) in links.into_iter().enumerate() {
                let name = if i % 2 == 0 { "py_eval_enter" } else { "py_eval_exit" };
                if let Some(prog) =
                    self.ebpf.program_mut(name).and_then(|p| <&mut aya::programs::UProbe>::try_from(p).ok())
                {
                    let _ = prog.detach(l);
                }
            }
            if let Some(w) = &mut self.eval_watch {
                for watched in &p.watched {
                    let _ = w.remove(&watched.code_start);
                }
            }
        }
        let tids: Vec<u32> = p.threads.keys().copied().collect();
        for tid in tids {
            self.detach_thread(&mut p, tid);
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
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

    /// Resolves pending functions, follows new and gone threads, and turns breakpoint hits
    /// into calls. Call every few milliseconds.
    pub fn poll(&mut self, out: &mut Vec<CallRecord>) {
        let now = Instant::now();
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            let Some(mut p) = self.procs.remove(&pid) else { continue };
            let mut changed = false;
            if now >= p.next_resolve && p.states.contains(&SpecState::Pending) {
                // Every second at first, backing off to 8 s while nothing new turns up (a
                // process that never imports the module costs one sys.modules scan per 8 s).
                changed = self.resolve(pid, &mut p);
                p.resolve_every =
                    if changed { Duration::from_secs(1) } else { (p.resolve_every * 2).min(Duration::from_secs(8)) };
                p.next_resolve = now + p.resolve_every;
            }
            if changed || now >= p.next_threads {
                p.next_threads = now + Duration::from_secs(1);
                self.sync_threads(pid, &mut p, changed);
            }
            self.procs.insert(pid, p);
        }
        while let Some(item) = self.ring.next() {
            match events::decode(&item) {
                Ok(Event::PyEval { tgid, tid, spec, start_ns, end_ns, ret, .. }) => {
                    let Some(p) = self.procs.get_mut(&tgid) else { continue };
                    if ret == 0 {
                        // NULL: the call raised.
                        p.matcher.stats.unfinished += 1;
                        continue;
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
                Ok(Event::PyCall { tgid, tid, ts_ns, addr, frame, frame_prev, frame_instr, unit, ip }) => {
                    let Some(p) = self.procs.get_mut(&tgid) else { continue };
                    let Some(&mut (w, is_entry, ref mut seen)) = p.addrs.get_mut(&addr) else { continue };
                    log::trace!(
                        "hit tid {tid} addr {addr:#x} entry {is_entry} frame {frame:#x} unit {unit:#x} ts {ts_ns} ip {ip:#x}"
                    );
                    if unit != *seen && unit != u32::MAX {
                        // The interpreter wrote the instruction (read hits leave it as it was).
                        *seen = unit;
                        p.matcher.stats.write_hits += 1;
                        continue;
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
                        continue;
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
                        out.push(CallRecord {
                            pid: tgid,
                            tid,
                            spec,
                            mode,
                            start_ns: start,
                            end_ns: Some(ts_ns),
                            depth,
                        });
                    }
                }
                _ => self.undecodable += 1,
            }
        }
    }

    /// Looks for the process's pending functions; true when new ones are watched.
    fn resolve(&mut self, pid: u32, p: &mut Proc) -> bool {
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
                Ok(w) if w.mode == Mode::EvalUprobe => self.watch_eval(pid, p, &w).map(|()| w),
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
                Err(e) => {
                    self.notes.push(format!("inferscope: pid {pid}: not timing {}: {e:#}", spec.symbol));
                    SpecState::Skipped(format!("{e:#}"))
                }
            };
            p.states[i] = state;
        }
        added
    }

    /// Eval-frame mode: the code object into the watch map, and the eval function's probes on
    /// the process (once).
    fn watch_eval(&mut self, pid: u32, p: &mut Proc, w: &Watched) -> Result<()> {
        let watch = self.eval_watch.as_mut().context("eval-frame uprobes not loaded")?;
        watch.insert(w.code_start, inferscope_common::PyEvalWatch { tgid: pid, spec: w.spec as u32 }, 0)?;
        if p.eval.as_ref().is_some_and(|l| l.is_empty()) {
            let path = crate::device::libs::host_path(pid, &p.interp.file);
            let scope =
                aya::programs::uprobe::UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).context("pid 0")?);
            let mut links = Vec::new();
            for name in ["py_eval_enter", "py_eval_exit"] {
                let prog: &mut aya::programs::UProbe = self.ebpf.program_mut(name).context(name)?.try_into()?;
                links.push(
                    prog.attach("_PyEval_EvalFrameDefault", &path, scope)
                        .with_context(|| format!("uprobe on _PyEval_EvalFrameDefault in {}", path.display()))?,
                );
            }
            p.eval = Some(links);
        }
        Ok(())
    }

    fn watch_spec(&self, p: &Proc, i: usize, spec: &TimerSpec) -> Result<Watched> {
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
        if r.flags & CO_GENERATOR_LIKE != 0 {
            bail!("{} is a generator or coroutine: not timed (each resumption would count as a call)", r.qualname);
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
        })
    }

    /// Puts every watched address on every Python thread (new threads, and all threads again
    /// when `all` because new functions were found); forgets threads that are gone.
    fn sync_threads(&mut self, pid: u32, p: &mut Proc, all: bool) {
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
            self.detach_thread(p, tid);
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
                self.detach_thread(p, tid);
            }
            let _ = self.tstates.insert(tid, t.tstate, 0);
            let mut links = Vec::new();
            let mut error = None;
            for a in &addrs {
                match self.attach(tid, *a) {
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

    fn attach(&mut self, tid: u32, addr: u64) -> Result<PerfEventLinkId> {
        let prog: &mut PerfEvent = self.ebpf.program_mut("py_call").context("py_call")?.try_into()?;
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

    fn detach_thread(&mut self, p: &mut Proc, tid: u32) {
        let links = p.threads.remove(&tid).unwrap_or_default();
        let _ = self.tstates.remove(&tid);
        if let Some(prog) = self.ebpf.program_mut("py_call").and_then(|p| <&mut PerfEvent>::try_from(p).ok()) {
            for l in links {
                let _ = prog.detach(l);
            }
        }
    }
}

/// The JSON line of one call: `start_ns` on the monotonic clock (what BPF and
/// `time.monotonic_ns()` read), and `ts_ns` in Unix time when the caller knows it.
/// `step`: the engine step the call belongs to (Unix ns the engine stamped it, batch size).
pub fn call_json(
    r: &CallRecord,
    spec: &TimerSpec,
    unix_start_ns: Option<u64>,
    step: Option<(u64, usize)>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "python_call",
        "pid": r.pid,
        "tid": r.tid,
        "function": spec.function(),
        "symbol": spec.symbol,
        "mode": r.mode.label(),
        "start_ns": r.start_ns,
        "duration_ns": r.end_ns.map(|e| e.saturating_sub(r.start_ns)),
        "depth": r.depth,
    });
    if let Some(ts) = unix_start_ns {
        v["ts_ns"] = ts.into();
    }
    if let Some((ts, batch)) = step {
        v["step_ts_ns"] = ts.into();
        v["step_batch_size"] = batch.into();
    }
    v
}

/// `inferscope timers`: watches one process for `duration` (or until it exits) and writes one
/// JSON line per call; returns the summary for the operator.
pub fn run_cli(
    pid: u32,
    specs: Vec<TimerSpec>,
    duration: Duration,
    output: Option<&std::path::Path>,
    eval_uprobes: bool,
) -> Result<String> {
    use std::io::Write as _;
    let mut t = PyTimers::new(specs, eval_uprobes)?;
    t.add_process(pid)?;
    let mut out: Box<dyn std::io::Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let start = Instant::now();
    let mut recs = Vec::new();
    let mut per: Vec<Vec<u64>> = vec![Vec::new(); t.specs.len()];
    let mut counts = vec![0u64; t.specs.len()];
    let mut announced = false;
    while start.elapsed() < duration {
        t.poll(&mut recs);
        for n in t.notes.drain(..) {
            eprintln!("{n}");
        }
        if !announced
            && t.procs
                .get(&pid)
                .is_some_and(|p| !p.threads.is_empty() || p.eval.as_ref().is_some_and(|l| !l.is_empty()))
        {
            announced = true;
            eprintln!("inferscope: pid {pid}: watching");
        }
        for r in recs.drain(..) {
            let Some(spec) = t.specs.get(r.spec) else { continue };
            counts[r.spec] += 1;
            if let Some(end) = r.end_ns {
                per[r.spec].push(end.saturating_sub(r.start_ns));
            }
            writeln!(out, "{}", call_json(&r, spec, None, None))?;
        }
        if !crate::procfs::exists(pid) {
            // Hits already in the ring are read once more.
            t.poll(&mut recs);
            if recs.is_empty() {
                break;
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out.flush()?;
    let h = t.health();
    let mut s = format!(
        "inferscope: pid {pid}: {} calls of {} function(s) in {:.1} s; {} left without a return (exceptions), \
         {} returns of calls begun before the watch{}\n",
        h.calls,
        h.watched_functions,
        start.elapsed().as_secs_f64(),
        h.unfinished,
        h.unmatched_returns,
        if h.throttled > 0 {
            format!("; throttled by the kernel in {} ticks: calls undercounted", h.throttled)
        } else {
            String::new()
        }
    );
    for (i, spec) in t.specs.iter().enumerate() {
        let mut d = std::mem::take(&mut per[i]);
        if counts[i] == 0 && d.is_empty() {
            continue;
        }
        d.sort_unstable();
        let q = |f: f64| d.get(((d.len() as f64 - 1.0) * f).round() as usize).map_or(0.0, |v| *v as f64 / 1e6);
        s += &format!(
            "  {:8} calls  p50 {:8.3} ms  p99 {:8.3} ms  max {:8.3} ms  {}\n",
            counts[i],
            q(0.5),
            q(0.99),
            q(1.0),
            spec.symbol
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let specs = parse_config(DEFAULT_CONFIG).unwrap();
        assert!(specs.iter().any(|s| s.symbol == "vllm.v1.core.sched.scheduler:Scheduler.schedule"));
        assert!(specs.iter().all(|s| !s.metrics.is_empty()));
    }

    #[test]
    fn config_errors_say_what_is_wrong() {
        assert!(parse_config("- symbol: nocolon").unwrap_err().to_string().contains("module:Class.method"));
        assert!(parse_config("- symbol: a:B.c\n  metrics: [{type: gauge}]").is_err());
        assert!(parse_config("- symbol: a:B.c\n  colour: red").is_err());
        let s = parse_config("- symbol: a.b:C.d\n  metrics: [{name: x, type: counter}]").unwrap();
        assert_eq!(s[0].metrics[0].kind, MetricKind::Counter);
        assert_eq!(s[0].function(), "C.d");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_in_range("0.10.1rc1+cpu", Some("0.8.0"), None));
        assert!(!version_in_range("0.7.3", Some("0.8.0"), None));
        assert!(version_in_range("0.32.0", Some("0.8"), Some("0.32")));
        assert!(!version_in_range("1.0.0", None, Some("0.99")));
        assert_eq!(version_key("2.13.0+cpu"), vec![2, 13]);
        assert_eq!(version_key("0.8.5"), vec![0, 8, 5]);
    }

    fn ending(bytes: &[u8]) -> [u8; 16] {
        let mut b = [0x90u8; 16];
        b[16 - bytes.len()..].copy_from_slice(bytes);
        b
    }

    #[test]
    fn instruction_fetches_are_told_from_other_accesses() {
        // Seen in CPython 3.13's dispatch loop: movzwl (%rdi),%eax; movzwl 0xc8(%r13),%eax;
        // movzwl (%r15),%eax.
        assert!(ends_with_plain_load(&ending(&[0x0f, 0xb7, 0x07])));
        assert!(ends_with_plain_load(&ending(&[0x41, 0x0f, 0xb7, 0x85, 0xc8, 0, 0, 0])));
        assert!(ends_with_plain_load(&ending(&[0x41, 0x0f, 0xb7, 0x07])));
        // movzbl -0x2(%r15),%eax (3.12 loads the opcode byte alone).
        assert!(ends_with_plain_load(&ending(&[0x41, 0x0f, 0xb6, 0x47, 0xfe])));
        // 3.13's RESUME after an eval-breaker deopt: cmpb $0x95,-0x2(%r15).
        assert!(!ends_with_plain_load(&ending(&[0x41, 0x80, 0x7f, 0xfe, 0x95])));
        // A store of the opcode: movb $0xcf,-0x2(%r15).
        assert!(!ends_with_plain_load(&ending(&[0x41, 0xc6, 0x47, 0xfe, 0xcf])));
    }

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

    /// Entry keys as hits give them: the callee frame current (its caller known too), or the
    /// caller's frame still current.
    fn callee(f: u64) -> CallKey {
        CallKey { callee: f, caller: f / 2 }
    }
    fn caller(c: u64) -> CallKey {
        CallKey { callee: 0, caller: c }
    }

    #[test]
    fn matcher_pairs_recursion_by_frame() {
        let mut m = Matcher::default();
        m.entry(1, 0, callee(100), 1_000_000);
        m.entry(1, 0, callee(200), 2_000_000);
        assert_eq!(m.exit(1, 0, 200, 100, 3_000_000), Some((2_000_000, 1)));
        assert_eq!(m.exit(1, 0, 100, 50, 4_000_000), Some((1_000_000, 0)));
        assert_eq!(m.stats, MatchStats::default());
        // The same recursion seen with callers' frames at entry (100 called 200 called 300).
        m.entry(1, 0, caller(50), 1);
        m.entry(1, 0, caller(100), 2);
        m.entry(1, 0, caller(200), 3);
        assert_eq!(m.exit(1, 0, 300, 200, 4), Some((3, 2)));
        assert_eq!(m.exit(1, 0, 200, 100, 5), Some((2, 1)));
        assert_eq!(m.exit(1, 0, 100, 50, 5), Some((1, 0)));
        // A call from C into the function (callee frame at entry) that calls itself inline
        // (caller frame at entry, the same address): two calls, not a reuse.
        m.entry(1, 0, callee(100), 6);
        m.entry(1, 0, caller(100), 7);
        assert_eq!(m.exit(1, 0, 400, 100, 8), Some((7, 1)));
        assert_eq!(m.exit(1, 0, 100, 50, 9), Some((6, 0)));
        assert_eq!(m.stats, MatchStats::default());
    }

    #[test]
    fn matcher_counts_exception_exits() {
        let mut m = Matcher::default();
        m.entry(1, 0, callee(100), 1_000_000);
        // Raised: no return; the frame is reused by the next call.
        m.entry(1, 0, callee(100), 5_000_000);
        assert_eq!(m.stats.unfinished, 1);
        assert_eq!(m.exit(1, 0, 100, 50, 6_000_000), Some((5_000_000, 0)));
        // The same with callers' frames: the caller called again.
        m.entry(1, 0, caller(50), 7_000_000);
        m.entry(1, 0, caller(50), 8_000_000);
        assert_eq!(m.stats.unfinished, 2);
        assert_eq!(m.exit(1, 0, 100, 50, 9_000_000), Some((8_000_000, 0)));
        // A return of a call begun before the watch.
        assert_eq!(m.exit(1, 0, 300, 50, 7_000_000), None);
        assert_eq!(m.stats.unmatched_returns, 1);
        // An inner call raised, the outer returned.
        m.entry(2, 0, callee(100), 1_000_000);
        m.entry(2, 1, callee(200), 2_000_000);
        assert_eq!(m.exit(2, 0, 100, 50, 3_000_000), Some((1_000_000, 0)));
        assert_eq!(m.stats.unfinished, 3);
        // Raised in a call seen by its callee frame; the next call is seen by its caller's.
        m.entry(3, 0, callee(100), 1);
        m.entry(3, 0, caller(50), 2);
        assert_eq!(m.stats.unfinished, 4);
        assert_eq!(m.exit(3, 0, 100, 50, 3), Some((2, 0)));
    }
}
