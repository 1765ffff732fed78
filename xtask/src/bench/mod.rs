//! `cargo xtask bench`: what inferscope costs, measured side by side in one run.
//!
//! - Overhead: the fixture server (FastAPI on uvicorn, one process) driven to saturation by the
//!   Rust load client, with and without inferscope attached, in alternating rounds (off/on,
//!   on/off, ...) so drift cancels; ratio of medians.
//! - Completeness: requests inferscope reported versus requests the client completed, and
//!   what inferscope counted as dropped, at that load.
//! - inferscope's own CPU (utime+stime over the round) and peak RSS.
//! - Host-wide cost: every process's syscalls pass the tracepoints; a loop of write(2) to
//!   /dev/null by an untraced process, with and without inferscope loaded.
//!
//! This file holds what the benchmarks share: a round of the load client with or without
//! inferscope attached, inferscope's own usage, medians. `fixture.rs` is the default benchmark,
//! `vllm.rs` `--vllm`, `device.rs` `--device`, `python.rs` `--python`.

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

struct Round {
    req_per_s: f64,
    events_per_s: f64,
    requests: u64,
    /// With inferscope: what it reported and spent.
    reported: Option<u64>,
    cpu_s: f64,
    rss_kib: u64,
    drops: u64,
}

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

fn load(root: &Path, port: u16, seconds: u64, args: &[&str], summary: &Path) -> Result<Value> {
    let status = Command::new(root.join("target/release/inferscope-load"))
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

fn start_inferscope(root: &Path, pid: u32, dir: &Path, extra: &[&str]) -> Result<Child> {
    let mut c = Command::new(root.join("target/release/inferscope"))
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
    root: &Path,
    dir: &Path,
    server_pid: u32,
    port: u16,
    seconds: u64,
    args: &[&str],
    // inferscope's extra flags, or None for a round without inferscope.
    with: Option<&[&str]>,
) -> Result<Round> {
    let _ = fs::remove_file(dir.join("bench.jsonl"));
    let mut scope = match with {
        Some(extra) => Some(start_inferscope(root, server_pid, dir, extra)?),
        None => None,
    };
    let before = scope.as_ref().map(|c| usage(c.id()).0).unwrap_or(0.0);
    let s = load(root, port, seconds, args, &dir.join("summary.json"))?;
    let mut r = Round {
        req_per_s: s["req_per_s"].as_f64().unwrap_or(0.0),
        events_per_s: s["events_per_s"].as_f64().unwrap_or(0.0),
        requests: s["requests"].as_u64().unwrap_or(0),
        reported: None,
        cpu_s: 0.0,
        rss_kib: 0,
        drops: 0,
    };
    if let Some(c) = &mut scope {
        std::thread::sleep(Duration::from_millis(1500));
        let (cpu, rss) = usage(c.id());
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
