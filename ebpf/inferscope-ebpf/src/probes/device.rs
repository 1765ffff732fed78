//! Accelerator-runtime calls from uprobes on the libraries a process has mapped (CUDA driver and
//! runtime, NCCL, Ascend CANN, HCCL).
//!
//! Two generic programs serve every symbol: `device_enter` (uprobe) and `device_exit`
//! (uretprobe). Each attachment carries a cookie, the probe id, which indexes `DEVICE_SPECS`:
//! user space writes there where the call's values live (registers, stack slots, struct
//! fields) for that symbol on this architecture, so no signature is compiled in here.
//!
//! - Entry counts the hit, applies the probe's rate limit, reads the values and either reports
//!   the call at once (no return probe) or stashes it in `DEVICE_INFLIGHT` by thread and probe.
//! - Return completes the stashed call with its end time and return value.
//! - Names (`SPEC_NAME`) go out as a separate record, at return when the handle is an output.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use inferscope_common::{
    ARG_DEREF, ARG_REG, ARG_STACK, ArgSpec, DeviceEvent, DeviceInflight, DeviceName, DeviceRate, EventKind,
    MAX_DEVICE_NAME, MAX_DEVICE_PROBES, ProbeSpec, SPEC_COUNT_ONLY, SPEC_NAME, SPEC_OUT_HANDLE, SPEC_PY_SITE,
    SPEC_RETURN, stat,
};

use crate::{EVENTS, count};

/// What each probe id reads. Written by user space before the probe is attached.
#[map]
pub static DEVICE_SPECS: Array<ProbeSpec> = Array::with_max_entries(MAX_DEVICE_PROBES, 0);

/// Hits per probe id (per CPU; user space sums), for the overhead budget.
#[map]
pub static DEVICE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_DEVICE_PROBES, 0);

/// Rate-limit window per probe id. Updated without atomics: concurrent threads may let a few
/// extra records through at a window's edge, never fewer.
#[map]
pub static DEVICE_RATE: Array<DeviceRate> = Array::with_max_entries(MAX_DEVICE_PROBES, 0);

/// Calls between entry and return, keyed by `(tid << 32) | probe`. LRU: a call that never
/// returns (thread killed, longjmp) is evicted rather than leaked.
#[map]
pub static DEVICE_INFLIGHT: LruHashMap<u64, DeviceInflight> = LruHashMap::with_max_entries(16384, 0);

/// Scratch for a name record (too large for the stack).
#[map]
pub static DEVICE_NAME_SCRATCH: PerCpuArray<DeviceName> = PerCpuArray::with_max_entries(1, 0);

/// Bytes between the stack pointer at entry and the first stack-passed argument.
#[cfg(bpf_target_arch = "x86_64")]
const STACK_ARGS_AT: u64 = 8; // the return address
#[cfg(not(bpf_target_arch = "x86_64"))]
const STACK_ARGS_AT: u64 = 0;

/// The registers at entry, copied once per hit: the verifier forbids reading the context at an
/// offset that is not a constant, and which register holds a value is data (the spec).
#[repr(C)]
pub struct Regs {
    pub r: [u64; REGS],
}
const REGS: usize = 34;

#[map]
pub static DEVICE_REGS: PerCpuArray<Regs> = PerCpuArray::with_max_entries(1, 0);

/// Index in `pt_regs` (as u64 words) of integer argument register `n`, and of the stack pointer.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn reg_slot(n: u8) -> Option<usize> {
    // r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_ax ip cs flags sp ss
    match n {
        0 => Some(14), // rdi
        1 => Some(13), // rsi
        2 => Some(12), // rdx
        3 => Some(11), // rcx
        4 => Some(9),  // r8
        5 => Some(8),  // r9
        _ => None,
    }
}
#[cfg(bpf_target_arch = "x86_64")]
const SP_SLOT: usize = 19;

#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
fn reg_slot(n: u8) -> Option<usize> {
    // aarch64 user_pt_regs: x0..x30, sp, pc, pstate
    if n < 8 { Some(n as usize) } else { None }
}
#[cfg(not(bpf_target_arch = "x86_64"))]
const SP_SLOT: usize = 31;

/// Copies the entry registers into the per-CPU scratch, each at a constant context offset.
#[inline(always)]
fn load_regs(ctx: &ProbeContext) -> Option<&'static Regs> {
    let regs = DEVICE_REGS.get_ptr_mut(0)?;
    let r = unsafe { &mut (*regs).r };
    #[cfg(bpf_target_arch = "x86_64")]
    unsafe {
        let p = &*ctx.regs;
        r[14] = p.rdi;
        r[13] = p.rsi;
        r[12] = p.rdx;
        r[11] = p.rcx;
        r[9] = p.r8;
        r[8] = p.r9;
        r[SP_SLOT] = p.rsp;
    }
    #[cfg(bpf_target_arch = "aarch64")]
    unsafe {
        let p = &*ctx.regs;
        r[0] = p.regs[0];
        r[1] = p.regs[1];
        r[2] = p.regs[2];
        r[3] = p.regs[3];
        r[4] = p.regs[4];
        r[5] = p.regs[5];
        r[6] = p.regs[6];
        r[7] = p.regs[7];
        r[SP_SLOT] = p.sp;
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    let _ = (ctx, r);
    Some(unsafe { &*regs })
}

#[inline(always)]
fn reg(regs: &Regs, slot: usize) -> u64 {
    if slot < REGS { regs.r[slot] } else { 0 }
}

#[inline(always)]
fn read_arg(regs: &Regs, a: &ArgSpec) -> u64 {
    let v: u64 = match a.src {
        ARG_REG => reg_slot(a.index).map_or(0, |s| reg(regs, s)),
        ARG_STACK => {
            let at = reg(regs, SP_SLOT) + STACK_ARGS_AT + 8 * (a.index as u64);
            unsafe { bpf_probe_read_user(at as *const u64) }.unwrap_or(0)
        }
        ARG_DEREF => {
            let base = reg_slot(a.index).map_or(0, |s| reg(regs, s));
            if base == 0 {
                0
            } else if a.width == 4 {
                unsafe { bpf_probe_read_user((base + a.offset as u64) as *const u32) }.unwrap_or(0) as u64
            } else {
                unsafe { bpf_probe_read_user((base + a.offset as u64) as *const u64) }.unwrap_or(0)
            }
        }
        _ => 0,
    };
    if a.width == 4 { v & 0xffff_ffff } else { v }
}

#[inline(always)]
fn cookie(ctx: &impl EbpfContext) -> u32 {
    (unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } & 0xffff_ffff) as u32
}

/// Counts the hit; returns false when the probe is over its rate limit this second.
#[inline(always)]
fn admit(probe: u32, spec: &ProbeSpec, now: u64) -> bool {
    // The calibration probe counts in its own slot only.
    if spec.flags & SPEC_COUNT_ONLY == 0 {
        count(stat::DEVICE_HITS, 1);
    }
    if let Some(h) = DEVICE_HITS.get_ptr_mut(probe) {
        unsafe { *h += 1 };
    }
    if spec.max_per_sec == 0 {
        return true;
    }
    let Some(r) = DEVICE_RATE.get_ptr_mut(probe) else {
        return true;
    };
    let r = unsafe { &mut *r };
    if now.wrapping_sub(r.window_start_ns) >= 1_000_000_000 {
        r.window_start_ns = now;
        r.count = 0;
    }
    r.count += 1;
    if r.count > spec.max_per_sec as u64 {
        count(stat::DEVICE_RATE_LIMITED, 1);
        return false;
    }
    true
}

fn emit_call(tgid: u32, tid: u32, probe: u32, start_ns: u64, end_ns: u64, args: [u64; 4], ret: i64) {
    let ev = DeviceEvent { kind: EventKind::Device as u32, tgid, tid, probe, start_ns, end_ns, args, ret };
    if EVENTS.output::<DeviceEvent>(&ev, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
}

fn emit_name(tgid: u32, probe: u32, handle: u64, name_ptr: u64) {
    let Some(rec) = DEVICE_NAME_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    rec.kind = EventKind::DeviceName as u32;
    rec.tgid = tgid;
    rec.probe = probe;
    rec.handle = handle;
    rec.len = match unsafe { bpf_probe_read_user_str_bytes(name_ptr as *const u8, &mut rec.name) } {
        Ok(s) => (s.len() as u32).min(MAX_DEVICE_NAME as u32 - 1),
        Err(_) => {
            count(stat::READ_USER_FAILED, 1);
            0
        }
    };
    if EVENTS.output::<DeviceName>(rec, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
}

#[uprobe]
pub fn device_enter(ctx: ProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let probe = cookie(&ctx);
    let Some(spec) = DEVICE_SPECS.get(probe) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if spec.tgid != 0 && spec.tgid != tgid {
        return 0;
    }
    if !admit(probe, spec, now) || spec.flags & SPEC_COUNT_ONLY != 0 {
        return 0;
    }
    let Some(regs) = load_regs(&ctx) else {
        return 0;
    };
    let args = [
        read_arg(regs, &spec.args[0]),
        read_arg(regs, &spec.args[1]),
        read_arg(regs, &spec.args[2]),
        read_arg(regs, &spec.args[3]),
    ];
    let name_ptr = if spec.flags & SPEC_NAME != 0 { read_arg(regs, &spec.name) } else { 0 };
    if spec.flags & SPEC_PY_SITE != 0 {
        crate::probes::python::emit_site(tgid, tid, probe, now, args[0]);
    }
    if spec.flags & SPEC_RETURN != 0 {
        let key = ((tid as u64) << 32) | probe as u64;
        let _ = DEVICE_INFLIGHT.insert(&key, &DeviceInflight { start_ns: now, args, name_ptr }, 0);
        return 0;
    }
    // The name first: a call that carries its own name (`aclopExecuteV2`) finds it known.
    if spec.flags & SPEC_NAME != 0 {
        emit_name(tgid, probe, args[0], name_ptr);
    }
    emit_call(tgid, tid, probe, now, 0, args, 0);
    0
}

#[uretprobe]
pub fn device_exit(ctx: RetProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let probe = cookie(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let key = ((tid as u64) << 32) | probe as u64;
    let Some(call) = (unsafe { DEVICE_INFLIGHT.get(&key) }).copied() else {
        // Admitted calls always have an entry; a miss is a call over the rate limit, or one
        // that was in flight when the probe was attached, or an evicted one.
        return 0;
    };
    let _ = DEVICE_INFLIGHT.remove(&key);
    let Some(spec) = DEVICE_SPECS.get(probe) else {
        return 0;
    };
    let ret: i64 = ctx.ret::<i64>();
    let mut args = call.args;
    if spec.flags & SPEC_OUT_HANDLE != 0 && args[0] != 0 {
        args[0] = unsafe { bpf_probe_read_user(args[0] as *const u64) }.unwrap_or(0);
    }
    if spec.flags & SPEC_NAME != 0 && args[0] != 0 {
        emit_name(tgid, probe, args[0], call.name_ptr);
    }
    emit_call(tgid, tid, probe, call.start_ns, now, args, ret);
    0
}
