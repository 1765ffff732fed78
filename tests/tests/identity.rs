//! Workload identity from what /proc alone gives: three servers on one "node", two of them in
//! stand-in pods made the way the kubelet makes them (a cgroup named after the pod and the
//! container, cgroupfs driver on cgroup v1 and systemd driver on cgroup v2; a mount namespace
//! holding the service-account namespace file; HOSTNAME set to the pod's name), one on the host.
//! Every Prometheus series (through a real Prometheus server, PromQL by `k8s_pod_name`), OTLP
//! span (a real receiver) and JSONL line must name its own pod; the host server none. No
//! container runtime runs: the cgroups and namespaces are the ones a runtime would make. Needs
//! root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use inferscope_tests::*;
use serde_json::Value;

const UID_A: &str = "0d5e6c1a-7f2b-4c3d-9e8f-1a2b3c4d5e6f";
const ID_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const UID_B: &str = "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f";
const ID_B: &str = "b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f901a";
const NODE: &str = "node-7";

fn fs_type(path: &str) -> String {
    let out = Command::new("stat").args(["-f", "-c", "%T", path]).output().expect("stat");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Cgroups made for the test, removed (innermost first) and unmounted when dropped, after the
/// processes in them are gone.
struct Cgroups {
    dirs: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
}

impl Cgroups {
    /// `rel` under a cgroup v1 hierarchy (the host's `pids` one) or, with `v2`, under the
    /// cgroup v2 root (the host's, else one mounted in `dir`).
    fn make(&mut self, dir: &Path, v2: bool, rel: &str) -> PathBuf {
        let root = if !v2 && fs_type("/sys/fs/cgroup/pids") == "cgroupfs" {
            PathBuf::from("/sys/fs/cgroup/pids")
        } else if let Some(r) =
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].into_iter().find(|r| fs_type(r) == "cgroup2fs")
        {
            PathBuf::from(r)
        } else {
            let m = dir.join("cgroup2");
            if !self.mounts.contains(&m) {
                fs::create_dir_all(&m).unwrap();
                let ok = Command::new("mount").args(["-t", "cgroup2", "none"]).arg(&m).status().unwrap().success();
                assert!(ok, "cannot mount cgroup2 at {}", m.display());
                self.mounts.push(m.clone());
            }
            m
        };
        let mut p = root;
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            p.push(seg);
            if !p.exists() {
                fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                self.dirs.push(p.clone());
            }
        }
        p
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

/// What a pod gives its container: a mount namespace with the service-account namespace file,
/// the container's cgroup, and HOSTNAME (set by the caller). The wrapper execs the server, so
/// its pid is the server's.
fn pod_wrapper(namespace: &str, cgroup: &Path) -> Vec<String> {
    let script = "set -e; mount -t tmpfs tmpfs /run; d=/run/secrets/kubernetes.io/serviceaccount; \
                  mkdir -p $d; printf %s \"$1\" > $d/namespace; echo $$ > \"$2/cgroup.procs\"; shift 2; exec \"$@\"";
    ["unshare", "-m", "--", "sh", "-c", script, "sh", namespace]
        .iter()
        .map(|s| s.to_string())
        .chain([cgroup.display().to_string()])
        .collect()
}

struct Pod {
    name: &'static str,
    namespace: &'static str,
    uid: &'static str,
    container: &'static str,
    runtime: Option<&'static str>,
}

#[test]
fn identity_of_pods_on_every_series_span_and_line() {
    let dir = scratch("identity");
    let mut cgroups = Cgroups { dirs: Vec::new(), mounts: Vec::new() };
    let a = Pod { name: "vllm-a-7d9f", namespace: "llm", uid: UID_A, container: ID_A, runtime: None };
    let b = Pod { name: "vllm-b-0", namespace: "team-b", uid: UID_B, container: ID_B, runtime: Some("containerd") };
    // Pod A: the kubelet's cgroupfs driver on cgroup v1 (no runtime in the path).
    let cg_a = cgroups.make(&dir, false, &format!("kubepods/besteffort/pod{UID_A}/{ID_A}"));
    // Pod B: the systemd driver on cgroup v2, containerd's scope.
    let uid_b = UID_B.replace('-', "_");
    let cg_b = cgroups.make(
        &dir,
        true,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_b}.slice/cri-containerd-{ID_B}.scope"
        ),
    );
    let server_a = Fixture::start_in(&dir, &[], &pod_wrapper(a.namespace, &cg_a), &[("HOSTNAME", a.name)], "fixture-a");
    let server_b = Fixture::start_in(&dir, &[], &pod_wrapper(b.namespace, &cg_b), &[("HOSTNAME", b.name)], "fixture-b");
    let host = Fixture::start_in(&dir, &[], &[], &[("HOSTNAME", "not-a-pod")], "fixture-host");
    let pids = [server_a.proc.pid(), server_b.proc.pid(), host.proc.pid()];

    let rx = receiver(&dir);
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let marker = format!("{}/fixture-", dir.display());
    let args: Vec<String> = [
        "run",
        "--match",
        &marker,
        "--discover-interval",
        "0.3",
        "--quiet",
        "--node-name",
        NODE,
        "--identity-labels",
        "always",
        "--prometheus-listen",
        &listen,
        "--otlp-endpoint",
        &endpoint,
        "--otlp-metrics-interval",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut scope = Inferscope::start(&dir, &args, &pids);
    let prom_port = free_port();
    let _prom = Proc::spawn(
        "prometheus",
        Command::new(repo_root().join("tests/receivers/prometheus.sh"))
            .args(["start", dir.join("prom-data").to_str().unwrap(), &prom_port.to_string(), &listen, "1s"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).unwrap()),
    );
    let counts = [7usize, 5, 3];
    let mut truth = Vec::new();
    for (server, n) in [&server_a, &server_b, &host].into_iter().zip(counts) {
        let t = loadgen(
            &dir,
            &server.url(),
            &["--requests", &n.to_string(), "--concurrency", "2", "--mix", "chat_stream=1", "--seed", "3"],
        );
        assert_eq!(t.len(), n);
        truth.push(t);
    }
    let total: usize = counts.iter().sum();
    let records = scope.wait_requests(total, Duration::from_secs(30));

    // The "tracing pid" lines say where each process runs.
    let err = fs::read_to_string(&scope.stderr).unwrap();
    let line_of = |pid: u32| err.lines().find(|l| l.contains(&format!("tracing pid {pid} "))).unwrap().to_string();
    let la = line_of(pids[0]);
    assert!(la.contains("pod llm/vllm-a-7d9f") && la.contains(&format!("container {}", &ID_A[..12])), "{la}");
    let lb = line_of(pids[1]);
    assert!(lb.contains("pod team-b/vllm-b-0") && lb.contains(&format!("container {} (containerd)", &ID_B[..12])));
    assert!(!line_of(pids[2]).contains("pod "), "{}", line_of(pids[2]));

    // JSONL: every line of a pod's process names the pod; the host's lines name none.
    let want = |p: &Pod| {
        let mut m = vec![
            ("container.id", p.container),
            ("k8s.namespace.name", p.namespace),
            ("k8s.pod.name", p.name),
            ("k8s.pod.uid", p.uid),
            ("k8s.node.name", NODE),
        ];
        if let Some(r) = p.runtime {
            m.push(("container.runtime", r));
        }
        m
    };
    let lines = read_jsonl(&scope.jsonl);
    for (pid, pod, n) in [(pids[0], Some(&a), counts[0]), (pids[1], Some(&b), counts[1]), (pids[2], None, counts[2])] {
        let mine: Vec<&Value> = lines.iter().filter(|l| l["pid"] == pid).collect();
        let reqs = records.iter().filter(|r| r["pid"] == pid).count();
        assert_eq!(reqs, n, "requests of pid {pid}");
        assert!(mine.iter().any(|l| l["type"] == "process"), "no process line for {pid}");
        for l in &mine {
            match pod {
                Some(p) => {
                    for (k, v) in want(p) {
                        assert_eq!(l[k], v, "{k} on {l}");
                    }
                }
                None => assert!(l.get("k8s.pod.name").is_none() && l.get("container.id").is_none(), "{l}"),
            }
        }
    }

    // Prometheus: PromQL by pod counts each pod's requests; the host's have no pod label.
    let q = |sel: &str| format!("sum(inferscope_requests_total{{{sel}}})");
    for (sel, v) in [
        (format!("k8s_pod_name=\"{}\",k8s_namespace_name=\"llm\"", a.name), counts[0]),
        (format!("k8s_pod_name=\"{}\",k8s_pod_uid=\"{UID_B}\",container_runtime=\"containerd\"", b.name), counts[1]),
        ("k8s_pod_name=\"\",container_id=\"\"".to_string(), counts[2]),
        (format!("k8s_node_name=\"{NODE}\""), counts[0] + counts[1]),
    ] {
        let query = q(&sel);
        let got = wait_for(&format!("Prometheus to answer {query} = {v}"), Duration::from_secs(30), || {
            promql(prom_port, &query).filter(|g| (*g - v as f64).abs() < 1e-9)
        });
        assert_eq!(got, v as f64);
    }
    let q = format!(
        "sum(gen_ai_server_time_to_first_token_seconds_count{{k8s_pod_name=\"{}\",container_id=\"{ID_A}\"}})",
        a.name
    );
    assert_eq!(promql(prom_port, &q), Some(counts[0] as f64), "{q}");
    for (pid, pod) in [(pids[0], a.name), (pids[1], b.name)] {
        let q = format!("sum(inferscope_target_info{{pid=\"{pid}\",k8s_pod_name=\"{pod}\",k8s_node_name=\"{NODE}\"}})");
        assert_eq!(promql(prom_port, &q), Some(1.0), "{q}");
    }
    let q = format!("sum(inferscope_target_info{{pid=\"{}\",k8s_pod_name=\"\"}})", pids[2]);
    assert_eq!(promql(prom_port, &q), Some(1.0), "{q}");

    // OTLP: every span of a pod's request names the pod.
    let spans = wait_for("every request's spans at the receiver", Duration::from_secs(30), || {
        let s = read_jsonl(&rx.spans);
        (s.iter().filter(|s| s["name"] == "llm_request").count() >= total).then_some(s)
    });
    for s in &spans {
        let by_pid =
            |pid: u32| spans.iter().any(|o| o["trace_id"] == s["trace_id"] && o["attributes"]["process.pid"] == pid);
        let pod = if by_pid(pids[0]) {
            Some(&a)
        } else if by_pid(pids[1]) {
            Some(&b)
        } else {
            assert!(by_pid(pids[2]), "span of no known process: {s}");
            None
        };
        match pod {
            Some(p) => {
                for (k, v) in want(p) {
                    assert_eq!(s["attributes"][k], v, "{k} on span {s}");
                }
            }
            None => assert!(s["attributes"].get("k8s.pod.name").is_none(), "{s}"),
        }
    }
    let pod_spans =
        spans.iter().filter(|s| s["name"] == "llm_request" && s["attributes"]["k8s.pod.name"] == a.name).count();
    assert_eq!(pod_spans, counts[0]);
    // OTLP metrics: the request counter by pod.
    wait_for("the request counter of pod A at the receiver", Duration::from_secs(20), || {
        let m = read_jsonl(&rx.metrics);
        let last = m
            .iter()
            .rev()
            .find(|p| p["name"] == "gen_ai.server.request.duration" && p["attributes"]["k8s.pod.name"] == a.name)?;
        (last["count"].as_u64()? == counts[0] as u64).then_some(())
    });
    scope.stop();
    drop((server_a, server_b, host));
    drop(cgroups);
}
