//! Process lifecycle from `sched` tracepoints: children of traced processes are traced from
//! their first syscall, and user space learns when a traced process is gone.
//!
//! `sched:sched_process_fork` runs in the parent: `child_pid` at offset 20 (the new task's id;
//! for a thread of the parent it is a thread id, which user space then untracks).
//! `sched:sched_process_exit` runs in the exiting task: `group_dead` (bool) at offset 32.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::LruHashMap,
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
    if TRACKED.insert(&child, &0, 0).is_err() {
        count(stat::TRACKING_MAP_FULL, 1);
    }
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

/// Threads of traced processes inside an `mmap` of a file with `PROT_EXEC` (value unused).
#[map]
static EXEC_MMAPS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

const PROT_EXEC: u64 = 4;

/// `syscalls:sys_enter_mmap`: `prot` at offset 32, `fd` at 48.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if unsafe { TRACKED.get(&tgid) }.is_none() {
        return 0;
    }
    let prot = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0);
    let fd = unsafe { ctx.read_at::<u64>(48) }.unwrap_or(u64::MAX) as i64;
    if prot & PROT_EXEC != 0 && fd >= 0 {
        let _ = EXEC_MMAPS.insert(&(pid_tgid as u32), &0, 0);
    }
    0
}

/// `syscalls:sys_exit_mmap`: a library's code is mapped; user space looks at it for runtime
/// symbols (a library loaded with `dlopen` after inferscope attached).
#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if unsafe { EXEC_MMAPS.get(&tid) }.is_none() {
        return 0;
    }
    let _ = EXEC_MMAPS.remove(&tid);
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if ret < 0 && ret > -4096 {
        return 0;
    }
    count(stat::MMAP_EVENTS, 1);
    output(&ProcEvent {
        kind: EventKind::ProcMmap as u32,
        tgid: (pid_tgid >> 32) as u32,
        child: 0,
        _pad: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    });
    0
}
