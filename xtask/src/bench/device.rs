//! `cargo xtask bench --device`: the stand-in CUDA driver called in a hot loop, with and
//! without inferscope's device probes on it.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::median;
use crate::{setup, util};

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
        let c = Command::new(util::target().join("release/inferscope"))
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
    crate::cache::lock_build()?;
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
                let (rate, cost) = device_round(&dir, &exe, kind, seconds, with.then_some(group))?;
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
