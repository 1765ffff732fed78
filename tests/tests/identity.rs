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
    process::Command,
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
    let (_prom, prom_port) = prometheus(&dir, &listen);
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

const UID_C: &str = "3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b";
const UID_D: &str = "4f5a6b7c-8d9e-4f0a-9b1c-2d3e4f5a6b7c";
const UID_E: &str = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
const ID_C: &str = "c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2";
const ID_D: &str = "d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3";
const ID_E: &str = "e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4";

/// A pod as the API server returns it: owned by `replicaset`, one container `server` with
/// `id` and a sidecar, labels (one not allowed by the test's --pod-labels).
fn api_pod(name: &str, uid: &str, id: &str, replicaset: &str, app: &str, node: &str) -> Value {
    let hash = replicaset.rsplit('-').next().unwrap();
    serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": "llm", "uid": uid,
            "labels": {"app.kubernetes.io/name": app, "tier": "gpu", "pod-template-hash": hash, "private": "do-not-export"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                                  "uid": "00000000-0000-4000-8000-000000000001", "controller": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "server"}, {"name": "sidecar"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "server", "containerID": format!("containerd://{id}"), "ready": true, "restartCount": 0,
             "image": "vllm", "imageID": ""},
            {"name": "sidecar", "containerID": format!("containerd://{}", "9".repeat(64)), "ready": true,
             "restartCount": 0, "image": "envoy", "imageID": ""}
        ]}
    })
}

/// The workload behind each pod, from the Kubernetes API: three servers in three stand-in pods
/// (cgroups as the kubelet makes them, as in the test above) of two Deployments, "chat" (two
/// pods, its ReplicaSet readable) and "embed" (one pod, its ReplicaSet forbidden: named from
/// the pod-template-hash label), behind a stand-in API server that speaks the real protocol to
/// kube-rs (list by node, watch with bookmarks, 410 Gone on the first watch, object reads,
/// bearer token). Pod "embed" appears only later, through the watch, after its process is
/// traced. A real Prometheus sums the request counter by Deployment.
#[test]
fn workloads_from_the_kubernetes_api() {
    let dir = scratch("kube-api");
    let mut cgroups = Cgroups { dirs: Vec::new(), mounts: Vec::new() };
    let cg_c = cgroups.make(&dir, false, &format!("kubepods/besteffort/pod{UID_C}/{ID_C}"));
    let uid_d = UID_D.replace('-', "_");
    let cg_d = cgroups.make(
        &dir,
        true,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_d}.slice/cri-containerd-{ID_D}.scope"
        ),
    );
    let cg_e = cgroups.make(&dir, false, &format!("kubepods/burstable/pod{UID_E}/{ID_E}"));
    let (chat_c, chat_d, embed_e) = ("chat-5f7b9c-x2x9q", "chat-5f7b9c-k8w4m", "embed-86c4d9-p7r2z");

    // The API server's state.
    let token = "stand-in-token-7f3a";
    let state = serde_json::json!({
        "token": token,
        "pods": [
            api_pod(chat_c, UID_C, ID_C, "chat-5f7b9c", "chat", NODE),
            api_pod(chat_d, UID_D, ID_D, "chat-5f7b9c", "chat", NODE),
            api_pod("chat-5f7b9c-other", "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e", &"8".repeat(64), "chat-5f7b9c", "chat", "node-8"),
        ],
        "later": [api_pod(embed_e, UID_E, ID_E, "embed-86c4d9", "embed", NODE)],
        "replicasets": [{
            "kind": "ReplicaSet", "apiVersion": "apps/v1",
            "metadata": {"name": "chat-5f7b9c", "namespace": "llm", "uid": "00000000-0000-4000-8000-000000000002",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat",
                                              "uid": "00000000-0000-4000-8000-000000000003", "controller": true}]},
        }],
        "forbidden": ["replicasets/embed-86c4d9"],
    });
    fs::write(dir.join("api-state.json"), state.to_string()).unwrap();
    let api_port = free_port();
    let api_log = dir.join("api.jsonl");
    let add_later = dir.join("add-later");
    let api_out = dir.join("apiserver.out");
    let _api = Proc::spawn(
        "stand-in API server",
        Command::new("python3")
            .arg(repo_root().join("tests/k8s/apiserver.py"))
            .args(["--port", &api_port.to_string(), "--state"])
            .arg(dir.join("api-state.json"))
            .arg("--log")
            .arg(&api_log)
            .arg("--add-later")
            .arg(&add_later)
            .stdout(fs::File::create(&api_out).unwrap())
            .stderr(fs::File::create(dir.join("apiserver.err")).unwrap()),
    );
    wait_for("the stand-in API server", Duration::from_secs(20), || {
        fs::read_to_string(&api_out).unwrap_or_default().contains("listening").then_some(())
    });
    let kubeconfig = dir.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://127.0.0.1:{api_port}\n\
             users:\n- name: inferscope\n  user:\n    token: {token}\ncontexts:\n- name: stand-in\n  context:\n    \
             cluster: stand-in\n    user: inferscope\ncurrent-context: stand-in\n"
        ),
    )
    .unwrap();

    // Pod D's hostname is not its name (spec.hostname): /proc alone would misname it.
    let server_c = Fixture::start_in(&dir, &[], &pod_wrapper("llm", &cg_c), &[("HOSTNAME", chat_c)], "fixture-c");
    let server_d = Fixture::start_in(&dir, &[], &pod_wrapper("llm", &cg_d), &[("HOSTNAME", "chat-host")], "fixture-d");
    let server_e = Fixture::start_in(&dir, &[], &pod_wrapper("llm", &cg_e), &[("HOSTNAME", embed_e)], "fixture-e");
    let pids = [server_c.proc.pid(), server_d.proc.pid(), server_e.proc.pid()];

    let rx = receiver(&dir);
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
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--pod-labels",
        "app.kubernetes.io/name,tier",
        "--identity-labels",
        "always",
        "--prometheus-listen",
        &listen,
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", rx.grpc),
        "--otlp-metrics-interval",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut scope = Inferscope::start(&dir, &args, &pids);
    let said = |pid: u32, what: &str| {
        fs::read_to_string(&scope.stderr)
            .unwrap_or_default()
            .lines()
            .any(|l| (l.contains(&format!("pid {pid} ")) || l.contains(&format!("pid {pid},"))) && l.contains(what))
    };
    let said_workload = |pid: u32, what: &str| {
        wait_for(&format!("pid {pid} named {what}"), Duration::from_secs(30), || {
            let err = fs::read_to_string(&scope.stderr).unwrap_or_default();
            err.lines()
                .any(|l| (l.contains(&format!("pid {pid} ")) || l.contains(&format!("pid {pid},"))) && l.contains(what))
                .then_some(())
        })
    };
    said_workload(pids[0], &format!("pod llm/{chat_c}, deployment chat, container server"));
    said_workload(pids[1], &format!("pod llm/{chat_d}, deployment chat, container server"));
    // Pod E is not known to the API yet: /proc names it, no workload.
    assert!(!said(pids[2], "deployment"), "{}", fs::read_to_string(&scope.stderr).unwrap());
    // Added once the watch streams (after the 410 and the second list): an ADDED event.
    wait_for("the watch to stream", Duration::from_secs(30), || {
        read_jsonl(&api_log).iter().any(|l| l["answer"] == "stream").then_some(())
    });
    fs::write(&add_later, "").unwrap();
    said_workload(pids[2], &format!("pod llm/{embed_e}, deployment embed, container server"));

    let (_prom, prom_port) = prometheus(&dir, &listen);
    let counts = [7usize, 5, 4];
    for (server, n) in [&server_c, &server_d, &server_e].into_iter().zip(counts) {
        let t = loadgen(
            &dir,
            &server.url(),
            &["--requests", &n.to_string(), "--concurrency", "2", "--mix", "chat_stream=1", "--seed", "5"],
        );
        assert_eq!(t.len(), n);
    }
    let total: usize = counts.iter().sum();
    let records = scope.wait_requests(total, Duration::from_secs(30));
    assert_eq!(records.len(), total);

    // The operator's question: requests by Deployment, in a real Prometheus.
    let query = "sum by (k8s_deployment_name) (inferscope_requests_total)";
    let want = [("chat".to_string(), (counts[0] + counts[1]) as f64), ("embed".to_string(), counts[2] as f64)];
    let got = wait_for(&format!("Prometheus to answer {query}"), Duration::from_secs(30), || {
        let mut v: Vec<(String, f64)> = promql_vector(prom_port, query)
            .into_iter()
            .map(|(l, v)| (l.get("k8s_deployment_name").cloned().unwrap_or_default(), v))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        (v == want).then_some(v)
    });
    assert_eq!(got, want);
    let q = format!(
        "sum(inferscope_requests_total{{k8s_pod_name=\"{chat_d}\",k8s_container_name=\"server\",\
         k8s_replicaset_name=\"chat-5f7b9c\",k8s_pod_label_app_kubernetes_io_name=\"chat\",k8s_pod_label_tier=\"gpu\"}})"
    );
    assert_eq!(promql(prom_port, &q), Some(counts[1] as f64), "{q}");
    let q = format!("sum(inferscope_target_info{{pid=\"{}\",k8s_deployment_name=\"embed\"}})", pids[2]);
    assert_eq!(promql(prom_port, &q), Some(1.0), "{q}");
    // Only the allowed labels: nothing of the "private" one, nor of the pod on another node.
    let (_, text) = http_get(metrics_port, "/metrics").expect("scrape");
    assert!(!text.contains("private") && !text.contains("do-not-export"), "a label not allowed was exported");
    assert!(!text.contains("chat-5f7b9c-other") && !text.contains("chat-host"));

    // JSONL and OTLP carry the same attributes.
    for r in &records {
        let i = pids.iter().position(|p| r["pid"] == *p).expect("a request of a known pid");
        let (pod, deployment) = [(chat_c, "chat"), (chat_d, "chat"), (embed_e, "embed")][i];
        assert_eq!(r["k8s.pod.name"], pod, "{r}");
        assert_eq!(r["k8s.deployment.name"], deployment, "{r}");
        assert_eq!(r["k8s.container.name"], "server", "{r}");
        assert_eq!(r["k8s.pod.label.tier"], "gpu", "{r}");
        assert!(r.get("k8s.pod.label.private").is_none(), "{r}");
    }
    let spans = wait_for("every request's spans at the receiver", Duration::from_secs(30), || {
        let s = read_jsonl(&rx.spans);
        (s.iter().filter(|s| s["name"] == "llm_request").count() >= total).then_some(s)
    });
    for (deployment, n) in [("chat", counts[0] + counts[1]), ("embed", counts[2])] {
        let got = spans
            .iter()
            .filter(|s| s["name"] == "llm_request" && s["attributes"]["k8s.deployment.name"] == deployment)
            .count();
        assert_eq!(got, n, "llm_request spans of deployment {deployment}");
    }

    // What the API server saw: lists by node only, a list again after the 410, one read of the
    // readable ReplicaSet (kept), the token on every request.
    let log = read_jsonl(&api_log);
    let last_list = log.iter().rposition(|l| l["path"] == "/api/v1/pods" && l["query"]["watch"].is_null());
    let embed_read = log.iter().position(|l| l["path"] == "/apis/apps/v1/namespaces/llm/replicasets/embed-86c4d9");
    assert!(embed_read > last_list, "pod E came from a list, not from the watch: {log:?}");
    let lists: Vec<&Value> =
        log.iter().filter(|l| l["path"] == "/api/v1/pods" && l["query"]["watch"].is_null()).collect();
    assert!(lists.len() >= 2, "no list again after 410 Gone: {log:?}");
    assert!(lists.iter().all(|l| l["query"]["fieldSelector"] == format!("spec.nodeName={NODE}")), "{lists:?}");
    assert!(log.iter().any(|l| l["answer"] == "410"), "{log:?}");
    assert!(log.iter().any(|l| l["answer"] == "stream" && l["query"]["allowWatchBookmarks"] == "true"), "{log:?}");
    let rs_reads = log.iter().filter(|l| l["path"] == "/apis/apps/v1/namespaces/llm/replicasets/chat-5f7b9c").count();
    assert_eq!(rs_reads, 1, "{log:?}");
    assert!(log.iter().all(|l| l["answer"] != 401), "{log:?}");
    let err = scope.stop();
    assert!(err.contains("Kubernetes API answers: 2 pods on node"), "{err}");
    assert!(err.contains("cannot read ReplicaSets") && err.contains("pod-template-hash"), "{err}");
    assert!(!err.contains("Kubernetes API fails"), "{err}");
    drop((server_c, server_d, server_e));
    drop(cgroups);
}
