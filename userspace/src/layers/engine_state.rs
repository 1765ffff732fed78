//! The engine-state layer: every `--engine-state-interval`, the engine's live state (vLLM's
//! running and waiting queues, KV-cache blocks) read from its objects in each traced CPython
//! (python/state.rs), out as [`Output::EngineState`].

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use log::debug;

use super::{Cx, Layer};
use crate::{
    cli::RunOptions,
    output::{Family, Output},
    python::{Interpreter, state::StateReader},
};

/// One process's engine-state reader.
struct Slot {
    reader: StateReader,
    /// Readings without an engine loop in a row (such processes are looked at less often).
    misses: u32,
    /// The layout problem already said for this process.
    said: bool,
}

pub struct EngineStateLayer {
    slots: HashMap<u32, Slot>,
    every: Duration,
    last: std::time::Instant,
}

impl EngineStateLayer {
    /// None with `--engine-state-interval 0`.
    pub fn new(o: &RunOptions) -> Result<Option<Self>> {
        if o.engine_state_interval <= 0.0 {
            return Ok(None);
        }
        Ok(Some(Self {
            slots: HashMap::new(),
            every: Duration::from_secs_f64(o.engine_state_interval.max(0.05)),
            last: std::time::Instant::now(),
        }))
    }
}

impl Layer for EngineStateLayer {
    fn name(&self) -> &'static str {
        "engine_state"
    }

    fn families(&self) -> Vec<Family> {
        vec![Family::EngineState]
    }

    fn wants_python(&self) -> bool {
        true
    }

    fn process_added(&mut self, _cx: &mut Cx, pid: u32, interp: Option<&Interpreter>) {
        if let Some(i) = interp {
            self.slots.insert(pid, Slot { reader: StateReader::of(i.clone()), misses: 0, said: false });
        }
    }

    fn process_gone(&mut self, _cx: &mut Cx, pid: u32, _ts_ns: u64) {
        self.slots.remove(&pid);
    }

    fn drain(&mut self, cx: &mut Cx) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = std::time::Instant::now();
        for (pid, slot) in &mut self.slots {
            // Processes without an engine loop (API servers, workers): every 8th interval.
            if slot.misses >= 8 && slot.misses % 8 != 0 {
                slot.misses += 1;
                continue;
            }
            match slot.reader.read() {
                Ok(Some(s)) => {
                    slot.misses = 0;
                    if let (Some(p), false) = (&s.problem, slot.said) {
                        slot.said = true;
                        eprintln!(
                            "inferscope: pid {pid}: {} engine state not understood ({p}); those gauges are not exported \
                             (an engine release newer than inferscope knows?)",
                            s.engine
                        );
                    }
                    cx.emit(Output::EngineState(&s));
                }
                Ok(None) => slot.misses += 1,
                Err(e) => {
                    slot.misses += 1;
                    debug!("pid {pid}: engine state: {e:#}");
                }
            }
        }
    }
}
