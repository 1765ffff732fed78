//! The whole test suite, in the order a failure is cheapest to find: unit and property tests,
//! the Python fixtures' and receivers' self-tests, integration tests with real BPF programs
//! against real servers and receivers, the real-vLLM tier, then every fuzz target for a while.
//! Ends with one line, `N passed, M failed`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{cache, setup, util};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
    failed_names: Vec<String>,
    /// Each part and how long it took, for the summary at the end.
    times: Vec<(String, std::time::Duration)>,
}

impl Tally {
    /// Runs a command, echoing its output, and counts `test result:` lines (cargo test) or a
    /// final `N passed, M failed` line (Python self-tests); a command that prints neither
    /// counts as one test, passed or failed by its exit status.
    fn run(&mut self, what: &str, cmd: &mut Command) {
        let started = std::time::Instant::now();
        self.run_timed(what, cmd);
        self.times.push((what.to_string(), started.elapsed()));
    }

    fn run_timed(&mut self, what: &str, cmd: &mut Command) {
        eprintln!("\n=== {what}\n+ {}", util::show(cmd));
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn();
        let Ok(mut child) = child else {
            self.failed += 1;
            self.failures.push(format!("{what}: could not start"));
            return;
        };
        let mut counted = false;
        // The test whose captured output is being printed, and whether its panic line came.
        let mut block: Option<(String, bool)> = None;
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("{line}");
                if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
                    block = Some((name.to_string(), false));
                } else if let Some((name, panicked)) = &mut block {
                    if line.contains("panicked at") {
                        *panicked = true;
                    } else if *panicked {
                        // The panic's message, with the test's name, where CI's tail shows it.
                        let said: String = line.chars().take(300).collect();
                        self.failures.push(format!("{what}: {name}: {said}"));
                        block = None;
                    }
                }
                // `test name ... FAILED`: named again at the end, where CI's tail shows it.
                if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
                    self.failed_names.push(format!("{what}: {name}"));
                }
                if let Some((p, f)) = parse_counts(&line) {
                    self.passed += p;
                    self.failed += f;
                    counted = true;
                }
            }
        }
        let ok = child.wait().map(|s| s.success()).unwrap_or(false);
        match (ok, counted) {
            (true, false) => self.passed += 1,
            (false, false) => self.failed += 1,
            _ => {}
        }
        // Tests named as failed whose panic message was not seen are named without one.
        for n in std::mem::take(&mut self.failed_names) {
            if !self.failures.iter().any(|f| f.starts_with(&format!("{n}: "))) {
                self.failures.push(n);
            }
        }
        if !ok && !self.failures.iter().any(|f| f.starts_with(&format!("{what}: "))) {
            self.failures.push(what.to_string());
        }
    }
}

/// `test result: ok. 7 passed; 0 failed; ...` or `12 passed, 0 failed`.
fn parse_counts(line: &str) -> Option<(u64, u64)> {
    let num_before = |word: &str| -> Option<u64> {
        let i = line.find(word)?;
        line[..i].trim_end().rsplit([' ', '.', ';', ',']).next()?.parse().ok()
    };
    if line.starts_with("test result:") || line.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()) {
        let p = num_before(" passed")?;
        let f = num_before(" failed")?;
        return Some((p, f));
    }
    None
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(util::root());
    c
}

pub fn run(vllm: bool, fuzz_seconds: u64, filter: Option<&str>) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the integration tests load BPF programs: run `cargo xtask test` as root (e.g. sudo -E env PATH=$PATH cargo xtask test)"
        );
    }
    setup::check_disk(vllm, fuzz_seconds > 0)?;
    cache::lock_build()?;
    let started = std::time::Instant::now();
    setup::all(vllm)?;
    let setup_took = started.elapsed();
    let root = util::root();
    let started = std::time::Instant::now();
    util::run(cargo().args(["build", "-p", "inferscope", "-p", "inferscope-tests", "--bins"]))?;
    let mut t = Tally::default();
    t.times.push(("setup (everything installed)".to_string(), setup_took));
    t.times.push(("build of the daemon and the test programs".to_string(), started.elapsed()));
    let bin = util::target().join("debug/inferscope");
    let env = |c: &mut Command| {
        c.env("INFERSCOPE_BIN", &bin).env("INFERSCOPE_PYTHON", util::python());
    };

    let mut unit = cargo();
    unit.args(["test", "-p", "inferscope", "-p", "inferscope-common", "--no-fail-fast"]);
    t.run("unit and property tests", &mut unit);

    // Kunpeng (Ascend) hosts: the daemon with its BPF programs cross-builds, and its unit tests
    // pass on aarch64 under qemu-user.
    let mut arm = cargo();
    arm.args(["build", "-p", "inferscope", "--bin", "inferscope", "--target", setup::AARCH64]);
    setup::aarch64_env(&mut arm);
    t.run("aarch64: the daemon cross-built (BPF programs for aarch64 registers)", &mut arm);
    let mut arm = cargo();
    arm.args(["test", "-p", "inferscope", "--lib", "--target", setup::AARCH64, "--no-fail-fast"]);
    setup::aarch64_env(&mut arm);
    t.run("aarch64: unit and property tests under qemu-user", &mut arm);

    t.run(
        "fixture server self-test",
        Command::new(util::python()).arg(root.join("tests/fixtures/selftest.py")).current_dir(&root),
    );
    t.run(
        "OTLP receiver self-test",
        Command::new(util::receiver_python()).arg(root.join("tests/receivers/selftest.py")).current_dir(&root),
    );

    let mut integ = cargo();
    integ.args(["test", "-p", "inferscope-tests", "--no-fail-fast"]);
    if let Some(f) = filter {
        integ.arg(f);
    }
    integ.args(["--", "--test-threads=1"]);
    env(&mut integ);
    t.run("integration tests (real BPF, real servers and receivers)", &mut integ);

    if vllm {
        let mut v = cargo();
        v.args(["test", "-p", "inferscope-tests", "--test", "vllm", "--", "--ignored", "--test-threads=1"]);
        env(&mut v);
        t.run("real vLLM tier", &mut v);
        let mut s = cargo();
        s.args(["test", "-p", "inferscope-tests", "--test", "sglang", "--", "--ignored", "--test-threads=1"]);
        env(&mut s);
        t.run("real SGLang tier", &mut s);
    }

    if fuzz_seconds > 0 {
        fuzz_into(&mut t, fuzz_seconds, None);
        if filter.is_none() {
            // Everything the suite builds was built from this checkout's files.
            cache::record_sources(&root);
        }
    }

    eprintln!();
    // Where the time went (the development loop's budget, issue 27).
    let total: f64 = t.times.iter().map(|(_, d)| d.as_secs_f64()).sum();
    eprintln!("time by part ({:.0} s in all):", total);
    for (what, d) in &t.times {
        if d.as_secs_f64() >= 5.0 {
            eprintln!("  {:>6.0} s  {what}", d.as_secs_f64());
        }
    }
    for f in &t.failures {
        eprintln!("FAILED: {f}");
    }
    println!("{} passed, {} failed", t.passed, t.failed);
    if t.failed > 0 || !t.failures.is_empty() {
        bail!("{} test(s) failed", t.failed.max(t.failures.len() as u64));
    }
    Ok(())
}

const FUZZ_TARGETS: &[&str] = &[
    "decode_event",
    "http_parser",
    "sse_parser",
    "openai_json",
    "tracker",
    "procfs_tables",
    "zmtp_engine",
    "pickle",
    "device_tracker",
    "python_timers",
    "elf_reader",
];

/// Fuzz builds go to the shared build directory too (under x86_64-unknown-linux-gnu/release,
/// as cargo-fuzz names its target): the fuzz crate is a workspace member, so its hashes do not
/// depend on where the checkout is and every checkout reuses one build.
fn fuzz_target() -> std::path::PathBuf {
    util::target()
}

fn fuzz_into(t: &mut Tally, seconds: u64, only: Option<&str>) {
    let root = util::root();
    let mut build = Command::new("cargo");
    build
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(fuzz_target());
    t.run("fuzz targets build", &mut build);
    for target in FUZZ_TARGETS.iter().filter(|x| only.is_none_or(|o| o == **x)) {
        let corpus = root.join("fuzz/corpus").join(target);
        let _ = std::fs::create_dir_all(&corpus);
        if *target == "elf_reader" {
            // Real ELF files to start from: small system libraries.
            for lib in ["/usr/lib/x86_64-linux-gnu/libdl.so.2", "/usr/lib/x86_64-linux-gnu/libutil.so.1"] {
                let seed = corpus.join(format!("seed-{}", lib.rsplit('/').next().unwrap_or("lib")));
                if !seed.exists() {
                    let _ = std::fs::copy(lib, &seed);
                }
            }
        }
        let mut c = Command::new("cargo");
        c.current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", "--sanitizer", "none", "--target-dir"])
            .arg(fuzz_target())
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"));
        // libFuzzer prints no tally: a clean exit is one passed target.
        t.run(&format!("fuzz {target} for {seconds}s"), &mut c);
    }
}

pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    cache::lock_build()?;
    setup::toolchain()?;
    setup::cargo_fuzz()?;
    let mut t = Tally::default();
    fuzz_into(&mut t, seconds, only);
    println!("{} passed, {} failed", t.passed, t.failed);
    if !t.failures.is_empty() {
        bail!("fuzzing found failures: {:?}", t.failures);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_counts;

    #[test]
    fn counts() {
        assert_eq!(parse_counts("test result: ok. 7 passed; 0 failed; 1 ignored"), Some((7, 0)));
        assert_eq!(parse_counts("test result: FAILED. 6 passed; 1 failed; 0 ignored"), Some((6, 1)));
        assert_eq!(parse_counts("22 passed, 0 failed"), Some((22, 0)));
        assert_eq!(parse_counts("some other line"), None);
    }
}
