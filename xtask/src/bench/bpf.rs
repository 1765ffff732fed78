//! The BPF programs' own run time, per program, from the kernel's statistics
//! (`kernel.bpf_stats_enabled`), read with the bpf(2) syscall: no external tool.
//!
//! The kernel counts `run_time_ns` and `run_cnt` of every program only while statistics are
//! enabled. [`Stats::enable`] turns them on for a round: with `BPF_ENABLE_STATS`, a file
//! descriptor that keeps them on while it is open (reference-counted in the kernel, so two
//! benchmarks at once do not switch each other's off, and a killed benchmark leaves nothing
//! on); where that command is refused, with the sysctl, whose previous value is restored on
//! drop. Measuring costs each program run two clock reads (tens of ns): part of what is counted.
//!
//! inferscope's programs are the ones its process holds: `prog_id:` lines of
//! /proc/PID/fdinfo/* (program and link descriptors). Where none is found (another kernel's
//! fdinfo), every loaded program whose name is one of inferscope-ebpf's is taken instead.

use std::{collections::BTreeSet, fs, os::fd::FromRawFd as _, os::fd::OwnedFd};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The program names of ebpf/inferscope-ebpf/src/probes/*.rs, as the kernel keeps them
/// (at most 15 bytes).
const NAMES: &[&str] = &[
    "sys_enter_accept",
    "sys_exit_accept",
    "sys_enter_accept4",
    "sys_exit_accept4",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_close",
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "tcp_probe",
    "sock_recv_length",
    "tcp_destroy_sock",
    "sched_process_fork",
    "sched_process_exit",
    "sys_enter_mmap",
    "sys_exit_mmap",
    "py_eval_enter",
    "py_eval_exit",
    "py_call",
    "py_sample",
    "device_enter",
    "device_exit",
];

/// bpf(2) with an attribute of `N` 32-bit words.
fn bpf<const N: usize>(cmd: libc::c_long, attr: &mut [u32; N]) -> libc::c_long {
    // SAFETY: `attr` is a live, writable buffer of the size passed; the commands used here read
    // and write only within it (and, for OBJ_GET_INFO_BY_FD, within the buffer it points to).
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr) as libc::c_uint) }
}

/// Keeps the kernel's BPF run-time statistics on while alive.
pub enum Stats {
    Fd(#[allow(dead_code)] OwnedFd),
    Sysctl(String),
    Off,
}

impl Stats {
    pub fn enable() -> Stats {
        let mut attr = [BPF_STATS_RUN_TIME, 0];
        let fd = bpf(BPF_ENABLE_STATS, &mut attr);
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
            return Stats::Fd(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let previous = fs::read_to_string(SYSCTL).unwrap_or_default().trim().to_string();
        if fs::write(SYSCTL, "1").is_ok() {
            return Stats::Sysctl(previous);
        }
        eprintln!("bench: cannot enable BPF statistics (BPF_ENABLE_STATS nor {SYSCTL}): BPF run time not measured");
        Stats::Off
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        if let Stats::Sysctl(previous) = self {
            let _ = fs::write(SYSCTL, if previous.is_empty() { "0" } else { previous.as_str() });
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Prog {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// A program's statistics, by id; None if it is gone.
fn info(id: u32) -> Option<Prog> {
    let mut attr = [id, 0, 0];
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        return None;
    }
    // SAFETY: as above, a descriptor the kernel just returned.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_prog_info: id at 4, name[16] at 64, run_time_ns at 192, run_cnt at 200. The
    // buffer is zeroed and the kernel accepts a longer one whose tail is zero.
    let mut buf = [0u64; 32];
    let mut attr = [0u32; 4];
    attr[0] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
    attr[1] = std::mem::size_of_val(&buf) as u32;
    let ptr = buf.as_mut_ptr() as u64;
    attr[2] = ptr as u32;
    attr[3] = (ptr >> 32) as u32;
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) < 0 || attr[1] < 208 {
        return None;
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name = &bytes[64..80];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(16)]).into_owned();
    Some(Prog { id: (buf[0] >> 32) as u32, name: full_name(name), run_time_ns: buf[24], run_cnt: buf[25] })
}

/// The kernel keeps 15 bytes of a name: the whole one, where exactly one of inferscope's
/// starts so (`sys_enter_accep` stays: accept or accept4).
fn full_name(kernel: String) -> String {
    if kernel.len() < 15 {
        return kernel;
    }
    let mut m = NAMES.iter().filter(|n| n.starts_with(kernel.as_str()));
    match (m.next(), m.next()) {
        (Some(n), None) => n.to_string(),
        _ => kernel,
    }
}

/// The ids of every loaded program.
fn all_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    let mut next = 0;
    loop {
        let mut attr = [next, 0];
        if bpf(BPF_PROG_GET_NEXT_ID, &mut attr) < 0 {
            return ids;
        }
        next = attr[1];
        ids.push(next);
    }
}

/// The programs of process `pid`: those its descriptors refer to, else every loaded program
/// named like one of inferscope's.
pub fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids = BTreeSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(id) = l.strip_prefix("prog_id:").and_then(|v| v.trim().parse().ok()) {
                    ids.insert(id);
                }
            }
        }
    }
    if ids.is_empty() {
        let known: BTreeSet<&str> = NAMES.iter().map(|n| &n[..n.len().min(15)]).collect();
        ids.extend(
            all_ids()
                .into_iter()
                .filter(|&id| info(id).is_some_and(|p| known.contains(&p.name[..p.name.len().min(15)]))),
        );
    }
    ids.into_iter().collect()
}

/// The current statistics of these programs.
pub fn snapshot(ids: &[u32]) -> Vec<Prog> {
    ids.iter().filter_map(|&id| info(id)).collect()
}

/// What each program ran between two snapshots (programs loaded in between count from zero).
pub fn delta(before: &[Prog], after: &[Prog]) -> Vec<Prog> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            Prog {
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
                run_cnt: a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
                ..a.clone()
            }
        })
        .collect()
}
