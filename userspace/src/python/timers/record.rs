//! What the timers produce: one `CallRecord` per call, how its numbers were obtained
//! (`Mode`), and its JSON line.

use super::TimerSpec;

/// How a series' numbers were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Hardware breakpoints on entry and every return: exact counts and durations.
    Breakpoint,
    /// A breakpoint on the entry only: exact counts, no durations.
    BreakpointEntry,
    /// Uprobes on the eval function (3.9/3.10): exact counts and durations.
    EvalUprobe,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Breakpoint => "breakpoint",
            Mode::BreakpointEntry => "breakpoint_entry",
            Mode::EvalUprobe => "eval_uprobe",
        }
    }
}

/// One finished (or counted) call of a watched function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub pid: u32,
    pub tid: u32,
    /// Index into the configured specs.
    pub spec: usize,
    pub mode: Mode,
    /// Monotonic ns of the entry.
    pub start_ns: u64,
    /// Monotonic ns of the return; None in entry-only mode.
    pub end_ns: Option<u64>,
    /// Calls of watched functions open below this one on the thread (0 = outermost).
    pub depth: u32,
}

/// The JSON line of one call: `start_ns` on the monotonic clock (what BPF and
/// `time.monotonic_ns()` read), and `ts_ns` in Unix time when the caller knows it.
/// `step`: the engine step the call belongs to (Unix ns the engine stamped it, batch size).
pub fn call_json(
    r: &CallRecord,
    spec: &TimerSpec,
    unix_start_ns: Option<u64>,
    step: Option<(u64, usize)>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "python_call",
        "pid": r.pid,
        "tid": r.tid,
        "function": spec.function(),
        "symbol": spec.symbol,
        "mode": r.mode.label(),
        "start_ns": r.start_ns,
        "duration_ns": r.end_ns.map(|e| e.saturating_sub(r.start_ns)),
        "depth": r.depth,
    });
    if let Some(ts) = unix_start_ns {
        v["ts_ns"] = ts.into();
    }
    if let Some((ts, batch)) = step {
        v["step_ts_ns"] = ts.into();
        v["step_batch_size"] = batch.into();
    }
    v
}
