//! Process lifecycle from `sched` tracepoints: children of traced processes are traced from
//! their first syscall, and user space learns when a traced process is gone.
//!
//! `sched:sched_process_fork` runs in the parent: `child_pid` at offset 20 (the new task's id;
//! for a thread of the parent it is a thread id, which user space then untracks).
//! `sched:sched_process_exit` runs in the exiting task: `group_dead` (bool) at offset 32.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use inferscope_common::{EventKind, ProcEvent, stat};

use crate::{EVENTS, TRACKED, count};

fn output(ev: &ProcEvent) {
    if EVENTS.output::<ProcEvent>(ev, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { TRACKED.get(&tgid) }.is_none() {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(20) }) else {
        return 0;
    };
    let child = child as u32;
    let _ = TRACKED.insert(&child, &0, 0);
    output(&ProcEvent { kind: EventKind::ProcFork as u32, tgid, child, _pad: 0, ts_ns: unsafe { bpf_ktime_get_ns() } });
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { TRACKED.get(&tgid) }.is_none() {
        return 0;
    }
    let group_dead = unsafe { ctx.read_at::<u8>(32) }.unwrap_or(0);
    if group_dead == 0 {
        return 0;
    }
    let _ = TRACKED.remove(&tgid);
    output(&ProcEvent {
        kind: EventKind::ProcExit as u32,
        tgid,
        child: 0,
        _pad: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    });
    0
}
