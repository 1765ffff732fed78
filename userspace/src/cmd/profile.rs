//! `inferscope profile`: samples one CPython process's Python stacks for a while
//! (python/profile.rs's `Sampler`) and writes its profile; the summary goes to the operator.

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::python::{
    bpf::OwnBpf,
    find,
    profile::{Format, Sampler},
};

/// `inferscope profile`: `duration` seconds (at least 0.1) at `rate` samples per second (1 to
/// 10,000), in `format` (by default from the output file's extension).
pub fn run(pid: u32, duration: f64, rate: u64, output: Option<PathBuf>, format: Option<Format>) -> ExitCode {
    let format = format.unwrap_or_else(|| Format::from_path(output.as_deref()));
    let o = ProfileOptions {
        pid,
        duration: Duration::from_secs_f64(duration.max(0.1)),
        rate: rate.clamp(1, 10_000),
        output,
        format,
    };
    super::summary(sample(&o))
}

pub struct ProfileOptions {
    pub pid: u32,
    pub duration: Duration,
    /// Samples per second per thread.
    pub rate: u64,
    /// The profile goes here (standard output when None).
    pub output: Option<PathBuf>,
    pub format: Format,
}

/// Samples for `o.duration`; returns a summary for the operator.
pub fn sample(o: &ProfileOptions) -> Result<String> {
    let interp = find(o.pid)?;
    let version = interp.version_string();
    let mut bpf = OwnBpf::open(4 << 20)?;
    let mut sampler = Sampler::new(o.rate, &mut bpf)?;
    sampler.add(interp, &mut bpf)?;
    let start = Instant::now();
    while start.elapsed() < o.duration {
        sampler.poll(&mut bpf);
        bpf.drain(|ev| sampler.on_event(ev));
        if !crate::process::procfs::exists(o.pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bpf.drain(|ev| sampler.on_event(ev));
    let prof = sampler.take(o.pid).context("the process")?;
    let title = format!("pid {}: CPython {version}, {} samples at {} Hz", o.pid, prof.samples, o.rate);
    let bytes = prof.render(o.format, &title, o.rate);
    let mut out: Box<dyn std::io::Write> = match &o.output {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    out.write_all(&bytes)?;
    out.flush()?;
    let mut summary = format!(
        "inferscope: pid {}: CPython {version}: {} samples of {} thread(s) in {:.1} s ({} outside Python code{}); most on top:\n",
        o.pid,
        prof.samples,
        prof.threads,
        start.elapsed().as_secs_f64(),
        prof.empty,
        if bpf.undecodable > 0 { format!(", {} undecodable records", bpf.undecodable) } else { String::new() },
    );
    for (f, pct) in prof.top(10) {
        summary += &format!("  {pct:5.1}%  {f}\n");
    }
    Ok(summary)
}
