//! `cargo xtask bench`: what inferscope costs, measured side by side in one run.
//!
//! - Overhead: the fixture server (FastAPI on uvicorn, one process) driven to saturation by the
//!   Rust load client, with and without inferscope attached, in alternating rounds (off/on,
//!   on/off, ...) so drift cancels; ratio of medians.
//! - Completeness: requests inferscope reported versus requests the client completed, and
//!   what inferscope counted as dropped, at that load.
//! - Cost: inferscope's own CPU (utime+stime over the round) plus its BPF programs' run time
//!   (the kernel's statistics, `bpf.rs`), per request and per SSE event completed: unlike
//!   throughput ratios, which drift by ±10% between rounds on a small shared VM, CPU spent per
//!   unit of work holds still. And inferscope's peak RSS.
//! - Host-wide cost: every process's syscalls pass the tracepoints; a loop of write(2) to
//!   /dev/null by an untraced process, with and without inferscope loaded.
//!
//! This file holds what the benchmarks share: a round of the load client with or without
//! inferscope attached, inferscope's own usage, medians. `fixture.rs` is the default benchmark,
//! `vllm.rs` `--vllm`, `device.rs` `--device`, `python.rs` `--python`.

mod bpf;
mod device;
mod fixture;
mod python;
mod vllm;

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::util;

pub use device::run_device;
pub use fixture::run;
pub use python::run_python;
pub use vllm::run_vllm;

/// What every benchmark needs first: root, the toolchain, its own environment (`env`), and
/// release builds of inferscope and the load client. Returns the repository root.
fn prepare(env: impl FnOnce() -> Result<()>) -> Result<std::path::PathBuf> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    crate::cache::lock_build()?;
    crate::setup::toolchain()?;
    env()?;
    let root = util::root();
    util::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "inferscope",
        "-p",
        "inferscope-tests",
        "--bins",
    ]))?;
    Ok(root)
}

struct Round {
    req_per_s: f64,
    events_per_s: f64,
    requests: u64,
    /// SSE events the client received (one per unary response).
    events: u64,
    /// With inferscope: what it reported and spent.
    reported: Option<u64>,
    /// inferscope's utime+stime over the load (and the 1.5 s drain after it).
    cpu_s: f64,
    /// Its BPF programs' run time over the same span, and per program.
    bpf_ns: u64,
    progs: Vec<bpf::Prog>,
    rss_kib: u64,
    drops: u64,
    /// inferscope's voluntary context switches over the round (all its threads): how often it
    /// went to sleep waiting for work, i.e. its wakeups.
    wakeups: u64,
}

impl Round {
    /// (user space, BPF) microseconds per `units`.
    fn cost_us(&self, units: u64) -> (f64, f64) {
        let n = units.max(1) as f64;
        (self.cpu_s * 1e6 / n, self.bpf_ns as f64 / 1e3 / n)
    }
}

/// Medians over rounds of the cost per request and per SSE event: ((user, BPF), (user, BPF)) us.
fn costs(on: &[Round]) -> ((f64, f64), (f64, f64)) {
    let m = |f: &dyn Fn(&Round) -> f64| median(on.iter().map(f).collect());
    (
        (m(&|r| r.cost_us(r.requests).0), m(&|r| r.cost_us(r.requests).1)),
        (m(&|r| r.cost_us(r.events).0), m(&|r| r.cost_us(r.events).1)),
    )
}

/// Median wakeups (voluntary context switches) per request over the rounds `on`.
fn wakeups_per_request(on: &[Round]) -> f64 {
    median(on.iter().map(|r| r.wakeups as f64 / r.requests.max(1) as f64).collect())
}

/// Voluntary context switches of every thread of a process.
fn wakeups(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// `57 + 27 = 84 us`: user space + BPF = total.
fn cost_cell((user, bpf): (f64, f64)) -> String {
    let p = |v: f64| if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") };
    format!("{} + {} = **{}** us", p(user), p(bpf), p(user + bpf))
}

/// The `top` programs by run time over all rounds `on`, as markdown table rows: name, run
/// time per request, runs per request, ns per run, share of the BPF time.
fn top_programs(label: &str, on: &[Round], top: usize) -> String {
    let mut by_name: Vec<(String, u64, u64)> = Vec::new();
    for p in on.iter().flat_map(|r| &r.progs) {
        match by_name.iter_mut().find(|(n, ..)| *n == p.name) {
            Some(e) => {
                e.1 += p.run_time_ns;
                e.2 += p.run_cnt;
            }
            None => by_name.push((p.name.clone(), p.run_time_ns, p.run_cnt)),
        }
    }
    by_name.sort_by_key(|e| std::cmp::Reverse(e.1));
    let total: u64 = by_name.iter().map(|e| e.1).sum();
    let requests = on.iter().map(|r| r.requests).sum::<u64>().max(1) as f64;
    let mut s = String::new();
    for (name, ns, cnt) in by_name.iter().take(top) {
        s.push_str(&format!(
            "| {label} | `{name}` | {:.2} us | {:.1} | {:.0} ns | {:.0}% |\n",
            *ns as f64 / 1e3 / requests,
            *cnt as f64 / requests,
            *ns as f64 / (*cnt).max(1) as f64,
            *ns as f64 * 100.0 / total.max(1) as f64
        ));
    }
    let rest: u64 = by_name.iter().skip(top).map(|e| e.1).sum();
    if by_name.len() > top {
        s.push_str(&format!(
            "| {label} | {} others | {:.2} us | | | {:.0}% |\n",
            by_name.len() - top,
            rest as f64 / 1e3 / requests,
            rest as f64 * 100.0 / total.max(1) as f64
        ));
    }
    s
}

const TOP_HEADER: &str = "| workload | BPF program | run time per request | runs per request | ns per run | share |\n|---|---|---|---|---|---|\n";

/// USER_HZ: the unit of utime and stime in /proc/PID/stat on Linux.
const CLOCK_TICKS: f64 = 100.0;

/// (utime+stime seconds, peak RSS KiB) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu / CLOCK_TICKS, hwm)
}

fn load(port: u16, seconds: u64, args: &[&str], summary: &Path) -> Result<Value> {
    let status = Command::new(util::target().join("release/inferscope-load"))
        .args([
            "--url",
            &format!("127.0.0.1:{port}"),
            "--duration",
            &seconds.to_string(),
            "--requests",
            "0",
            "--summary-json",
        ])
        .arg(summary)
        .args(args)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("the load client failed");
    }
    Ok(serde_json::from_str(&fs::read_to_string(summary)?)?)
}

fn start_inferscope(pid: u32, dir: &Path, extra: &[&str]) -> Result<Child> {
    let mut c = Command::new(util::target().join("release/inferscope"))
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--quiet",
            "--prometheus-listen",
            &format!("127.0.0.1:{}", util::free_port()?),
        ])
        .arg("--jsonl")
        .arg(dir.join("bench.jsonl"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("inferscope.stderr"))?)
        .spawn()?;
    let start = Instant::now();
    loop {
        if fs::read_to_string(dir.join("inferscope.stderr")).unwrap_or_default().contains("tracing pid") {
            return Ok(c);
        }
        if c.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(30) {
            bail!(
                "inferscope did not start: {}",
                fs::read_to_string(dir.join("inferscope.stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one_round(
    dir: &Path,
    server_pid: u32,
    port: u16,
    seconds: u64,
    args: &[&str],
    // inferscope's extra flags, or None for a round without inferscope.
    with: Option<&[&str]>,
) -> Result<Round> {
    let _ = fs::remove_file(dir.join("bench.jsonl"));
    // BPF statistics on for the rounds with inferscope only, from before its programs load.
    let stats = with.map(|_| bpf::Stats::enable());
    let mut scope = match with {
        Some(extra) => Some(start_inferscope(server_pid, dir, extra)?),
        None => None,
    };
    let before = scope.as_ref().map(|c| usage(c.id()).0).unwrap_or(0.0);
    let wakeups_before = scope.as_ref().map(|c| wakeups(c.id())).unwrap_or(0);
    let progs_before = scope.as_ref().map(|c| bpf::snapshot(&bpf::programs_of(c.id()))).unwrap_or_default();
    let s = load(port, seconds, args, &dir.join("summary.json"))?;
    let mut r = Round {
        req_per_s: s["req_per_s"].as_f64().unwrap_or(0.0),
        events_per_s: s["events_per_s"].as_f64().unwrap_or(0.0),
        requests: s["requests"].as_u64().unwrap_or(0),
        events: (s["events_per_s"].as_f64().unwrap_or(0.0) * s["duration_s"].as_f64().unwrap_or(0.0)).round() as u64,
        reported: None,
        cpu_s: 0.0,
        bpf_ns: 0,
        progs: Vec::new(),
        rss_kib: 0,
        drops: 0,
        wakeups: 0,
    };
    if let Some(c) = &mut scope {
        std::thread::sleep(Duration::from_millis(1500));
        let (cpu, rss) = usage(c.id());
        r.wakeups = wakeups(c.id()).saturating_sub(wakeups_before);
        // Programs attached during the round (new processes, the device layer) count too.
        r.progs = bpf::delta(&progs_before, &bpf::snapshot(&bpf::programs_of(c.id())));
        r.bpf_ns = r.progs.iter().map(|p| p.run_time_ns).sum();
        drop(stats);
        r.cpu_s = cpu - before;
        r.rss_kib = rss;
        util::stop(c, Duration::from_secs(20));
        let err = fs::read_to_string(dir.join("inferscope.stderr")).unwrap_or_default();
        r.drops = err
            .lines()
            .find(|l| l.contains("ring-buffer drops"))
            .and_then(|l| l.split(", ").find(|p| p.ends_with("ring-buffer drops")))
            .and_then(|p| p.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let lines = fs::read_to_string(dir.join("bench.jsonl")).unwrap_or_default();
        r.reported = Some(
            lines.lines().filter(|l| l.contains("\"type\":\"request\"") && l.contains("/v1/chat/completions")).count()
                as u64,
        );
    }
    Ok(r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}
