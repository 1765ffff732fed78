//! What the accelerators have, from NVIDIA's management library: no GPU driver can exist here,
//! so a stand-in `libnvidia-ml.so.1` (tests/fixtures/nvml/stub_nvml.c: NVML's exported names
//! and C signatures) answers from a file the test writes and changes while the daemon runs.
//! Every family must be exact; a process on a GPU that inferscope traces carries its pid (and
//! so its pod); a library that fails mid-run is said once and again when it answers; a host
//! without the library gets one line and runs on. Needs root (the daemon loads BPF).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use inferscope_tests::*;

fn build_stub(dir: &Path) -> PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    cc_shared(&repo_root().join("tests/fixtures/nvml/stub_nvml.c"), &lib, Some("libnvidia-ml.so.1"));
    lib
}

const UUID0: &str = "GPU-5e3b1f1a-7d2c-4f6e-9a8b-0c1d2e3f4a5b";
const UUID1: &str = "GPU-6f4c2a2b-8e3d-4a7f-8b9c-1d2e3f4a5b6c";

fn config(server: u32, ecc: u64, with_procs: bool) -> String {
    let mut c = format!(
        "gpu 0 name NVIDIA H100 80GB HBM3\ngpu 0 uuid {UUID0}\ngpu 0 util 37 12\ngpu 0 memory 85899345920 21474836480\n\
         gpu 0 power_mw 312345\ngpu 0 temp 54\ngpu 0 clocks 1755 1980 2619\ngpu 0 throttle 4\n\
         gpu 0 pcie_kbs 1000 2000\ngpu 0 ecc {ecc} 1\n\
         gpu 1 name NVIDIA H100 80GB HBM3\ngpu 1 uuid {UUID1}\ngpu 1 util 0 0\ngpu 1 memory 85899345920 0\n"
    );
    if with_procs {
        c += &format!("gpu 0 proc {server} 17179869184 55 20\ngpu 0 proc 4242 1073741824 5 1\n");
    }
    c
}

/// The value of the series of `family` whose labels include every one of `labels`.
fn value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn gpu_resources_from_nvml_are_exact() {
    let dir = scratch("nvml");
    let lib = build_stub(&dir);
    let server = Fixture::start(&dir, &[]);
    let pid = server.proc.pid();
    let conf = dir.join("nvml.conf");
    fs::write(&conf, config(pid, 3, true)).unwrap();
    let port = free_port();
    let rx = receiver(&dir);
    let otlp = format!("http://127.0.0.1:{}", rx.grpc);
    let args: Vec<String> = [
        "attach",
        "--pid",
        &pid.to_string(),
        "--quiet",
        "--nvml-library",
        lib.to_str().unwrap(),
        "--gpu-interval",
        "0.3",
        "--prometheus-listen",
        &format!("127.0.0.1:{port}"),
        "--control-socket",
        "off",
        "--otlp-endpoint",
        &otlp,
        "--otlp-metrics-interval",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut scope = Inferscope::start_env(&dir, &args, &[pid], &[("NVML_STANDIN_CONFIG", conf.to_str().unwrap())]);
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains("GPU resources from") && err.contains("2 GPU(s) (NVIDIA H100 80GB HBM3)"), "{err}");
    let scrape = || http_get(port, "/metrics").map(|(_, t)| t).unwrap_or_default();
    let text = wait_for("the first GPU sample", Duration::from_secs(20), || {
        let t = scrape();
        t.contains("inferscope_gpu_process_utilization_ratio{").then_some(t)
    });
    let g0 = [("gpu", "0"), ("uuid", UUID0)];
    for (family, want) in [
        ("inferscope_gpu_utilization_ratio", 0.37),
        ("inferscope_gpu_memory_utilization_ratio", 0.12),
        ("inferscope_gpu_memory_total_bytes", 85899345920.0),
        ("inferscope_gpu_memory_used_bytes", 21474836480.0),
        ("inferscope_gpu_power_watts", 312.345),
        ("inferscope_gpu_temperature_celsius", 54.0),
        ("inferscope_gpu_clock_throttle_reasons", 4.0),
    ] {
        assert_eq!(value(&text, family, &g0), Some(want), "{family} in\n{text}");
    }
    for (clock, mhz) in [("graphics", 1755.0), ("sm", 1980.0), ("memory", 2619.0)] {
        let l = [g0[0], g0[1], ("clock", clock)];
        assert_eq!(value(&text, "inferscope_gpu_clock_hertz", &l), Some(mhz * 1e6), "{clock}");
    }
    for (dir, kbs) in [("tx", 1000.0), ("rx", 2000.0)] {
        let l = [g0[0], g0[1], ("direction", dir)];
        assert_eq!(value(&text, "inferscope_gpu_pcie_bytes_per_second", &l), Some(kbs * 1024.0), "{dir}");
    }
    let ecc = |t: &str, kind| value(t, "inferscope_gpu_ecc_errors_total", &[g0[0], g0[1], ("type", kind)]);
    assert_eq!(ecc(&text, "corrected"), Some(3.0));
    assert_eq!(ecc(&text, "uncorrected"), Some(1.0));
    assert_eq!(
        value(&text, "inferscope_gpu_info", &[("gpu", "1"), ("uuid", UUID1), ("model", "NVIDIA H100 80GB HBM3")]),
        Some(1.0)
    );
    assert_eq!(value(&text, "inferscope_gpu_utilization_ratio", &[("gpu", "1")]), Some(0.0));
    // Per process: the newest utilisation sample (the stand-in also returns an older one at 99%).
    let me = pid.to_string();
    assert_eq!(value(&text, "inferscope_gpu_process_memory_used_bytes", &[("pid", &me), g0[0]]), Some(17179869184.0));
    assert_eq!(value(&text, "inferscope_gpu_process_utilization_ratio", &[("pid", &me), ("kind", "sm")]), Some(0.55));
    assert_eq!(
        value(&text, "inferscope_gpu_process_utilization_ratio", &[("pid", &me), ("kind", "memory")]),
        Some(0.2)
    );
    assert_eq!(
        value(&text, "inferscope_gpu_process_utilization_ratio", &[("pid", "4242"), ("kind", "sm")]),
        Some(0.05)
    );
    // JSONL: a `gpu` line per GPU and sample.
    let l0 = wait_for("a gpu line of GPU 0", Duration::from_secs(10), || {
        scope.lines("gpu").into_iter().find(|l| l["index"] == 0)
    });
    assert_eq!(l0["uuid"], UUID0);
    assert_eq!(l0["memory_used_bytes"], 21474836480u64);
    assert!(l0["processes"].as_array().unwrap().iter().any(|p| p["pid"] == pid), "{l0}");

    // OTLP: OpenTelemetry's hardware names, hw.id the UUID; per process with process.pid.
    let otlp_value = |name: &str, attrs: &[(&str, serde_json::Value)]| {
        read_jsonl(&rx.metrics)
            .into_iter()
            .rev()
            .find(|m| m["name"] == name && attrs.iter().all(|(k, v)| m["attributes"][*k] == *v))
            .and_then(|m| m["value"].as_f64())
    };
    let hw0 = ("hw.id", serde_json::json!(UUID0));
    wait_for("GPU metrics at the OTLP receiver", Duration::from_secs(20), || {
        otlp_value("hw.gpu.memory.usage", std::slice::from_ref(&hw0))
    });
    for (name, want) in [
        ("hw.gpu.utilization", 0.37),
        ("hw.gpu.memory.usage", 21474836480.0),
        ("hw.gpu.memory.limit", 85899345920.0),
        ("hw.power", 312.345),
        ("hw.temperature", 54.0),
    ] {
        assert_eq!(otlp_value(name, std::slice::from_ref(&hw0)), Some(want), "{name}");
    }
    assert_eq!(otlp_value("hw.errors", &[hw0.clone(), ("error.type", serde_json::json!("corrected"))]), Some(3.0));
    let mine = ("process.pid", serde_json::json!(pid));
    assert_eq!(otlp_value("inferscope.gpu.process.memory.usage", &[hw0.clone(), mine.clone()]), Some(17179869184.0));
    assert_eq!(
        otlp_value(
            "inferscope.gpu.process.utilization",
            &[mine, ("inferscope.gpu.utilization.kind", serde_json::json!("sm"))]
        ),
        Some(0.55)
    );

    // Figures change: the counter moves by the difference; processes that left lose their series.
    fs::write(&conf, config(pid, 5, false)).unwrap();
    let text = wait_for("the ECC count to move", Duration::from_secs(20), || {
        let t = scrape();
        (ecc(&t, "corrected") == Some(5.0)).then_some(t)
    });
    assert!(!text.contains("inferscope_gpu_process_memory_used_bytes{"), "series of gone processes kept");
    assert_eq!(ecc(&text, "uncorrected"), Some(1.0));

    // XID and double-bit ECC events, as the driver raises them: said, counted, a line each.
    fs::write(&conf, config(pid, 5, false) + "gpu 0 xid 79 1\ngpu 1 xid 48 2\ngpu 0 dbe 3\ngpu 0 xid 79 4\n").unwrap();
    let text = wait_for("the XID counters", Duration::from_secs(20), || {
        let t = scrape();
        (value(&t, "inferscope_gpu_xid_errors_total", &[g0[0], ("xid", "79")]) == Some(2.0)
            && value(&t, "inferscope_gpu_double_bit_ecc_events_total", &g0) == Some(1.0))
        .then_some(t)
    });
    assert_eq!(
        value(&text, "inferscope_gpu_xid_errors_total", &[("gpu", "1"), ("uuid", UUID1), ("xid", "48")]),
        Some(1.0)
    );
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert_eq!(err.matches(&format!("GPU 0 ({UUID0}): XID 79")).count(), 2, "{err}");
    assert!(err.contains(&format!("GPU 1 ({UUID1}): XID 48")), "{err}");
    let ev = wait_for("gpu_event lines", Duration::from_secs(10), || {
        let l = scope.lines("gpu_event");
        (l.len() >= 4).then_some(l)
    });
    assert_eq!(ev.iter().filter(|e| e["kind"] == "xid" && e["data"] == 79).count(), 2, "{ev:?}");

    // The library fails mid-run: one line, the daemon runs on, one line when it answers again.
    fs::write(&conf, config(pid, 5, false) + "fail 1\n").unwrap();
    wait_for("the failure said", Duration::from_secs(20), || {
        fs::read_to_string(&scope.stderr)
            .unwrap()
            .contains("GPU resources: nvmlDeviceGetCount: GPU is lost")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    fs::write(&conf, config(pid, 5, false)).unwrap();
    wait_for("the recovery said", Duration::from_secs(20), || {
        fs::read_to_string(&scope.stderr).unwrap().contains("the library answers again").then_some(())
    });
    let t = loadgen(&dir, &server.url(), &["--requests", "3", "--concurrency", "1", "--mix", "chat_stream=1"]);
    assert_eq!(scope.wait_requests(t.len(), Duration::from_secs(20)).len(), 3, "requests while GPUs come and go");
    let err = scope.stop();
    assert_eq!(err.matches("GPU is lost").count(), 1, "the failure said once:\n{err}");

    // No library (no driver): one line, nothing else stops.
    let missing = dir.join("absent/libnvidia-ml.so.1");
    let mut args2 = args.clone();
    let i = args2.iter().position(|a| a == "--nvml-library").unwrap();
    args2[i + 1] = missing.display().to_string();
    args2.retain(|a| !a.starts_with("--prometheus") && !a.starts_with("127.0.0.1"));
    let mut scope2 = Inferscope::start(&dir, &args2, &[pid]);
    let err = scope2.stop();
    assert_eq!(err.matches("no accelerator resources: no NVIDIA driver").count(), 1, "{err}");
}

/// Huawei Ascend NPUs from DCMI: a stand-in `libdcmi.so` (tests/fixtures/dcmi/stub_dcmi.c:
/// DCMI's exported names and C signatures) with two NPUs on one card. Every family exact; the
/// traced server's device memory carries its pid; a failure mid-run is said once.
#[test]
fn npu_resources_from_dcmi_are_exact() {
    let dir = scratch("dcmi");
    let lib = dir.join("libdcmi.so");
    cc_shared(&repo_root().join("tests/fixtures/dcmi/stub_dcmi.c"), &lib, None);
    let server = Fixture::start(&dir, &[]);
    let pid = server.proc.pid();
    let conf = dir.join("dcmi.conf");
    let npus = format!(
        "npu 0 0 logic 4\nnpu 0 0 chip Ascend 910B3\nnpu 0 0 util 63 7 21\nnpu 0 0 hbm 65536 30720 18\n\
         npu 0 0 temp 47\nnpu 0 0 power 1835\nnpu 0 0 health 0\nnpu 0 0 proc {pid} 28991029248\n\
         npu 0 1 logic 5\nnpu 0 1 chip Ascend 910B3\nnpu 0 1 util 0 0 0\nnpu 0 1 hbm 65536 3072 0\n\
         npu 0 1 temp 39\nnpu 0 1 power 921\nnpu 0 1 health 2\n"
    );
    fs::write(&conf, &npus).unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "attach",
        "--pid",
        &pid.to_string(),
        "--quiet",
        "--dcmi-library",
        lib.to_str().unwrap(),
        "--nvml-library",
        "/nonexistent/libnvidia-ml.so.1",
        "--gpu-interval",
        "0.3",
        "--prometheus-listen",
        &format!("127.0.0.1:{port}"),
        "--control-socket",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut scope = Inferscope::start_env(&dir, &args, &[pid], &[("DCMI_STANDIN_CONFIG", conf.to_str().unwrap())]);
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains("NPU resources from") && err.contains("2 NPU(s) (Ascend910B3)"), "{err}");
    assert!(!err.contains("no accelerator resources"), "one library found is enough:\n{err}");
    let text = wait_for("the first NPU sample", Duration::from_secs(20), || {
        let t = http_get(port, "/metrics").map(|(_, t)| t).unwrap_or_default();
        t.contains("inferscope_npu_process_memory_used_bytes{").then_some(t)
    });
    let n4 = [("npu", "4")];
    for (family, labels, want) in [
        ("inferscope_npu_utilization_ratio", vec![n4[0], ("core", "aicore")], 0.63),
        ("inferscope_npu_utilization_ratio", vec![n4[0], ("core", "aicpu")], 0.07),
        ("inferscope_npu_utilization_ratio", vec![n4[0], ("core", "vectorcore")], 0.21),
        ("inferscope_npu_hbm_total_bytes", n4.to_vec(), 65536.0 * 1048576.0),
        ("inferscope_npu_hbm_used_bytes", n4.to_vec(), 30720.0 * 1048576.0),
        ("inferscope_npu_hbm_bandwidth_utilization_ratio", n4.to_vec(), 0.18),
        ("inferscope_npu_temperature_celsius", n4.to_vec(), 47.0),
        ("inferscope_npu_power_watts", n4.to_vec(), 183.5),
        ("inferscope_npu_health", n4.to_vec(), 0.0),
        ("inferscope_npu_health", vec![("npu", "5")], 2.0),
        ("inferscope_npu_info", vec![n4[0], ("card", "0"), ("device", "0"), ("model", "Ascend910B3")], 1.0),
    ] {
        assert_eq!(value(&text, family, &labels), Some(want), "{family} {labels:?} in\n{text}");
    }
    let me = pid.to_string();
    assert_eq!(value(&text, "inferscope_npu_process_memory_used_bytes", &[("pid", &me), n4[0]]), Some(28991029248.0));
    let l4 = wait_for("an npu line of NPU 4", Duration::from_secs(10), || {
        scope.lines("npu").into_iter().find(|l| l["npu"] == 4)
    });
    assert_eq!(l4["processes"][0]["pid"], pid, "{l4}");

    fs::write(&conf, format!("{npus}fail 1\n")).unwrap();
    wait_for("the failure said", Duration::from_secs(20), || {
        fs::read_to_string(&scope.stderr)
            .unwrap()
            .contains("NPU resources: dcmi_get_card_list: error -8005")
            .then_some(())
    });
    fs::write(&conf, &npus).unwrap();
    wait_for("the recovery said", Duration::from_secs(20), || {
        fs::read_to_string(&scope.stderr).unwrap().contains("DCMI resources: the library answers again").then_some(())
    });
    scope.stop();
}
