//! The Python stack sampler (`Sampler`, for `inferscope profile` and the daemon): samples CPython
//! processes' Python stacks with a BPF perf-event program on each of their threads
//! (`probes/python.rs`), and renders a `Profile` as folded stacks (the input of flamegraph
//! tools: `frame;frame;frame count` per line, outermost first), a flame graph (SVG) or pprof
//! (python/flame.rs).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::programs::{
    PerfEvent,
    perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
};
use inferscope_common::PyLayout;

use super::{
    FramePath, Interpreter, Memory,
    bpf::{PyBpf, PyUser},
    flame::{self, Frame},
};
use crate::events::Event;

/// What `inferscope profile` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `frame;frame;frame count` lines, outermost first (flamegraph.pl, speedscope, ...).
    Folded,
    /// A flame graph, an SVG file for a browser.
    Svg,
    /// pprof protobuf (`go tool pprof`, Pyroscope, ...).
    Pprof,
}

impl Format {
    /// From the output file's extension: `.svg`, `.pb`/`.pprof`, anything else folded.
    pub fn from_path(p: Option<&std::path::Path>) -> Self {
        match p.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some("svg") => Format::Svg,
            Some("pb" | "pprof") => Format::Pprof,
            _ => Format::Folded,
        }
    }
}

/// What the BPF walker needs of a layout.
pub(crate) fn bpf_layout(i: &Interpreter) -> PyLayout {
    let l = &i.layout;
    let (tstate_frame, cframe_frame) = match l.tstate_frame {
        FramePath::Direct(o) => (o as u32, u32::MAX),
        FramePath::CFrame(o, inner) => (o as u32, inner as u32),
    };
    PyLayout {
        tstate_frame,
        cframe_frame,
        frame_code: l.frame_code as u32,
        frame_previous: l.frame_previous as u32,
        frame_owner: l.frame_owner.map_or(u32::MAX, |o| o as u32),
        frame_instr: l.frame_instr.map_or(u32::MAX, |o| o as u32),
    }
}

/// Names code objects, each read once (per process: a code address means nothing elsewhere).
#[derive(Default)]
struct Names {
    cache: HashMap<u64, Frame>,
}

impl Names {
    fn frame(&mut self, interp: &Interpreter, mem: &Memory, code: u64) -> Frame {
        if let Some(n) = self.cache.get(&code) {
            return n.clone();
        }
        let n = match interp.code_frame(mem, code) {
            Ok(f) => Frame { name: f.name, filename: f.filename, line: f.first_line },
            // A code object freed since the sample: counted under one name.
            Err(_) => Frame { name: "<unreadable>".into(), filename: String::new(), line: 0 },
        };
        // Bounded: a process that makes code objects forever (exec, lambdas in loops).
        if self.cache.len() > 100_000 {
            self.cache.clear();
        }
        self.cache.insert(code, n.clone());
        n
    }
}

/// What one process's samples came to.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// Stacks (outermost first) and their samples.
    pub stacks: Vec<(Vec<Frame>, u64)>,
    pub samples: u64,
    /// Samples taken while the thread ran no Python code.
    pub empty: u64,
    pub threads: usize,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
}

impl Profile {
    /// Folded lines (`a;b;c n`), sorted.
    pub fn folded(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            self.stacks.iter().map(|(fs, n)| (fs.iter().map(Frame::label).collect::<Vec<_>>().join(";"), *n)).collect();
        v.sort();
        v
    }

    /// The functions most often on top of the stack, with their share of Python samples.
    pub fn top(&self, n: usize) -> Vec<(String, f64)> {
        let mut leaf: HashMap<String, u64> = HashMap::new();
        for (fs, c) in &self.stacks {
            if let Some(f) = fs.last() {
                *leaf.entry(f.label()).or_default() += c;
            }
        }
        let with_python = (self.samples - self.empty).max(1) as f64;
        let mut v: Vec<(String, u64)> = leaf.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().take(n).map(|(f, c)| (f, 100.0 * c as f64 / with_python)).collect()
    }

    /// The profile in `format`.
    pub fn render(&self, format: Format, title: &str, rate: u64) -> Vec<u8> {
        match format {
            Format::Folded => self.folded().iter().map(|(s, n)| format!("{s} {n}\n")).collect::<String>().into_bytes(),
            Format::Svg => {
                let named: Vec<(Vec<String>, u64)> =
                    self.stacks.iter().map(|(fs, n)| (fs.iter().map(Frame::label).collect(), *n)).collect();
                flame::svg(&named, title).into_bytes()
            }
            Format::Pprof => {
                flame::pprof(&self.stacks, 1_000_000_000 / rate.max(1), self.start_unix_ns, self.duration_ns)
            }
        }
    }
}

struct Sampled {
    interp: Interpreter,
    mem: Memory,
    names: Names,
    threads: HashMap<u32, aya::programs::perf_event::PerfEventLinkId>,
    folded: HashMap<Vec<u64>, u64>,
    samples: u64,
    empty: u64,
    since: Instant,
    since_unix_ns: u64,
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Samples the Python stacks of any number of processes (CPython 3.11+): a cpu-clock perf
/// event per thread, `rate` samples per second of each thread's CPU time. Its program and maps
/// are those of the object it is handed ([`PyBpf`]); its records are handed to [`Self::on_event`].
pub struct Sampler {
    procs: HashMap<u32, Sampled>,
    rate: u64,
    next_threads: Instant,
}

impl Sampler {
    /// Loads the sampling program into `bpf`'s object (the first time).
    pub fn new(rate: u64, bpf: &mut dyn PyBpf) -> Result<Self> {
        let (ebpf, maps) = bpf.py_parts();
        maps.load_perf_event(ebpf, "py_sample", "Python sampler")?;
        Ok(Self { procs: HashMap::new(), rate: rate.clamp(1, 10_000), next_threads: Instant::now() })
    }

    /// Starts sampling the process `interp` belongs to. Err: its CPython cannot be sampled.
    pub fn add(&mut self, interp: Interpreter, bpf: &mut dyn PyBpf) -> Result<()> {
        let threads = interp.threads()?;
        if !threads.is_empty() && threads.iter().all(|t| t.native_thread_id.is_none()) {
            bail!(
                "CPython {}: no thread of the process could be matched to a kernel thread id (its C library's \
                 thread descriptors are not understood): its threads cannot be sampled",
                interp.version_string()
            );
        }
        let pid = interp.pid;
        bpf.py_parts().1.add_process(PyUser::Sampler, pid, bpf_layout(&interp))?;
        self.procs.insert(
            pid,
            Sampled {
                mem: Memory::new(pid),
                interp,
                names: Names::default(),
                threads: HashMap::new(),
                folded: HashMap::new(),
                samples: 0,
                empty: 0,
                since: Instant::now(),
                since_unix_ns: unix_now_ns(),
            },
        );
        self.next_threads = Instant::now();
        Ok(())
    }

    /// Stops sampling `pid` (its perf events go).
    pub fn remove(&mut self, pid: u32, bpf: &mut dyn PyBpf) {
        let Some(p) = self.procs.remove(&pid) else { return };
        let (ebpf, maps) = bpf.py_parts();
        if let Some(prog) = ebpf.program_mut("py_sample").and_then(|p| <&mut PerfEvent>::try_from(p).ok()) {
            for (_, link) in p.threads {
                let _ = prog.detach(link);
            }
        }
        maps.remove_process(PyUser::Sampler, pid);
    }

    /// Stops sampling every process.
    pub fn close(&mut self, bpf: &mut dyn PyBpf) {
        for pid in self.pids() {
            self.remove(pid, bpf);
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    pub fn version(&self, pid: u32) -> Option<String> {
        self.procs.get(&pid).map(|p| p.interp.version_string())
    }

    /// Follows new threads (every 500 ms).
    pub fn poll(&mut self, bpf: &mut dyn PyBpf) {
        if Instant::now() >= self.next_threads {
            self.next_threads = Instant::now() + Duration::from_millis(500);
            let pids: Vec<u32> = self.procs.keys().copied().collect();
            for pid in pids {
                self.sync_threads(pid, bpf);
            }
        }
    }

    /// A record of the ring buffer (samples of processes it samples; others are not its own).
    pub fn on_event(&mut self, ev: &Event) {
        let Event::PySample { tgid, codes, .. } = ev else { return };
        let Some(p) = self.procs.get_mut(tgid) else { return };
        p.samples += 1;
        let mut codes: Vec<u64> = codes.iter().copied().filter(|c| *c != 0).collect(); // C-stack shims
        if codes.is_empty() {
            p.empty += 1;
            return;
        }
        // Named now, while the process (and its code objects) are there.
        for c in &codes {
            p.names.frame(&p.interp, &p.mem, *c);
        }
        codes.reverse();
        *p.folded.entry(codes).or_default() += 1;
    }

    fn sync_threads(&mut self, pid: u32, bpf: &mut dyn PyBpf) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        let threads = match p.interp.threads() {
            Ok(t) => t,
            Err(e) => {
                log::debug!("pid {pid}: {e:#}");
                return;
            }
        };
        let (ebpf, maps) = bpf.py_parts();
        let Some(prog) = ebpf.program_mut("py_sample").and_then(|p| <&mut PerfEvent>::try_from(p).ok()) else {
            return;
        };
        for t in threads {
            let Some(tid) = t.native_thread_id.and_then(|n| u32::try_from(n).ok()) else { continue };
            if tid == 0 || p.threads.contains_key(&tid) {
                continue;
            }
            if maps.add_thread(PyUser::Sampler, pid, tid, t.tstate).is_err() {
                continue;
            }
            match prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::OneProcess { pid: tid, cpu: None },
                SamplePolicy::Frequency(self.rate),
                false,
            ) {
                Ok(link) => {
                    p.threads.insert(tid, link);
                }
                Err(e) => log::debug!("thread {tid}: {e:#}"),
            }
        }
    }

    /// The process's profile since the last take (or since it was added), and a fresh start.
    pub fn take(&mut self, pid: u32) -> Option<Profile> {
        let p = self.procs.get_mut(&pid)?;
        let folded = std::mem::take(&mut p.folded);
        let stacks = folded
            .into_iter()
            .map(|(codes, n)| (codes.iter().map(|c| p.names.frame(&p.interp, &p.mem, *c)).collect(), n))
            .collect();
        let prof = Profile {
            stacks,
            samples: std::mem::take(&mut p.samples),
            empty: std::mem::take(&mut p.empty),
            threads: p.threads.len(),
            start_unix_ns: p.since_unix_ns,
            duration_ns: p.since.elapsed().as_nanos() as u64,
        };
        p.since = Instant::now();
        p.since_unix_ns = unix_now_ns();
        Some(prof)
    }
}
