//! The engine layer: engine IPC (vLLM's ZeroMQ messages between API server and engine cores,
//! reassembled by request capture and handed over as [`Note::Ipc`]) decoded into engine
//! requests, steps and gauges (engine/). The engine a process runs is looked for when it is
//! traced and again when its IPC is seen (it can load vLLM after we attach). Out: one
//! [`Output::Engine`] per event, a step with what the device did for it.

use std::{collections::HashMap, time::Duration};

use super::{Cx, Layer, Note};
use crate::{
    clock,
    engine::{Engine, EngineEvent, EngineTracker},
    output::{Health, Output},
    process::procfs,
    python::Interpreter,
};

pub struct EngineLayer {
    engine: EngineTracker,
    /// Decoded, waiting for [`Note::EngineEvents`] to go out.
    events: Vec<EngineEvent>,
    /// When a process's engine kind was last looked for, and what was found to say.
    checked: HashMap<u32, (std::time::Instant, String)>,
    /// `--engine`: every traced process runs this engine.
    forced: Option<Engine>,
}

impl EngineLayer {
    pub fn new(forced: Option<Engine>) -> Self {
        Self { engine: EngineTracker::new(), events: Vec::new(), checked: HashMap::new(), forced }
    }

    /// Looks for the engine a process runs ([`procfs::engine_of`]: what it is, then what it
    /// has loaded; `--engine` overrides) and its release; returns a note for the operator.
    fn detect_kind(&mut self, cx: &mut Cx, pid: u32) -> String {
        let found = procfs::engine_of(pid);
        let engine = self.forced.or(found.map(|f| f.0));
        let version = found.filter(|f| Some(f.0) == engine).and_then(|f| f.1);
        let note = match engine {
            Some(Engine::Vllm) => {
                self.engine.set_kind(pid, Engine::Vllm, version);
                if let Some(f) = cx.facts.get_mut(pid) {
                    f.engine = Engine::Vllm;
                }
                match version {
                    Some(v) => {
                        let known = crate::engine::vllm_layouts::for_version(v).is_some();
                        format!(
                            ", vLLM {}.{}.{}{}",
                            v.0,
                            v.1,
                            v.2,
                            if known { "" } else { " (unknown wire layout: steps and tokens only)" }
                        )
                    }
                    None => ", vLLM (release not found)".to_string(),
                }
            }
            Some(Engine::Sglang) => {
                self.engine.set_kind(pid, Engine::Sglang, None);
                if let Some(f) = cx.facts.get_mut(pid) {
                    f.engine = Engine::Sglang;
                }
                match version {
                    Some(v) => format!(", SGLang {}.{}.{}", v.0, v.1, v.2),
                    None => ", SGLang".to_string(),
                }
            }
            _ => String::new(),
        };
        self.checked.insert(pid, (std::time::Instant::now(), note.clone()));
        note
    }

    /// The decoded events out, in order: each claims the timed calls and, a step, the device
    /// calls before it in the correlation stage.
    fn emit(&mut self, cx: &mut Cx) {
        for ev in std::mem::take(&mut self.events) {
            let pid = match &ev {
                EngineEvent::Step(s) => s.pid,
                EngineEvent::Gauges { pid, .. } => *pid,
                EngineEvent::Finished(r) => r.pid,
            };
            // What the device did for the step: calls of the process and its descendants (the
            // engine core, its workers) since the previous step, up to this step's outputs.
            let device = match &ev {
                EngineEvent::Step(s) => cx.correlate.device_step(s.pid, s.ts_ns),
                _ => None,
            };
            cx.correlate.engine_event(clock::monotonic_ns(), &ev);
            let model = cx.facts.model_label(pid);
            cx.emit(Output::Engine { event: &ev, model: &model, device: device.as_ref() });
        }
    }
}

impl Default for EngineLayer {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Layer for EngineLayer {
    fn needs(&self) -> &'static [&'static str] {
        // Its input is the IPC that request capture reassembles.
        &["requests"]
    }

    fn name(&self) -> &'static str {
        "engine"
    }

    fn process_added(&mut self, cx: &mut Cx, pid: u32, _interp: Option<&Interpreter>) {
        self.detect_kind(cx, pid);
    }

    fn describe(&self, pid: u32) -> String {
        self.checked.get(&pid).map(|(_, n)| n.clone()).unwrap_or_default()
    }

    fn process_gone(&mut self, _cx: &mut Cx, pid: u32, _ts_ns: u64) {
        self.engine.process_gone(pid);
        self.checked.remove(&pid);
    }

    fn on_note(&mut self, cx: &mut Cx, note: &Note) {
        match note {
            Note::Ipc(msgs) => {
                for m in msgs {
                    if self.engine.kind(m.tgid).is_none()
                        && self.checked.get(&m.tgid).is_none_or(|(t, _)| t.elapsed() > Duration::from_secs(10))
                    {
                        let note = self.detect_kind(cx, m.tgid);
                        if !note.is_empty() {
                            eprintln!("inferscope: pid {} runs{}", m.tgid, note.trim_start_matches(','));
                        }
                    }
                    if m.lost {
                        self.engine.lost(m.tgid, m.direction);
                    } else {
                        self.engine.message(m.tgid, m.direction, &m.msg, &mut self.events);
                    }
                }
                if !self.events.is_empty() {
                    let steps = self.events.iter().any(|e| matches!(e, EngineEvent::Step(_)));
                    cx.post(Note::EngineEvents { steps });
                }
            }
            Note::EngineEvents { .. } => self.emit(cx),
            Note::Requests => {}
        }
    }

    fn tick(&mut self, _cx: &mut Cx) {
        self.engine.expire(clock::monotonic_ns());
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.engine.stats;
        vec![("messages", s.messages), ("output_messages", s.output_messages), ("lost_requests", s.lost_requests)]
    }

    fn health(&self, h: &mut Health) {
        h.engine = self.engine.stats.clone();
    }
}
