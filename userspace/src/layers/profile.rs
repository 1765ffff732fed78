//! The rolling-profile layer: every traced CPython sampled at `--python-profile-rate`
//! (python/profile.rs `Sampler`, its program in the daemon's one BPF object, its samples on
//! the daemon's ring buffer); every `--python-profile-window`, one window per process out
//! as [`Output::ProfileWindow`], written as pprof and SVG with `--python-profile-dir` (rendered
//! and written on a thread of its own, not on the loop).

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
        profile::{Format, Profile, Sampler},
    },
};

pub struct ProfileLayer {
    sampler: Sampler,
    rate: u64,
    window: Duration,
    dir: Option<PathBuf>,
    last: std::time::Instant,
    /// Renders and writes the files (with `--python-profile-dir`).
    writer: Option<Writer>,
}

/// One window's files to render and write.
struct WriteJob {
    profile: Profile,
    title: String,
    rate: u64,
    pb: PathBuf,
    svg: PathBuf,
}

/// Renders (pprof, SVG) and writes profile files on a thread of its own: a flame graph of a deep
/// profile takes tens of milliseconds, a slow disk longer, and the loop drains the ring buffer.
/// A few windows may wait; past them a window's files are skipped, and said.
struct Writer {
    tx: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    skipped: u64,
}

impl Writer {
    fn start() -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(4);
        let thread = std::thread::Builder::new()
            .name("profile-writer".into())
            .spawn(move || {
                for j in rx {
                    let r = write_replacing(&j.pb, &j.profile.render(Format::Pprof, &j.title, j.rate))
                        .and_then(|_| write_replacing(&j.svg, &j.profile.render(Format::Svg, &j.title, j.rate)));
                    if let Err(e) = r {
                        warn!("writing the profile {}: {e}", j.pb.display());
                    }
                }
            })
            .context("starting the profile writer thread")?;
        Ok(Self { tx: Some(tx), thread: Some(thread), skipped: 0 })
    }

    /// Queues a window's files; false when the writer is behind (the window is skipped).
    fn queue(&mut self, job: WriteJob) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.skipped += 1;
                if self.skipped == 1 {
                    eprintln!(
                        "inferscope: warning: the profile files are written slower than windows close; a window's \
                         files were skipped (its python_profile line still goes out)"
                    );
                }
                false
            }
        }
    }

    /// Waits for the files queued so far (at the stop).
    fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
                let writer = if o.python_profile_dir.is_some() { Some(Writer::start()?) } else { None };
                Ok(Some(Self {
                    sampler,
                    rate: o.python_profile_rate,
                    window: Duration::from_secs_f64(o.python_profile_window.max(1.0)),
                    dir: o.python_profile_dir.clone(),
                    last: std::time::Instant::now(),
                    writer,
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
            if let (Some(dir), Some(w)) = (&self.dir, &mut self.writer) {
                let title = format!(
                    "pid {pid}: CPython {}, {} samples at {} Hz in {:.0} s",
                    s.version(pid).unwrap_or_default(),
                    p.samples,
                    self.rate,
                    p.duration_ns as f64 / 1e9
                );
                let pb = dir.join(format!("pid-{pid}.pb"));
                let svg = dir.join(format!("pid-{pid}.svg"));
                let names = (pb.display().to_string(), svg.display().to_string());
                if w.queue(WriteJob { profile: p.clone(), title, rate: self.rate, pb, svg }) {
                    files = Some(names);
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
        if let Some(w) = &mut self.writer {
            w.close();
        }
    }
}

/// Writes `path` whole or not at all (a reader never sees half a profile).
fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
