//! The Python layer's interpreter reader against real interpreters: `inferscope python-info`
//! reads a running CPython from outside (no injection, no stop) and must find what the
//! interpreter itself reports (tests/fixtures/python_stacks.py): every thread, its ids, and its
//! stack frame by frame. Run on pyenv's 3.11 (shared libpython), Debian's python3.11 (the
//! interpreter linked into the executable), and every other pyenv CPython 3.9+ present.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use inferscope_tests::*;
use serde_json::Value;

/// One CPython to test against: an executable of this host, or one inside a Debian chroot
/// that `cargo xtask setup` builds (.cache/chroots/SUITE), run with chroot(8) as an ordinary
/// process of this host.
#[derive(Clone, Debug)]
struct Py {
    exe: PathBuf,
    chroot: Option<PathBuf>,
}

impl Py {
    fn name(&self) -> String {
        match &self.chroot {
            Some(r) => format!("{} in {}", self.exe.display(), r.display()),
            None => self.exe.display().to_string(),
        }
    }

    /// A command running `fixture` (a path under tests/fixtures; for a chroot, its first
    /// component is copied into the chroot's /fx first).
    fn run(&self, fixture: &str) -> Command {
        match &self.chroot {
            None => {
                let mut c = Command::new(&self.exe);
                c.arg(repo_root().join("tests/fixtures").join(fixture));
                c
            }
            Some(root) => {
                let top = fixture.split('/').next().unwrap();
                let fx = root.join("fx");
                std::fs::create_dir_all(&fx).unwrap();
                let ok = Command::new("cp")
                    .arg("-r")
                    .arg(repo_root().join("tests/fixtures").join(top))
                    .arg(&fx)
                    .status()
                    .unwrap();
                assert!(ok.success(), "copying {top} into {}", fx.display());
                let mut c = Command::new("chroot");
                c.arg(root).arg(&self.exe).arg(format!("/fx/{fixture}"));
                c
            }
        }
    }

    fn minor(&self) -> u32 {
        let mut c = match &self.chroot {
            None => Command::new(&self.exe),
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(&self.exe);
                c
            }
        };
        let out = c.args(["-c", "import sys; print(sys.version_info[1])"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }
}

/// Debian's python3.11 (static), every pyenv CPython 3.9+ present, and the Debian chroots'
/// system pythons (bullseye 3.9, trixie 3.13, forky 3.14: static builds of other releases).
fn interpreters() -> Vec<Py> {
    let mut v = vec![Py { exe: PathBuf::from("/usr/bin/python3.11"), chroot: None }];
    let root = std::env::var_os("PYENV_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut pyenv: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            let minor = n.strip_prefix("3.").and_then(|r| r.split('.').next()?.parse::<u32>().ok());
            minor.is_some_and(|m| (9..=14).contains(&m))
        })
        .map(|p| p.join("bin/python"))
        .filter(|p| p.exists())
        .collect();
    pyenv.sort();
    v.extend(pyenv.into_iter().map(|exe| Py { exe, chroot: None }));
    for (suite, exe) in
        [("bullseye", "/usr/bin/python3.9"), ("trixie", "/usr/bin/python3.13"), ("forky", "/usr/bin/python3.14")]
    {
        let root = repo_root().join(".cache/chroots").join(suite);
        assert!(
            root.join(exe.trim_start_matches('/')).exists(),
            "no Debian {suite} chroot with {exe} in {}: run `cargo xtask setup`",
            root.display()
        );
        v.push(Py { exe: PathBuf::from(exe), chroot: Some(root) });
    }
    v
}

#[test]
fn python_info_reads_threads_and_stacks_of_real_interpreters() {
    let all = interpreters();
    let names: Vec<String> = all.iter().map(Py::name).collect();
    assert!(all[0].exe.exists(), "Debian's /usr/bin/python3.11 is missing");
    assert!(names.iter().any(|n| n.contains("/3.11.")), "no pyenv 3.11 (shared libpython) in {names:?}");
    let mut checked = Vec::new();
    for py in &all {
        let mut child =
            py.run("python_stacks.py").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let truth: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {e}: {line}", py.name()));
        let pid = child.id();
        let out = Command::new(inferscope_bin())
            .args(["python-info", "--pid", &pid.to_string(), "--json"])
            .output()
            .expect("inferscope");
        drop(child.stdin.take());
        let _ = child.wait();
        assert!(out.status.success(), "{}: {}", py.name(), String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let v = &truth["version"];
        let want_version = format!("{}.{}", v[0], v[1]);
        assert!(got["version"].as_str().unwrap().starts_with(&want_version), "{}: {got}", py.name());
        let threads = got["threads"].as_array().unwrap();
        for t in truth["threads"].as_array().unwrap() {
            let found = threads
                .iter()
                .find(|g| g["thread_id"] == t["thread_id"])
                .unwrap_or_else(|| panic!("{}: thread {} not found in {got}", py.name(), t["thread_id"]));
            // 3.11+ keep it in the thread state; before, it comes from the C library's
            // thread descriptor.
            assert_eq!(found["native_thread_id"], t["native_thread_id"], "{}", py.name());
            assert_eq!(found["stack"], t["stack"], "{}: stack of thread {}", py.name(), t["thread_id"]);
            assert_eq!(found["main"], t["native_thread_id"] == pid, "{}", py.name());
        }
        // The watcher (not in the truth) is the only other thread.
        assert_eq!(threads.len(), truth["threads"].as_array().unwrap().len() + 1, "{}", py.name());
        checked.push(format!("{} ({})", got["version"].as_str().unwrap(), got["layout"].as_str().unwrap()));
    }
    eprintln!("python-info checked against: {}", checked.join(", "));
}

/// The BPF sampler puts the right share of time in the right function: a process spends
/// (by its own clock) about 70% of its time in `hot_a` and 30% in `hot_b`; `inferscope
/// profile` must find the same split within 15 points, with the whole call path, on every
/// CPython present (3.9 and 3.10 through their threads' C-library descriptors). The burner's
/// slices were a fixed 7 + 3 ms, and the sampling period (199 Hz: 5.025 ms of the thread's CPU
/// time) could lock onto that 10 ms cycle: 98.5% in hot_a was seen once (and 58.7%, 61.7%,
/// 81.6% on other runs). With each slice drawn within +-30%, 27 shares over 3 runs of every
/// interpreter fell within 3.5 points of the measured ones.
#[test]
fn profile_puts_the_right_share_of_time_in_the_right_function() {
    let all = interpreters();
    assert!(all.len() >= 2, "pyenv 3.11 and Debian's 3.11 at least: {all:?}");
    let dir = scratch("profile");
    let mut checked = Vec::new();
    for py in &all {
        let (mut child, mut lines, pid) = burn(py.run("python_burn.py"), 5);
        let folded = dir.join("profile.folded");
        let out = Command::new(inferscope_bin())
            .args(["profile", "--pid", &pid.to_string(), "--duration", "3", "--rate", "199", "-o"])
            .arg(&folded)
            .output()
            .expect("inferscope");
        assert!(out.status.success(), "{}: {}", py.name(), String::from_utf8_lossy(&out.stderr));
        let truth: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let _ = child.wait();
        let text = std::fs::read_to_string(&folded).unwrap();
        let (mut a, mut b) = (0u64, 0u64);
        for line in text.lines() {
            let (stack, n) = line.rsplit_once(' ').unwrap();
            let n: u64 = n.parse().unwrap();
            // Before 3.11 code objects have no qualified name: `run`, not `Loop.run`.
            let frames: Vec<&str> = stack
                .split(';')
                .map(|f| f.split(" (").next().unwrap())
                .map(|f| if f == "Loop.run" { "run" } else { f })
                .collect();
            match frames.as_slice() {
                ["<module>", "run", "hot_a", "spin"] => a += n,
                ["<module>", "run", "hot_b", "spin"] => b += n,
                _ => {}
            }
        }
        let share = a as f64 / (a + b).max(1) as f64;
        let want = truth["hot_a"].as_f64().unwrap();
        assert!(a + b > 300, "{}: only {} samples in hot_a/hot_b:\n{text}", py.name(), a + b);
        assert!((share - want).abs() < 0.15, "{}: hot_a {share:.3} sampled, {want:.3} measured", py.name());
        checked.push(format!("{} {:.3} vs {:.3}", py.name(), share, want));
    }
    eprintln!("profile shares (sampled vs measured): {}", checked.join("; "));
}

/// Starts tests/fixtures/python_burn.py (as `cmd` runs it) for `seconds`: the process, its
/// output lines (the measured shares come last) and its pid.
fn burn(
    mut cmd: Command,
    seconds: u32,
) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, u64) {
    let mut child = cmd.arg(seconds.to_string()).stdout(Stdio::piped()).spawn().expect("python");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pid = first["pid"].as_u64().unwrap();
    (child, lines, pid)
}

/// CPython 3.11+ interpreters present (Debian's static 3.11 first).
fn interpreters_3_11_plus() -> Vec<Py> {
    interpreters().into_iter().filter(|p| p.minor() >= 11).collect()
}

/// Runs tests/fixtures/python_timers.py SCENARIO under `inferscope timers` with `config`:
/// (the fixture's own truth, the calls inferscope wrote, inferscope's standard error).
fn timed_run(py: &Py, scenario: &str, config: &str, dir: &std::path::Path) -> (Value, Vec<Value>, String) {
    timed_run_with(py, scenario, config, dir, &[])
}

fn timed_run_with(
    py: &Py,
    scenario: &str,
    config: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Value, Vec<Value>, String) {
    use std::io::Write as _;
    let cfg = dir.join(format!("{scenario}.yaml"));
    std::fs::write(&cfg, config).unwrap();
    let mut child =
        py.run("python_timers.py").arg(scenario).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pid = ready["pid"].as_u64().unwrap();
    let calls = dir.join(format!("{scenario}.jsonl"));
    let mut timers = Command::new(inferscope_bin())
        .args(["timers", "--pid", &pid.to_string(), "--duration", "60", "--config"])
        .arg(&cfg)
        .args(extra)
        .arg("-o")
        .arg(&calls)
        .stderr(Stdio::piped())
        .spawn()
        .expect("inferscope");
    // Go once the watchpoints are set.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = timers.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.ends_with(": watching") {
                let _ = tx.send(());
            }
            all += &l;
            all.push('\n');
        }
        all
    });
    let watching = rx.recv_timeout(std::time::Duration::from_secs(30));
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let truth: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = child.wait();
    let status = timers.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(watching.is_ok(), "{}: inferscope never said it was watching:\n{err}", py.name());
    assert!(status.success(), "{}: {err}", py.name());
    (truth, read_jsonl(&calls), err)
}

/// The 200 `Engine.step` calls of the basic scenario against the fixture's own clock: each
/// timed in `mode` and entered before its first statement; all but 5 within 1 ms + 5% of the
/// duration measured inside (a call preempted between its clock read and its return, or
/// during a trap, takes milliseconds more on 2 busy CPUs: seen once in CI, +3.4 ms), and a
/// median difference under 100 us. Returns (median, worst) in ns.
fn check_step_timings(name: &str, truth: &Value, calls: &[Value], mode: &str, err: &str) -> (f64, f64) {
    let steps = calls_of(calls, "Engine.step");
    let want = truth["step"].as_array().unwrap();
    assert_eq!(steps.len(), want.len(), "{name}: Engine.step calls\n{err}");
    assert_eq!(want.len(), 200);
    let (mut diffs, mut outliers) = (Vec::new(), Vec::new());
    for (c, w) in steps.iter().zip(want) {
        let (t0, t1) = (w[0].as_u64().unwrap(), w[1].as_u64().unwrap());
        assert_eq!(c["mode"], mode);
        let (start, dur) = (c["start_ns"].as_u64().unwrap(), c["duration_ns"].as_u64().unwrap());
        // The function is entered before its first statement runs, and left after its last.
        assert!(start <= t0 && t0 - start < 1_000_000, "{name}: entry {start} vs first statement {t0}");
        let truth_dur = (t1 - t0) as f64;
        let diff = (dur as f64 - truth_dur).abs();
        diffs.push(diff);
        if diff >= 1_000_000.0 + 0.05 * truth_dur {
            outliers.push(format!("{dur} ns timed, {truth_dur} ns measured inside"));
        }
    }
    assert!(outliers.len() <= 5, "{name}: {} calls off by more than 1 ms + 5%: {outliers:?}", outliers.len());
    let (median, worst) = stats(&mut diffs);
    assert!(median < 100_000.0, "{name}: median |timed - measured| {median} ns");
    (median, worst)
}

fn calls_of<'a>(calls: &'a [Value], function: &str) -> Vec<&'a Value> {
    calls.iter().filter(|c| c["function"] == function).collect()
}

/// Hardware-breakpoint timers count every call of the watched functions exactly and time them
/// to within the trap's own cost, on every CPython 3.11+ present (Debian's static 3.11,
/// pyenv's shared 3.11, 3.12, 3.13): inlined method calls, recursion (by frame), exceptions
/// (counted as calls left without a return), a functools.wraps decorator, a second thread,
/// and a function that no longer fits the four debug registers (said, not silently dropped).
#[test]
fn function_timers_are_exact_on_real_interpreters() {
    let all = interpreters_3_11_plus();
    assert!(all.len() >= 2, "pyenv 3.11 and Debian's 3.11 at least: {all:?}");
    let dir = scratch("timers");
    let mut checked = Vec::new();
    for py in &all {
        let name = py.name();
        // basic: 200 inlined calls with known durations, and 465 recursive calls.
        let (truth, calls, err) =
            timed_run(py, "basic", "- symbol: __main__:Engine.step\n- symbol: __main__:fib\n", &dir);
        let (median, worst) = check_step_timings(&name, &truth, &calls, "breakpoint", &err);
        let fib = calls_of(&calls, "fib");
        assert_eq!(fib.len() as u64, truth["fib"].as_u64().unwrap(), "{name}: fib calls\n{err}");
        let outer: Vec<_> = fib.iter().filter(|c| c["depth"] == 0).collect();
        assert_eq!(outer.len(), 1, "{name}: one outermost fib call");
        let longest = fib.iter().map(|c| c["duration_ns"].as_u64().unwrap()).max().unwrap();
        assert_eq!(outer[0]["duration_ns"].as_u64().unwrap(), longest, "{name}: the outermost call is the longest");
        assert!(err.contains("0 left without a return"), "{name}: {err}");

        // edge: exceptions, decorators, a second thread, and too many functions.
        let (truth, calls, err) = timed_run(
            py,
            "edge",
            "- symbol: __main__:maybe_fail\n\
             - symbol: __main__:Engine.decorated\n  metrics: [{type: counter}]\n\
             - symbol: __main__:Engine.step\n  metrics: [{type: counter}]\n\
             - symbol: __main__:Engine.static\n",
            &dir,
        );
        let ok = calls_of(&calls, "maybe_fail");
        assert_eq!(ok.len() as u64, truth["maybe_fail_ok"].as_u64().unwrap(), "{name}: returned maybe_fail calls");
        let raised = truth["maybe_fail_raised"].as_u64().unwrap();
        assert_eq!(raised, 20);
        assert!(err.contains(&format!("{raised} left without a return")), "{name}: {err}");
        let decorated = calls_of(&calls, "Engine.decorated");
        assert_eq!(decorated.len() as u64, truth["decorated"].as_u64().unwrap(), "{name}: decorated calls");
        assert!(decorated.iter().all(|c| c["mode"] == "breakpoint_entry" && c["duration_ns"].is_null()));
        let steps = calls_of(&calls, "Engine.step");
        assert_eq!(steps.len() as u64, truth["thread_step"].as_u64().unwrap(), "{name}: worker thread calls");
        assert!(steps.iter().all(|c| c["tid"] != c["pid"]), "{name}: the worker's calls are on its own thread");
        assert!(
            err.contains("not timing __main__:Engine.static: no debug register left"),
            "{name}: the fifth register is said to be missing:\n{err}"
        );
        checked.push(format!("{name} (|timed - measured| median {:.0} us, max {:.0} us)", median / 1e3, worst / 1e3));
    }
    eprintln!("function timers checked on: {}", checked.join(", "));
}

/// Coroutines and async generators (API servers' handlers are `async def`): 40 coroutines and
/// 10 async generators running interleaved on one event loop thread, each timed from its first
/// resumption to its return, as an async-aware wrapper would time it; the durations equal the
/// process's own measurements (sorted, to within 2 ms: the trap's cost and the loop's
/// scheduling), on every CPython 3.11+ present.
#[test]
fn coroutines_and_async_generators_are_timed() {
    let dir = scratch("timers-async");
    let mut checked = Vec::new();
    for py in &interpreters_3_11_plus() {
        let name = py.name();
        let (truth, calls, err) =
            timed_run(py, "async", "- symbol: __main__:handle\n- symbol: __main__:stream\n", &dir);
        for (f, n) in [("handle", 40), ("stream", 10)] {
            let want: Vec<u64> = truth[f].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(want.len(), n, "{name}: the process's own {f} calls");
            let mut got: Vec<u64> =
                calls_of(&calls, f).iter().map(|c| c["duration_ns"].as_u64().expect("a duration")).collect();
            got.sort_unstable();
            assert_eq!(got.len(), n, "{name}: timed {f} calls\n{err}");
            let worst = got.iter().zip(&want).map(|(g, w)| g.abs_diff(*w)).max().unwrap();
            assert!(worst < 2_000_000, "{name}: {f} timed {got:?} vs measured {want:?}");
        }
        assert!(err.contains("0 left without a return"), "{name}: {err}");
        checked.push(name);
    }
    eprintln!("coroutine timers checked on: {}", checked.join(", "));
}

/// Live engine state read from the engine's objects: a stand-in with vLLM's file path, class
/// and attribute names (tests/fixtures/fake_vllm) sets its scheduler queues and KV block pool
/// to known values; `inferscope python-info --json` must read exactly those, on every CPython
/// 3.9+ present (instance attributes live in a different place in each of 3.9/3.10, 3.11, 3.12
/// and 3.13), with vLLM's FCFS (deque) and priority (heap list) waiting queues.
#[test]
fn engine_state_is_read_from_the_engines_objects() {
    use std::io::Write as _;
    let mut checked = Vec::new();
    for py in &interpreters() {
        for priority in [false, true] {
            let mut cmd = py.run("fake_vllm/vllm/v1/engine/core.py");
            if priority {
                cmd.arg("--priority");
            }
            let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let pid: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            let pid = pid["pid"].as_u64().unwrap();
            for (running, waiting, free) in [(0u64, 0u64, 4680u64), (3, 7, 4000), (256, 1000, 0), (1, 0, 1 << 35)] {
                writeln!(child.stdin.as_mut().unwrap(), "{running} {waiting} {free}").unwrap();
                let truth: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
                let out = Command::new(inferscope_bin())
                    .args(["python-info", "--pid", &pid.to_string(), "--json"])
                    .output()
                    .expect("inferscope");
                assert!(out.status.success(), "{}: {}", py.name(), String::from_utf8_lossy(&out.stderr));
                let got: Value = serde_json::from_slice(&out.stdout).unwrap();
                let s = &got["engine_state"];
                assert_eq!(s["engine"], "vllm", "{}: {got}", py.name());
                assert_eq!(s["problem"], Value::Null, "{}: {s}", py.name());
                for (k, want) in [
                    ("running_requests", "running"),
                    ("waiting_requests", "waiting"),
                    ("kv_cache_free_blocks", "kv_cache_free_blocks"),
                    ("kv_cache_total_blocks", "kv_cache_total_blocks"),
                ] {
                    assert_eq!(s[k], truth[want], "{} (priority queue: {priority}): {k}", py.name());
                }
            }
            drop(child.stdin.take());
            let _ = child.wait();
        }
        checked.push(py.name());
    }
    eprintln!("engine state read on: {}", checked.join(", "));
}

/// The same sampled profile as a flame graph (SVG, parsed as XML by Python's own parser) and
/// as pprof (decoded by Google's protobuf runtime, tests/python/pprof_read.py): both put the
/// fixture's 70/30 split in hot_a and hot_b, with the whole call path.
#[test]
fn profile_writes_svg_and_pprof() {
    let dir = scratch("profile-formats");
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/fixtures/python_burn.py"));
    let (mut child, mut lines, pid) = burn(cmd, 9);
    let pid = pid.to_string();
    let (svg, pb) = (dir.join("profile.svg"), dir.join("profile.pb"));
    for out in [&svg, &pb] {
        let o = Command::new(inferscope_bin())
            .args(["profile", "--pid", &pid, "--duration", "3.5", "--rate", "199", "-o"])
            .arg(out)
            .output()
            .expect("inferscope");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let truth: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = child.wait();
    let want = truth["hot_a"].as_f64().unwrap();

    // SVG: well-formed, and each function's <title> carries its share.
    let check = Command::new(python())
        .arg("-c")
        .arg(
            "import sys, json, re, xml.etree.ElementTree as E\n\
             t = E.parse(sys.argv[1])\n\
             titles = [e.text for e in t.iter('{http://www.w3.org/2000/svg}title')]\n\
             share = lambda f: sum(float(re.search(r'([0-9.]+)%\\)$', x).group(1)) for x in titles if x.startswith(f + ' ('))\n\
             print(json.dumps({'frames': len(titles), 'hot_a': share('hot_a'), 'hot_b': share('hot_b')}))",
        )
        .arg(&svg)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let s: Value = serde_json::from_slice(&check.stdout).unwrap();
    let (a, b) = (s["hot_a"].as_f64().unwrap() / 100.0, s["hot_b"].as_f64().unwrap() / 100.0);
    // 15 points, as in the sampler's own share test: on the 2-core VM under CI's load the
    // sampled share of a 70% function has ranged 58-82% (0.598 and 0.581 in two CI runs here).
    assert!((a / (a + b) - want).abs() < 0.15, "SVG: hot_a {a}, hot_b {b}; measured {want}");

    // pprof: decoded by protobuf's runtime.
    let out =
        Command::new(receiver_python()).arg(repo_root().join("tests/python/pprof_read.py")).arg(&pb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["sample_types"], serde_json::json!([["samples", "count"], ["cpu", "nanoseconds"]]));
    let period = p["period"].as_u64().unwrap();
    assert_eq!(period, 1_000_000_000 / 199);
    let (mut pa, mut pb_) = (0u64, 0u64);
    for smp in p["samples"].as_array().unwrap() {
        let stack: Vec<&str> = smp["stack"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let n = smp["values"][0].as_u64().unwrap();
        assert_eq!(smp["values"][1].as_u64().unwrap(), n * period, "cpu = samples x period");
        match stack.as_slice() {
            ["<module>", "Loop.run", "hot_a", "spin"] => pa += n,
            ["<module>", "Loop.run", "hot_b", "spin"] => pb_ += n,
            _ => {}
        }
    }
    assert!(pa + pb_ > 200, "pprof: {pa} + {pb_} samples");
    let share = pa as f64 / (pa + pb_) as f64;
    assert!((share - want).abs() < 0.15, "pprof: hot_a {share:.3}, measured {want:.3}");
    eprintln!("SVG: {} frames, hot_a {:.3}; pprof: hot_a {share:.3}; measured {want:.3}", s["frames"], a / (a + b));
}

/// The daemon's rolling profile: attached to a process with --python-profile-rate, it writes a
/// `python_profile` JSONL line per window and replaces the window's pprof and SVG files; each
/// window finds the fixture's 70/30 split.
#[test]
fn daemon_keeps_a_rolling_profile() {
    let dir = scratch("rolling-profile");
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/fixtures/python_burn.py"));
    let (mut child, mut lines, pid) = burn(cmd, 12);
    let pid = pid.to_string();
    let jsonl = dir.join("out.jsonl");
    let out = Command::new(inferscope_bin())
        .args(["attach", "--pid", &pid, "--quiet", "--no-device", "--duration", "8"])
        .args(["--python-profile-rate", "199", "--python-profile-window", "3", "--python-profile-dir"])
        .arg(dir.join("profiles"))
        .arg("--jsonl")
        .arg(&jsonl)
        .output()
        .expect("inferscope");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let truth: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = child.wait();
    let windows: Vec<Value> = read_jsonl(&jsonl).into_iter().filter(|v| v["type"] == "python_profile").collect();
    // Two full windows and the part window written at the stop.
    assert!(windows.len() >= 2, "{} windows: {}", windows.len(), String::from_utf8_lossy(&out.stderr));
    for w in &windows {
        assert_eq!(w["pid"].as_u64().unwrap().to_string(), pid);
        let top = &w["top"][0];
        assert!(top["function"].as_str().unwrap().starts_with("spin ("), "{w}");
        assert!(top["percent"].as_f64().unwrap() > 90.0, "{w}");
    }
    let pb = dir.join(format!("profiles/pid-{pid}.pb"));
    assert!(dir.join(format!("profiles/pid-{pid}.svg")).exists());
    let read =
        Command::new(receiver_python()).arg(repo_root().join("tests/python/pprof_read.py")).arg(&pb).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let p: Value = serde_json::from_slice(&read.stdout).unwrap();
    let n = |f: &str| -> u64 {
        p["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["stack"].as_array().unwrap().iter().any(|x| x == f))
            .map(|s| s["values"][0].as_u64().unwrap())
            .sum()
    };
    let (a, b) = (n("hot_a"), n("hot_b"));
    let share = a as f64 / (a + b).max(1) as f64;
    let want = truth["hot_a"].as_f64().unwrap();
    assert!(a + b > 100 && (share - want).abs() < 0.1, "last window: hot_a {a}, hot_b {b}; measured {want:.3}");
    eprintln!("rolling profile: {} windows; last window hot_a {share:.3} (measured {want:.3})", windows.len());
}

/// CPython 3.9 and 3.10 have no inline RESUME: with --eval-uprobes, uprobes on
/// `_PyEval_EvalFrameDefault` time the calls whose frame runs a watched code object. Same
/// fixture, same truth: exact counts, durations within the same tolerance, raised calls counted
/// apart, every function timed (no debug-register limit), on pyenv 3.9 and 3.10 and Debian
/// bullseye's 3.9.
#[test]
fn function_timers_with_eval_uprobes_on_3_9_and_3_10() {
    let all: Vec<Py> = interpreters().into_iter().filter(|p| (9..=10).contains(&p.minor())).collect();
    assert!(all.iter().any(|p| p.chroot.is_some()), "Debian bullseye's 3.9 at least: {all:?}");
    let dir = scratch("timers-eval");
    let mut checked = Vec::new();
    for py in &all {
        let name = py.name();
        let (truth, calls, err) = timed_run_with(
            py,
            "basic",
            "- symbol: __main__:Engine.step\n- symbol: __main__:fib\n",
            &dir,
            &["--eval-uprobes"],
        );
        let (median, _) = check_step_timings(&name, &truth, &calls, "eval_uprobe", &err);
        let fib = calls_of(&calls, "fib");
        assert_eq!(fib.len() as u64, truth["fib"].as_u64().unwrap(), "{name}: fib calls");
        // The outermost call encloses every other.
        let span = |c: &&Value| {
            (c["start_ns"].as_u64().unwrap(), c["start_ns"].as_u64().unwrap() + c["duration_ns"].as_u64().unwrap())
        };
        let outer = fib.iter().map(span).max_by_key(|(s, e)| e - s).unwrap();
        assert!(fib.iter().map(span).all(|(s, e)| s >= outer.0 && e <= outer.1), "{name}: nesting");

        let (truth, calls, err) = timed_run_with(
            py,
            "edge",
            "- symbol: __main__:maybe_fail\n\
             - symbol: __main__:Engine.decorated\n  metrics: [{type: counter}]\n\
             - symbol: __main__:Engine.step\n  metrics: [{type: counter}]\n\
             - symbol: __main__:Engine.static\n",
            &dir,
            &["--eval-uprobes"],
        );
        let count = |f: &str| calls_of(&calls, f).len() as u64;
        assert_eq!(count("maybe_fail"), truth["maybe_fail_ok"].as_u64().unwrap(), "{name}: returned maybe_fail");
        assert!(err.contains("20 left without a return"), "{name}: {err}");
        // Before 3.11 code objects have no qualified name: series are named as configured.
        assert_eq!(count("Engine.decorated"), truth["decorated"].as_u64().unwrap(), "{name}: decorated");
        assert_eq!(count("Engine.static"), truth["static"].as_u64().unwrap(), "{name}: static");
        let steps = calls_of(&calls, "Engine.step");
        assert_eq!(steps.len() as u64, truth["thread_step"].as_u64().unwrap(), "{name}: worker thread calls");
        assert!(steps.iter().all(|c| c["tid"] != c["pid"]), "{name}: on the worker's thread");
        checked.push(format!("{name} (|timed - measured| median {:.0} us)", median / 1e3));
    }
    eprintln!("eval-frame timers checked on: {}", checked.join(", "));
}
