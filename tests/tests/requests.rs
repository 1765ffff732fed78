//! The request layer against a real OpenAI-compatible server (FastAPI on uvicorn, the stack
//! vLLM and SGLang use), with real BPF programs: inferscope's per-request values must match
//! what the client measured. Needs root.

use std::time::{Duration, Instant};

use inferscope_tests::*;
use serde_json::Value;

/// Every kind of request (chat/completions, streaming and not, include_usage on and off,
/// n = 2, reasoning deltas, tool calls, embeddings, error statuses, mid-stream errors) is
/// reported with the client's token counts exactly, and its TTFT and duration within a few
/// milliseconds of what the client measured.
#[test]
fn every_request_kind_matches_the_client() {
    let dir = scratch("kinds");
    let server = Fixture::start(&dir, &[]);
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &[]);
    let truth = loadgen(
        &dir,
        &server.url(),
        &["--requests", "300", "--concurrency", "8", "--mix", "all", "--usage-ratio", "0.5", "--seed", "7"],
    );
    assert_eq!(truth.len(), 300);
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(20));
    scope.stop();
    let (mut ttft, mut e2e) = compare_with_client(&truth, &recs);
    let (ttft_med, ttft_max) = stats(&mut ttft);
    let (e2e_med, e2e_max) = stats(&mut e2e);
    eprintln!(
        "TTFT |inferscope - client|: median {:.2} ms, max {:.2} ms over {} streams",
        ttft_med * 1e3,
        ttft_max * 1e3,
        ttft.len()
    );
    eprintln!(
        "e2e  |inferscope - client|: median {:.2} ms, max {:.2} ms over {} requests",
        e2e_med * 1e3,
        e2e_max * 1e3,
        e2e.len()
    );
    assert!(ttft.len() > 100, "too few streams with a first token: {}", ttft.len());
    assert!(ttft_med < 0.002 && e2e_med < 0.002, "medians too far from the client's: ttft {ttft_med}, e2e {e2e_med}");
    assert!(
        ttft_max < 0.015 && e2e_max < 0.015,
        "worst case too far from the client's: ttft {ttft_max}, e2e {e2e_max}"
    );
    // Token counts without usage come from counting events, and say so.
    assert!(recs.iter().any(|r| r["tokens_from"] == "events"));
    assert!(recs.iter().any(|r| r["tokens_from"] == "usage"));
    // Privacy by default: no text leaves the process.
    assert!(recs.iter().all(|r| r.get("prompt").is_none() && r.get("completion").is_none()));
}

/// Hundreds of parallel streams on keep-alive connections: none is lost.
#[test]
fn hundreds_of_concurrent_streams() {
    let dir = scratch("concurrency");
    // 300 streams at 40 ms per token: 7,500 events/s, what one Python server process sustains
    // here while the client and inferscope share the same 2 cores. (Saturated runs are in the
    // benchmark: there the client's own lag, not inferscope, dominates any difference.)
    let server = Fixture::start(&dir, &["--ttft-ms", "50", "--itl-ms", "40"]);
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &[]);
    // The Rust client: a Python client this busy would lag its own timestamps.
    let truth = rust_load(&dir, &server.url(), &["--requests", "900", "--concurrency", "300", "--max-tokens", "24"]);
    assert_eq!(truth.len(), 900);
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(30));
    let err = scope.stop();
    let (mut ttft, mut e2e) = compare_with_client(&truth, &recs);
    let (med, max) = stats(&mut ttft);
    let (emed, emax) = stats(&mut e2e);
    eprintln!(
        "300 concurrent streams: |TTFT diff| median {:.2} ms max {:.2} ms; |e2e diff| median {:.2} ms max {:.2} ms",
        med * 1e3,
        max * 1e3,
        emed * 1e3,
        emax * 1e3
    );
    // Medians are 0.05-0.8 ms on an idle VM; a CI machine busy with other work adds a few ms.
    assert!(med < 0.005 && emed < 0.005, "medians too far from the client's: ttft {med}, e2e {emed}");
    // 300 streams on 2 shared cores: now and then a process waits a few ms for a CPU.
    assert!(max < 0.025 && emax < 0.025, "worst case too far from the client's: ttft {max}, e2e {emax}");
    assert_eq!(recs.iter().filter(|r| r["path"] == "/v1/chat/completions").count(), truth.len());
    let total_events: u64 = recs.iter().map(|r| r["output_events"].as_u64().unwrap_or(0)).sum();
    assert_eq!(total_events, 900 * 24);
    assert!(err.contains(" 0 ring-buffer drops"), "{err}");
}

/// Client aborts mid-stream are reported as aborted at the moment the client went away;
/// error statuses and mid-stream errors carry their error type.
#[test]
fn aborts_and_errors() {
    let dir = scratch("aborts");
    let server = Fixture::start(&dir, &["--itl-ms", "10"]);
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &[]);
    let truth = loadgen(
        &dir,
        &server.url(),
        &[
            "--requests",
            "200",
            "--concurrency",
            "10",
            "--mix",
            "chat,cmpl,midstream_err",
            "--abort-ratio",
            "0.25",
            "--error-ratio",
            "0.2",
            "--max-tokens",
            "32",
            "--seed",
            "3",
        ],
    );
    let aborted = truth.iter().filter(|t| t["aborted"] == true).count();
    let errors = truth.iter().filter(|t| t["status"].as_u64().is_some_and(|s| s >= 400)).count();
    assert!(aborted > 20 && errors > 10, "loadgen made {aborted} aborts and {errors} errors");
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(20));
    scope.stop();
    compare_with_client(&truth, &recs);
    for t in truth.iter().filter(|t| t["aborted"] == true) {
        let r = find_truth(&recs, t).expect("aborted request reported");
        assert_eq!(r["finish_reason"], "abort", "{r}");
        // inferscope sees the close when the server next reads (EOF or reset) or writes (EPIPE):
        // after the client's close, by as long as the server takes to get there. The Python
        // client's own figure is loose too: it stamps its start before its busy event loop gets
        // round to sending (up to tens of ms with 10 concurrent streams on 2 cores).
        let d = f(&r["e2e_s"]).unwrap() - f(&t["e2e_s"]).unwrap();
        assert!(d > -0.03 && d < 0.25, "abort time off by {d} s: {r}");
    }
    for t in truth.iter().filter(|t| t["status"].as_u64().is_some_and(|s| s >= 400)) {
        let r = find_truth(&recs, t).unwrap();
        // The server's own error type (from its body), which GenAI conventions prefer to the status.
        assert_eq!(r["error_type"], t["error"], "{r}");
    }
    for t in truth.iter().filter(|t| t["kind"] == "midstream_err" && t["aborted"] == false) {
        let r = find_truth(&recs, t).unwrap();
        assert!(r["error_type"].is_string(), "mid-stream error not reported: {r}");
    }
}

/// Connections that were open before inferscope attached: the request in flight is not
/// invented, the next ones on the same keep-alive connection are reported.
#[test]
fn attaching_mid_connection() {
    let dir = scratch("midconn");
    let server = Fixture::start(&dir, &["--itl-ms", "20"]);
    // A load running before and after the attach, on 4 keep-alive connections: long enough
    // that a slow attach (BPF load, device calibration: several seconds on a loaded VM) still
    // leaves seconds of load after it.
    let url = server.url();
    let dir2 = dir.clone();
    let load = std::thread::spawn(move || {
        loadgen(&dir2, &url, &["--duration", "10", "--requests", "0", "--concurrency", "4", "--max-tokens", "10"])
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &[]);
    // The "tracing pid" line is out: the sockets open now are known (monotonic, the client's clock).
    let attached_ns = {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let truth = load.join().expect("load");
    std::thread::sleep(Duration::from_millis(500));
    scope.stop();
    let recs = scope.requests();
    let ids: std::collections::HashSet<&str> = truth.iter().filter_map(|t| t["request_id"].as_str()).collect();
    assert!(recs.len() > 20, "too few requests after attaching: {}", recs.len());
    for r in &recs {
        let id = r["request_id"].as_str().unwrap_or_default();
        assert!(ids.contains(id), "a request inferscope reported was never sent: {r}");
        assert_eq!(r["capture_gaps"], false, "{r}");
    }
    // Requests that started after the attach are all there (a second after it: the request in
    // flight at the attach, and the next one already written, may be skipped).
    let reported: std::collections::HashSet<&str> = recs.iter().filter_map(|r| r["request_id"].as_str()).collect();
    let late: Vec<&Value> =
        truth.iter().filter(|t| t["start_ns"].as_u64().unwrap() > attached_ns + 1_000_000_000).collect();
    assert!(late.len() >= 8, "{} requests began a second after the attach: the attach took too long", late.len());
    for t in late {
        assert!(reported.contains(t["request_id"].as_str().unwrap()), "late request missing: {t}");
    }
}

/// `attach --pid` follows children: uvicorn workers that exist already, and a server a shell
/// starts after inferscope attached to the shell.
#[test]
fn children_are_followed() {
    let dir = scratch("children");
    let server = Fixture::start(&dir, &["--workers", "2"]);
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &[]);
    let truth = loadgen(&dir, &server.url(), &["--requests", "100", "--concurrency", "8"]);
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(20));
    scope.stop();
    compare_with_client(&truth, &recs);
    let pids: std::collections::HashSet<u64> = recs.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert!(!pids.contains(&u64::from(server.proc.pid())) || pids.len() > 1, "requests served by workers: {pids:?}");

    // A child started after the attach.
    let port_file = dir.join("late-port");
    let script = format!(
        "sleep 3; exec {} {} --host 127.0.0.1 --port 0 --port-file {}",
        python().display(),
        repo_root().join("tests/fixtures/openai_server.py").display(),
        port_file.display()
    );
    let shell = Proc::spawn(
        "shell",
        std::process::Command::new("bash")
            .args(["-c", &format!("({script}) & wait")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let dir2 = scratch("children-late");
    let mut scope = Inferscope::attach(&dir2, shell.pid(), &[]);
    let port: u16 = wait_for("late server port", Duration::from_secs(60), || {
        std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
    });
    wait_for("late server health", Duration::from_secs(30), || http_get(port, "/health").filter(|(s, _)| *s == 200));
    let truth = loadgen(&dir2, &format!("http://127.0.0.1:{port}"), &["--requests", "20", "--concurrency", "2"]);
    let recs = scope.wait_requests(truth.len() + 1, Duration::from_secs(20));
    scope.stop();
    compare_with_client(&truth, &recs);
}

/// `run` finds servers by command line and follows them; an exiting target is reported and
/// every probe is detached when inferscope stops.
#[test]
fn discovery_exit_and_detach() {
    let dir = scratch("discover");
    let server = Fixture::start(&dir, &[]);
    let args: Vec<String> =
        ["run", "--match", "tests/fixtures/openai_server.py", "--discover-interval", "0.5", "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut scope = Inferscope::start(&dir, &args, &[server.proc.pid()]);
    let truth = loadgen(&dir, &server.url(), &["--requests", "30", "--concurrency", "3"]);
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(20));
    compare_with_client(&truth, &recs);
    assert!(recs.iter().all(|r| r["provider"] == "openai_compatible"));
    // A server started later is found too.
    let late = Fixture::start(&dir, &["--model-name", "late"]);
    wait_for("discovery of the late server", Duration::from_secs(10), || {
        std::fs::read_to_string(&scope.stderr)
            .ok()?
            .contains(&format!("tracing pid {} ", late.proc.pid()))
            .then_some(())
    });
    let truth = loadgen(&dir, &late.url(), &["--requests", "10", "--concurrency", "2"]);
    let recs = scope.wait_requests(40, Duration::from_secs(20));
    compare_with_client(&truth, &recs);
    // Exits are noticed.
    let late_pid = late.proc.pid();
    drop(late);
    wait_for("the exit to be reported", Duration::from_secs(10), || {
        std::fs::read_to_string(&scope.stderr).ok()?.contains(&format!("pid {late_pid} exited")).then_some(())
    });
    assert!(loaded_bpf_programs().iter().any(|n| n.starts_with("sys_enter_read")), "probes loaded while running");
    scope.stop();
    // The kernel frees a closed program after an RCU grace period, so it may be listed for a
    // moment after inferscope has exited; one that stays is a leak.
    let ours = || -> Vec<String> {
        loaded_bpf_programs()
            .into_iter()
            .filter(|n| {
                n.starts_with("sys_e")
                    || n.starts_with("sched_process")
                    || n.starts_with("tcp_")
                    || n.starts_with("sock_")
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ours().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = ours();
    assert!(left.is_empty(), "probes left behind after stopping: {left:?}");
}

/// `attach` stops by itself, with one line, when its target exits.
#[test]
fn attach_reports_target_exit() {
    let dir = scratch("exit");
    let mut server = Fixture::start(&dir, &[]);
    let pid = server.proc.pid();
    let mut scope = Inferscope::attach(&dir, pid, &[]);
    assert!(server.proc.stop_with(15, Duration::from_secs(10)));
    let exited = wait_for("inferscope to stop", Duration::from_secs(15), || scope.proc.child.try_wait().ok().flatten());
    assert!(exited.success());
    let err = std::fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains(&format!("target pid {pid} and its children have exited")), "{err}");
}
