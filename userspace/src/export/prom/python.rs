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

/// ms_service_metric's TIMER_BUCKETS (its `type: timer` histograms).
const MS_TIMER_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.15, 0.2, 0.25, 0.3,
    0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.5, 4.0, 4.5,
    5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 90.0, 120.0, 180.0, 300.0,
];

pub struct PythonMetrics {
    duration: HistogramVec,
    calls: IntCounterVec,
    unfinished: IntCounterVec,
    /// With --ms-service-metric-names: the timer file's `name`d metrics under ms_service_metric's
    /// names (`vllm_profiling_<name>`), made as they are first seen.
    profiling: Option<Profiling>,
}

struct Profiling {
    registry: Registry,
    timers: std::collections::HashMap<String, Option<HistogramVec>>,
    counters: std::collections::HashMap<String, Option<IntCounterVec>>,
    /// Each process's data-parallel rank label (`-1` outside a data-parallel engine).
    dp: std::collections::HashMap<u32, String>,
}

impl PythonMetrics {
    /// `profiling_names`: also ms_service_metric's names for the metrics the timer file names.
    pub fn new(reg: &Registry, profiling_names: bool) -> Result<Self> {
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
            profiling: profiling_names.then(|| Profiling {
                registry: reg.clone(),
                timers: Default::default(),
                counters: Default::default(),
                dp: Default::default(),
            }),
        })
    }

    pub fn record(&mut self, r: &CallRecord, spec: &TimerSpec) {
        let pid = r.pid.to_string();
        let v = [pid.as_str(), spec.symbol.as_str(), r.mode.label()];
        self.calls.with_label_values(&v).inc();
        let seconds = r.end_ns.map(|end| end.saturating_sub(r.start_ns) as f64 / 1e9);
        if let Some(s) = seconds {
            self.duration.with_label_values(&v).observe(s);
        }
        if let Some(p) = &mut self.profiling {
            p.record(r.pid, spec, seconds);
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
    pub fn forget<F: AsRef<str>>(&mut self, pid: u32, series: impl IntoIterator<Item = (F, &'static str)>) {
        if let Some(prof) = &mut self.profiling {
            prof.dp.remove(&pid);
        }
        let p = pid.to_string();
        for (f, m) in series {
            let _ = self.calls.remove_label_values(&[p.as_str(), f.as_ref(), m]);
            let _ = self.duration.remove_label_values(&[p.as_str(), f.as_ref(), m]);
        }
        let _ = self.unfinished.remove_label_values(&[&p]);
    }
}

impl Profiling {
    fn record(&mut self, pid: u32, spec: &TimerSpec, seconds: Option<f64>) {
        use crate::python::timers::MetricKind;
        let dp = self
            .dp
            .entry(pid)
            .or_insert_with(|| {
                crate::process::procfs::dp_index(pid).map_or_else(|| "-1".to_string(), |d| d.to_string())
            })
            .clone();
        let labels = [dp.as_str(), "mixed"];
        for m in &spec.metrics {
            let Some(name) = m.name.as_deref() else { continue };
            // ms_service_metric's own sanitising: `-` becomes `_`; `:` stays.
            let full = format!("vllm_profiling_{}", name.replace('-', "_"));
            let help = format!("{} ({}; ms_service_metric's name, inferscope's timer)", spec.symbol, name);
            match m.kind {
                MetricKind::Timer => {
                    let Some(s) = seconds else { continue };
                    let reg = &self.registry;
                    let h = self
                        .timers
                        .entry(full.clone())
                        .or_insert_with(|| hist(reg, &full, &help, MS_TIMER_BUCKETS, &["dp", "role"]).ok());
                    if let Some(h) = h {
                        h.with_label_values(&labels).observe(s);
                    }
                }
                MetricKind::Counter => {
                    let reg = &self.registry;
                    let name = format!("{full}_total");
                    let c = self
                        .counters
                        .entry(name.clone())
                        .or_insert_with(|| counter(reg, &name, &help, &["dp", "role"]).ok());
                    if let Some(c) = c {
                        c.with_label_values(&labels).inc();
                    }
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::timers::{Mode, parse_config};

    #[test]
    fn named_timers_are_served_under_ms_service_metric_names() {
        let reg = Registry::new();
        let mut m = PythonMetrics::new(&reg, true).unwrap();
        let specs = parse_config(
            "- symbol: a.b:C.timed\n  metrics: [{name: scheduler:duration, type: timer}]\n\
             - symbol: a.b:C.counted\n  metrics: [{name: add-request, type: counter}]\n\
             - symbol: a.b:C.plain\n",
        )
        .unwrap();
        let call = |spec, end| CallRecord {
            pid: u32::MAX,
            tid: 1,
            spec,
            mode: Mode::Breakpoint,
            start_ns: 1_000_000,
            end_ns: end,
            depth: 0,
        };
        m.record(&call(0, Some(3_000_000)), &specs[0]);
        m.record(&call(0, Some(5_000_000)), &specs[0]);
        m.record(&call(1, None), &specs[1]);
        m.record(&call(2, Some(2_000_000)), &specs[2]);
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let v = |prefix: &str| -> Option<f64> {
            text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        // No such process: not in a data-parallel engine.
        assert_eq!(v("vllm_profiling_scheduler:duration_count{dp=\"-1\",role=\"mixed\"}"), Some(2.0), "{text}");
        assert!((v("vllm_profiling_scheduler:duration_sum").unwrap() - 0.006).abs() < 1e-12);
        assert_eq!(v("vllm_profiling_add_request_total"), Some(1.0), "{text}");
        // A function without a name has inferscope's series only.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("vllm_profiling_")
                    && !l.starts_with("vllm_profiling_scheduler")
                    && !l.starts_with("vllm_profiling_add_request"))
                .count(),
            0
        );
        assert!(text.contains("function=\"a.b:C.plain\""));
    }
}
