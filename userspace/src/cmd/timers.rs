//! `inferscope timers`: times one CPython process's Python functions for a while
//! (python/timers' `PyTimers`), one JSON line per call; the summary goes to the operator.

use std::{
    io::Write as _,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    export::jsonl::call_json,
    python::{
        bpf::OwnBpf,
        timers::{PyTimers, TimerSpec, load_config},
    },
};

/// `inferscope timers`: the functions of `config` (`default`, or a YAML file), watched for
/// `duration` seconds (at least 0.1).
pub fn run(pid: u32, config: &str, duration: f64, output: Option<&Path>, eval_uprobes: bool) -> ExitCode {
    let r = load_config(config)
        .and_then(|specs| watch(pid, specs, Duration::from_secs_f64(duration.max(0.1)), output, eval_uprobes));
    super::summary(r)
}

/// `inferscope timers`: watches one process for `duration` (or until it exits) and writes one
/// JSON line per call; returns the summary for the operator.
pub fn watch(
    pid: u32,
    specs: Vec<TimerSpec>,
    duration: Duration,
    output: Option<&Path>,
    eval_uprobes: bool,
) -> Result<String> {
    let mut bpf = OwnBpf::open(1 << 20)?;
    let mut t = PyTimers::new(specs, eval_uprobes, &mut bpf)?;
    t.add_process(pid, &mut bpf)?;
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
        t.poll(&mut bpf);
        bpf.drain(|ev| t.on_event(ev, &mut recs));
        for n in t.notes.drain(..) {
            eprintln!("{n}");
        }
        if !announced && t.is_watching(pid) {
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
        if !crate::process::procfs::exists(pid) {
            // Hits already in the ring are read once more.
            bpf.drain(|ev| t.on_event(ev, &mut recs));
            if recs.is_empty() {
                break;
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out.flush()?;
    t.undecodable = bpf.undecodable;
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
