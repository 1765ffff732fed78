//! Programs that do nothing: `inferscope doctor` loads and attaches them to find out, for real,
//! which program types this kernel accepts (kprobe, uprobe, fentry, perf_event breakpoints).

use aya_ebpf::{
    macros::{fentry, kprobe, perf_event, uprobe},
    programs::{FEntryContext, PerfEventContext, ProbeContext},
};

#[kprobe]
pub fn doctor_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[uprobe]
pub fn doctor_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "do_sys_openat2")]
pub fn doctor_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[perf_event]
pub fn doctor_perf(_ctx: PerfEventContext) -> u32 {
    0
}
