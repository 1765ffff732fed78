//! `inferscope profile`: samples a CPython process's Python stacks with a BPF perf-event program
//! on each of its threads (`probes/python.rs`), and writes them as folded stacks (the input of
//! flamegraph tools: `frame;frame;frame count` per line, outermost first), a flame graph (SVG)
//! or pprof (python/flame.rs).

use std::{
    collections::HashMap,
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::{HashMap as BpfHashMap, RingBuf},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use inferscope_common::PyLayout;

use super::{
    FramePath, Interpreter, Memory, find,
    flame::{self, Frame},
};
use crate::{
    bpf::{self, LoadOptions},
    events::{self, Event},
};

pub struct ProfileOptions {
    pub pid: u32,
    pub duration: Duration,
    /// Samples per second per thread.
    pub rate: u64,
    /// The profile goes here (standard output when None).
    pub output: Option<PathBuf>,
    pub format: Format,
}

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
        _pad: 0,
    }
}

/// Names code objects, each read once.
struct Names<'a> {
    interp: &'a Interpreter,
    mem: Memory,
    cache: HashMap<u64, Frame>,
}

impl Names<'_> {
    fn frame(&mut self, code: u64) -> Frame {
        if let Some(n) = self.cache.get(&code) {
            return n.clone();
        }
        let n = match self.interp.code_frame(&self.mem, code) {
            Ok(f) => Frame { name: f.name, filename: f.filename, line: f.first_line },
            // A code object freed since the sample: counted under one name.
            Err(_) => Frame { name: "<unreadable>".into(), filename: String::new(), line: 0 },
        };
        self.cache.insert(code, n.clone());
        n
    }
}

/// Samples for `o.duration`; returns a summary for the operator.
pub fn run(o: &ProfileOptions) -> Result<String> {
    crate::privileges::require_bpf()?;
    crate::privileges::raise_memlock();
    let interp = find(o.pid)?;
    if interp.layout.tstate_native_thread_id.is_none() {
        bail!(
            "profiling CPython {} is not supported yet: its thread states do not record native thread ids (3.11 and later do)",
            interp.version_string()
        );
    }
    let mut ebpf = bpf::open(&LoadOptions { ring_buffer_bytes: 4 << 20, ..Default::default() })?;
    let prog: &mut PerfEvent = ebpf.program_mut("py_sample").context("py_sample missing")?.try_into()?;
    prog.load().map_err(|e| anyhow!("the kernel rejected the Python sampler: {e:#}"))?;
    let mut layouts: BpfHashMap<_, u32, PyLayout> =
        BpfHashMap::try_from(ebpf.take_map("PY_LAYOUTS").context("PY_LAYOUTS")?)?;
    let mut tstates: BpfHashMap<_, u32, u64> =
        BpfHashMap::try_from(ebpf.take_map("PY_TSTATES").context("PY_TSTATES")?)?;
    let mut ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS")?)?;
    layouts.insert(o.pid, bpf_layout(&interp), 0)?;

    let mut sampled: HashMap<u32, aya::programs::perf_event::PerfEventLinkId> = HashMap::new();
    // Stacks of code objects, outermost first, and their samples.
    let mut folded: HashMap<Vec<u64>, u64> = HashMap::new();
    let start_unix_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut names = Names { interp: &interp, mem: Memory::new(o.pid), cache: HashMap::new() };
    let (mut samples, mut empty, mut undecodable) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut next_threads = start;
    while start.elapsed() < o.duration {
        // New threads: a thread state and a perf event each.
        if Instant::now() >= next_threads {
            next_threads = Instant::now() + Duration::from_millis(500);
            match interp.threads() {
                Ok(threads) => {
                    for t in threads {
                        let Some(tid) = t.native_thread_id.and_then(|n| u32::try_from(n).ok()) else { continue };
                        if tid == 0 || sampled.contains_key(&tid) {
                            continue;
                        }
                        tstates.insert(tid, t.tstate, 0)?;
                        let prog: &mut PerfEvent = ebpf.program_mut("py_sample").context("py_sample")?.try_into()?;
                        match prog.attach(
                            PerfEventConfig::Software(SoftwareEvent::CpuClock),
                            PerfEventScope::OneProcess { pid: tid, cpu: None },
                            SamplePolicy::Frequency(o.rate),
                            false,
                        ) {
                            Ok(link) => {
                                sampled.insert(tid, link);
                            }
                            Err(e) => log::debug!("thread {tid}: {e:#}"),
                        }
                    }
                }
                Err(_) if !crate::procfs::exists(o.pid) => break,
                Err(e) => log::debug!("pid {}: {e:#}", o.pid),
            }
        }
        while let Some(item) = ring.next() {
            match events::decode(&item) {
                Ok(Event::PySample { mut codes, .. }) => {
                    samples += 1;
                    codes.retain(|c| *c != 0); // C-stack shims
                    if codes.is_empty() {
                        empty += 1;
                        continue;
                    }
                    // Named now, while the process (and its code objects) are there.
                    for c in &codes {
                        names.frame(*c);
                    }
                    codes.reverse();
                    *folded.entry(codes).or_default() += 1;
                }
                _ => undecodable += 1,
            }
        }
        if !crate::procfs::exists(o.pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let frames: Vec<(Vec<Frame>, u64)> =
        folded.iter().map(|(codes, n)| (codes.iter().map(|c| names.frame(*c)).collect(), *n)).collect();
    let mut named: Vec<(Vec<String>, u64)> =
        frames.iter().map(|(fs, n)| (fs.iter().map(Frame::label).collect(), *n)).collect();
    named.sort();
    let lines: Vec<(String, u64)> = named.iter().map(|(s, n)| (s.join(";"), *n)).collect();
    let mut out: Box<dyn std::io::Write> = match &o.output {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    match o.format {
        Format::Folded => {
            for (stack, n) in &lines {
                writeln!(out, "{stack} {n}")?;
            }
        }
        Format::Svg => {
            let title =
                format!("pid {}: CPython {}, {} samples at {} Hz", o.pid, interp.version_string(), samples, o.rate);
            out.write_all(flame::svg(&named, &title).as_bytes())?;
        }
        Format::Pprof => {
            let period = 1_000_000_000 / o.rate.max(1);
            out.write_all(&flame::pprof(&frames, period, start_unix_ns, start.elapsed().as_nanos() as u64))?;
        }
    }
    out.flush()?;
    // The functions most often on top of the stack.
    let mut leaf: HashMap<&str, u64> = HashMap::new();
    for (stack, n) in &lines {
        *leaf.entry(stack.rsplit(';').next().unwrap_or(stack)).or_default() += *n;
    }
    let mut top: Vec<(&str, u64)> = leaf.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let with_python = samples - empty;
    let mut summary = format!(
        "inferscope: pid {}: CPython {}: {samples} samples of {} thread(s) in {:.1} s ({empty} outside Python code{}); most on top:\n",
        o.pid,
        interp.version_string(),
        sampled.len(),
        start.elapsed().as_secs_f64(),
        if undecodable > 0 { format!(", {undecodable} undecodable records") } else { String::new() },
    );
    for (f, n) in top.iter().take(10) {
        summary += &format!("  {:5.1}%  {f}\n", 100.0 * *n as f64 / with_python.max(1) as f64);
    }
    Ok(summary)
}
