//! `cargo xtask bench --python`: a CPU-bound Python loop with and without the Python sampler
//! and the function timers watching it.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::median;
use crate::{setup, util};

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
fn python_round(python: &Path, seconds: u64, watch: Watch) -> Result<f64> {
    let mut py = Command::new(python)
        .args(["-c", PY_LOOP, &seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut prof = None;
    let pid = py.id().to_string();
    let duration = (seconds + 8).to_string();
    let mut cmd = Command::new(util::target().join("release/inferscope"));
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
fn python_pair(python: &Path, seconds: u64, rounds: u32, watch: Watch, label: &str) -> Result<(f64, f64)> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let r = python_round(python, seconds, if with { watch } else { Watch::None })?;
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
    crate::cache::lock_build()?;
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
        let (off, on) = python_pair(python3, seconds, rounds, Watch::Profile(rate), &format!("python {rate} Hz"))?;
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
        let (off, on) = python_pair(python3, seconds, rounds, Watch::Timer(f), &format!("timers on {f}"))?;
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
            let (off, on) = python_pair(&py, seconds, rounds, Watch::EvalTimer("g"), "eval uprobes on g")?;
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
