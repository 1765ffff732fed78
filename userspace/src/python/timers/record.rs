//! What the timers produce: one `CallRecord` per call and how its numbers were obtained
//! (`Mode`). Its JSON line is export/jsonl.rs's `call_json`.

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
