//! What an operator sees from the command line: one clear line for every error, help that
//! explains every flag, and a doctor that tells the truth about this host.

use std::process::Command;

use inferscope_tests::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(inferscope_bin()).args(args).output().expect("inferscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Without privileges every command that needs BPF fails with one line saying what to do.
#[test]
fn unprivileged_is_one_clear_line() {
    for args in [vec!["attach", "--pid", "1"], vec!["run"]] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(inferscope_bin())
            .args(&args)
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{err}");
        assert!(lines[0].contains("CAP_BPF") && lines[0].contains("run it as root"), "{}", lines[0]);
        assert!(!err.contains("panicked") && !err.contains("backtrace"));
    }
}

#[test]
fn missing_pid_is_one_clear_line() {
    let (code, _, err) = run(&["attach", "--pid", "4194304"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no process with PID 4194304"), "{err}");
}

/// Options that are wrong by themselves are refused with one line before anything is loaded
/// into the kernel (loading would print the probes' lines first, and take seconds).
#[test]
fn bad_arguments_are_explained() {
    let me = std::process::id().to_string();
    for (args, says) in [
        (vec!["--otlp-endpoint", "collector:4317"], "--otlp-endpoint must be a URL"),
        (vec!["--otlp-endpoint", "http://"], "--otlp-endpoint must be a URL"),
        (vec!["--otlp-endpoint", "http://collector:43x7"], "--otlp-endpoint must be a URL"),
        (vec!["--control-token-file", "/etc/hostname"], "give --prometheus-listen too"),
        (vec!["--jsonl", "/nonexistent-inferscope-dir/requests.jsonl"], "no directory /nonexistent-inferscope-dir"),
    ] {
        let mut all = vec!["attach", "--pid", &me];
        all.extend(&args);
        let (code, _, err) = run(&all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line, before anything is loaded:\n{err}");
    }
    let (code, _, err) = run(&["attach", "--pid", "1", "--tracing-level", "7"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tracing-level"), "{err}");
}

/// Every flag of `run` and `attach` has a sentence of help.
#[test]
fn help_explains_every_flag() {
    for cmd in ["run", "attach"] {
        let (code, help, _) = run(&[cmd, "--help"]);
        assert_eq!(code, 0);
        let lines: Vec<&str> = help.lines().collect();
        let mut flags = 0;
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // Options are indented 2 (short) or 6 (long only); descriptions 10.
            if l.len() - t.len() < 10 && t.starts_with('-') {
                flags += 1;
                let next = lines.get(i + 1).map(|s| s.trim()).unwrap_or("");
                assert!(next.len() > 10 && !next.starts_with('-'), "{cmd}: flag without explanation: {t}");
            }
        }
        assert!(flags >= 20, "{cmd}: only {flags} flags found");
        for must in [
            "--prometheus-listen",
            "--otlp-endpoint",
            "--jsonl",
            "--capture-content",
            "--vllm-metrics",
            "--tracing-level",
            "--no-device",
            "--device-probes",
            "--no-device-probe",
            "--device-overhead-budget",
            "--device-rate-limit",
        ] {
            assert!(help.contains(must), "{cmd} --help lacks {must}");
        }
    }
}

/// A device probe inferscope does not know is refused with one line that says what is known.
#[test]
fn unknown_device_probes_are_refused_clearly() {
    let me = std::process::id().to_string();
    let (code, _, err) = run(&["attach", "--pid", &me, "--device-probes", "default,cuLaunchKernal"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown device probe `cuLaunchKernal`") && err.contains("launch, graph"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(&["attach", "--pid", &me, "--no-device-probe", "cudaMallocc"]);
    assert_ne!(code, 0);
    assert!(err.contains("--no-device-probe cudaMallocc"), "{err}");
}

/// The doctor's verdicts match this machine (see shared notes: tracepoints, uprobes, perf
/// events and breakpoints work; kprobes and fentry do not) — checked against the kernel's own
/// interfaces, not hard-coded.
#[test]
fn doctor_tells_the_truth() {
    let (code, out, err) = run(&["doctor"]);
    assert_eq!(code, 0, "{out}{err}");
    let verdict = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
    };
    assert_eq!(verdict("tracepoints").as_deref(), Some("ok"), "{out}");
    let kprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(verdict("kprobes").as_deref(), Some(if kprobe_pmu { "ok" } else { "NO" }), "{out}");
    let uprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists();
    assert_eq!(verdict("uprobes").as_deref(), Some(if uprobe_pmu { "ok" } else { "NO" }), "{out}");
    assert!(out.contains("request layer"), "{out}");
}
