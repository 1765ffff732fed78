//! Layers: each part of what inferscope observes lives behind one small interface. A layer is
//! told when a traced process appears or leaves, sees the ring-buffer records, is drained every
//! 10 ms and ticked every second, says its health counters, and hands what it saw to the sinks
//! as typed [`Output`]s. The daemon holds the list and loops; it knows no layer.
//!
//! Layers talk to each other only through [`Note`]s posted on the context (request capture
//! hands engine IPC messages to the engine layer; the engine layer says steps are about to go
//! out, so the device layer commits the calls before them) and through the correlation stage
//! ([`Correlator`]), which owns every join. A note reaches every layer, in the order of
//! [`build`]; notes posted while one is handled reach them before the next queued one.
//!
//! | layer | module | in | out |
//! |---|---|---|---|
//! | device | [`device`] | runtime/driver call records, library maps | device calls, intervals, probe counts |
//! | engine | [`engine`] | [`Note::Ipc`] | engine requests, steps, gauges |
//! | timers | [`timers`] | breakpoint hits (debug registers), eval uprobes | timed Python calls |
//! | requests | [`requests`] | socket records | HTTP/SSE requests; [`Note::Ipc`] |
//! | tls | [`tls`] | library maps | OpenSSL uprobes (their plaintext records go to requests) |
//! | sites | [`sites`] | launch-site records | launch sites |
//! | engine_state | [`engine_state`] | engine objects in CPython memory | engine state |
//! | profile | [`profile`] | stack samples (perf events) | profile windows |
//! | resources | [`resources`] | NVML / DCMI sampling threads | GPU and NPU samples, GPU events |
//!
//! A new layer: its module here, one line in [`build`], and an [`Output`] variant (with a
//! [`Family`] it declares, if a sink registers families up front) if it says something new.
//! Layers import the domain's types (`output`), never the exporters.

pub mod device;
pub mod engine;
pub mod engine_state;
pub mod profile;
pub mod requests;
pub mod resources;
pub mod sites;
pub mod timers;
pub mod tls;

use std::collections::HashMap;

use anyhow::Result;

use crate::{
    bpf::Probes,
    cli::RunOptions,
    correlate::Correlator,
    engine::Engine,
    events::Event,
    output::{BoundedLabel, Emit, Family, Health, Output},
    process::identity::Identity,
    python::Interpreter,
    tracker::IpcMessage,
};

/// What the layers know about the traced processes, shared: which engine each runs, the model
/// it serves, and the bounded model label values.
pub struct Facts {
    procs: HashMap<u32, Fact>,
    pub models: BoundedLabel,
    /// `k8s.node.name`, for processes in pods.
    pub node_name: Option<String>,
    /// This node's pods as the Kubernetes API tells (`--kube-api`).
    pub pods: Option<crate::process::kubernetes::PodIndex>,
    /// Containers as their runtime tells (`--container-runtime`).
    pub containers: Option<crate::process::runtime::ContainerIndex>,
}

pub struct Fact {
    pub engine: Engine,
    /// From its command line, else from its first request that named one.
    pub served_model: Option<String>,
    /// The container and pod it runs in.
    pub identity: Identity,
}

impl Facts {
    pub fn new(max_models: usize, node_name: Option<String>) -> Self {
        Self { procs: HashMap::new(), models: BoundedLabel::new(max_models), node_name, pods: None, containers: None }
    }

    /// What /proc tells of a process traced from now: its model and where it runs.
    pub fn learn(&mut self, pid: u32, engine: Engine) {
        let identity = self.identity_of(pid);
        self.add(pid, Fact { engine, served_model: crate::process::procfs::served_model(pid), identity });
    }

    /// Where `pid` runs: /proc, what the container runtime says of its container, and what the
    /// Kubernetes API knows of its pod.
    pub fn identity_of(&self, pid: u32) -> Identity {
        let node = self.node_name.as_deref();
        let mut id = crate::process::identity::read(pid, node);
        if let (Some(ix), Some(cid)) = (&self.containers, id.container_id.as_deref())
            && let Some(c) = ix.get(cid)
        {
            crate::process::runtime::enrich(&mut id, &c, node);
        }
        if let Some(pod) = self.pods.as_ref().and_then(|ix| ix.find(id.pod_uid.as_deref(), id.container_id.as_deref()))
        {
            crate::process::kubernetes::enrich(&mut id, &pod, node);
        }
        id
    }

    pub fn add(&mut self, pid: u32, fact: Fact) {
        self.procs.insert(pid, fact);
    }

    pub fn remove(&mut self, pid: u32) -> bool {
        self.procs.remove(&pid).is_some()
    }

    pub fn get(&self, pid: u32) -> Option<&Fact> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Fact> {
        self.procs.get_mut(&pid)
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The bounded model label of a process's engine metrics.
    pub fn model_label(&mut self, pid: u32) -> String {
        let m = self.procs.get(&pid).and_then(|f| f.served_model.as_deref());
        self.models.get(m)
    }
}

/// A message from one layer to the others.
pub enum Note {
    /// Engine IPC messages reassembled by request capture, in arrival order.
    Ipc(Vec<IpcMessage>),
    /// Engine events are about to go out (`steps`: some are steps): whatever they claim in
    /// the correlation stage must be there by the time the engine layer sees this note.
    EngineEvents { steps: bool },
    /// Request capture has finished HTTP records; they go out after the engine events of the
    /// same records (a request's last engine output precedes its last HTTP bytes).
    Requests,
}

/// What a layer may use while it works.
pub struct Cx<'a> {
    /// Where outputs go (the sinks; a layer knows none of them).
    pub sinks: &'a mut dyn Emit,
    /// The shared BPF object (its maps).
    pub probes: &'a mut Probes,
    pub correlate: &'a mut Correlator,
    pub facts: &'a mut Facts,
    /// Notes posted, for the daemon to hand to every layer.
    pub notes: &'a mut Vec<Note>,
}

impl Cx<'_> {
    pub fn emit(&mut self, o: Output<'_>) {
        self.sinks.emit(o);
    }

    pub fn post(&mut self, n: Note) {
        self.notes.push(n);
    }
}

/// One part of what inferscope observes.
pub trait Layer {
    /// Its family name: the same word in its module, its Prometheus family file and its tests.
    fn name(&self) -> &'static str;
    /// Whether it reads the traced processes' CPython (the daemon then finds it once).
    fn wants_python(&self) -> bool {
        false
    }
    /// A process is traced from now on (`interp`: its CPython, when one was found and asked
    /// for: a layer that [`Self::wants_python`] is told once the lookup, on a blocking thread,
    /// has answered; the others at once, with None).
    fn process_added(&mut self, _cx: &mut Cx, _pid: u32, _interp: Option<&Interpreter>) {}
    /// What the operator's "tracing pid" line says for this layer (", listening on 8000").
    fn describe(&self, _pid: u32) -> String {
        String::new()
    }
    /// A traced process exited or was found gone: what the layer keeps for it goes out or
    /// goes away.
    fn process_gone(&mut self, _cx: &mut Cx, _pid: u32, _ts_ns: u64) {}
    /// A ring-buffer record (every layer sees every record; each takes its own kinds).
    fn on_event(&mut self, _cx: &mut Cx, _ev: &Event) {}
    /// A note another layer (or this one) posted.
    fn on_note(&mut self, _cx: &mut Cx, _note: &Note) {}
    /// Every 10 ms.
    fn drain(&mut self, _cx: &mut Cx) {}
    /// Every second.
    fn tick(&mut self, _cx: &mut Cx) {}
    /// At the stop: what is buffered goes out.
    fn finish(&mut self, _cx: &mut Cx) {}
    /// Its counters, into the health snapshot.
    fn health(&self, _h: &mut Health) {}
    /// The metric families its outputs need (a sink that serves every family from the start
    /// registers them when the daemon starts).
    fn families(&self) -> Vec<Family> {
        Vec::new()
    }

    // Run-time control (`inferscope ctl`, control/): the daemon switches a whole layer by
    // telling it every traced process is gone (it detaches what it attached for them) or
    // added, and detaches or attaches its tracepoints.

    /// The layers whose notes it reads (switched on with it, and it off with them).
    fn needs(&self) -> &'static [&'static str] {
        &[]
    }
    /// The tracepoint groups it needs attached ([`crate::bpf::TP_SOCKETS`], ...).
    fn tracepoints(&self) -> &'static [&'static str] {
        &[]
    }
    /// Its probe groups that can be switched on their own, and whether each is on.
    fn groups(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }
    /// Switches one of its [`Self::groups`]; says what changed.
    fn set_group(&mut self, _cx: &mut Cx, group: &str, _on: bool) -> Result<String> {
        anyhow::bail!("the {} layer has no probe group `{group}`", self.name())
    }
    /// Reads its configuration again and applies it to every traced process (`procs`, with
    /// their CPython where one was found); None when it has nothing to reload.
    fn reload(&mut self, _cx: &mut Cx, _procs: &[(u32, Option<&Interpreter>)]) -> Option<Result<String>> {
        None
    }
    /// A few counters for `inferscope ctl status`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The layers the options ask for, in note order. The device layer comes before the engine layer (a step's device calls are
/// committed before the step claims them), the timers after it (calls its steps placed go
/// out), request capture after those (its records join engine requests already seen).
pub fn build(o: &RunOptions, probes: &mut Probes) -> Result<Vec<Box<dyn Layer>>> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let device = device::DeviceLayer::new(o, probes)?;
    let has_device = device.is_some();
    if let Some(l) = device {
        layers.push(Box::new(l));
    }
    layers.push(Box::new(engine::EngineLayer::new(o.engine.map(|e| match e {
        crate::cli::EngineArg::Vllm => Engine::Vllm,
        crate::cli::EngineArg::Sglang => Engine::Sglang,
    }))));
    if let Some(l) = timers::TimersLayer::new(o, probes)? {
        layers.push(Box::new(l));
    }
    layers.push(Box::new(requests::RequestsLayer::new(o)));
    if let Some(l) = tls::TlsLayer::new(o) {
        layers.push(Box::new(l));
    }
    if let Some(l) = sites::SitesLayer::new(o, has_device)? {
        layers.push(Box::new(l));
    }
    if let Some(l) = engine_state::EngineStateLayer::new(o)? {
        layers.push(Box::new(l));
    }
    if let Some(l) = profile::ProfileLayer::new(o, probes)? {
        layers.push(Box::new(l));
    }
    if let Some(l) = resources::ResourcesLayer::new(o)? {
        layers.push(Box::new(l));
    }
    Ok(layers)
}
