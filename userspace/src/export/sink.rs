//! Export is a sink: the layers' typed outputs ([`Output`], defined with the domain in
//! output.rs) go, one by one, to every configured sink
//! (Prometheus, OTLP, JSON lines, the console), and each takes what it exports. No other module
//! reaches into a sink; a sink forgets what it keeps for a process when [`Output::ProcessGone`]
//! comes.

use std::collections::{HashMap, HashSet};

use crate::{
    clock::{self, Clock},
    engine::EngineEvent,
    export::{
        console,
        jsonl::{self, JsonlWriter},
        otlp::Otlp,
        prom::PromMetrics,
    },
    output::{Health, Output},
};

/// One exporter.
pub trait Sink {
    fn consume(&mut self, clock: &Clock, o: &Output<'_>);
    /// Buffered output out (every second).
    fn flush(&mut self) {}
    /// At the stop, before the last health: flushes and stops (bounded).
    fn shutdown(&mut self) {}
    /// Failed exports so far, by exporter.
    fn errors(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Records dropped so far because the sink's consumer did not keep up, by sink.
    fn dropped(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Changes the trace detail (`--tracing-level`); false if the sink has none.
    fn set_tracing_level(&mut self, _level: u8) -> bool {
        false
    }
}

impl crate::output::Emit for Sinks {
    fn emit(&mut self, o: Output<'_>) {
        Sinks::emit(self, o);
    }
}

/// Every configured sink, in order.
#[derive(Default)]
pub struct Sinks {
    pub clock: Clock,
    sinks: Vec<Box<dyn Sink>>,
}

impl Sinks {
    pub fn new(clock: Clock) -> Self {
        Self { clock, sinks: Vec::new() }
    }

    pub fn add(&mut self, s: impl Sink + 'static) {
        self.sinks.push(Box::new(s));
    }

    pub fn emit(&mut self, o: Output<'_>) {
        for s in &mut self.sinks {
            s.consume(&self.clock, &o);
        }
    }

    pub fn flush(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.flush());
    }

    pub fn shutdown(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.shutdown());
    }

    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        self.sinks.iter().flat_map(|s| s.errors()).collect()
    }

    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        self.sinks.iter().flat_map(|s| s.dropped()).collect()
    }

    /// Changes the trace detail of every sink that has one; false if none has.
    pub fn set_tracing_level(&mut self, level: u8) -> bool {
        self.sinks.iter_mut().fold(false, |any, s| s.set_tracing_level(level) | any)
    }
}

/// Prometheus: every family, and the label values it made per process, to forget them.
pub struct PromSink {
    pub m: PromMetrics,
    /// (function, mode) series of timed functions per process.
    python_series: HashMap<u32, HashSet<(String, &'static str)>>,
    /// Launch-site series per process.
    site_series: HashMap<u32, HashSet<String>>,
}

impl PromSink {
    pub fn new(m: PromMetrics) -> Self {
        Self { m, python_series: HashMap::new(), site_series: HashMap::new() }
    }
}

impl Sink for PromSink {
    fn consume(&mut self, _clock: &Clock, o: &Output<'_>) {
        let m = &mut self.m;
        match o {
            Output::Request { record, labels, .. } => m.record(record, labels),
            Output::Engine { event, model, device } => {
                m.engine.observe(event, model);
                if let (EngineEvent::Step(s), Some(d)) = (event, device) {
                    m.engine.step_device(s, d, model);
                }
            }
            Output::DeviceCalls(recs) => {
                if let Some(d) = &m.device {
                    recs.iter().for_each(|r| d.record(r));
                }
            }
            Output::DeviceInterval { report, .. } => {
                if let Some(d) = &mut m.device {
                    d.interval(report);
                }
            }
            Output::DeviceProbeHits { pid, function, hits } => {
                if let Some(d) = &m.device {
                    d.probe_hits(*pid, function, *hits);
                }
            }
            Output::DeviceProbes { pid, attached } => {
                if let Some(d) = &m.device {
                    d.attached(*pid, *attached);
                }
            }
            Output::DeviceProbeOff { pid, function } => {
                if let Some(d) = &m.device {
                    d.disabled(*pid, function);
                }
            }
            Output::LaunchSite { pid, site } => {
                if let Some(s) = &m.sites {
                    s.record(*pid, site);
                    self.site_series.entry(*pid).or_default().insert(site.to_string());
                }
            }
            Output::PythonCalls { records, specs, unfinished } => {
                let Some(p) = &mut m.python else { return };
                for r in *records {
                    if let Some(spec) = specs.get(r.spec) {
                        p.record(r, spec);
                        self.python_series.entry(r.pid).or_default().insert((spec.symbol.clone(), r.mode.label()));
                    }
                }
                for (pid, total) in *unfinished {
                    p.unfinished(*pid, *total);
                }
            }
            Output::EngineState(s) => {
                if let Some(e) = &m.engine_state {
                    e.record(s);
                }
            }
            Output::Accelerators(d) => {
                if let Some(r) = &mut m.resources {
                    r.record(d);
                }
            }
            Output::Npus(d) => {
                if let Some(r) = &mut m.resources {
                    r.record_npus(d);
                }
            }
            Output::GpuEvents(e) => {
                if let Some(r) = &mut m.resources {
                    r.record_events(e);
                }
            }
            Output::Health { health, .. } => {
                m.health(health);
                m.engine.health(&health.engine);
            }
            Output::ProcessAdded { pid, engine, identity } => m.identity.added(*pid, engine, identity),
            Output::ProcessGone { pid } => {
                m.identity.forget(*pid);
                if let Some(e) = &m.engine_state {
                    e.forget(*pid);
                }
                if let (Some(s), Some(series)) = (&m.sites, self.site_series.remove(pid)) {
                    s.forget(*pid, &series);
                }
                if let Some(p) = &mut m.python {
                    p.forget(*pid, self.python_series.remove(pid).unwrap_or_default());
                }
                if let Some(d) = &mut m.device {
                    d.forget(*pid);
                }
            }
            Output::LaunchSites { .. } | Output::PythonCall { .. } | Output::ProfileWindow { .. } => {}
        }
    }
}

/// OTLP: request traces and metrics, device-step spans (with `device_spans`), timed calls.
pub struct OtlpSink {
    pub o: Otlp,
    pub device_spans: bool,
}

impl Sink for OtlpSink {
    fn set_tracing_level(&mut self, level: u8) -> bool {
        self.o.set_tracing_level(level);
        true
    }

    fn consume(&mut self, clock: &Clock, o: &Output<'_>) {
        match o {
            Output::Request { record, labels, .. } => self.o.record(record, labels, clock),
            Output::Engine { event: EngineEvent::Step(s), device: Some(d), .. } if self.device_spans => {
                self.o.device_step(s, d, clock)
            }
            Output::PythonCall { record, spec, location, step } => {
                let step = step.map(|(ts, batch)| (clock.unix_ns(ts), batch));
                self.o.python_call(record, spec, *location, clock, step);
            }
            Output::ProcessAdded { pid, identity, .. } => self.o.target(*pid, identity.attributes()),
            Output::ProcessGone { pid } => self.o.forget(*pid),
            Output::Accelerators(devices) => self.o.accelerators(devices),
            Output::Npus(devices) => self.o.npus(devices),
            // Named, not `_`: a new output is a decision for every sink.
            Output::Engine { .. }
            | Output::DeviceCalls(_)
            | Output::DeviceInterval { .. }
            | Output::DeviceProbeHits { .. }
            | Output::DeviceProbes { .. }
            | Output::DeviceProbeOff { .. }
            | Output::LaunchSite { .. }
            | Output::LaunchSites { .. }
            | Output::PythonCalls { .. }
            | Output::ProfileWindow { .. }
            | Output::EngineState(_)
            | Output::GpuEvents(_)
            | Output::Health { .. } => {}
        }
    }

    fn shutdown(&mut self) {
        self.o.shutdown();
    }

    fn errors(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering;
        vec![
            ("otlp_spans", self.o.counters.spans_failed.load(Ordering::Relaxed)),
            ("otlp_metrics", self.o.counters.metric_exports_failed.load(Ordering::Relaxed)),
        ]
    }
}

/// JSON lines: one object per request, step, device interval, timed call, profile window,
/// engine-state reading, launch-site interval, a `process` line per traced process, and a
/// health line every 10 s. Lines of a process in a container or pod carry its `container.*` /
/// `k8s.*` fields.
pub struct JsonlSink {
    pub w: JsonlWriter,
    targets: HashMap<u32, Vec<(std::borrow::Cow<'static, str>, String)>>,
}

impl JsonlSink {
    pub fn new(w: JsonlWriter) -> Self {
        Self { w, targets: HashMap::new() }
    }

    fn write(&mut self, mut v: serde_json::Value) {
        let pid = v.get("pid").and_then(serde_json::Value::as_u64);
        if let Some(attrs) = pid.and_then(|p| self.targets.get(&(p as u32))) {
            for (k, val) in attrs {
                v[k.as_ref()] = serde_json::Value::String(val.clone());
            }
        }
        self.w.write(&v);
    }
}

/// A line's own fields, then its process's identity attributes (`k8s.pod.name`, ...).
#[derive(serde::Serialize)]
struct WithAttrs<'a, T: serde::Serialize> {
    #[serde(flatten)]
    line: &'a T,
    #[serde(flatten)]
    attrs: Attrs<'a>,
}

struct Attrs<'a>(&'a [(std::borrow::Cow<'static, str>, String)]);

impl serde::Serialize for Attrs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k.as_ref(), v)))
    }
}

impl Sink for JsonlSink {
    fn consume(&mut self, clock: &Clock, o: &Output<'_>) {
        let now = || clock.unix_ns(clock::monotonic_ns());
        let v = match o {
            Output::Request { record, provider, .. } => {
                // The busiest line: written straight from its fields, the process's identity
                // after them, without a JSON tree in between.
                let line = jsonl::request_line(record, clock, *provider);
                match self.targets.get(&record.pid) {
                    Some(attrs) => self.w.write(&WithAttrs { line: &line, attrs: Attrs(attrs) }),
                    None => self.w.write(&line),
                }
                return;
            }
            Output::Engine { event: EngineEvent::Step(s), device, .. } => {
                jsonl::step_json_with_device(s, *device, clock)
            }
            Output::DeviceInterval { report, seconds, top_kernels, probes, disabled, last } => {
                jsonl::device_json(report, now(), *seconds, *top_kernels, *probes, disabled, *last)
            }
            Output::LaunchSites { pid, sites, seconds } => jsonl::sites_json(*pid, sites, now(), *seconds),
            Output::PythonCall { record, spec, step, .. } => {
                let step = step.map(|(ts, batch)| (clock.unix_ns(ts), batch));
                jsonl::call_json(record, spec, Some(clock.unix_ns(record.start_ns)), step)
            }
            Output::ProfileWindow { pid, profile, files } => jsonl::profile_json(*pid, profile, now(), *files),
            Output::EngineState(s) => jsonl::engine_state_json(s, now()),
            Output::Accelerators(devices) => {
                let ts = now();
                for d in devices.iter() {
                    self.w.write(&jsonl::typed_json(d, "gpu", ts));
                }
                return;
            }
            Output::Npus(devices) => {
                let ts = now();
                for d in devices.iter() {
                    self.w.write(&jsonl::npu_json(d, ts));
                }
                return;
            }
            Output::GpuEvents(events) => {
                let ts = now();
                for e in events.iter() {
                    self.w.write(&jsonl::typed_json(e, "gpu_event", ts));
                }
                return;
            }
            Output::ProcessAdded { pid, engine, identity } => {
                let attrs = identity.attributes();
                if attrs.is_empty() {
                    self.targets.remove(pid);
                } else {
                    self.targets.insert(*pid, attrs);
                }
                jsonl::process_json(*pid, engine, now())
            }
            Output::ProcessGone { pid } => {
                self.targets.remove(pid);
                return;
            }
            Output::Health { health, report: true, last } => {
                self.w.write(&jsonl::health_json(health, now()));
                if *last {
                    self.w.close();
                }
                return;
            }
            // Named, not `_`: a new output is a decision for every sink.
            Output::Engine { .. }
            | Output::DeviceCalls(_)
            | Output::DeviceProbeHits { .. }
            | Output::DeviceProbes { .. }
            | Output::DeviceProbeOff { .. }
            | Output::LaunchSite { .. }
            | Output::PythonCalls { .. }
            | Output::Health { .. } => return,
        };
        self.write(v);
    }

    fn flush(&mut self) {
        self.w.flush();
    }

    fn shutdown(&mut self) {
        self.w.flush();
    }

    fn errors(&self) -> Vec<(&'static str, u64)> {
        vec![("jsonl", self.w.errors())]
    }

    fn dropped(&self) -> Vec<(&'static str, u64)> {
        vec![("jsonl", self.w.dropped())]
    }
}

/// The console: a line per request on stdout (unless quiet), and on stderr what was lost every
/// 10 s and a summary at the stop.
pub struct ConsoleSink {
    /// Request lines to standard output (written off the loop, like JSONL), when on.
    requests: Option<crate::export::offloop::OffLoopWriter>,
    /// The health at the last report.
    last: Health,
}

impl ConsoleSink {
    /// `max_pending`: bytes of request lines that may wait for a slow standard output.
    pub fn new(request_lines: bool, max_pending: u64) -> std::io::Result<Self> {
        let requests = if request_lines {
            Some(crate::export::offloop::OffLoopWriter::new(
                Box::new(std::io::stdout()),
                "console-writer",
                "standard output (request lines)",
                max_pending,
            )?)
        } else {
            None
        };
        Ok(Self { requests, last: Health::default() })
    }
}

impl Sink for ConsoleSink {
    fn consume(&mut self, _clock: &Clock, o: &Output<'_>) {
        match o {
            Output::Request { record, .. } => {
                if let Some(w) = &mut self.requests {
                    use std::io::Write as _;
                    let _ = writeln!(w.buffer(), "{}", console::request_line(record));
                    w.line_done();
                }
            }
            Output::Health { health, report: true, last } => {
                if let Some(line) = console::loss_line(&self.last, health) {
                    eprintln!("inferscope: {line}");
                }
                if *last {
                    if let Some(w) = &mut self.requests {
                        w.close(std::time::Duration::from_secs(2));
                    }
                    eprintln!("inferscope: {}", console::stop_line(health));
                }
                self.last = (*health).clone();
            }
            // Named, not `_`: a new output is a decision for every sink.
            Output::Engine { .. }
            | Output::DeviceCalls(_)
            | Output::DeviceInterval { .. }
            | Output::DeviceProbeHits { .. }
            | Output::DeviceProbes { .. }
            | Output::DeviceProbeOff { .. }
            | Output::LaunchSite { .. }
            | Output::LaunchSites { .. }
            | Output::PythonCalls { .. }
            | Output::PythonCall { .. }
            | Output::ProfileWindow { .. }
            | Output::EngineState(_)
            | Output::Accelerators(_)
            | Output::Npus(_)
            | Output::GpuEvents(_)
            | Output::Health { .. }
            | Output::ProcessAdded { .. }
            | Output::ProcessGone { .. } => {}
        }
    }

    fn flush(&mut self) {
        if let Some(w) = &mut self.requests {
            w.flush();
        }
    }

    fn dropped(&self) -> Vec<(&'static str, u64)> {
        self.requests.as_ref().map(|w| vec![("console", w.dropped_lines)]).unwrap_or_default()
    }
}
