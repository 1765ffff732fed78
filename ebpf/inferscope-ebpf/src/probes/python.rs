//! The Python layer's programs. `py_sample`: the profiler's sampler, a perf-event program on each
//! sampled thread walks the thread's CPython frames (offsets from `PY_LAYOUTS`, the thread state
//! from `PY_TSTATES`, both written by user space) and sends the code-object pointers; user space
//! names them. `py_call`: runs when a hardware breakpoint on a watched code unit (a timed
//! function's RESUME or return) fires, and sends the address and the thread's current frame.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, perf_event, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{PerfEventContext, ProbeContext, RetProbeContext},
};
use inferscope_common::{
    EventKind, MAX_PY_FRAMES, PY_SITE_FRAMES, PyCall, PyEval, PyEvalOpen, PyEvalWatch, PyLayout, PySample, PySite, stat,
};

use crate::{EVENTS, count};

/// Layout per process (tgid).
#[map]
pub static PY_LAYOUTS: HashMap<u32, PyLayout> = HashMap::with_max_entries(1024, 0);

/// Thread state per sampled thread (tid).
#[map]
pub static PY_TSTATES: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

#[map]
static PY_SCRATCH: PerCpuArray<PySample> = PerCpuArray::with_max_entries(1, 0);

/// Eval-frame timers (3.9/3.10): watched code objects.
#[map]
pub static PY_EVAL_WATCH: HashMap<u64, PyEvalWatch> = HashMap::with_max_entries(4096, 0);

/// Nesting of `_PyEval_EvalFrameDefault` per thread since the probes were attached (wraps
/// below zero for calls begun before: entries and returns stay paired, last in first out).
#[map]
static PY_EVAL_DEPTH: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Watched calls in progress, by `(tid << 32) | depth`.
#[map]
static PY_EVAL_OPEN: LruHashMap<u64, PyEvalOpen> = LruHashMap::with_max_entries(16384, 0);

/// Entry of `_PyEval_EvalFrameDefault(tstate, frame, throwflag)` (3.9/3.10): every Python
/// call and generator resumption.
#[uprobe]
pub fn py_eval_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let depth = unsafe { PY_EVAL_DEPTH.get(&tid) }.copied().unwrap_or(0).wrapping_add(1);
    let _ = PY_EVAL_DEPTH.insert(&tid, &depth, 0);
    let frame: u64 = ctx.arg(1).unwrap_or(0);
    let Some(layout) = (unsafe { PY_LAYOUTS.get(&tgid) }) else {
        return 0;
    };
    let code = read_u64(frame + layout.frame_code as u64);
    let Some(w) = (unsafe { PY_EVAL_WATCH.get(&code) }) else {
        return 0;
    };
    if w.tgid != tgid {
        return 0;
    }
    let key = ((tid as u64) << 32) | depth as u64;
    let open = PyEvalOpen { start_ns: unsafe { bpf_ktime_get_ns() }, frame, spec: w.spec, _pad: 0 };
    let _ = PY_EVAL_OPEN.insert(&key, &open, 0);
    0
}

#[uretprobe]
pub fn py_eval_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let depth = unsafe { PY_EVAL_DEPTH.get(&tid) }.copied().unwrap_or(0);
    let _ = PY_EVAL_DEPTH.insert(&tid, &depth.wrapping_sub(1), 0);
    let key = ((tid as u64) << 32) | depth as u64;
    let Some(open) = (unsafe { PY_EVAL_OPEN.get(&key) }).copied() else {
        return 0;
    };
    let _ = PY_EVAL_OPEN.remove(&key);
    let ev = PyEval {
        kind: EventKind::PyEval as u32,
        tgid,
        tid,
        spec: open.spec,
        start_ns: open.start_ns,
        end_ns: unsafe { bpf_ktime_get_ns() },
        frame: open.frame,
        ret: ctx.ret::<u64>(),
    };
    if EVENTS.output::<PyEval>(&ev, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
    0
}

/// Offset of `addr` (the breakpoint's address) in `struct bpf_perf_event_data`: after the
/// registers and `sample_period`.
#[cfg(bpf_target_arch = "aarch64")]
const PERF_DATA_ADDR: usize = 34 * 8 + 8;
#[cfg(not(bpf_target_arch = "aarch64"))]
const PERF_DATA_ADDR: usize = 21 * 8 + 8;

/// Offset of the user instruction pointer in the context's registers (x86-64 `pt_regs.ip`,
/// arm64 `user_pt_regs.pc`).
#[cfg(bpf_target_arch = "aarch64")]
const PERF_DATA_IP: usize = 32 * 8;
#[cfg(not(bpf_target_arch = "aarch64"))]
const PERF_DATA_IP: usize = 16 * 8;

#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// One frame: its code object (0 for a 3.12+ C-stack shim, owner 3) and its caller. No branch
/// on what the frame holds beyond the owner byte: loops over it verify once per slot.
#[inline(always)]
fn frame_step(layout: &PyLayout, frame: u64) -> (u64, u64) {
    let code = read_u64(frame + layout.frame_code as u64) & !3;
    let owner: u8 = if layout.frame_owner != u32::MAX {
        unsafe { bpf_probe_read_user((frame + layout.frame_owner as u64) as *const u8) }.unwrap_or(0)
    } else {
        0
    };
    (if owner == 3 { 0 } else { code }, read_u64(frame + layout.frame_previous as u64))
}

#[inline(always)]
pub(crate) fn current_frame(layout: &PyLayout, tstate: u64) -> u64 {
    let mut frame = read_u64(tstate + layout.tstate_frame as u64);
    if layout.cframe_frame != u32::MAX && frame != 0 {
        frame = read_u64(frame + layout.cframe_frame as u64);
    }
    frame
}

/// Sends the innermost Python frames of the current thread, if its process's CPython is known
/// (the device layer's launches: `SPEC_PY_SITE`).
#[inline(always)]
pub(crate) fn emit_site(tgid: u32, tid: u32, probe: u32, ts_ns: u64, handle: u64) {
    let (Some(layout), Some(tstate)) = (unsafe { PY_LAYOUTS.get(&tgid) }, unsafe { PY_TSTATES.get(&tid) }) else {
        return;
    };
    let mut site =
        PySite { kind: EventKind::PySite as u32, tgid, tid, probe, ts_ns, handle, codes: [0; PY_SITE_FRAMES] };
    let mut frame = current_frame(layout, *tstate);
    for i in 0..PY_SITE_FRAMES {
        if frame == 0 {
            break;
        }
        (site.codes[i], frame) = frame_step(layout, frame);
    }
    if EVENTS.output::<PySite>(&site, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
}

#[perf_event]
pub fn py_call(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: a constant offset into the context, rewritten by the verifier.
    let addr = unsafe { core::ptr::read_volatile((ctx.ctx as *const u8).add(PERF_DATA_ADDR) as *const u64) };
    let (mut frame, mut frame_prev, mut frame_instr) = (0, 0, 0);
    if let (Some(layout), Some(tstate)) = (unsafe { PY_LAYOUTS.get(&tgid) }, unsafe { PY_TSTATES.get(&tid) }) {
        frame = current_frame(layout, *tstate);
        if frame != 0 {
            frame_prev = read_u64(frame + layout.frame_previous as u64);
            if layout.frame_instr != u32::MAX {
                frame_instr = read_u64(frame + layout.frame_instr as u64);
            }
        }
    }
    let ev = PyCall {
        kind: EventKind::PyCall as u32,
        tgid,
        tid,
        unit: unsafe { bpf_probe_read_user(addr as *const u16) }.map_or(u32::MAX, u32::from),
        ts_ns: unsafe { bpf_ktime_get_ns() },
        addr,
        frame,
        frame_prev,
        frame_instr,
        // SAFETY: `regs` starts the context; `ip` is a constant offset into it.
        ip: unsafe { core::ptr::read_volatile((ctx.ctx as *const u8).add(PERF_DATA_IP) as *const u64) },
    };
    if EVENTS.output::<PyCall>(&ev, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
    0
}

#[perf_event]
pub fn py_sample(_ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(layout) = (unsafe { PY_LAYOUTS.get(&tgid) }).copied() else {
        return 0;
    };
    let Some(tstate) = (unsafe { PY_TSTATES.get(&tid) }).copied() else {
        return 0;
    };
    let Some(s) = PY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let s = unsafe { &mut *s };
    s.kind = EventKind::PySample as u32;
    s.tgid = tgid;
    s.tid = tid;
    s.ts_ns = unsafe { bpf_ktime_get_ns() };
    let mut frame = current_frame(&layout, tstate);
    // Every frame takes a slot (0 for a C-stack shim, skipped by user space): no branch on
    // what a frame holds, so the verifier walks the loop once per slot.
    let mut depth = 0u32;
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 {
            break;
        }
        (s.codes[i], frame) = frame_step(&layout, frame);
        depth = i as u32 + 1;
    }
    s.depth = depth;
    if EVENTS.output::<PySample>(s, crate::wakeup_flags()).is_err() {
        count(stat::RINGBUF_DROPS, 1);
    }
    0
}
