//! The timers layer (`--python-timers`): named Python functions timed in every traced CPython
//! by hardware breakpoints on their code (python/timers/; 3.9/3.10 also by eval-frame
//! uprobes). A call of an engine core belongs to the engine step its engine stamped first after
//! the call began: the correlation stage places it, now or when the step is read. Out:
//! [`Output::PythonCalls`] as they are read, one [`Output::PythonCall`] each once placed.

use anyhow::{Context as _, Result};

use super::{Cx, Layer, Note};
use crate::{
    bpf::Probes,
    cli::RunOptions,
    correlate::StepOf,
    events::Event,
    output::{Family, Health, Output},
    process::procfs,
    python::{
        Interpreter,
        timers::{self, CallRecord, PyTimers, TimerSpec},
    },
};

pub struct TimersLayer {
    timers: PyTimers,
    recs: Vec<CallRecord>,
    /// `--python-timers`: read again by `inferscope ctl reload`.
    config: String,
    eval_uprobes: bool,
    /// Every spec timed since the start: a reload appends the new set, so a call read (or
    /// waiting for its step) before the reload keeps its function. Records carry indices
    /// into this list: the current set's plus `base`.
    all: Vec<TimerSpec>,
    base: usize,
}

impl TimersLayer {
    /// None without `--python-timers`, or (said) when the timers cannot start here.
    pub fn new(o: &RunOptions, probes: &mut Probes) -> Result<Option<Self>> {
        let Some(arg) = &o.python_timers else { return Ok(None) };
        let specs = timers::load_config(arg).with_context(|| format!("--python-timers {arg}"))?;
        let n = specs.len();
        let timers = match PyTimers::new(specs, o.python_timers_eval_uprobes, probes) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("inferscope: warning: Python function timers unavailable ({e:#})");
                return Ok(None);
            }
        };
        eprintln!(
            "inferscope: Python function timers: {n} function(s) from {arg}, looked for in every traced CPython {}",
            if o.python_timers_eval_uprobes { "3.9-3.14 (3.9/3.10 with eval-frame uprobes)" } else { "3.11-3.14" }
        );
        let all = timers.specs.clone();
        Ok(Some(Self {
            timers,
            recs: Vec::new(),
            config: arg.clone(),
            eval_uprobes: o.python_timers_eval_uprobes,
            all,
            base: 0,
        }))
    }

    /// One timed call out, with its engine step when known (monotonic ts, batch size).
    fn call(&self, cx: &mut Cx, r: &CallRecord, step: StepOf) {
        let Some(spec) = self.all.get(r.spec) else { return };
        let location = r.spec.checked_sub(self.base).and_then(|i| self.timers.location(r.pid, i));
        cx.emit(Output::PythonCall { record: r, spec, location, step });
    }

    /// What the correlation stage placed since the last look goes out.
    fn placed(&self, cx: &mut Cx) {
        for (r, step) in cx.correlate.take_placed() {
            self.call(cx, &r, step);
        }
    }

    /// Breakpoint hits -> calls -> sinks; each to the correlation stage.
    fn poll(&mut self, cx: &mut Cx) {
        self.timers.poll(cx.probes);
        for n in self.timers.notes.drain(..) {
            eprintln!("{n}");
        }
        if self.recs.is_empty() {
            return;
        }
        let mut pids: Vec<u32> = self.recs.iter().map(|r| r.pid).collect();
        pids.dedup();
        let unfinished: Vec<(u32, u64)> = pids.into_iter().map(|p| (p, self.timers.unfinished(p))).collect();
        cx.emit(Output::PythonCalls { records: &self.recs, specs: &self.all, unfinished: &unfinished });
        // A call of an engine core belongs to the engine step the engine stamped first after
        // the call began: already seen (its IPC can be read before the call's hits), or still
        // to come (the call waits for it). Others go out now.
        for r in std::mem::take(&mut self.recs) {
            if let Some((r, step)) = cx.correlate.python_call(r, procfs::dp_index) {
                self.call(cx, &r, step);
            }
        }
    }
}

impl Layer for TimersLayer {
    fn name(&self) -> &'static str {
        "timers"
    }

    fn families(&self) -> Vec<Family> {
        vec![Family::PythonCalls]
    }

    fn wants_python(&self) -> bool {
        true
    }

    fn process_added(&mut self, cx: &mut Cx, pid: u32, interp: Option<&Interpreter>) {
        if let Some(i) = interp
            && let Err(e) = self.timers.add_interpreter(i.clone(), cx.probes)
        {
            eprintln!("inferscope: pid {pid}: {e:#}");
        }
    }

    fn process_gone(&mut self, cx: &mut Cx, pid: u32, _ts_ns: u64) {
        // Its calls still waiting for a step were placed without one when it left.
        self.placed(cx);
        self.timers.remove_process(pid, cx.probes);
    }

    /// Breakpoint hits and eval-frame calls (turned into calls at the next drain).
    fn on_event(&mut self, _cx: &mut Cx, ev: &Event) {
        let from = self.recs.len();
        self.timers.on_event(ev, &mut self.recs);
        self.recs[from..].iter_mut().for_each(|r| r.spec += self.base);
    }

    fn on_note(&mut self, cx: &mut Cx, note: &Note) {
        if let Note::EngineEvents { .. } = note {
            self.placed(cx);
        }
    }

    fn drain(&mut self, cx: &mut Cx) {
        self.poll(cx);
    }

    /// Calls no step claimed within 2 s (the daemon expires the correlation stage first) go
    /// out without one.
    fn tick(&mut self, cx: &mut Cx) {
        self.placed(cx);
    }

    fn finish(&mut self, cx: &mut Cx) {
        self.poll(cx);
        cx.correlate.expire(None);
        self.placed(cx);
    }

    fn health(&self, h: &mut Health) {
        h.python = self.timers.health();
    }

    /// The YAML is read again; the new set replaces the old in every traced CPython (the
    /// breakpoints of the old set are removed first). A file that does not parse changes
    /// nothing.
    fn reload(&mut self, cx: &mut Cx, procs: &[(u32, Option<&Interpreter>)]) -> Option<Result<String>> {
        let specs = match timers::load_config(&self.config) {
            Ok(s) => s,
            Err(e) => return Some(Err(e.context(format!("{}: nothing changed", self.config)))),
        };
        // What the old set timed goes out first.
        self.poll(cx);
        self.placed(cx);
        let fresh = match PyTimers::new(specs, self.eval_uprobes, cx.probes) {
            Ok(t) => t,
            Err(e) => return Some(Err(e.context("the new timers cannot start; the old ones stay"))),
        };
        // Their breakpoints live in the daemon's object: taken off before the new set's go on.
        let mut old = std::mem::replace(&mut self.timers, fresh);
        old.close(cx.probes);
        self.base = self.all.len();
        self.all.extend(self.timers.specs.iter().cloned());
        let mut timed = 0;
        for (pid, interp) in procs {
            if let Some(i) = interp {
                match self.timers.add_interpreter((*i).clone(), cx.probes) {
                    Ok(()) => timed += 1,
                    Err(e) => eprintln!("inferscope: pid {pid}: {e:#}"),
                }
            }
        }
        let n = self.timers.specs.len();
        Some(Ok(format!("{n} function(s) from {} timed in {timed} CPython process(es)", self.config)))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let h = self.timers.health();
        vec![
            ("functions", self.timers.specs.len() as u64),
            ("watched_functions", h.watched_functions),
            ("breakpoints", h.breakpoints),
            ("calls", h.calls),
        ]
    }
}
