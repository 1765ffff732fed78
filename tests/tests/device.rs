//! The device layer against stand-in runtimes (no GPU or NPU here): libcuda.so.1, libnccl.so.2
//! and four Ascend CANN libraries built from tests/fixtures/device/*.c with the real exported
//! names and signatures, loaded with dlopen by a fixture process after inferscope attached, and
//! driven the way engines drive them. The fixture writes what it did; inferscope must count the
//! same, exactly, and measure the waits the fixture measured. The real CUDA runtime
//! (libcudart.so.12 from PyPI's nvidia-cuda-runtime-cu12) is probed in its own test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use inferscope_tests::*;
use serde_json::Value;

const STUBS: &[(&str, &str, &str)] = &[
    ("stub_cuda.c", "libcuda.so.1", ""),
    ("stub_nccl.c", "libnccl.so.2", ""),
    ("stub_ascend.c", "libascendcl.so", "-DSTUB_ACL"),
    ("stub_ascend.c", "libopapi.so", "-DSTUB_OPAPI"),
    ("stub_ascend.c", "libhccl.so", "-DSTUB_HCCL"),
    ("stub_ascend.c", "libruntime.so", "-DSTUB_RT"),
];

/// Builds the stand-ins and the fixture into `dir`; returns the fixture's path.
fn build(dir: &Path) -> PathBuf {
    let src = repo_root().join("tests/fixtures/device");
    for (c, lib, def) in STUBS {
        let mut cmd = Command::new("cc");
        cmd.args(["-shared", "-fPIC", "-O1"]);
        if !def.is_empty() {
            cmd.arg(def);
        }
        cmd.arg("-o").arg(dir.join(lib)).arg(src.join(c)).arg(format!("-Wl,-soname,{lib}"));
        let st = cmd.status().expect("cc (apt install gcc)");
        assert!(st.success(), "building {lib} failed");
    }
    let exe = dir.join("device_fixture");
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(src.join("device_fixture.c"))
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("cc");
    assert!(st.success(), "building device_fixture failed");
    exe
}

fn touch(p: PathBuf) {
    fs::write(p, b"").expect("control file");
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Sums a numeric field over the device lines.
fn sum(lines: &[Value], f: impl Fn(&Value) -> f64) -> f64 {
    lines.iter().map(f).sum()
}

/// Starts the fixture and inferscope on it, lets the fixture load its libraries and waits until
/// inferscope has attached to all of them.
fn start(dir: &Path, mode: &[&str], extra: &[&str]) -> (Proc, Inferscope, PathBuf) {
    let exe = build(dir);
    let ctl = dir.join("ctl");
    fs::create_dir_all(&ctl).unwrap();
    let fixture = Proc::spawn("device_fixture", Command::new(&exe).arg(dir).arg(&ctl).args(mode));
    let mut args = vec!["--device-interval", "0.5"];
    args.extend_from_slice(extra);
    let scope = Inferscope::attach(dir, fixture.pid(), &args);
    // The libraries are loaded after inferscope attached: it must follow the dlopen.
    touch(ctl.join("go1"));
    let libs: Vec<&str> = if mode.is_empty() { STUBS.iter().map(|s| s.1).collect() } else { vec!["libcuda.so.1"] };
    wait_for("device probes on every library the fixture loaded", Duration::from_secs(30), || {
        let err = fs::read_to_string(&scope.stderr).unwrap_or_default();
        libs.iter().all(|l| err.contains(&format!(" in {l}"))).then_some(())
    });
    (fixture, scope, ctl)
}

#[test]
fn device_calls_of_stand_in_runtimes_are_counted_exactly() {
    let dir = scratch("device");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut fixture, mut scope, ctl) =
        start(&dir, &[], &["--device-probes", "all", "--device-overhead-budget", "0", "--prometheus-listen", &listen]);
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains("16 in libcuda.so.1"), "every catalogued driver function the stand-in exports:\n{err}");
    assert!(err.contains("uprobe_multi link per library"), "this kernel (6.18) has uprobe_multi:\n{err}");
    touch(ctl.join("go2"));
    wait_for("the fixture's workload", Duration::from_secs(30), || ctl.join("done").exists().then_some(()));
    let truth: Value = serde_json::from_str(&fs::read_to_string(ctl.join("truth.json")).unwrap()).unwrap();

    // Prometheus, while the process still runs.
    let metrics = wait_for("device metrics", Duration::from_secs(10), || {
        let (_, body) = http_get(port, "/metrics")?;
        let n: f64 = body
            .lines()
            .filter(|l| l.starts_with("inferscope_device_launches_total{") && l.contains("kind=\"kernel\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // Probe hits are counted once a second.
        (n as u64 == u(&truth["launches"]) && body.contains("inferscope_device_probe_hits_total{")).then_some(body)
    });
    for want in [
        "inferscope_device_collectives_total{api=\"nccl\",op=\"all_reduce\",pid=",
        "inferscope_device_copy_bytes_total{api=\"cuda_driver\",direction=\"h2d\",pid=",
        "inferscope_device_sync_wait_seconds_count{api=\"cuda_driver\",kind=\"device\",pid=",
        "inferscope_device_alloc_bytes_total{api=\"acl\",pid=",
        "inferscope_device_probe_hits_total{function=\"cuLaunchKernel\",pid=",
    ] {
        assert!(metrics.contains(want), "{want} missing from /metrics");
    }

    touch(ctl.join("go3"));
    assert!(fixture.wait_for_exit(Duration::from_secs(10)));
    // The target is gone: inferscope writes its last interval and stops by itself.
    assert!(scope.proc.wait_for_exit(Duration::from_secs(30)), "inferscope did not stop after its target exited");
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    let pid = fixture.pid();
    let lines: Vec<Value> = scope.lines("device").into_iter().filter(|l| u(&l["pid"]) == pid as u64).collect();
    assert!(!lines.is_empty(), "no device lines:\n{err}");

    let total = |k: &str| sum(&lines, |l| l[k].as_f64().unwrap_or(0.0)) as u64;
    for k in ["launches", "graph_launches", "syncs", "allocs", "alloc_bytes", "collectives", "collective_bytes"] {
        assert_eq!(total(k), u(&truth[k]), "{k}");
    }
    assert_eq!(total("errors"), 0);
    for dir_ in ["h2d", "d2h", "d2d", "default"] {
        let n = sum(&lines, |l| l["copies"][dir_]["count"].as_f64().unwrap_or(0.0)) as u64;
        let b = sum(&lines, |l| l["copies"][dir_]["bytes"].as_f64().unwrap_or(0.0)) as u64;
        assert_eq!((n, b), (u(&truth["copies"][dir_][0]), u(&truth["copies"][dir_][1])), "copies {dir_}");
    }
    // Streams: launches and graph launches per stream handle.
    for (stream, want) in truth["streams"].as_object().unwrap() {
        let (mut k, mut g) = (0, 0);
        for l in &lines {
            for s in l["streams"].as_array().unwrap() {
                if s["stream"] == stream.as_str() {
                    k += u(&s["launches"]);
                    g += u(&s["graph_launches"]);
                }
            }
        }
        assert_eq!((k, g), (u(&want[0]), u(&want[1])), "stream {stream}");
    }
    // Kernel names: from module lookups (demangled), registrations, operators' own symbols and
    // the names passed to aclopExecuteV2.
    for (name, want) in truth["kernels"].as_object().unwrap() {
        let n: u64 = lines
            .iter()
            .flat_map(|l| l["kernels"].as_array().unwrap().iter())
            .filter(|k| k["name"] == name.as_str())
            .map(|k| u(&k["launches"]))
            .sum();
        assert_eq!(n, u(want), "kernel {name}");
    }
    // Waits: inferscope times entry to return; the fixture timed around the call.
    for kind in ["stream", "device", "event"] {
        let got = sum(&lines, |l| l["sync_wait_seconds_by_kind"][kind].as_f64().unwrap_or(0.0));
        let want = truth["sync_ns"][kind].as_f64().unwrap() / 1e9;
        assert!((got - want).abs() <= want * 0.1 + 0.0005, "{kind} waits: inferscope {got:.6} s, fixture {want:.6} s");
        assert!(want > 0.0);
    }
    // Gaps between launches: the fixture launches back to back, so each is well under 1 s
    // and there is one fewer gap than launches per stream.
    assert!(total("launch_gaps") > 0);
    assert!(sum(&lines, |l| l["max_launch_gap_seconds"].as_f64().unwrap_or(0.0)) < 1.0);
}

/// Over --device-rate-limit, calls are counted, not reported: what was reported plus what was
/// counted is every call, and the operator is told in one line.
#[test]
fn rate_limited_calls_are_counted_and_reported_as_dropped() {
    let dir = scratch("device-rate");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut fixture, mut scope, ctl) = start(
        &dir,
        &[],
        &[
            "--device-probes",
            "all",
            "--device-overhead-budget",
            "0",
            "--device-rate-limit",
            "100",
            "--prometheus-listen",
            &listen,
        ],
    );
    touch(ctl.join("go2"));
    wait_for("the fixture's workload", Duration::from_secs(30), || ctl.join("done").exists().then_some(()));
    let truth: Value = serde_json::from_str(&fs::read_to_string(ctl.join("truth.json")).unwrap()).unwrap();
    // Only cuLaunchKernel (451 calls in well under a second) goes over 100 calls/s.
    let limited = wait_for("the rate-limited count", Duration::from_secs(10), || {
        let (_, body) = http_get(port, "/metrics")?;
        let line =
            body.lines().find(|l| l.starts_with("inferscope_dropped_events_total{reason=\"device_rate_limited\"}"))?;
        let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
        (n > 0).then_some(n)
    });
    touch(ctl.join("go3"));
    assert!(fixture.wait_for_exit(Duration::from_secs(10)));
    assert!(scope.proc.wait_for_exit(Duration::from_secs(30)));
    let reported: u64 = scope.lines("device").iter().map(|l| u(&l["launches"])).sum();
    assert_eq!(reported + limited, u(&truth["launches"]), "reported {reported} + rate-limited {limited}");
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(
        err.contains(&format!("{limited} device calls counted but not reported: over --device-rate-limit")),
        "{err}"
    );
}

/// An eager engine launching as fast as it can: the launch probe costs more than the budget and
/// is switched off, with a line saying so; the process runs on unprobed.
#[test]
fn the_overhead_budget_switches_off_a_hot_probe() {
    let dir = scratch("device-hot");
    let (mut fixture, scope, ctl) =
        // One perf event per probe here (the path of kernels before 6.6); the exact-count test
        // uses uprobe_multi links.
        start(&dir, &["hot", "4"], &["--device-probes", "launch", "--device-overhead-budget", "0.01", "--no-uprobe-multi"]);
    touch(ctl.join("go2"));
    wait_for("the hot loop", Duration::from_secs(30), || ctl.join("done").exists().then_some(()));
    touch(ctl.join("go3"));
    assert!(fixture.wait_for_exit(Duration::from_secs(10)));
    let mut scope = scope;
    assert!(scope.proc.wait_for_exit(Duration::from_secs(30)));
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains("device probe cuLaunchKernel switched off"), "no back-off line:\n{err}");
    assert!(err.contains("one perf event each"), "{err}");
    assert!(err.contains("--device-overhead-budget"), "the line names the flag:\n{err}");
    let truth: Value = serde_json::from_str(&fs::read_to_string(ctl.join("truth.json")).unwrap()).unwrap();
    let lines = scope.lines("device");
    let seen: u64 = lines.iter().map(|l| u(&l["launches"])).sum();
    assert!(seen > 0 && seen < u(&truth["launches"]), "seen {seen} of {} launches", truth["launches"]);
    assert!(
        lines.iter().any(|l| l["probes_disabled"].as_array().is_some_and(|a| a.iter().any(|s| s == "cuLaunchKernel"))),
        "device lines list the probe switched off"
    );
}

/// The real CUDA runtime from PyPI: without a driver its calls fail, but entry probes see the
/// real arguments. A host stub that is a C++ function of libstdc++ names the "kernel".
#[test]
fn real_libcudart_launches_are_seen_with_stream_and_kernel_name() {
    let dir = scratch("cudart");
    let py = python();
    let ctl = dir.join("ctl");
    fs::create_dir_all(&ctl).unwrap();
    let script = repo_root().join("tests/fixtures/cudart_calls.py");
    let mut child = Proc::spawn("cudart_calls", Command::new(&py).arg(&script).arg(&ctl).arg("25"));
    wait_for("libcudart loaded", Duration::from_secs(30), || ctl.join("loaded").exists().then_some(()));
    let mut scope =
        Inferscope::attach(&dir, child.pid(), &["--device-probes", "default,launch", "--device-interval", "0.5"]);
    wait_for("probes on libcudart", Duration::from_secs(30), || {
        let err = fs::read_to_string(&scope.stderr).unwrap_or_default();
        err.contains(" in libcudart.so.12").then_some(())
    });
    touch(ctl.join("go"));
    assert!(child.wait_for_exit(Duration::from_secs(30)));
    assert!(scope.proc.wait_for_exit(Duration::from_secs(30)));
    let err = fs::read_to_string(&scope.stderr).unwrap();
    let report: Value = serde_json::from_str(&fs::read_to_string(ctl.join("report.json")).unwrap()).unwrap();
    assert_ne!(report["launch_ret"], 0, "no driver here: cudaLaunchKernel fails");
    let lines = scope.lines("device");
    let total = |k: &str| lines.iter().map(|l| u(&l[k])).sum::<u64>();
    assert_eq!(total("launches"), 25 + u(&report["ex_launches"]), "{err}");
    assert_eq!(total("graph_launches"), u(&report["graph_launches"]));
    let h2d = |k: &str| lines.iter().map(|l| u(&l["copies"]["h2d"][k])).sum::<u64>();
    assert_eq!((h2d("count"), h2d("bytes")), (u(&report["copies"]), u(&report["copy_bytes"])));
    // Every call failed (no driver), and each is counted as an error.
    assert_eq!(
        total("errors"),
        total("launches") + total("graph_launches") + u(&report["copies"]) + u(&report["syncs"])
    );
    // cudaLaunchKernelExC's stream is read from its launch config.
    let ex_stream = format!("{:#x}", u(&report["ex_stream"]));
    assert!(
        lines
            .iter()
            .flat_map(|l| l["streams"].as_array().unwrap())
            .any(|s| s["stream"] == ex_stream.as_str() && u(&s["launches"]) == u(&report["ex_launches"])),
        "the stream in cudaLaunchKernelExC's config ({ex_stream})"
    );
    let stream = format!("{:#x}", u(&report["stream"]));
    assert!(
        lines
            .iter()
            .flat_map(|l| l["streams"].as_array().unwrap())
            .any(|s| s["stream"] == stream.as_str() && u(&s["launches"]) == 25),
        "the stream passed on the stack ({stream}) is read"
    );
    let names: Vec<&str> =
        lines.iter().flat_map(|l| l["kernels"].as_array().unwrap()).filter_map(|k| k["name"].as_str()).collect();
    assert!(names.contains(&"std::chrono::_V2::system_clock::now"), "kernel names: {names:?}");
    assert_eq!(lines.iter().map(|l| u(&l["syncs"])).sum::<u64>(), u(&report["syncs"]));
    // Launch call sites: each launch names the Python function that made it, and its caller.
    let mut sites: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for l in scope.lines("python_launch_sites") {
        for s in l["sites"].as_array().unwrap() {
            let site = s["site"].as_str().unwrap().split(" (").next().unwrap().to_string();
            assert!(s["caller"].as_str().unwrap_or("").starts_with("<module> ("), "{s}");
            *sites.entry(site).or_default() += u(&s["launches"]);
        }
    }
    let want: std::collections::HashMap<String, u64> = [
        ("decode_step".to_string(), 25),
        ("launch_with_config".to_string(), u(&report["ex_launches"])),
        ("replay_graphs".to_string(), u(&report["graph_launches"])),
    ]
    .into();
    assert_eq!(sites, want, "launches by Python call site\n{err}");
}

/// Engine steps carry what the device did for them: a stand-in SGLang (tests/fixtures/device/
/// fake_sglang.py) whose scheduler process replays a graph, waits for it and copies 4 KiB back
/// before each step's output reaches the tokenizer manager. Each step line has exactly that,
/// the wait as the scheduler timed it, and each step is a `device` span over OTLP.
#[test]
fn engine_steps_carry_the_device_calls_made_for_them() {
    const STEPS: u64 = 6;
    let dir = scratch("device-steps");
    build(&dir);
    let rx = receiver(&dir);
    let ctl = dir.join("ctl");
    fs::create_dir_all(&ctl).unwrap();
    let engine = Proc::spawn(
        "fake_sglang",
        Command::new(python())
            .arg(repo_root().join("tests/fixtures/device/fake_sglang.py"))
            .arg("sglang.launch_server")
            .arg(dir.join("libcuda.so.1"))
            .arg(&ctl)
            .arg(STEPS.to_string()),
    );
    let parent = engine.pid();
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc);
    let prom_port = free_port();
    let prom = format!("127.0.0.1:{prom_port}");
    let args: Vec<String> = [
        "run",
        "--prometheus-listen",
        &prom,
        "--discover-interval",
        "0.3",
        "--quiet",
        "--otlp-endpoint",
        &endpoint,
        "--no-otlp-metrics",
        "--tracing-level",
        "1",
        "--device-spans",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut scope = Inferscope::start(&dir, &args, &[parent]);
    wait_for("probes on the scheduler's libcuda", Duration::from_secs(30), || {
        fs::read_to_string(&scope.stderr).ok()?.contains(" in libcuda.so.1").then_some(())
    });
    touch(ctl.join("go"));
    wait_for("the engine's steps", Duration::from_secs(30), || ctl.join("report.json").exists().then_some(()));
    let report: Value = serde_json::from_str(&fs::read_to_string(ctl.join("report.json")).unwrap()).unwrap();
    assert_eq!(u(&report["steps"]), STEPS);
    let steps = wait_for("step lines", Duration::from_secs(15), || {
        let s: Vec<Value> = scope.lines("step").into_iter().filter(|l| u(&l["pid"]) == parent as u64).collect();
        (s.len() as u64 >= STEPS).then_some(s)
    });
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains("sglang"), "recognised as SGLang:\n{err}");
    for (i, s) in steps.iter().enumerate() {
        let d = &s["device"];
        assert_eq!(u(&d["graph_launches"]), 1, "step {i}: {s}");
        assert_eq!(u(&d["syncs"]), 1, "step {i}: {s}");
        assert_eq!((u(&d["copies"]["d2h"]["count"]), u(&d["copies"]["d2h"]["bytes"])), (1, 4096), "step {i}");
        let want = report["waits_ns"][i].as_f64().unwrap() / 1e9;
        let got = d["sync_wait_seconds"].as_f64().unwrap();
        assert!((got - want).abs() <= want * 0.1 + 0.0005, "step {i}: waited {got} s, the scheduler timed {want} s");
        assert!(u(&d["first_call_ns"]) <= u(&s["ts_ns"]), "step {i}: device calls precede the step's output");
        // Host-observed device time: from the launch to the end of the wait for it, inside
        // the scheduler's own bracket of the two calls.
        let want = report["device_ns"][i].as_f64().unwrap() / 1e9;
        let got = d["host_observed_seconds"].as_f64().unwrap_or_else(|| panic!("step {i}: no host-observed time: {s}"));
        assert!(
            got <= want && got >= want * 0.9 - 0.0005,
            "step {i}: host-observed {got} s, the scheduler timed {want} s"
        );
        let share = d["host_observed_share"].as_f64().expect("share");
        assert!(share > 0.0 && share <= 1.0, "step {i}: share {share}");
    }
    let spans = wait_for("device spans", Duration::from_secs(30), || {
        let s: Vec<Value> = read_jsonl(&rx.spans).into_iter().filter(|s| s["name"] == "device").collect();
        (s.len() as u64 >= STEPS).then_some(s)
    });
    for s in &spans {
        assert_eq!(s["attributes"]["inferscope.device.graph_launches"], 1, "{s}");
        assert_eq!(s["attributes"]["inferscope.device.copy_bytes"], 4096, "{s}");
        assert!(s["attributes"]["inferscope.device.host_observed_time"].as_f64().is_some_and(|t| t > 0.0), "{s}");
        assert_eq!(s["attributes"]["process.pid"], parent as i64, "{s}");
    }
    // Every step's host-observed device time in its Prometheus histogram.
    let m = scrape(prom_port, &["inferscope_engine_step_device_seconds_count"]);
    assert_eq!(m["inferscope_engine_step_device_seconds_count"], STEPS as f64);
    touch(ctl.join("exit"));
    scope.stop();
}

/// The GPU validation kit's check (tests/gpu/gpu-check), dry: its workload drives the stand-in
/// driver through ctypes, and every other step is what runs on a GPU host (preflight, attach,
/// counts side by side, the call sites, alternating timed rounds, the table). Every row must
/// agree with what the workload did; with the sync probes switched off, the syncs row must be a
/// mismatch and the check must exit 1.
#[test]
fn gpu_check_dry_run() {
    let dir = scratch("gpu-check");
    build(&dir);
    // The stand-in NVML, with two GPUs, for the NVML rows.
    cc_shared(&repo_root().join("tests/fixtures/nvml/stub_nvml.c"), &dir.join("libnvidia-ml.so.1"), None);
    let nvml = dir.join("nvml.conf");
    fs::write(
        &nvml,
        "gpu 0 name NVIDIA H100 80GB HBM3\ngpu 0 uuid GPU-0aa\ngpu 0 memory 85899345920 1073741824\n\
         gpu 1 name NVIDIA H100 80GB HBM3\ngpu 1 uuid GPU-1bb\ngpu 1 memory 85899345920 0\n",
    )
    .unwrap();
    let run = |out: &str, extra: &str| {
        Command::new(python())
            .env("NVML_STANDIN_CONFIG", &nvml)
            .arg(repo_root().join("tests/gpu/gpu-check"))
            .args(["--dry-run", "--stub-dir"])
            .arg(&dir)
            .arg("--inferscope")
            .arg(inferscope_bin())
            .arg("--out")
            .arg(dir.join(out))
            .args(["--rounds", "1", "--round-seconds", "1", "--inferscope-args", extra])
            .output()
            .expect("python")
    };
    let ok = run("ok", "");
    let say = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    assert!(ok.status.success(), "{}", say(&ok));
    let doc: Value = serde_json::from_str(&fs::read_to_string(dir.join("ok/gpu-check.json")).unwrap()).unwrap();
    assert_eq!(doc["verdict"], "match", "{doc:#}");
    let row = |d: &Value, what: &str| {
        d["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["what"] == what)
            .cloned()
            .unwrap_or_else(|| panic!("{what}: {d:#}"))
    };
    for (what, want) in [
        ("kernel launches", 600),
        ("graph launches", 50),
        ("copies h2d", 20),
        ("copies d2h", 20),
        ("bytes h2d", 20 << 20),
        ("syncs", 30),
        ("launch sites in eager_step()", 600),
    ] {
        let r = row(&doc, what);
        assert_eq!((r["expected"].as_u64(), r["inferscope"].as_u64()), (Some(want), Some(want)), "{what}: {r}");
    }
    // NVML's figures beside what is known of the GPUs (nvidia-smi on a real host).
    for (what, want, got) in [("NVML GPUs", "2", "2"), ("GPU 1 uuid", "\"GPU-1bb\"", "\"GPU-1bb\"")] {
        let r = row(&doc, what);
        assert_eq!((r["expected"].to_string(), r["inferscope"].to_string()), (want.into(), got.into()), "{r}");
        assert_eq!(r["verdict"], "match", "{r}");
    }
    assert_eq!(row(&doc, "GPU 0 memory total (MiB)")["inferscope"], 81920, "{doc:#}");
    let md = fs::read_to_string(dir.join("ok/gpu-check.md")).unwrap();
    assert!(md.contains("| kernel launches | 600 | 600 | match |"), "{md}");
    assert!(md.contains("throughput with inferscope / without"), "{md}");

    let bad = run("bad", "--no-device-probe sync");
    assert_eq!(bad.status.code(), Some(1), "{}", say(&bad));
    let doc: Value = serde_json::from_str(&fs::read_to_string(dir.join("bad/gpu-check.json")).unwrap()).unwrap();
    let r = row(&doc, "syncs");
    assert_eq!((r["inferscope"].as_u64(), r["verdict"].as_str()), (Some(0), Some("MISMATCH")), "{r}");
    assert!(say(&bad).contains("MISMATCH syncs"), "{}", say(&bad));
}
