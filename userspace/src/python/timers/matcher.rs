//! Pairing entry and return hits into calls, per thread (`Matcher`): pure, tested and fuzzed
//! alone.

use std::collections::HashMap;

/// Calls that did not end with a return the matcher saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Left by an exception (or another way without a return instruction).
    pub unfinished: u64,
    /// Returns of calls that began before the watch.
    pub unmatched_returns: u64,
    /// Hits of the interpreter writing a watched instruction (quickening rewrites RESUME once,
    /// e.g. to RESUME_CHECK; a read/write watchpoint fires for the write too): not calls.
    pub write_hits: u64,
    /// Hits by instructions other than a plain load (compares, same-value stores).
    pub other_accesses: u64,
    /// Ticks in which a watchpoint fired as often as the kernel allows: later hits in the
    /// tick are lost (calls undercounted).
    pub throttled: u64,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    spec: usize,
    key: CallKey,
    ts: u64,
}

/// Which call an entry hit belongs to: the callee's frame and its caller's, where known (0:
/// unknown). At a RESUME fetch the thread's current frame is the new callee's on most builds,
/// but some compilers fetch the callee's first instruction before storing the new frame
/// (Debian's 3.13, for inlined calls): then it is still the caller's, and only the caller is
/// known. The hit says which (the frame's instruction pointer is at the callee's start, or at
/// the caller's CALL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallKey {
    pub callee: u64,
    pub caller: u64,
}

impl CallKey {
    /// Whether a call with this key, still open, must have ended for `new` to begin: its
    /// callee frame is reused, or its caller calls again (a frame runs one call at a time).
    fn ended_by(&self, new: &CallKey) -> bool {
        (new.callee != 0 && self.callee == new.callee) || (new.caller != 0 && self.caller == new.caller)
    }

    /// Whether a return from `frame`, called by `caller`, ends this call.
    fn returns_from(&self, frame: u64, caller: u64) -> bool {
        frame == 0 || if self.callee != 0 { self.callee == frame } else { self.caller == 0 || self.caller == caller }
    }
}

/// Pairs entry and return hits per thread. Pure: fed by [`PyTimers`], tested and fuzzed alone.
#[derive(Default)]
pub struct Matcher {
    stacks: HashMap<u32, Vec<Open>>,
    /// Open calls of coroutines and async generators, by (spec, their own frame): they run
    /// interleaved (a stack would end the suspended ones), each in a frame of its own that
    /// lives as long as it does.
    awaited: HashMap<(usize, u64), u64>,
    pub stats: MatchStats,
}

/// Most open coroutine calls kept per process.
const MAX_OPEN_AWAITED: usize = 65_536;

/// Most open calls kept per thread (deeper recursion is counted as unfinished).
const MAX_OPEN: usize = 256;

impl Matcher {
    /// A watched function was entered.
    pub fn entry(&mut self, tid: u32, spec: usize, key: CallKey, ts: u64) {
        let stack = self.stacks.entry(tid).or_default();
        // A callee frame is reused, and a caller calls again, only after the call ended: what
        // is open with the same key (and above it) left without a return.
        if let Some(i) = stack.iter().position(|o| o.key.ended_by(&key)) {
            self.stats.unfinished += (stack.len() - i) as u64;
            stack.truncate(i);
        }
        if stack.len() >= MAX_OPEN {
            stack.remove(0);
            self.stats.unfinished += 1;
        }
        stack.push(Open { spec, key, ts });
    }

    /// A watched function returned from `frame`, called by `caller`. The finished call:
    /// (start, depth).
    pub fn exit(&mut self, tid: u32, spec: usize, frame: u64, caller: u64, ts: u64) -> Option<(u64, u32)> {
        let stack = self.stacks.entry(tid).or_default();
        let found = stack.iter().rposition(|o| o.spec == spec && o.key.returns_from(frame, caller));
        let Some(i) = found else {
            self.stats.unmatched_returns += 1;
            return None;
        };
        self.stats.unfinished += (stack.len() - 1 - i) as u64;
        let open = stack[i];
        stack.truncate(i);
        Some((open.ts.min(ts), i as u32))
    }

    /// A watched coroutine's first resumption, in its own `frame`.
    pub fn awaited_entry(&mut self, spec: usize, frame: u64, ts: u64) {
        if frame == 0 {
            return;
        }
        if self.awaited.len() >= MAX_OPEN_AWAITED {
            // Never awaited to the end (abandoned, cancelled): forget them.
            self.stats.unfinished += self.awaited.len() as u64;
            self.awaited.clear();
        }
        // The frame of one that never returned, reused: it left without a return.
        if self.awaited.insert((spec, frame), ts).is_some() {
            self.stats.unfinished += 1;
        }
    }

    /// A watched coroutine returned from its `frame`: its start.
    pub fn awaited_exit(&mut self, spec: usize, frame: u64, ts: u64) -> Option<u64> {
        match self.awaited.remove(&(spec, frame)) {
            Some(start) => Some(start.min(ts)),
            None => {
                self.stats.unmatched_returns += 1;
                None
            }
        }
    }

    pub fn forget_thread(&mut self, tid: u32) {
        if let Some(s) = self.stacks.remove(&tid) {
            self.stats.unfinished += s.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry keys as hits give them: the callee frame current (its caller known too), or the
    /// caller's frame still current.
    fn callee(f: u64) -> CallKey {
        CallKey { callee: f, caller: f / 2 }
    }
    fn caller(c: u64) -> CallKey {
        CallKey { callee: 0, caller: c }
    }

    #[test]
    fn matcher_pairs_recursion_by_frame() {
        let mut m = Matcher::default();
        m.entry(1, 0, callee(100), 1_000_000);
        m.entry(1, 0, callee(200), 2_000_000);
        assert_eq!(m.exit(1, 0, 200, 100, 3_000_000), Some((2_000_000, 1)));
        assert_eq!(m.exit(1, 0, 100, 50, 4_000_000), Some((1_000_000, 0)));
        assert_eq!(m.stats, MatchStats::default());
        // The same recursion seen with callers' frames at entry (100 called 200 called 300).
        m.entry(1, 0, caller(50), 1);
        m.entry(1, 0, caller(100), 2);
        m.entry(1, 0, caller(200), 3);
        assert_eq!(m.exit(1, 0, 300, 200, 4), Some((3, 2)));
        assert_eq!(m.exit(1, 0, 200, 100, 5), Some((2, 1)));
        assert_eq!(m.exit(1, 0, 100, 50, 5), Some((1, 0)));
        // A call from C into the function (callee frame at entry) that calls itself inline
        // (caller frame at entry, the same address): two calls, not a reuse.
        m.entry(1, 0, callee(100), 6);
        m.entry(1, 0, caller(100), 7);
        assert_eq!(m.exit(1, 0, 400, 100, 8), Some((7, 1)));
        assert_eq!(m.exit(1, 0, 100, 50, 9), Some((6, 0)));
        assert_eq!(m.stats, MatchStats::default());
    }

    #[test]
    fn matcher_counts_exception_exits() {
        let mut m = Matcher::default();
        m.entry(1, 0, callee(100), 1_000_000);
        // Raised: no return; the frame is reused by the next call.
        m.entry(1, 0, callee(100), 5_000_000);
        assert_eq!(m.stats.unfinished, 1);
        assert_eq!(m.exit(1, 0, 100, 50, 6_000_000), Some((5_000_000, 0)));
        // The same with callers' frames: the caller called again.
        m.entry(1, 0, caller(50), 7_000_000);
        m.entry(1, 0, caller(50), 8_000_000);
        assert_eq!(m.stats.unfinished, 2);
        assert_eq!(m.exit(1, 0, 100, 50, 9_000_000), Some((8_000_000, 0)));
        // A return of a call begun before the watch.
        assert_eq!(m.exit(1, 0, 300, 50, 7_000_000), None);
        assert_eq!(m.stats.unmatched_returns, 1);
        // An inner call raised, the outer returned.
        m.entry(2, 0, callee(100), 1_000_000);
        m.entry(2, 1, callee(200), 2_000_000);
        assert_eq!(m.exit(2, 0, 100, 50, 3_000_000), Some((1_000_000, 0)));
        assert_eq!(m.stats.unfinished, 3);
        // Raised in a call seen by its callee frame; the next call is seen by its caller's.
        m.entry(3, 0, callee(100), 1);
        m.entry(3, 0, caller(50), 2);
        assert_eq!(m.stats.unfinished, 4);
        assert_eq!(m.exit(3, 0, 100, 50, 3), Some((2, 0)));
    }

    #[test]
    fn coroutines_pair_by_their_own_frame_whatever_runs_between() {
        let mut m = Matcher::default();
        // Three coroutines of spec 0 start on one loop, finish in another order.
        m.awaited_entry(0, 0x100, 1);
        m.awaited_entry(0, 0x200, 2);
        m.awaited_entry(0, 0x300, 3);
        assert_eq!(m.awaited_exit(0, 0x200, 10), Some(2));
        assert_eq!(m.awaited_exit(0, 0x300, 11), Some(3));
        assert_eq!(m.awaited_exit(0, 0x100, 12), Some(1));
        assert_eq!(m.stats, MatchStats::default());
        // Cancelled (no return), its frame reused by the next one: one unfinished.
        m.awaited_entry(0, 0x100, 20);
        m.awaited_entry(0, 0x100, 30);
        assert_eq!(m.stats.unfinished, 1);
        assert_eq!(m.awaited_exit(0, 0x100, 31), Some(30));
        // A return of one begun before the watch; another spec's frame is its own.
        assert_eq!(m.awaited_exit(0, 0x400, 40), None);
        assert_eq!(m.stats.unmatched_returns, 1);
        m.awaited_entry(1, 0x500, 50);
        assert_eq!(m.awaited_exit(0, 0x500, 51), None);
        assert_eq!(m.awaited_exit(1, 0x500, 52), Some(50));
    }
}
