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

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{setup, util};

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

/// `cargo xtask bench --vllm`: a real vLLM (CPU, tiny model) saturated by the Rust client,
/// with and without inferscope attached to its process tree (HTTP and engine IPC), alternating.
pub fn run_vllm(seconds: u64, rounds: u32, report: Option<&Path>) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    setup::toolchain()?;
    setup::vllm()?;
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
    let dir = root.join("target/bench-vllm");
    fs::create_dir_all(&dir)?;
    let port = util::free_port()?;
    let mut server = Command::new(root.join("tests/vllm/serve.sh"))
        .arg(port.to_string())
        .stdout(fs::File::create(dir.join("vllm.log"))?)
        .stderr(fs::File::create(dir.join("vllm.err"))?)
        .spawn()?;
    util::wait_http(port, "/health", Duration::from_secs(600), &mut server)?;
    let args: &[&str] = &["--no-fixture", "--concurrency", "16", "--max-tokens", "32"];
    load(&root, port, 5, args, &dir.join("summary.json")).context("warm-up")?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let r = one_round(&root, &dir, server.id(), port, seconds, args, with.then_some(&[][..]))?;
            eprintln!(
                "bench: vLLM round {i} {}: {:.1} req/s, {:.0} events/s{}",
                if with { "with inferscope" } else { "without" },
                r.req_per_s,
                r.events_per_s,
                r.reported
                    .map_or(String::new(), |n| format!(", reported {n}/{} requests, {:.2} s CPU", r.requests, r.cpu_s))
            );
            if with { on.push(r) } else { off.push(r) }
        }
    }
    let engine_lines = fs::read_to_string(dir.join("bench.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "request" && v["queue_s"].is_f64())
        .count();
    // The Python layer on top: the default scheduler timers (hardware breakpoints in
    // EngineCore) and a 99 Hz rolling profile of every process, against no inferscope.
    let python_layer: &[&str] = &["--python-timers", "default", "--python-profile-rate", "99"];
    let (mut py_off, mut py_on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let r = one_round(&root, &dir, server.id(), port, seconds, args, with.then_some(python_layer))?;
            eprintln!(
                "bench: vLLM round {i} {}: {:.1} req/s",
                if with { "with inferscope + Python layer" } else { "without" },
                r.req_per_s
            );
            if with { py_on.push(r) } else { py_off.push(r) }
        }
    }
    let py_calls = fs::read_to_string(dir.join("bench.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"type\":\"python_call\""))
        .count();
    util::stop(&mut server, Duration::from_secs(30));
    let py_off_rps = median(py_off.iter().map(|r| r.req_per_s).collect());
    let py_on_rps = median(py_on.iter().map(|r| r.req_per_s).collect());
    let py_cpu = median(py_on.iter().map(|r| r.cpu_s / seconds as f64 * 100.0).collect());
    let off_rps = median(off.iter().map(|r| r.req_per_s).collect());
    let on_rps = median(on.iter().map(|r| r.req_per_s).collect());
    let off_ev = median(off.iter().map(|r| r.events_per_s).collect());
    let on_ev = median(on.iter().map(|r| r.events_per_s).collect());
    let reported: u64 = on.iter().filter_map(|r| r.reported).sum();
    let completed: u64 = on.iter().map(|r| r.requests).sum();
    let cpu = median(on.iter().map(|r| r.cpu_s / seconds as f64 * 100.0).collect());
    let rss = on.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let md = format!(
        "## inferscope on a real vLLM\n\nCommand: `cargo xtask bench --vllm --seconds {seconds} --rounds {rounds}`. vLLM 0.32 CPU build, \
         tiny local model, `--enforce-eager`; client: inferscope-load, 16 connections, streams of 32 tokens; inferscope \
         attached to the API server and its children (HTTP, engine IPC). Rounds alternate off/on; medians.\n\n\
         | req/s off | req/s on | ratio | SSE events/s off | on | reported / completed | requests with engine phases (last round) | inferscope CPU | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | {off_rps:.1} | {on_rps:.1} | **{:.3}** | {off_ev:.0} | {on_ev:.0} | {reported} / {completed} | {engine_lines} | {cpu:.1}% of a core | {:.1} MiB |\n",
        on_rps / off_rps.max(1e-9),
        rss as f64 / 1024.0
    ) + &format!(
        "\nWith the Python layer as well (`--python-timers default --python-profile-rate 99`: breakpoints on \
         `Scheduler.schedule` and `update_from_output` in EngineCore, every process sampled at 99 Hz):\n\n\
         | req/s off | req/s on | ratio | timed calls (last round) | inferscope CPU |\n|---|---|---|---|---|\n\
         | {py_off_rps:.1} | {py_on_rps:.1} | **{:.3}** | {py_calls} | {py_cpu:.1}% of a core |\n",
        py_on_rps / py_off_rps.max(1e-9)
    );
    println!("\n{md}");
    if let Some(p) = report {
        fs::write(p, &md)?;
        eprintln!("bench: report written to {}", p.display());
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// ns per write(2) of one byte to /dev/null, over `n` calls.
fn write_cost(n: u64) -> f64 {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null");
    let start = Instant::now();
    for _ in 0..n {
        let _ = f.write(b"x");
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

pub fn run(seconds: u64, rounds: u32, report: Option<&Path>) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    setup::toolchain()?;
    setup::python_env()?;
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
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut md = format!(
        "## inferscope benchmark\n\nMachine: {cores} cores, {}. Command: `cargo xtask bench --seconds {seconds} --rounds {rounds}`.\n\
         Server: tests/fixtures/openai_server.py (FastAPI on uvicorn/uvloop, one process, no model: \
         it is CPU-bound on its HTTP and SSE work, the worst case for a per-syscall tracer). Client: \
         tests/src/bin/inferscope-load.rs, keep-alive, closed loop. Rounds alternate off/on.\n\n",
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    md.push_str("| workload | req/s off | req/s on | ratio | SSE events/s on | reported / completed | ring-buffer drops | inferscope CPU per 1000 req/s | inferscope peak RSS |\n|---|---|---|---|---|---|---|---|---|\n");

    let workloads: [(&str, &[&str]); 3] = [
        (
            "stream, 16 tokens, 32 conns",
            &["--concurrency", "32", "--max-tokens", "16", "--ttft-ms", "0", "--itl-ms", "0"],
        ),
        (
            "stream, 4 tokens, 64 conns",
            &["--concurrency", "64", "--max-tokens", "4", "--ttft-ms", "0", "--itl-ms", "0"],
        ),
        (
            "unary, 16 tokens, 32 conns",
            &["--concurrency", "32", "--max-tokens", "16", "--stream-ratio", "0", "--ttft-ms", "0", "--itl-ms", "0"],
        ),
    ];
    for (name, args) in workloads {
        let port = util::free_port()?;
        let mut server = Command::new(util::python())
            .arg(root.join("tests/fixtures/openai_server.py"))
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("server.log"))?)
            .spawn()?;
        util::wait_http(port, "/health", Duration::from_secs(60), &mut server)?;
        // Warm up the server (and the page cache) before measuring.
        load(&root, port, 3, args, &dir.join("summary.json")).context("warm-up")?;
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let order = if i % 2 == 0 { [false, true] } else { [true, false] };
            for with in order {
                let r = one_round(&root, &dir, server.id(), port, seconds, args, with.then_some(&[][..]))?;
                eprintln!(
                    "bench: {name}: round {i} {}: {:.0} req/s, {:.0} events/s{}",
                    if with { "with inferscope" } else { "without" },
                    r.req_per_s,
                    r.events_per_s,
                    r.reported.map_or(String::new(), |n| format!(
                        ", reported {n}/{} requests, {} drops, {:.2} s CPU",
                        r.requests, r.drops, r.cpu_s
                    ))
                );
                if with { on.push(r) } else { off.push(r) }
            }
        }
        util::stop(&mut server, Duration::from_secs(10));
        let off_rps = median(off.iter().map(|r| r.req_per_s).collect());
        let on_rps = median(on.iter().map(|r| r.req_per_s).collect());
        let ev = median(on.iter().map(|r| r.events_per_s).collect());
        let reported: u64 = on.iter().filter_map(|r| r.reported).sum();
        let completed: u64 = on.iter().map(|r| r.requests).sum();
        let drops: u64 = on.iter().map(|r| r.drops).sum();
        let cpu_per_k =
            median(on.iter().map(|r| r.cpu_s / (seconds as f64) / (r.req_per_s / 1000.0) * 100.0).collect());
        let rss = on.iter().map(|r| r.rss_kib).max().unwrap_or(0);
        md.push_str(&format!(
            "| {name} | {off_rps:.0} | {on_rps:.0} | **{:.3}** | {ev:.0} | {reported} / {completed} | {drops} | {cpu_per_k:.1}% of a core | {:.1} MiB |\n",
            on_rps / off_rps.max(1e-9),
            rss as f64 / 1024.0
        ));
    }

    // Host-wide: syscalls of processes inferscope does not trace still pass its tracepoints.
    let n = 2_000_000;
    let mut base = Vec::new();
    let mut with = Vec::new();
    let port = util::free_port()?;
    let mut server = Command::new(util::python())
        .arg(root.join("tests/fixtures/openai_server.py"))
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    util::wait_http(port, "/health", Duration::from_secs(60), &mut server)?;
    for _ in 0..rounds.max(3) {
        base.push(write_cost(n));
        let mut c = start_inferscope(&root, server.id(), &dir, &[])?;
        with.push(write_cost(n));
        util::stop(&mut c, Duration::from_secs(20));
    }
    util::stop(&mut server, Duration::from_secs(10));
    let (b, w) = (median(base), median(with));
    md.push_str(&format!(
        "\nHost-wide cost (write(2) of 1 byte to /dev/null by a process inferscope does not trace, {n} calls, median of {} rounds): \
         {b:.0} ns without, {w:.0} ns with inferscope loaded: **+{:.0} ns per syscall** (ratio {:.2}). Processes that make few \
         syscalls per unit of work (inference engines) pay little of this; a syscall-heavy neighbour pays it on every call.\n",
        rounds.max(3),
        w - b,
        w / b
    ));
    println!("\n{md}");
    if let Some(p) = report {
        fs::write(p, &md)?;
        eprintln!("bench: report written to {}", p.display());
    }
    Ok(())
}

/// Builds the stand-in CUDA driver and the device fixture into `dir`.
fn build_device_fixture(root: &Path, dir: &Path) -> Result<std::path::PathBuf> {
    let src = root.join("tests/fixtures/device");
    util::run(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(dir.join("libcuda.so.1"))
            .arg(src.join("stub_cuda.c"))
            .arg("-Wl,-soname,libcuda.so.1"),
    )?;
    let exe = dir.join("device_fixture");
    util::run(
        Command::new("cc").args(["-O1", "-o"]).arg(&exe).arg(src.join("device_fixture.c")).args(["-ldl", "-lpthread"]),
    )?;
    Ok(exe)
}

/// One hot-loop round of the device fixture: calls per second of `kind`, with inferscope
/// probing it (`probes`: a --device-probes value) or not; and inferscope's own estimate of a
/// probe hit's cost, when it ran.
fn device_round(
    root: &Path,
    dir: &Path,
    exe: &Path,
    kind: &str,
    seconds: u64,
    probes: Option<&str>,
) -> Result<(f64, Option<String>)> {
    let ctl = dir.join("ctl");
    let _ = fs::remove_dir_all(&ctl);
    fs::create_dir_all(&ctl)?;
    let mut fixture = Command::new(exe)
        .arg(dir)
        .arg(&ctl)
        .args(["hot", &seconds.to_string(), kind])
        .stdout(Stdio::null())
        .spawn()
        .context("device fixture")?;
    let mut scope = None;
    let err = dir.join("inferscope.err");
    if let Some(p) = probes {
        let c = Command::new(root.join("target/release/inferscope"))
            .args(["attach", "--pid", &fixture.id().to_string(), "--quiet", "--device-probes", p])
            .args(["--device-overhead-budget", "0", "--device-rate-limit", "0"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err)?)
            .spawn()?;
        scope = Some(c);
        let t0 = Instant::now();
        while !fs::read_to_string(&err).unwrap_or_default().contains("tracing pid") {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("inferscope did not attach: {}", fs::read_to_string(&err).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fs::write(ctl.join("go1"), "")?;
    if probes.is_some() {
        let t0 = Instant::now();
        while !fs::read_to_string(&err).unwrap_or_default().contains(" in libcuda.so.1") {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no probes on libcuda.so.1: {}", fs::read_to_string(&err).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fs::write(ctl.join("go2"), "")?;
    let t0 = Instant::now();
    while !ctl.join("done").exists() {
        if t0.elapsed() > Duration::from_secs(seconds + 60) {
            bail!("the device fixture did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let truth: Value = serde_json::from_str(&fs::read_to_string(ctl.join("truth.json"))?)?;
    fs::write(ctl.join("go3"), "")?;
    let _ = fixture.wait();
    let cost = if let Some(mut c) = scope {
        util::stop(&mut c, Duration::from_secs(20));
        let text = fs::read_to_string(&err).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("a probe hit costs"))
            .and_then(|l| l.split("(a probe hit costs ").nth(1))
            .map(|s| s.trim_end_matches(')').to_string())
    } else {
        None
    };
    Ok((truth["calls"].as_f64().unwrap_or(0.0) / seconds as f64, cost))
}

/// `cargo xtask bench --device`: what a device probe adds to each call it sees, side by side
/// in one run (the stand-in CUDA driver called in a tight loop, with and without inferscope,
/// in alternating rounds), and the call rate at which the probes stay under 1% of one core.
pub fn run_device(seconds: u64, rounds: u32, report: Option<&Path>) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    setup::toolchain()?;
    let root = util::root();
    util::run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "inferscope"]))?;
    let dir = root.join("target/bench/device");
    fs::create_dir_all(&dir)?;
    let exe = build_device_fixture(&root, &dir)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut md = format!(
        "## inferscope device-probe benchmark\n\nMachine: {cores} cores, {}. Command: `cargo xtask bench --device --seconds {seconds} --rounds {rounds}`.\n\
         Target: tests/fixtures/device/device_fixture.c calling one function of the stand-in libcuda.so.1 in a tight loop \
         (one thread); rounds alternate without/with inferscope probing it (entry and return probes, rate limit and budget off).\n\n\
         | function (probe group) | calls/s without | calls/s with | ratio | added per call | calls/s that cost 1% of a core |\n|---|---|---|---|---|---|\n",
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let mut costs = Vec::new();
    let mut calibrated = None;
    for (kind, symbol, group) in [
        ("launch", "cuLaunchKernel", "launch"),
        ("sync", "cuStreamSynchronize", "sync"),
        ("graph", "cuGraphLaunch", "graph"),
    ] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let order = if i % 2 == 0 { [false, true] } else { [true, false] };
            for with in order {
                let (rate, cost) = device_round(&root, &dir, &exe, kind, seconds, with.then_some(group))?;
                eprintln!(
                    "bench: device {symbol}: round {i} {}: {rate:.0} calls/s",
                    if with { "probed" } else { "unprobed" }
                );
                if with {
                    on.push(rate);
                    calibrated = calibrated.or(cost);
                } else {
                    off.push(rate);
                }
            }
        }
        let (off, on) = (median(off), median(on));
        let added_ns = (1e9 / on.max(1e-9) - 1e9 / off.max(1e-9)).max(0.0);
        let budget_rate = if added_ns > 0.0 { 0.01 * 1e9 / added_ns } else { f64::INFINITY };
        costs.push(added_ns);
        md.push_str(&format!(
            "| {symbol} ({group}) | {off:.0} | {on:.0} | **{:.3}** | {:.2} us | {budget_rate:.0} |\n",
            on / off.max(1e-9),
            added_ns / 1e3
        ));
    }
    let worst = costs.iter().cloned().fold(0.0, f64::max);
    md.push_str(&format!(
        "\nThe default set (graph launches, copies, synchronisations, allocations, collectives, kernel-name lookups) \
         stays under 1% of one core up to **{:.0} probed calls per second** per process at the worst cost above; eager \
         kernel launches (group `launch`, off by default) reach that at the same rate, which an eagerly-run engine \
         exceeds (10^4-10^5 launches/s): hence off by default, and the overhead budget switches a probe off when its \
         measured rate crosses it. inferscope's own start-up calibration on this machine: {}.\n",
        0.01 * 1e9 / worst.max(1.0),
        calibrated.unwrap_or_else(|| "not reported".into())
    ));
    println!("\n{md}");
    if let Some(p) = report {
        fs::write(p, &md)?;
        eprintln!("bench: report written to {}", p.display());
    }
    Ok(())
}

/// A CPU-bound Python loop for `seconds` once a line arrives on stdin (inferscope is watching
/// by then): `f` 1000 times, then `g` once; prints how many calls of `f` it made.
const PY_LOOP: &str = "import sys, time\ndef f(x):\n    return x + 1\ndef g(x):\n    return x\nfor _ in range(50):\n    g(f(0))\nsys.stdin.readline()\nend = time.time() + float(sys.argv[1])\nn = 0\nwhile time.time() < end:\n    for _ in range(1000):\n        f(n)\n    n = g(n) + 1000\nprint(n, flush=True)\n";

/// What watches the loop in a round.
#[derive(Clone, Copy)]
enum Watch {
    None,
    /// `inferscope profile` at this rate.
    Profile(u64),
    /// `inferscope timers` on this function of the loop.
    Timer(&'static str),
    /// `inferscope timers --eval-uprobes` on this function (CPython 3.9/3.10).
    EvalTimer(&'static str),
}

/// One round: calls per second of the Python loop, watched as `watch` says.
fn python_round(root: &Path, python: &Path, seconds: u64, watch: Watch) -> Result<f64> {
    let mut py = Command::new(python)
        .args(["-c", PY_LOOP, &seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut prof = None;
    let pid = py.id().to_string();
    let duration = (seconds + 8).to_string();
    let mut cmd = Command::new(root.join("target/release/inferscope"));
    match watch {
        Watch::None => {}
        Watch::Profile(r) => {
            cmd.args(["profile", "--pid", &pid, "--duration", &duration, "--rate", &r.to_string(), "-o", "/dev/null"]);
        }
        Watch::Timer(f) | Watch::EvalTimer(f) => {
            let cfg = std::env::temp_dir().join(format!("inferscope-bench-{f}.yaml"));
            fs::write(&cfg, format!("- symbol: __main__:{f}\n"))?;
            cmd.args(["timers", "--pid", &pid, "--duration", &duration, "-o", "/dev/null", "--config"]).arg(cfg);
            if matches!(watch, Watch::EvalTimer(_)) {
                cmd.arg("--eval-uprobes");
            }
        }
    }
    if !matches!(watch, Watch::None) {
        std::thread::sleep(Duration::from_millis(200));
        prof = Some(cmd.stderr(Stdio::null()).spawn()?);
    }
    // BPF loaded and attached (and the plain rounds wait as long).
    std::thread::sleep(Duration::from_millis(2500));
    std::io::Write::write_all(py.stdin.as_mut().context("stdin")?, b"go\n")?;
    let mut out = String::new();
    std::io::Read::read_to_string(py.stdout.as_mut().context("stdout")?, &mut out)?;
    let _ = py.wait();
    if let Some(mut p) = prof {
        let _ = p.wait();
    }
    Ok(out.trim().parse::<f64>().context("the loop's count")? / seconds as f64)
}

/// Rounds of the Python loop alternating without and with `watch` (off/on, then on/off, so
/// drift hits both sides alike): the medians, calls of `f` per second.
fn python_pair(root: &Path, python: &Path, seconds: u64, rounds: u32, watch: Watch, label: &str) -> Result<(f64, f64)> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let r = python_round(root, python, seconds, if with { watch } else { Watch::None })?;
            eprintln!("bench: {label} round {i} {}: {r:.0} calls/s", if with { "watched" } else { "plain" });
            if with { on.push(r) } else { off.push(r) }
        }
    }
    Ok((median(off), median(on)))
}

/// `cargo xtask bench --python`: what the Python sampler (at two rates) and the function
/// timers (on a function called all the time, and on one called rarely) cost the watched
/// process, side by side: rounds alternate without and with inferscope.
pub fn run_python(seconds: u64, rounds: u32, report: Option<&Path>) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    setup::toolchain()?;
    let root = util::root();
    util::run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "inferscope"]))?;
    let version = util::output(Command::new("python3").arg("--version")).unwrap_or_default();
    let mut md = format!(
        "## inferscope Python layer benchmark\n\n{}, kernel {}. Command: `cargo xtask bench --python --seconds {seconds} --rounds {rounds}`.\n\
         Target: a CPU-bound loop of Python calls (one thread); rounds alternate without/with `inferscope profile`.\n\n\
         | rate | calls/s without | calls/s with | ratio | cost per sample |\n|---|---|---|---|---|\n",
        version.trim(),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let python3 = Path::new("python3");
    for rate in [99u64, 999] {
        let (off, on) =
            python_pair(&root, python3, seconds, rounds, Watch::Profile(rate), &format!("python {rate} Hz"))?;
        let ratio = on / off.max(1e-9);
        let per_sample_us = (1.0 - ratio).max(0.0) / rate as f64 * 1e6;
        md.push_str(&format!("| {rate} Hz | {off:.0} | {on:.0} | **{ratio:.3}** | {per_sample_us:.1} us |\n"));
    }
    // Function timers: every call of `f` trapped (entry and return), or only `g`, called once
    // per 1000 calls of `f` (what an unwatched function pays: nothing but the rare trap).
    md.push_str(
        "\nFunction timers (`inferscope timers`, hardware breakpoints on entry and return; calls/s are the loop's \
         calls of `f`, which calls `g` once per 1000):\n\n\
         | watched | calls/s without | calls/s with | ratio | cost per watched call |\n|---|---|---|---|---|\n",
    );
    for (f, watched_per_call) in [("f", 1.0), ("g", 0.001)] {
        let (off, on) = python_pair(&root, python3, seconds, rounds, Watch::Timer(f), &format!("timers on {f}"))?;
        let ratio = on / off.max(1e-9);
        // Extra seconds per loop call, divided among the watched calls in it.
        let per_call_us = (1.0 / on.max(1e-9) - 1.0 / off.max(1e-9)).max(0.0) / watched_per_call * 1e6;
        let what = if f == "f" { "every call (`f`)" } else { "1 call in 1001 (`g`)" };
        md.push_str(&format!("| {what} | {off:.0} | {on:.0} | **{ratio:.3}** | {per_call_us:.1} us |\n"));
    }
    // 3.9/3.10: eval-frame uprobes trap on every Python call of the process, watched or not.
    let root_pyenv =
        std::env::var_os("PYENV_ROOT").map(std::path::PathBuf::from).unwrap_or_else(|| "/root/.pyenv".into());
    let py310 = fs::read_dir(root_pyenv.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("3.10.")))
        .map(|p| p.join("bin/python"));
    match py310 {
        Some(py) => {
            let (off, on) = python_pair(&root, &py, seconds, rounds, Watch::EvalTimer("g"), "eval uprobes on g")?;
            let ratio = on / off.max(1e-9);
            let per_call_us = (1.0 / on.max(1e-9) - 1.0 / off.max(1e-9)).max(0.0) * 1e6;
            md.push_str(&format!(
                "| 3.10, `--eval-uprobes` on `g` (every Python call traps) | {off:.0} | {on:.0} | **{ratio:.3}** | {per_call_us:.1} us per Python call |\n"
            ));
        }
        None => md.push_str("| 3.10, `--eval-uprobes` | no pyenv 3.10 here | | | |\n"),
    }
    println!("\n{md}");
    if let Some(p) = report {
        fs::write(p, &md)?;
        eprintln!("bench: report written to {}", p.display());
    }
    Ok(())
}
