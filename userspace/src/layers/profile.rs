//! The rolling-profile layer: every traced CPython sampled at `--python-profile-rate`
//! (python/profile.rs `Sampler`, its program in the daemon's one BPF object, its samples on
//! the daemon's ring buffer); every `--python-profile-window`, one window per process out
//! as [`Output::ProfileWindow`], written as pprof and SVG with `--python-profile-dir`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use log::warn;

use super::{Cx, Layer};
use crate::{
    bpf::Probes,
    cli::RunOptions,
    events::Event,
    output::Output,
    python::{
        Interpreter,
        profile::{Format, Sampler},
    },
};

pub struct ProfileLayer {
    sampler: Sampler,
    rate: u64,
    window: Duration,
    dir: Option<PathBuf>,
    last: std::time::Instant,
}

impl ProfileLayer {
    /// None with `--python-profile-rate 0`, or (said) when the sampler cannot start.
    pub fn new(o: &RunOptions, probes: &mut Probes) -> Result<Option<Self>> {
        if o.python_profile_rate == 0 {
            return Ok(None);
        }
        if let Some(dir) = &o.python_profile_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("--python-profile-dir {}", dir.display()))?;
        }
        match Sampler::new(o.python_profile_rate, probes) {
            Ok(sampler) => {
                eprintln!(
                    "inferscope: rolling Python profile: {} Hz per thread, {:.0} s windows{}",
                    o.python_profile_rate,
                    o.python_profile_window,
                    o.python_profile_dir.as_ref().map_or(String::new(), |d| format!(", written to {}", d.display()))
                );
                Ok(Some(Self {
                    sampler,
                    rate: o.python_profile_rate,
                    window: Duration::from_secs_f64(o.python_profile_window.max(1.0)),
                    dir: o.python_profile_dir.clone(),
                    last: std::time::Instant::now(),
                }))
            }
            Err(e) => {
                eprintln!("inferscope: warning: rolling Python profile unavailable ({e:#})");
                Ok(None)
            }
        }
    }

    /// Samples in; every window (or at the stop), one window per process out.
    fn windows(&mut self, cx: &mut Cx, force: bool) {
        let s = &mut self.sampler;
        s.poll(cx.probes);
        if !force && self.last.elapsed() < self.window {
            return;
        }
        self.last = std::time::Instant::now();
        for pid in s.pids() {
            let Some(p) = s.take(pid) else { continue };
            if p.samples == 0 {
                continue;
            }
            let mut files = None;
            if let Some(dir) = &self.dir {
                let title = format!(
                    "pid {pid}: CPython {}, {} samples at {} Hz in {:.0} s",
                    s.version(pid).unwrap_or_default(),
                    p.samples,
                    self.rate,
                    p.duration_ns as f64 / 1e9
                );
                let pb = dir.join(format!("pid-{pid}.pb"));
                let svg = dir.join(format!("pid-{pid}.svg"));
                match write_replacing(&pb, &p.render(Format::Pprof, &title, self.rate))
                    .and_then(|_| write_replacing(&svg, &p.render(Format::Svg, &title, self.rate)))
                {
                    Ok(()) => files = Some((pb.display().to_string(), svg.display().to_string())),
                    Err(e) => warn!("writing the profile of pid {pid} in {}: {e}", dir.display()),
                }
            }
            let files = files.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
            cx.emit(Output::ProfileWindow { pid, profile: &p, files });
        }
    }
}

impl Layer for ProfileLayer {
    fn name(&self) -> &'static str {
        "profile"
    }

    fn wants_python(&self) -> bool {
        true
    }

    fn process_added(&mut self, cx: &mut Cx, pid: u32, interp: Option<&Interpreter>) {
        if let Some(i) = interp
            && let Err(e) = self.sampler.add(i.clone(), cx.probes)
        {
            eprintln!("inferscope: pid {pid}: not profiled: {e:#}");
        }
    }

    fn process_gone(&mut self, cx: &mut Cx, pid: u32, _ts_ns: u64) {
        self.sampler.remove(pid, cx.probes);
    }

    fn on_event(&mut self, _cx: &mut Cx, ev: &Event) {
        self.sampler.on_event(ev);
    }

    fn drain(&mut self, cx: &mut Cx) {
        self.windows(cx, false);
    }

    fn finish(&mut self, cx: &mut Cx) {
        self.windows(cx, true);
    }
}

/// Writes `path` whole or not at all (a reader never sees half a profile).
fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
