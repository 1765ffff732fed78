//! Layers: each part of what inferscope observes lives behind one small interface. A layer is
//! told when a traced process appears or leaves, is drained every 10 ms and ticked every
//! second, says its health counters, and hands what it saw to the sinks as typed
//! [`Output`]s. The daemon holds a list of layers and loops; adding a layer touches no other
//! layer: its own module, and one line in [`build`].
//!
//! Behind the trait so far: the engine-state reader ([`engine_state`]), the rolling Python
//! profile ([`profile`]) and the launch call sites ([`sites`]). Request capture, engine IPC,
//! the device runtimes and the Python function timers are still driven by `daemon.rs`.

pub mod engine_state;
pub mod profile;
pub mod sites;

use anyhow::Result;

use crate::{
    cli::RunOptions,
    export::{
        Health,
        sink::{Output, Sinks},
    },
    python::Interpreter,
};

/// What a layer may use while it works.
pub struct Cx<'a> {
    pub sinks: &'a mut Sinks,
    /// The shared BPF object (its maps).
    pub probes: &'a mut crate::bpf::Probes,
}

impl Cx<'_> {
    pub fn emit(&mut self, o: Output<'_>) {
        self.sinks.emit(o);
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
    /// for).
    fn process_added(&mut self, _cx: &mut Cx, _pid: u32, _interp: Option<&Interpreter>) {}
    /// A traced process exited or was found gone: what the layer keeps for it goes.
    fn process_gone(&mut self, _cx: &mut Cx, _pid: u32) {}
    /// A ring-buffer record the daemon's own parts do not take (launch sites).
    fn on_event(&mut self, _cx: &mut Cx, _ev: &crate::events::Event) {}
    /// Every 10 ms.
    fn drain(&mut self, _cx: &mut Cx) {}
    /// Every second.
    fn tick(&mut self, _cx: &mut Cx) {}
    /// At the stop: what is buffered goes out.
    fn finish(&mut self, _cx: &mut Cx) {}
    /// Its counters, into the health snapshot.
    fn health(&self, _h: &mut Health) {}
}

/// The layers the options ask for, and the Prometheus families they need registered.
/// `has_device`: the device layer's programs are loaded.
pub fn build(
    o: &RunOptions,
    has_device: bool,
    mut prom: Option<&mut crate::export::prom::PromMetrics>,
) -> Result<Vec<Box<dyn Layer>>> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    if let Some(l) = sites::SitesLayer::new(o, has_device, prom.as_deref_mut())? {
        layers.push(Box::new(l));
    }
    if let Some(l) = engine_state::EngineStateLayer::new(o, prom)? {
        layers.push(Box::new(l));
    }
    if let Some(l) = profile::ProfileLayer::new(o)? {
        layers.push(Box::new(l));
    }
    Ok(layers)
}
