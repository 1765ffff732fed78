//! Exporters: Prometheus, OTLP (traces and metrics), JSONL and a console line per request.
//! All of them are fed from the same [`RequestRecord`] and the same bounded label values, so
//! they always agree. Output is rendered only here: no other module builds JSON or metrics.
//!
//! - here: [`Labels`] and [`BoundedLabel`] (label values, computed once per record), the route
//!   list, and [`Health`] (inferscope's own counters, gathered once per tick);
//! - sink.rs: the [`sink::Output`] enum the layers hand over, the [`sink::Sink`] trait and one
//!   sink per exporter (Prometheus, OTLP, JSON lines, console);
//! - jsonl.rs: every JSON object written: the JSONL lines (request, step, device, python_call,
//!   python_profile, python_launch_sites, engine_state, health), the objects they share (device
//!   summary, launch stats), `python-info --json`, and the line writer;
//! - prom/: the Prometheus registry, its families (one file per layer) and the `/metrics`
//!   endpoint;
//! - otlp.rs: OTLP traces and metrics;
//! - console.rs: the console's request and loss lines.

pub mod console;
pub mod jsonl;
pub mod offloop;
pub mod otlp;
mod otlp_resources;
pub mod prom;
pub mod sink;

use std::collections::HashSet;

use crate::{protocol::openai::Operation, request::RequestRecord, tracker::TrackerStats};

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
