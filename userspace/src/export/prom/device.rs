//! Prometheus families of the device layer: kernel and graph launches, host-side launch cost,
//! launch gaps, copies, synchronisation waits, allocations and collectives, per process, runtime
//! API and stream; kernel launches by name for the top kernels of each process; and the probes'
//! own hits, rate-limited calls and budget back-offs.

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::common::{counter, hist};
use crate::device::{DeviceRecord, IntervalReport, summary::What};

/// Host time of launch and copy calls: microseconds to tens of milliseconds.
const CALL_BUCKETS: &[f64] =
    &[1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2];
/// Waits and collectives: microseconds to seconds.
const WAIT_BUCKETS: &[f64] =
    &[1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub struct DeviceMetrics {
    launches: IntCounterVec,
    launch_duration: HistogramVec,
    launch_gap: HistogramVec,
    copy_bytes: IntCounterVec,
    copies: IntCounterVec,
    copy_duration: HistogramVec,
    sync_wait: HistogramVec,
    allocs: IntCounterVec,
    alloc_bytes: IntCounterVec,
    collectives: IntCounterVec,
    collective_bytes: IntCounterVec,
    collective_duration: HistogramVec,
    errors: IntCounterVec,
    kernel_launches: IntCounterVec,
    kernel_launch_seconds: prometheus::CounterVec,
    probe_hits: IntCounterVec,
    probes_attached: IntGaugeVec,
    probes_disabled: IntCounterVec,
    /// Kernel names given their own label, per process (sticky: a series, once made, stays).
    labelled: HashMap<u32, BTreeSet<String>>,
    top: usize,
}

impl DeviceMetrics {
    pub fn new(reg: &Registry, top_kernels: usize) -> Result<Self> {
        let pas = &["pid", "api", "stream"];
        let pa = &["pid", "api"];
        Ok(Self {
            launches: counter(
                reg,
                "inferscope_device_launches_total",
                "Kernel launches (kind=kernel) and graph launches (kind=graph) the process asked of its accelerator.",
                &["pid", "api", "stream", "kind"],
            )?,
            launch_duration: hist(
                reg,
                "inferscope_device_launch_duration_seconds",
                "Host time inside one launch call (enqueueing; the kernel runs later).",
                CALL_BUCKETS,
                &["pid", "api", "kind"],
            )?,
            launch_gap: hist(
                reg,
                "inferscope_device_launch_gap_seconds",
                "Time between the end of one launch call and the start of the next on the same stream (up to 1 s): where the host keeps the device waiting.",
                WAIT_BUCKETS,
                pas,
            )?,
            copy_bytes: counter(
                reg,
                "inferscope_device_copy_bytes_total",
                "Bytes of asynchronous copies, by direction (h2d, d2h, d2d, h2h, default).",
                &["pid", "api", "direction"],
            )?,
            copies: counter(
                reg,
                "inferscope_device_copies_total",
                "Asynchronous copies, by direction.",
                &["pid", "api", "direction"],
            )?,
            copy_duration: hist(
                reg,
                "inferscope_device_copy_duration_seconds",
                "Host time inside one copy call.",
                CALL_BUCKETS,
                &["pid", "api", "direction"],
            )?,
            sync_wait: hist(
                reg,
                "inferscope_device_sync_wait_seconds",
                "Time a host thread waited in a synchronisation call (stream, device or event).",
                WAIT_BUCKETS,
                &["pid", "api", "kind"],
            )?,
            allocs: counter(reg, "inferscope_device_allocs_total", "Device memory allocation calls.", pa)?,
            alloc_bytes: counter(
                reg,
                "inferscope_device_alloc_bytes_total",
                "Bytes asked for by device memory allocation calls.",
                pa,
            )?,
            collectives: counter(
                reg,
                "inferscope_device_collectives_total",
                "Collective operations (NCCL, HCCL) by operation.",
                &["pid", "api", "op"],
            )?,
            collective_bytes: counter(
                reg,
                "inferscope_device_collective_bytes_total",
                "Bytes of collective operations (element count times element size).",
                &["pid", "api", "op"],
            )?,
            collective_duration: hist(
                reg,
                "inferscope_device_collective_duration_seconds",
                "Host time inside one collective call (enqueueing; with blocking communicators, the whole operation).",
                WAIT_BUCKETS,
                &["pid", "api", "op"],
            )?,
            errors: counter(reg, "inferscope_device_call_errors_total", "Runtime calls that returned an error.", pa)?,
            kernel_launches: counter(
                reg,
                "inferscope_device_kernel_launches_total",
                "Kernel launches by kernel name (the process's top kernels by launches; the rest are `other`).",
                &["pid", "kernel"],
            )?,
            kernel_launch_seconds: {
                let c = prometheus::CounterVec::new(
                    Opts::new(
                        "inferscope_device_kernel_launch_seconds_total",
                        "Host time inside launch calls by kernel name.",
                    ),
                    &["pid", "kernel"],
                )?;
                reg.register(Box::new(c.clone()))?;
                c
            },
            probe_hits: counter(
                reg,
                "inferscope_device_probe_hits_total",
                "Calls of probed runtime functions (each one costs a uprobe hit).",
                &["pid", "function"],
            )?,
            probes_attached: {
                let g = IntGaugeVec::new(
                    Opts::new("inferscope_device_probes_attached", "Device probes attached, per process."),
                    &["pid"],
                )?;
                reg.register(Box::new(g.clone()))?;
                g
            },
            probes_disabled: counter(
                reg,
                "inferscope_device_probes_disabled_total",
                "Device probes switched off by the overhead budget.",
                &["pid", "function"],
            )?,
            labelled: HashMap::new(),
            top: top_kernels,
        })
    }

    pub fn record(&self, r: &DeviceRecord) {
        let pid = r.pid.to_string();
        let api = r.api.name();
        let s = |ns: u64| ns as f64 / 1e9;
        if r.sample.error {
            self.errors.with_label_values(&[&pid, api]).inc();
        }
        match r.sample.what {
            What::Launch { graph, host_ns, gap_ns } => {
                let kind = if graph { "graph" } else { "kernel" };
                self.launches.with_label_values(&[&pid, api, &r.stream, kind]).inc();
                if let Some(h) = host_ns {
                    self.launch_duration.with_label_values(&[&pid, api, kind]).observe(s(h));
                }
                if let Some(g) = gap_ns {
                    self.launch_gap.with_label_values(&[&pid, api, &r.stream]).observe(s(g));
                }
            }
            What::Copy { dir, bytes, ns } => {
                let l = [pid.as_str(), api, dir.name()];
                self.copies.with_label_values(&l).inc();
                self.copy_bytes.with_label_values(&l).inc_by(bytes);
                self.copy_duration.with_label_values(&l).observe(s(ns));
            }
            What::Sync { kind, ns } => {
                self.sync_wait.with_label_values(&[&pid, api, kind.name()]).observe(s(ns));
            }
            What::Alloc { bytes } => {
                self.allocs.with_label_values(&[&pid, api]).inc();
                self.alloc_bytes.with_label_values(&[&pid, api]).inc_by(bytes);
            }
            What::Collective { bytes, ns } => {
                let l = [pid.as_str(), api, r.op.unwrap_or("unknown")];
                self.collectives.with_label_values(&l).inc();
                self.collective_bytes.with_label_values(&l).inc_by(bytes);
                self.collective_duration.with_label_values(&l).observe(s(ns));
            }
        }
    }

    /// Kernel launches of an interval, by name: the process's top kernels keep their own label
    /// (up to twice `--device-top-kernels` names over its life), the rest add to `other`.
    pub fn interval(&mut self, r: &IntervalReport) {
        let pid = r.pid.to_string();
        let set = self.labelled.entry(r.pid).or_default();
        for (name, _, _) in r.kernels.top(self.top) {
            if set.len() < self.top * 2 {
                set.insert(name.to_string());
            }
        }
        for (name, (n, ns)) in &r.kernels.by_name {
            let label = if set.contains(name) { name.as_str() } else { "other" };
            self.kernel_launches.with_label_values(&[&pid, label]).inc_by(*n);
            self.kernel_launch_seconds.with_label_values(&[&pid, label]).inc_by(*ns as f64 / 1e9);
        }
        if r.kernels.overflow.0 > 0 {
            self.kernel_launches.with_label_values(&[&pid, "other"]).inc_by(r.kernels.overflow.0);
        }
    }

    pub fn probe_hits(&self, pid: u32, function: &str, n: u64) {
        self.probe_hits.with_label_values(&[&pid.to_string(), function]).inc_by(n);
    }

    pub fn attached(&self, pid: u32, n: usize) {
        self.probes_attached.with_label_values(&[&pid.to_string()]).set(n as i64);
    }

    pub fn disabled(&self, pid: u32, function: &str) {
        self.probes_disabled.with_label_values(&[&pid.to_string(), function]).inc();
    }

    /// A process is gone: its series go with it (pids are not reused soon, but labels must not
    /// pile up on a long-running node).
    pub fn forget(&mut self, pid: u32) {
        self.labelled.remove(&pid);
        let p = pid.to_string();
        let _ = self.probes_attached.remove_label_values(&[&p]);
    }
}
