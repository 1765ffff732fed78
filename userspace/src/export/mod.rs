//! Exporters: Prometheus, OTLP (traces and metrics), JSONL and a console line per request.
//! All of them are fed from the same [`RequestRecord`] and the same bounded label values, so
//! they always agree. Output is rendered only here: no other module builds JSON or metrics.
//!
//! - the domain's side (output.rs, not here): the [`sink::Output`] enum the layers hand over,
//!   [`Labels`] and [`BoundedLabel`] (label values, computed once per record), [`Health`]
//!   (inferscope's own counters, gathered once per tick) and the families a layer declares;
//! - sink.rs: the [`sink::Sink`] trait and one sink per exporter (Prometheus, OTLP, JSON lines,
//!   console);
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
