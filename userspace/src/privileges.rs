//! Which privileges this process has, and the one-line error when they are missing.

use anyhow::{Result, bail};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_cap_eff(&status).unwrap_or(0)
}

/// Parses the `CapEff:` line of a /proc/PID/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

pub fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Loading and attaching tracepoint programs needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN),
/// and reading other processes' /proc entries needs CAP_SYS_PTRACE (or root).
pub fn missing_for_bpf(caps: u64) -> Vec<&'static str> {
    let admin = has_cap(caps, CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !admin && !has_cap(caps, CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !admin && !has_cap(caps, CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Capabilities that are not required but whose absence loses something, with what is lost.
pub fn missing_optional(caps: u64) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if !has_cap(caps, CAP_SYS_PTRACE) {
        out.push((
            "CAP_SYS_PTRACE",
            "sockets opened before attaching and server ports of other users' processes are not seen",
        ));
    }
    if !has_cap(caps, CAP_DAC_READ_SEARCH) {
        out.push(("CAP_DAC_READ_SEARCH", "other users' /proc/PID/fd and /proc/PID/net are unreadable"));
    }
    out
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (before 5.11); newer
/// kernels charge memory cgroups and ignore it. Best effort.
pub fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// Fails with one clear line if this process cannot load BPF programs.
pub fn require_bpf() -> Result<()> {
    let missing = missing_for_bpf(effective_caps());
    if !missing.is_empty() {
        bail!(
            "inferscope needs {} to load its eBPF probes: run it as root (sudo inferscope ...), \
             or grant them with `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep $(which inferscope)`, \
             or in Kubernetes run the DaemonSet privileged (see deploy/)",
            missing.join(" and ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(s).unwrap();
        assert!(has_cap(caps, CAP_BPF));
        assert!(missing_for_bpf(caps).is_empty());
        assert_eq!(missing_for_bpf(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        // CAP_SYS_ADMIN alone is enough on older kernels and here.
        assert!(missing_for_bpf(1 << CAP_SYS_ADMIN).is_empty());
    }
}
