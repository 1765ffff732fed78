//! The device layer: uprobes on the accelerator runtimes (CUDA runtime and driver, NCCL,
//! Ascend) found in each traced process's libraries (device/manager.rs attaches them, from
//! scans on blocking threads, again when a library is loaded later). Runtime and driver call
//! records become device calls (device/tracker.rs); each call waits in the correlation stage
//! for the engine step that claims it. Out: [`Output::DeviceCalls`], every `--device-interval`
//! one [`Output::DeviceInterval`] per process, probe counts and hits, probes switched off by
//! the overhead budget.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{Cx, Layer, Note};
use crate::{
    bpf::Probes,
    cli::RunOptions,
    clock,
    device::{
        DeviceRecord, IntervalReport, catalog,
        manager::{self, DeviceManager, DeviceOptions, ScanJob, ScanResult},
    },
    events::Event,
    output::{Family, Health, Output},
    python::Interpreter,
};

pub struct DeviceLayer {
    dm: DeviceManager,
    recs: Vec<DeviceRecord>,
    interval: Duration,
    last_interval: std::time::Instant,
    last_account: std::time::Instant,
    /// Library scans done on blocking threads come back here.
    scan_tx: UnboundedSender<ScanResult>,
    scan_rx: UnboundedReceiver<ScanResult>,
}

impl DeviceLayer {
    /// None with `--no-device`, or when the kernel did not load the device programs.
    pub fn new(o: &RunOptions, probes: &mut Probes) -> Result<Option<Self>> {
        if o.no_device {
            return Ok(None);
        }
        let (groups, symbols) =
            DeviceOptions::parse_probes(&o.device_probes).map_err(|e| anyhow::anyhow!("--device-probes: {e}"))?;
        for n in &o.no_device_probe {
            if catalog::Group::parse(n).is_none() && catalog::lookup_symbol(n).is_none() {
                bail!("--no-device-probe {n}: not a device probe group or function inferscope knows (see --help)");
            }
        }
        let opts = DeviceOptions {
            groups,
            symbols,
            off: o.no_device_probe.iter().cloned().collect(),
            rate_limit: o.device_rate_limit,
            overhead_budget: o.device_overhead_budget.max(0.0),
            top_kernels: o.device_top_kernels.max(1),
        };
        if !probes.has_device() {
            return Ok(None);
        }
        let cost = manager::calibrate(probes, inferscope_common::MAX_DEVICE_PROBES - 1);
        eprintln!(
            "inferscope: device probes: {}; attached {} (a probe hit costs {:.1} us here, {:.1} us with its return probe)",
            opts.describe(),
            if probes.device_multi() { "with one uprobe_multi link per library" } else { "one perf event each" },
            cost.entry_ns / 1e3,
            cost.pair_ns / 1e3
        );
        let (scan_tx, scan_rx) = unbounded_channel();
        Ok(Some(Self {
            dm: DeviceManager::new(opts, cost),
            recs: Vec::new(),
            interval: Duration::from_secs_f64(o.device_interval.max(0.1)),
            last_interval: std::time::Instant::now(),
            last_account: std::time::Instant::now(),
            scan_tx,
            scan_rx,
        }))
    }

    /// Hands the calls the device tracker committed to the correlation stage (they wait for
    /// their engine step) and the sinks (the buffer is kept).
    fn commit(&mut self, cx: &mut Cx) {
        if !self.recs.is_empty() {
            cx.correlate.device_calls(&self.recs);
            cx.emit(Output::DeviceCalls(&self.recs));
            self.recs.clear();
        }
    }

    /// Looks at a process's libraries for runtime symbols on a blocking thread; the result
    /// comes back on `scan_rx`.
    fn spawn_scan(&self, job: ScanJob) {
        let tx = self.scan_tx.clone();
        tokio::task::spawn_blocking(move || drop(tx.send(job.run())));
    }

    fn interval_line(
        &self,
        cx: &mut Cx,
        r: &IntervalReport,
        probes: (usize, &[String]),
        disabled: &[String],
        last: bool,
    ) {
        let seconds = self.last_interval.elapsed().as_secs_f64();
        let top_kernels = self.dm.opts.top_kernels;
        cx.emit(Output::DeviceInterval { report: r, seconds, top_kernels, probes, disabled, last });
    }

    /// Overhead budget and probe hits every second; interval lines every --device-interval
    /// (or now, with `force`).
    fn account(&mut self, cx: &mut Cx, force: bool) {
        let elapsed = self.last_account.elapsed().as_secs_f64();
        self.last_account = std::time::Instant::now();
        let (hits, off) = self.dm.account(cx.probes, elapsed);
        for (pid, f, n) in &hits {
            cx.emit(Output::DeviceProbeHits { pid: *pid, function: f, hits: *n });
        }
        for b in &off {
            cx.emit(Output::DeviceProbeOff { pid: b.pid, function: &b.symbol });
            cx.emit(Output::DeviceProbes { pid: b.pid, attached: self.dm.attached(b.pid).0 });
        }
        if !force && self.last_interval.elapsed() < self.interval {
            return;
        }
        self.dm.tracker.flush_held(u64::MAX, 0, &mut self.recs);
        let reports = self.dm.tracker.take_intervals();
        // (probes attached, their libraries) and probes switched off, per reported process.
        type Meta = ((usize, Vec<String>), Vec<String>);
        let meta: Vec<Meta> = reports.iter().map(|r| (self.dm.attached(r.pid), self.dm.disabled(r.pid))).collect();
        self.commit(cx);
        for (r, ((n, libs), dis)) in reports.iter().zip(meta) {
            self.interval_line(cx, r, (n, &libs), &dis, false);
        }
        self.last_interval = std::time::Instant::now();
    }
}

impl Layer for DeviceLayer {
    fn name(&self) -> &'static str {
        "device"
    }

    fn families(&self) -> Vec<Family> {
        vec![Family::Device { top_kernels: self.dm.opts.top_kernels }]
    }

    fn process_added(&mut self, _cx: &mut Cx, pid: u32, _interp: Option<&Interpreter>) {
        if let Some(job) = self.dm.add_process(pid) {
            self.spawn_scan(job);
        }
    }

    fn process_gone(&mut self, cx: &mut Cx, pid: u32, _ts_ns: u64) {
        let (n, libs) = self.dm.attached(pid);
        let disabled = self.dm.disabled(pid);
        self.dm.remove_process(cx.probes, pid);
        let mut recs = Vec::new();
        let last = self.dm.tracker.process_gone(pid, &mut recs);
        cx.emit(Output::DeviceCalls(&recs));
        if let Some(r) = last {
            self.interval_line(cx, &r, (n, &libs), &disabled, true);
        }
    }

    fn on_event(&mut self, cx: &mut Cx, ev: &Event) {
        match ev {
            Event::ProcMmap { tgid, .. } => self.dm.mark_dirty(*tgid),
            Event::Device(c) => {
                self.dm.tracker.on_call(c, &mut self.recs);
                self.commit(cx);
            }
            Event::DeviceName { tgid, probe, handle, name } => {
                self.dm.tracker.on_name(*tgid, *probe, *handle, name.clone());
            }
            _ => {}
        }
    }

    fn on_note(&mut self, cx: &mut Cx, note: &Note) {
        // What the device did for a step: its calls up to the step's outputs, driver calls
        // held for a runtime call that may still come included.
        if let Note::EngineEvents { steps: true } = note {
            self.dm.tracker.flush_held(u64::MAX, 0, &mut self.recs);
            self.commit(cx);
        }
    }

    /// Probes a finished scan found are attached; libraries loaded since the last look are
    /// scanned; driver calls no runtime call claimed within 50 ms go out on their own.
    fn drain(&mut self, cx: &mut Cx) {
        while let Ok(r) = self.scan_rx.try_recv() {
            let pid = r.pid();
            self.dm.apply(cx.probes, r);
            cx.emit(Output::DeviceProbes { pid, attached: self.dm.attached(pid).0 });
        }
        for job in self.dm.dirty_jobs() {
            self.spawn_scan(job);
        }
        // A driver call is held until the next call on its thread (it may be the inside of a
        // runtime call); 50 ms later it was not.
        self.dm.tracker.flush_held(clock::monotonic_ns(), 50_000_000, &mut self.recs);
        self.commit(cx);
    }

    fn tick(&mut self, cx: &mut Cx) {
        self.account(cx, false);
    }

    fn finish(&mut self, cx: &mut Cx) {
        self.account(cx, true);
    }

    fn tracepoints(&self) -> &'static [&'static str] {
        &[crate::bpf::TP_MMAP]
    }

    fn groups(&self) -> Vec<(&'static str, bool)> {
        catalog::Group::ALL.iter().map(|g| (g.name(), self.dm.opts.groups.contains(g))).collect()
    }

    /// A group on: every process's libraries are looked at again on the next drain (what is
    /// attached stays). Off: its probes are detached now.
    fn set_group(&mut self, cx: &mut Cx, group: &str, on: bool) -> Result<String> {
        let Some(g) = catalog::Group::parse(group) else {
            bail!(
                "no device probe group `{group}`: the groups are {}",
                catalog::Group::ALL.map(catalog::Group::name).join(", ")
            )
        };
        let detached = self.dm.set_group(cx.probes, g, on);
        Ok(if on {
            format!("device.{group} on: probes attach as the traced processes' libraries are looked at again")
        } else {
            format!("device.{group} off: {detached} probe(s) detached")
        })
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let h = self.dm.health();
        let mut v = vec![("probes_attached", h.probes_attached), ("attach_errors", h.attach_errors)];
        let by = self.dm.attached_by_group();
        for g in catalog::Group::ALL {
            v.push((probes_of(g), by.get(&g).copied().unwrap_or(0) as u64));
        }
        v
    }

    fn health(&self, h: &mut Health) {
        h.device = self.dm.health();
    }
}

/// The status counter name of a probe group's attached probes.
fn probes_of(g: catalog::Group) -> &'static str {
    use catalog::Group::*;
    match g {
        Launch => "probes_launch",
        Graph => "probes_graph",
        Copy => "probes_copy",
        Sync => "probes_sync",
        Alloc => "probes_alloc",
        Collective => "probes_collective",
        Names => "probes_names",
        Ops => "probes_ops",
    }
}
