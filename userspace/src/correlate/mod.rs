//! The correlation stage: every join between layers happens here, on the monotonic clock.
//!
//! - HTTP request <-> engine requests ([`requests::RequestJoin`]): finished engine requests
//!   wait under the ids the API server answers with.
//! - engine step <-> device calls: the calls of the step's API server and its descendants
//!   (engine core, workers) since the previous step, up to the step's outputs.
//! - engine step <-> timed Python calls: a call of an engine core belongs to the first step its
//!   engine stamped after the call began, seen already ([`steps::RecentSteps`]) or still to
//!   come (the call waits in a [`steps::StepQueue`]).
//! - API server <-> its engine cores and workers ([`topology::Topology`]): the one definition
//!   of which process serves which.
//!
//! Pure: fed records and process facts, tested without a kernel.

pub mod requests;
pub mod steps;
pub mod topology;

use std::collections::HashMap;

use steps::{RecentSteps, StepMark, StepQueue};

use crate::{
    device::{
        DeviceRecord,
        summary::{DeviceSummary, Sample},
    },
    engine::{EngineEvent, EnginePhases},
    python::timers::CallRecord,
    request::RequestRecord,
};

/// Steps remembered per API server for calls read after them.
const RECENT_STEPS: usize = 1024;
/// A timed call no step claimed within this long goes out without one.
pub const CALL_WAIT_NS: u64 = 2_000_000_000;
/// Most timed calls waiting per engine core.
const MAX_PENDING_CALLS: usize = 65_536;

/// Most device calls kept per process waiting for an engine step (~56 bytes each), and for
/// how long: a process whose steps are not seen (no engine layer) keeps only its last 30 s.
pub const MAX_STEP_QUEUE: usize = 50_000;
pub const STEP_QUEUE_AGE_NS: u64 = 30_000_000_000;

/// Where a timed call belongs: (monotonic ts, batch size) of its engine step.
pub type StepOf = Option<(u64, usize)>;

#[derive(Default)]
pub struct Correlator {
    pub topology: topology::Topology,
    pub requests: requests::RequestJoin,
    recent: HashMap<u32, RecentSteps>,
    pending: HashMap<u32, StepQueue<CallRecord>>,
    device: HashMap<u32, StepQueue<Sample>>,
    /// Timed calls placed (on a step, or on none: unclaimed, their process gone), for the
    /// timers layer to send out.
    placed: Vec<(CallRecord, StepOf)>,
}

impl Correlator {
    pub fn process_added(&mut self, pid: u32, ancestors: Vec<u32>) {
        self.topology.add(pid, ancestors);
    }

    /// A process is gone: its timed calls still waiting are placed without a step.
    pub fn process_gone(&mut self, pid: u32) {
        self.topology.remove(pid);
        self.recent.remove(&pid);
        self.device.remove(&pid);
        if let Some(mut q) = self.pending.remove(&pid) {
            self.placed.extend(q.expire(None, 0).into_iter().map(|r| (r, None)));
        }
    }

    /// The timed calls placed since the last take.
    pub fn take_placed(&mut self) -> Vec<(CallRecord, StepOf)> {
        std::mem::take(&mut self.placed)
    }

    /// Its counters, into the health snapshot.
    pub fn health(&self, h: &mut crate::output::Health) {
        h.device.unclaimed = self.unclaimed_device_calls();
    }

    /// An engine event, before the HTTP records of the same batch: finished requests become
    /// joinable, and a step (or an iteration reported with gauges only) claims the timed calls
    /// of its engine cores that began before the engine stamped it: `(call, step)` placed.
    pub fn engine_event(&mut self, now: u64, ev: &EngineEvent) {
        let (api, engine, ts, batch) = match ev {
            EngineEvent::Finished(r) => {
                self.requests.add(now, r);
                return;
            }
            EngineEvent::Step(s) => (s.pid, s.engine, s.ts_ns, s.batch_size()),
            EngineEvent::Gauges { pid, engine, ts_ns: Some(ts), .. } => (*pid, *engine, *ts, 0),
            EngineEvent::Gauges { .. } => return,
        };
        self.recent.entry(api).or_insert_with(|| RecentSteps::new(RECENT_STEPS)).push(StepMark {
            ts_ns: ts,
            engine,
            batch_size: batch,
        });
        for (core, q) in &mut self.pending {
            if self.topology.serves(*core, api, engine) {
                self.placed.extend(q.take_stamped_until(ts).into_iter().map(|r| (r, Some((ts, batch)))));
            }
        }
    }

    /// Device calls the device layer committed: each waits for the engine step that claims it.
    pub fn device_calls(&mut self, recs: &[DeviceRecord]) {
        for r in recs {
            let q = self.device.entry(r.pid).or_insert_with(|| StepQueue::new(MAX_STEP_QUEUE, STEP_QUEUE_AGE_NS));
            q.push(r.sample.start_ns, r.sample);
        }
    }

    /// What the device did for an engine step whose outputs `api` received at `until_ns`: the
    /// calls of `api` and its descendants not claimed by an earlier step.
    pub fn device_step(&mut self, api: u32, until_ns: u64) -> Option<DeviceSummary> {
        let mut s = DeviceSummary::default();
        for (pid, q) in &mut self.device {
            if self.topology.is_under(*pid, api) {
                for f in q.take_until(until_ns) {
                    s.add(&f);
                }
            }
        }
        (!s.is_empty()).then_some(s)
    }

    /// Device calls that left a step queue unclaimed.
    pub fn unclaimed_device_calls(&self) -> u64 {
        self.device.values().map(|q| q.unclaimed).sum()
    }

    /// The engine side of an HTTP record, joined by its response id.
    pub fn join_request(&mut self, r: &mut RequestRecord) {
        if let Some(id) = &r.request_id {
            r.engine = EnginePhases::merge(&self.requests.join(r.pid, id));
        }
    }

    /// A timed call: out now with its step (or none: not an engine core's), or kept for the
    /// step still to come. `title` reads a process's data-parallel index.
    pub fn python_call(
        &mut self,
        r: CallRecord,
        title: impl FnOnce(u32) -> Option<u32>,
    ) -> Option<(CallRecord, StepOf)> {
        let Some((api, dp)) = self.topology.api_server_of(r.pid, title) else { return Some((r, None)) };
        let found = self.recent.get(&api).and_then(|s| s.first_at_or_after(r.start_ns, dp));
        match found {
            Some(s) => Some((r, Some((s.ts_ns, s.batch_size)))),
            None => {
                let q = self.pending.entry(r.pid).or_insert_with(|| StepQueue::new(MAX_PENDING_CALLS, u64::MAX));
                q.push(r.start_ns, r);
                None
            }
        }
    }

    /// Timed calls no step claimed within [`CALL_WAIT_NS`] (all of them with `now` None, at
    /// the stop) placed without a step; and join candidates past their window forgotten.
    pub fn expire(&mut self, now: Option<u64>) {
        if let Some(n) = now {
            self.requests.expire(n);
        }
        let expired: Vec<CallRecord> = self.pending.values_mut().flat_map(|q| q.expire(now, CALL_WAIT_NS)).collect();
        self.placed.extend(expired.into_iter().map(|r| (r, None)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineStep;

    fn call(pid: u32, start: u64) -> CallRecord {
        let mode = crate::python::timers::Mode::Breakpoint;
        CallRecord { pid, tid: pid, spec: 0, mode, start_ns: start, end_ns: Some(start + 1), depth: 0 }
    }

    fn step(pid: u32, engine: Option<u32>, ts: u64) -> EngineEvent {
        EngineEvent::Step(EngineStep { pid, engine, ts_ns: ts, request_ids: vec!["a".into()], ..Default::default() })
    }

    #[test]
    fn timed_calls_find_their_step_before_or_after_it_is_read() {
        let mut c = Correlator::default();
        c.process_added(10, vec![1]);
        c.process_added(11, vec![10, 1]);
        c.process_added(12, vec![10, 1]);
        let dp = |p: u32| if p == 11 { Some(0) } else { Some(1) };
        // Read before its step: waits, then the step of its own engine claims it.
        assert!(c.python_call(call(11, 100), dp).is_none());
        assert!(c.python_call(call(12, 100), dp).is_none());
        c.engine_event(0, &step(10, Some(0), 150));
        let got = c.take_placed();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.pid, got[0].1), (11, Some((150, 1))));
        // Read after its step: found among the recent ones.
        let (r, s) = c.python_call(call(11, 120), dp).unwrap();
        assert_eq!((r.pid, s), (11, Some((150, 1))));
        // Not an engine core: out at once, without a step.
        assert_eq!(c.python_call(call(10, 5), dp).unwrap().1, None);
        // Unclaimed calls leave after 2 s, or at the stop.
        c.expire(Some(1_000));
        assert!(c.take_placed().is_empty());
        c.expire(Some(100 + CALL_WAIT_NS + 1));
        assert_eq!(c.take_placed().len(), 1, "pid 12's call: its engine never stepped");
        assert!(c.python_call(call(12, 10_000_000_000), dp).is_none());
        c.process_gone(12);
        assert_eq!(c.take_placed().len(), 1);
    }
}
