//! Prometheus families of the Python layer's function timers: a duration histogram and a call
//! count per process, function and mode (how the numbers were obtained), and the calls that
//! left without a return.

use anyhow::Result;
use prometheus::{HistogramVec, IntCounterVec, Registry};

use super::common::{counter, hist};
use crate::python::timers::{CallRecord, TimerSpec};

/// Python function durations: tens of microseconds to tens of seconds.
const BUCKETS: &[f64] = &[
    2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct PythonMetrics {
    duration: HistogramVec,
    calls: IntCounterVec,
    unfinished: IntCounterVec,
}

impl PythonMetrics {
    pub fn new(reg: &Registry) -> Result<Self> {
        let l = &["pid", "function", "mode"];
        Ok(Self {
            duration: hist(
                reg,
                "inferscope_python_function_duration_seconds",
                "Duration of calls of timed Python functions (entry to return), by process, function \
                 (module:qualname as configured) and mode (breakpoint: exact, from hardware breakpoints)",
                BUCKETS,
                l,
            )?,
            calls: counter(
                reg,
                "inferscope_python_function_calls_total",
                "Calls of timed Python functions (returned ones; entered ones in mode breakpoint_entry)",
                l,
            )?,
            unfinished: counter(
                reg,
                "inferscope_python_function_unfinished_total",
                "Calls of timed Python functions seen leaving without a return instruction (an exception), per process",
                &["pid"],
            )?,
        })
    }

    pub fn record(&self, r: &CallRecord, spec: &TimerSpec) {
        let pid = r.pid.to_string();
        let v = [pid.as_str(), spec.symbol.as_str(), r.mode.label()];
        self.calls.with_label_values(&v).inc();
        if let Some(end) = r.end_ns {
            self.duration.with_label_values(&v).observe(end.saturating_sub(r.start_ns) as f64 / 1e9);
        }
    }

    /// Sets the unfinished count of a process (a running total kept by the timers).
    pub fn unfinished(&self, pid: u32, total: u64) {
        let c = self.unfinished.with_label_values(&[&pid.to_string()]);
        let have = c.get();
        if total > have {
            c.inc_by(total - have);
        }
    }

    /// Drops the series of a process that is gone: its (function, mode) label values.
    pub fn forget<F: AsRef<str>>(&self, pid: u32, series: impl IntoIterator<Item = (F, &'static str)>) {
        let p = pid.to_string();
        for (f, m) in series {
            let _ = self.calls.remove_label_values(&[p.as_str(), f.as_ref(), m]);
            let _ = self.duration.remove_label_values(&[p.as_str(), f.as_ref(), m]);
        }
        let _ = self.unfinished.remove_label_values(&[&p]);
    }
}

/// Gauges of the engine's live state, read from its objects (python/state.rs).
pub struct EngineStateMetrics {
    requests: prometheus::IntGaugeVec,
    kv_blocks: prometheus::IntGaugeVec,
}

impl EngineStateMetrics {
    pub fn new(reg: &Registry) -> Result<Self> {
        let requests = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "inferscope_engine_state_requests",
                "Requests in the engine scheduler's queues (queue=running|waiting), read from the engine's memory",
            ),
            &["pid", "engine", "queue"],
        )?;
        reg.register(Box::new(requests.clone()))?;
        let kv_blocks = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "inferscope_engine_state_kv_cache_blocks",
                "KV-cache blocks of the engine's block pool (state=free|total), read from the engine's memory",
            ),
            &["pid", "engine", "state"],
        )?;
        reg.register(Box::new(kv_blocks.clone()))?;
        Ok(Self { requests, kv_blocks })
    }

    pub fn record(&self, s: &crate::python::state::EngineState) {
        let pid = s.pid.to_string();
        for (name, v) in &s.values {
            let (family, label) = match *name {
                "running_requests" => (&self.requests, "running"),
                "waiting_requests" => (&self.requests, "waiting"),
                "kv_cache_free_blocks" => (&self.kv_blocks, "free"),
                "kv_cache_total_blocks" => (&self.kv_blocks, "total"),
                _ => continue,
            };
            match v {
                Some(v) => family.with_label_values(&[pid.as_str(), s.engine, label]).set(*v),
                // A value no longer read is not left standing at its last reading.
                None => {
                    let _ = family.remove_label_values(&[pid.as_str(), s.engine, label]);
                }
            }
        }
    }

    pub fn forget(&self, pid: u32) {
        let p = pid.to_string();
        for engine in ["vllm", "sglang"] {
            for q in ["running", "waiting"] {
                let _ = self.requests.remove_label_values(&[p.as_str(), engine, q]);
            }
            for st in ["free", "total"] {
                let _ = self.kv_blocks.remove_label_values(&[p.as_str(), engine, st]);
            }
        }
    }
}

/// Launches by the Python function that made them (device layer + Python layer).
pub struct SiteMetrics {
    launches: IntCounterVec,
}

impl SiteMetrics {
    pub fn new(reg: &Registry) -> Result<Self> {
        Ok(Self {
            launches: counter(
                reg,
                "inferscope_device_python_site_launches_total",
                "Kernel and graph launches by the innermost Python function of the launching thread (qualname (file:line); \
                 past 200 distinct sites, `other`)",
                &["pid", "site"],
            )?,
        })
    }

    pub fn record(&self, pid: u32, site: &str) {
        self.launches.with_label_values(&[pid.to_string().as_str(), site]).inc();
    }

    pub fn forget<'a>(&self, pid: u32, sites: impl IntoIterator<Item = &'a String>) {
        let p = pid.to_string();
        for s in sites {
            let _ = self.launches.remove_label_values(&[p.as_str(), s.as_str()]);
        }
    }
}
