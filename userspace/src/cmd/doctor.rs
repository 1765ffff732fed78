//! `inferscope doctor`: finds out, by really loading and attaching programs, what this host
//! supports, and says what will and will not work and why.

use std::{path::Path, process::ExitCode};

use aya::{
    Btf,
    programs::{
        FEntry, KProbe, PerfEvent, UProbe,
        perf_event::{
            BreakpointConfig, PerfBreakpointLength, PerfBreakpointType, PerfEventConfig, PerfEventScope, SamplePolicy,
            SoftwareEvent,
        },
        uprobe::UProbeScope,
    },
};

use crate::{bpf, privileges as p, process::procfs};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    No,
    Info,
}

struct Check {
    name: &'static str,
    verdict: Verdict,
    detail: String,
}

fn check(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check { name, verdict: Verdict::Ok, detail },
        Err(detail) => Check { name, verdict: Verdict::No, detail },
    }
}

fn err(e: impl std::fmt::Display) -> String {
    let s = format!("{e:#}");
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let s = s.trim_end_matches(". Verifier output:").to_string();
    if s.contains("devices/kprobe/type") {
        return "no kprobe PMU in this kernel (CONFIG_KPROBES unset)".into();
    }
    if s.contains("Operation not permitted") {
        let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
        return match lockdown.split_whitespace().find(|w| w.starts_with('[')) {
            Some(mode) => {
                format!("refused by the kernel (EPERM; kernel lockdown is {})", mode.trim_matches(['[', ']']))
            }
            None => "refused by the kernel (EPERM: kernel lockdown or a security module forbids it)".into(),
        };
    }
    s
}

/// Path of the C library this process maps (uprobe test target).
fn libc_path() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(str::to_string)
}

static WATCHED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Runs every check and prints the report. Returns the process exit code: success when the
/// request layer (socket tracepoints and ring buffer) works.
pub fn run() -> ExitCode {
    let mut checks = Vec::new();
    let caps = p::effective_caps();
    let missing = p::missing_for_bpf(caps);
    let names: Vec<&str> = [
        (p::CAP_BPF, "CAP_BPF"),
        (p::CAP_PERFMON, "CAP_PERFMON"),
        (p::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (p::CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .iter()
    .filter(|(c, _)| p::has_cap(caps, *c))
    .map(|(_, n)| *n)
    .collect();
    let privileged = missing.is_empty();
    checks.push(check(
        "privileges",
        if privileged {
            Ok(format!("uid {} with {}", unsafe { libc::geteuid() }, names.join(", ")))
        } else {
            Err(format!("missing {}: run as root or grant them (see README)", missing.join(", ")))
        },
    ));
    for (cap, loss) in p::missing_optional(caps) {
        checks.push(Check { name: "privileges", verdict: Verdict::No, detail: format!("no {cap}: {loss}") });
    }
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(Check { name: "kernel", verdict: Verdict::Info, detail: format!("Linux {}", uname.trim()) });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    checks.push(check(
        "BTF",
        if btf {
            Ok("/sys/kernel/btf/vmlinux present".into())
        } else {
            Err("no /sys/kernel/btf/vmlinux (fentry and CO-RE unavailable)".into())
        },
    ));
    checks.push(check(
        "PID namespace",
        if procfs::in_child_pid_namespace() {
            Err("inferscope runs in a child PID namespace: use the host's (hostPID: true)".into())
        } else {
            Ok("host PID namespace".into())
        },
    ));

    let mut tracepoints_ok = false;
    let mut uprobes_ok = false;
    let mut kprobes_ok = false;
    let mut fentry_ok = false;
    let mut sampling_ok = false;
    let mut breakpoints_ok = false;
    if privileged {
        let tp = bpf::load(&bpf::LoadOptions::default());
        tracepoints_ok = tp.is_ok();
        let device = tp.as_ref().ok().map(|p| (p.has_device(), p.device_multi()));
        checks.push(check(
            "tracepoints",
            tp.map(|_| "syscall and sched tracepoints attached; ring buffer created".to_string()).map_err(err),
        ));
        if let Some((loaded, multi)) = device {
            checks.push(check(
                "device probes",
                match (loaded, multi) {
                    (true, true) => Ok("runtime uprobe programs loaded; one uprobe_multi link per library".into()),
                    (true, false) => Ok("runtime uprobe programs loaded; no uprobe_multi (Linux < 6.6): one perf event per probe, ~0.1 s each to detach".into()),
                    (false, _) => Err("the device-layer programs did not load: no CUDA / NCCL / Ascend probes".into()),
                },
            ));
        }
        match bpf::open(&bpf::LoadOptions { ring_buffer_bytes: 1 << 16, ..Default::default() }) {
            Ok(mut ebpf) => {
                let r = (|| -> Result<String, String> {
                    let lib = libc_path().ok_or("libc not found in /proc/self/maps")?;
                    let prog: &mut UProbe =
                        ebpf.program_mut("doctor_uprobe").ok_or("program missing")?.try_into().map_err(err)?;
                    prog.load().map_err(err)?;
                    prog.attach("getpid", &lib, UProbeScope::CallingProcess).map_err(err)?;
                    Ok(format!("attached to getpid in {lib}"))
                })();
                uprobes_ok = r.is_ok();
                checks.push(check("uprobes", r));
                let r = (|| -> Result<String, String> {
                    let prog: &mut KProbe =
                        ebpf.program_mut("doctor_kprobe").ok_or("program missing")?.try_into().map_err(err)?;
                    prog.load().map_err(err)?;
                    prog.attach("do_sys_openat2", 0).map_err(err)?;
                    Ok("attached to do_sys_openat2".into())
                })();
                kprobes_ok = r.is_ok();
                checks.push(check("kprobes", r));
                let r = (|| -> Result<String, String> {
                    let btf = Btf::from_sys_fs().map_err(err)?;
                    let prog: &mut FEntry =
                        ebpf.program_mut("doctor_fentry").ok_or("program missing")?.try_into().map_err(err)?;
                    prog.load("do_sys_openat2", &btf).map_err(err)?;
                    prog.attach().map_err(err)?;
                    Ok("attached to do_sys_openat2".into())
                })();
                fentry_ok = r.is_ok();
                checks.push(check("fentry", r));
                let prog: Result<&mut PerfEvent, String> = ebpf
                    .program_mut("doctor_perf")
                    .ok_or("program missing".to_string())
                    .and_then(|p| p.try_into().map_err(err));
                match prog {
                    Ok(prog) => {
                        let loaded = prog.load().map_err(err);
                        let r = loaded.clone().and_then(|_| {
                            prog.attach(
                                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                                PerfEventScope::CallingProcess { cpu: None },
                                SamplePolicy::Frequency(99),
                                true,
                            )
                            .map_err(err)?;
                            Ok("cpu-clock sampling attached (Python stack sampling)".to_string())
                        });
                        sampling_ok = r.is_ok();
                        checks.push(check("perf sampling", r));
                        let r = loaded.and_then(|_| {
                            prog.attach(
                                PerfEventConfig::Breakpoint(BreakpointConfig::Data {
                                    r#type: PerfBreakpointType::ReadWrite,
                                    address: WATCHED.as_ptr() as u64,
                                    length: PerfBreakpointLength::Len2,
                                }),
                                PerfEventScope::CallingProcess { cpu: None },
                                SamplePolicy::Period(1),
                                true,
                            )
                            .map_err(err)?;
                            WATCHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Ok("read/write watchpoint attached (exact Python function timers)".to_string())
                        });
                        breakpoints_ok = r.is_ok();
                        checks.push(check("breakpoints", r));
                    }
                    Err(e) => checks.push(check("perf events", Err(e))),
                }
            }
            Err(e) => checks.push(check("BPF object", Err(err(e)))),
        }
    }

    println!("inferscope doctor: what this host supports\n");
    for c in &checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::No => "NO  ",
            Verdict::Info => "info",
        };
        println!("  {tag}  {:<14} {}", c.name, c.detail);
    }
    let yes_no = |b: bool| if b { "yes" } else { "NO " };
    println!("\nWhat works here:");
    println!(
        "  {}  request layer: HTTP/SSE requests, TTFT, ITL, TPOT, tokens from socket syscalls (tracepoints)",
        yes_no(tracepoints_ok)
    );
    println!("  {}  Python and CUDA/NCCL/CANN runtime probes (uprobes)", yes_no(uprobes_ok));
    println!("  {}  Python stack sampling (perf_event cpu-clock)", yes_no(sampling_ok));
    println!("  {}  exact Python function timers (hardware breakpoints)", yes_no(breakpoints_ok));
    println!(
        "  {}  cheaper socket capture via kprobes/fentry (optional: tracepoints are used when absent)",
        yes_no(kprobes_ok || fentry_ok)
    );
    if !privileged {
        println!("\n{}", p::require_bpf().err().map(|e| e.to_string()).unwrap_or_default());
    }
    if tracepoints_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
