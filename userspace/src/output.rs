//! What the layers say, as types: the one enum of outputs they hand to the sinks
//! ([`Output`]), the label values every exporter shares ([`Labels`], [`BoundedLabel`]),
//! inferscope's own health counters ([`Health`]) and the metric families a layer's outputs
//! need ([`Family`]). Defined with the domain, not with the exporters: layers, the
//! correlation stage and the device and engine modules import this, never `export/`; each sink
//! decides how to show what it takes.

use std::collections::HashSet;

use crate::{
    device::{DeviceRecord, IntervalReport, summary::DeviceSummary},
    engine::EngineEvent,
    process::identity::Identity,
    protocol::openai::Operation,
    python::{
        profile::Profile,
        sites::SiteCount,
        state::EngineState,
        timers::{CallRecord, TimerSpec},
    },
    request::RequestRecord,
    tracker::TrackerStats,
};

/// What the layers (through the correlation stage) hand to the sinks.
pub enum Output<'a> {
    /// A finished HTTP request, joined with its engine side; `provider`: the engine the
    /// process runs, when it is traced.
    Request { record: &'a RequestRecord, labels: &'a Labels, provider: Option<&'static str> },
    /// An engine step, gauges or finished engine request, with the served model and (steps)
    /// what the device did in it.
    Engine { event: &'a EngineEvent, model: &'a str, device: Option<&'a DeviceSummary> },
    /// Calls the device tracker committed.
    DeviceCalls(&'a [DeviceRecord]),
    /// One process's device interval (`last`: it exited).
    DeviceInterval {
        report: &'a IntervalReport,
        seconds: f64,
        top_kernels: usize,
        probes: (usize, &'a [String]),
        disabled: &'a [String],
        last: bool,
    },
    /// Hits of one probe since the last accounting.
    DeviceProbeHits { pid: u32, function: &'a str, hits: u64 },
    /// Probes attached to a process now.
    DeviceProbes { pid: u32, attached: usize },
    /// A probe the overhead budget switched off.
    DeviceProbeOff { pid: u32, function: &'a str },
    /// A launch from the Python function `site` (a bounded label value).
    LaunchSite { pid: u32, site: &'a str },
    /// Launch sites of a process over an interval.
    LaunchSites { pid: u32, sites: &'a [SiteCount], seconds: f64 },
    /// Timed calls as they were read (metrics), and the running unfinished count per process.
    PythonCalls { records: &'a [CallRecord], specs: &'a [TimerSpec], unfinished: &'a [(u32, u64)] },
    /// One timed call placed on its engine step, (monotonic ts, batch size), when known.
    PythonCall {
        record: &'a CallRecord,
        spec: &'a TimerSpec,
        location: Option<(&'a str, &'a str, u32)>,
        step: Option<(u64, usize)>,
    },
    /// A rolling-profile window, and the files it was written to.
    ProfileWindow { pid: u32, profile: &'a Profile, files: Option<(&'a str, &'a str)> },
    /// A reading of the engine's live state.
    EngineState(&'a EngineState),
    /// A sample of every GPU's resources (NVML).
    Accelerators(&'a [crate::resources::DeviceSample]),
    /// A sample of every Ascend NPU's resources (DCMI).
    Npus(&'a [crate::resources::NpuSample]),
    /// XID and double-bit ECC events of GPUs (NVML).
    GpuEvents(&'a [crate::resources::DeviceEvent]),
    /// The health counters: every second; `report` every 10 s (lines for the operator);
    /// `last` at the stop.
    Health { health: &'a Health, report: bool, last: bool },
    /// A process is traced from now: the engine it runs and where it runs.
    ProcessAdded { pid: u32, engine: &'static str, identity: &'a Identity },
    /// A process is gone: what a sink keeps for it goes.
    ProcessGone { pid: u32 },
}

/// Where layers' outputs go (the daemon's sinks, behind this so that a layer knows none).
pub trait Emit {
    fn emit(&mut self, o: Output<'_>);
}

/// The metric families a layer's outputs need, declared when the daemon starts, so that a
/// sink that serves every family from the start (Prometheus, at zero) registers them then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Device calls, intervals and probe counts; `top_kernels`: most kernel names labelled.
    Device { top_kernels: usize },
    /// Timed Python calls.
    PythonCalls,
    /// Python launch call sites.
    LaunchSites,
    /// The engine's live state, read from its objects.
    EngineState,
    /// GPU and NPU resources.
    Resources,
}

/// Keeps a label's distinct values bounded: past `max` distinct values, new ones read "other".
/// Model names come from clients, so without this one client could flood a metrics backend.
#[derive(Debug)]
pub struct BoundedLabel {
    seen: HashSet<String>,
    max: usize,
}

impl BoundedLabel {
    pub fn new(max: usize) -> Self {
        Self { seen: HashSet::new(), max }
    }

    pub fn get(&mut self, v: Option<&str>) -> String {
        let Some(v) = v.filter(|v| !v.is_empty()) else {
            return "unknown".to_string();
        };
        let v = if v.len() > 128 { &v[..v.floor_char_boundary(128)] } else { v };
        if self.seen.contains(v) {
            return v.to_string();
        }
        if self.seen.len() < self.max {
            self.seen.insert(v.to_string());
            return v.to_string();
        }
        "other".to_string()
    }
}

/// Paths reported as themselves; any other path is `other`.
const KNOWN_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
    "/v1/rerank",
    "/v1/score",
    "/v1/audio/transcriptions",
    "/generate",
    "/health",
    "/metrics",
    "/ping",
    "/version",
    "/tokenize",
    "/detokenize",
];

pub fn route(path: &str) -> &'static str {
    let p = path.trim_end_matches('/');
    KNOWN_ROUTES.iter().find(|r| **r == p).copied().unwrap_or("other")
}

/// Label values of one request, computed once for every exporter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    pub operation: &'static str,
    pub model: String,
    pub route: &'static str,
    pub status: String,
    pub finish_reason: String,
    pub server_port: String,
    pub error_type: String,
    pub provider: &'static str,
}

impl Labels {
    pub fn of(r: &RequestRecord, models: &mut BoundedLabel, provider: &'static str) -> Self {
        Self {
            operation: r.operation.name(),
            model: if r.operation == Operation::Other { "none".to_string() } else { models.get(r.model_label()) },
            route: route(&r.path),
            status: r.status.map_or_else(|| "none".to_string(), |s| s.to_string()),
            finish_reason: r.finish_reason().unwrap_or("none").to_string(),
            server_port: r.server_port.map(|p| p.to_string()).unwrap_or_default(),
            error_type: r.error_type.clone().unwrap_or_default(),
            provider,
        }
    }
}

/// inferscope's own health, gathered once per tick.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Summed BPF statistics, indexed by `inferscope_common::stat`.
    pub bpf: Vec<u64>,
    pub tracker: TrackerStats,
    /// Ring-buffer records that failed to decode, by cause.
    pub decode_errors: Vec<(&'static str, u64)>,
    pub attached_processes: u64,
    pub in_flight: u64,
    /// Export failures by exporter.
    pub export_errors: Vec<(&'static str, u64)>,
    /// Records a sink dropped because its consumer did not keep up, by sink.
    pub export_dropped: Vec<(&'static str, u64)>,
    /// Failed writes to the BPF maps user space fills, by map.
    pub map_write_errors: Vec<(&'static str, u64)>,
    /// The engine layer's counters.
    pub engine: crate::engine::EngineStats,
    /// The device layer's counters.
    pub device: DeviceHealth,
    /// The Python function timers' counters.
    pub python: crate::python::timers::TimerHealth,
}

/// What the device layer attached, could not attach, and could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceHealth {
    pub probes_attached: u64,
    /// Libraries (or single functions) that could not be probed.
    pub attach_errors: u64,
    /// Mapped files whose ELF symbols could not be read.
    pub unreadable_files: u64,
    /// Calls from a probe no longer attached (late records of a detached probe).
    pub unknown_probe: u64,
    /// Driver calls folded into the runtime call that made them (not lost: counted once).
    pub nested: u64,
    /// Calls no engine step claimed within 30 s (the correlation stage's count).
    pub unclaimed: u64,
    /// Probes switched off by the overhead budget.
    pub disabled: u64,
}

impl Health {
    pub fn bpf_stat(&self, i: u32) -> u64 {
        self.bpf.get(i as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let mut b = BoundedLabel::new(2);
        assert_eq!(b.get(Some("a")), "a");
        assert_eq!(b.get(Some("b")), "b");
        assert_eq!(b.get(Some("c")), "other");
        assert_eq!(b.get(Some("a")), "a");
        assert_eq!(b.get(None), "unknown");
        assert_eq!(route("/v1/chat/completions/"), "/v1/chat/completions");
        assert_eq!(route("/admin/secret/123"), "other");
    }
}
