//! Pods named by the node's container runtime, with no Kubernetes API: REAL runtimes from
//! Debian's packages (`docker.io` brings dockerd, containerd and runc), each started privately
//! for the test (own sockets, state and data directories). The fixture server runs in their
//! containers, labelled as the kubelet labels the containers it creates
//! (`io.kubernetes.pod.name`, `.pod.namespace`, `.pod.uid`, `.container.name`):
//!
//! - containerd, through its gRPC API: containers made with `ctr` in the `k8s.io` namespace,
//!   where the CRI plugin keeps the kubelet's, in the kubelet's cgroupfs-driver cgroups
//!   (`kubepods/<qos>/pod<uid>/<id>`); nothing but the labels says the pods' names.
//! - Docker, through its Engine API: one container labelled as cri-dockerd labels them, one
//!   plain container known only by its name.
//!
//! The containers' root is a directory of three symbolic links; the host's /usr, the test
//! virtualenv's interpreter and the checkout are mounted read-only. Needs root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use inferscope_tests::*;
use serde_json::Value;

const NODE: &str = "node-9";
const ID_1: &str = "a7b8c9d0e1f20314253647586970a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2";
const ID_2: &str = "b8c9d0e1f20314253647586970a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3";
const UID_1: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
const UID_2: &str = "8b7c6d5e-4f3a-4b2c-8d1e-0f9a8b7c6d5e";

/// A root directory with /bin, /lib and /lib64 pointing into the /usr mounted from the host.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(&root).unwrap();
    for l in ["bin", "lib", "lib64", "sbin"] {
        let _ = std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l));
    }
    root
}

/// What the fixture server needs inside a container, mounted read-only at the same paths: the
/// host's /usr, the checkout, the test virtualenv and the interpreter behind it.
fn ro_mounts() -> Vec<PathBuf> {
    let venv = fs::canonicalize(python().parent().unwrap().parent().unwrap()).unwrap();
    let interp = fs::canonicalize(python()).unwrap();
    // <prefix>/bin/python3.x
    let prefix = interp.parent().unwrap().parent().unwrap().to_path_buf();
    let mut m = vec![PathBuf::from("/usr"), fs::canonicalize(repo_root()).unwrap(), venv, prefix];
    m.dedup();
    m
}

fn tool(name: &str) -> PathBuf {
    for d in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (Debian: apt-get install docker.io; `cargo xtask setup` does)");
}

/// A containerd of the test's own.
struct Containerd {
    sock: PathBuf,
    ids: Vec<String>,
    _proc: Proc,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let d = dir.join("ctd");
        fs::create_dir_all(&d).unwrap();
        let sock = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            d.display(),
            sock.display()
        );
        fs::write(d.join("config.toml"), config).unwrap();
        let proc = Proc::spawn(
            "containerd",
            Command::new(tool("containerd"))
                .arg("--config")
                .arg(d.join("config.toml"))
                .stdout(Stdio::null())
                .stderr(fs::File::create(d.join("containerd.log")).unwrap()),
        );
        wait_for("containerd's socket", Duration::from_secs(30), || sock.exists().then_some(()));
        Containerd { sock, ids: Vec::new(), _proc: proc }
    }

    fn ctr(&self) -> Vec<String> {
        [tool("ctr").display().to_string(), "--address".into(), self.sock.display().to_string()]
            .into_iter()
            .chain(["-n".into(), "k8s.io".into()])
            .collect()
    }

    /// `ctr run` of the fixture server as the kubelet would run a pod's container.
    fn wrapper(&mut self, dir: &Path, id: &str, uid: &str, pod: (&str, &str), container: &str) -> Vec<String> {
        self.ids.push(id.to_string());
        let mut w = self.ctr();
        w.extend(["run", "--rm", "--rootfs", "--net-host", "--cgroup"].map(String::from));
        w.push(format!("kubepods/besteffort/pod{uid}/{id}"));
        for (k, v) in [
            ("io.kubernetes.pod.name", pod.1),
            ("io.kubernetes.pod.namespace", pod.0),
            ("io.kubernetes.pod.uid", uid),
            ("io.kubernetes.container.name", container),
            ("io.cri-containerd.kind", "container"),
        ] {
            w.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        for m in ro_mounts() {
            w.extend(["--mount".to_string(), format!("type=bind,src={0},dst={0},options=rbind:ro", m.display())]);
        }
        w.extend(["--mount".to_string(), format!("type=bind,src={0},dst={0},options=rbind:rw", dir.display())]);
        w.push(rootfs(dir).display().to_string());
        w.push(id.to_string());
        w
    }

    /// The host pid of a container's task.
    fn pid(&self, id: &str) -> u32 {
        wait_for(&format!("the task of {id}"), Duration::from_secs(30), || {
            let c = self.ctr();
            let out = Command::new(&c[0]).args(&c[1..]).args(["tasks", "ls"]).output().ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.starts_with(id))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let c = self.ctr();
        for id in &self.ids {
            for args in
                [&["tasks", "kill", "-s", "SIGKILL", id][..], &["tasks", "rm", "-f", id], &["containers", "rm", id]]
            {
                let _ = Command::new(&c[0]).args(&c[1..]).args(args).stderr(Stdio::null()).status();
            }
        }
    }
}

/// A dockerd of the test's own (no bridge, no iptables: containers use the host's network).
struct Dockerd {
    dir: PathBuf,
    sock: PathBuf,
    names: Vec<String>,
    proc: Proc,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        let d = dir.join("dkd");
        fs::create_dir_all(&d).unwrap();
        let sock = d.join("docker.sock");
        let proc = Proc::spawn(
            "dockerd",
            Command::new(tool("dockerd"))
                .arg("--data-root")
                .arg(d.join("data"))
                .arg("--exec-root")
                .arg(d.join("exec"))
                .arg("--pidfile")
                .arg(d.join("docker.pid"))
                .arg("--host")
                .arg(format!("unix://{}", sock.display()))
                .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
                .stdout(Stdio::null())
                .stderr(fs::File::create(d.join("dockerd.log")).unwrap()),
        );
        let dk = Dockerd { dir: d, sock, names: Vec::new(), proc };
        wait_for("dockerd to answer", Duration::from_secs(60), || {
            dk.docker(&["version"]).status().ok().filter(|s| s.success())
        });
        // The image: the root directory of links, imported.
        let tar = dir.join("rootfs.tar");
        let ok = Command::new("tar").arg("cf").arg(&tar).arg("-C").arg(rootfs(dir)).arg(".").status().unwrap();
        assert!(ok.success());
        let ok = dk.docker(&["import", tar.to_str().unwrap(), "inferscope-test-root:1"]).status().unwrap();
        assert!(ok.success(), "docker import");
        dk
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tool("docker"));
        c.arg("--host").arg(format!("unix://{}", self.sock.display())).args(args).stdout(Stdio::null());
        c
    }

    /// `docker run` of the fixture server, with `labels`.
    fn wrapper(&mut self, dir: &Path, name: &str, labels: &[(&str, &str)]) -> Vec<String> {
        self.names.push(name.to_string());
        let mut w =
            vec![tool("docker").display().to_string(), "--host".into(), format!("unix://{}", self.sock.display())];
        w.extend(["run", "--rm", "--network", "host", "--name", name].map(String::from));
        for (k, v) in labels {
            w.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        for m in ro_mounts() {
            w.extend(["-v".to_string(), format!("{0}:{0}:ro", m.display())]);
        }
        w.extend(["-v".to_string(), format!("{0}:{0}", dir.display())]);
        w.push("inferscope-test-root:1".into());
        w
    }

    fn pid(&self, name: &str) -> u32 {
        wait_for(&format!("the pid of container {name}"), Duration::from_secs(30), || {
            let out = self.docker(&["inspect", "-f", "{{.State.Pid}}", name]).stdout(Stdio::piped()).output().ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|p: &u32| *p > 0)
        })
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.docker(&["rm", "-f", n]).stderr(Stdio::null()).status();
        }
        // dockerd stops its containerd and unmounts its layers on SIGTERM; not the network
        // namespace it keeps bound.
        self.proc.stop_with(15, Duration::from_secs(20));
        let _ =
            Command::new("umount").arg("-l").arg(self.dir.join("exec/netns/default")).stderr(Stdio::null()).status();
    }
}

/// inferscope on the servers whose command line has `marker`, asking `runtime` at `sock`.
fn scope(dir: &Path, marker: &str, runtime: &str, sock: &Path, pids: &[u32], metrics: u16) -> Inferscope {
    let args: Vec<String> = [
        "run",
        "--match",
        marker,
        "--discover-interval",
        "0.3",
        "--quiet",
        "--node-name",
        NODE,
        "--container-runtime",
        runtime,
        "--container-runtime-endpoint",
        sock.to_str().unwrap(),
        "--identity-labels",
        "always",
        "--prometheus-listen",
        &format!("127.0.0.1:{metrics}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Inferscope::start(dir, &args, pids)
}

/// Waits for the line saying the runtime named `pid` so.
fn named(scope: &Inferscope, pid: u32, what: &str) {
    wait_for(&format!("pid {pid} named {what}"), Duration::from_secs(30), || {
        let err = fs::read_to_string(&scope.stderr).unwrap_or_default();
        err.lines().any(|l| l.contains(&format!("pid {pid},")) && l.contains(what)).then_some(())
    });
}

/// `sum(inferscope_requests_total{sel})` from inferscope's own scrape.
fn requests_where(metrics: u16, sel: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(metrics, "/metrics").expect("scrape");
    text.lines()
        .filter(|l| l.starts_with("inferscope_requests_total{"))
        .filter(|l| sel.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn check_lines(records: &[Value], pid: u32, n: usize, want: &[(&str, &str)], absent: &[&str]) {
    let mine: Vec<&Value> = records.iter().filter(|r| r["pid"] == pid).collect();
    assert_eq!(mine.len(), n, "requests of pid {pid}");
    for r in mine {
        for (k, v) in want {
            assert_eq!(r[*k], *v, "{k} on {r}");
        }
        for k in absent {
            assert!(r.get(*k).is_none(), "{k} on {r}");
        }
    }
}

#[test]
fn containerd_labels_name_pods_without_the_api() {
    let dir = scratch("runtime-containerd");
    let mut ctd = Containerd::start(&dir);
    let w1 = ctd.wrapper(&dir, ID_1, UID_1, ("llm", "chat-0"), "server");
    let w2 = ctd.wrapper(&dir, ID_2, UID_2, ("team-b", "embed-0"), "worker");
    let s1 = Fixture::start_in(&dir, &[], &w1, &[], "fixture-1");
    let s2 = Fixture::start_in(&dir, &[], &w2, &[], "fixture-2");
    let pids = [ctd.pid(ID_1), ctd.pid(ID_2)];
    let metrics = free_port();
    let marker = format!("{}/fixture-", dir.display());
    let mut scope = scope(&dir, &marker, "containerd", &ctd.sock, &pids, metrics);
    named(&scope, pids[0], "pod llm/chat-0, container server a7b8c9d0e1f2 (container runtime)");
    named(&scope, pids[1], "pod team-b/embed-0, container worker b8c9d0e1f203 (container runtime)");
    for (s, n) in [(&s1, 4), (&s2, 3)] {
        let t =
            loadgen(&dir, &s.url(), &["--requests", &n.to_string(), "--concurrency", "2", "--mix", "chat_stream=1"]);
        assert_eq!(t.len(), n);
    }
    let records = scope.wait_requests(7, Duration::from_secs(30));
    let pod = |ns, name, uid, c| {
        vec![
            ("k8s.namespace.name", ns),
            ("k8s.pod.name", name),
            ("k8s.pod.uid", uid),
            ("k8s.container.name", c),
            ("k8s.node.name", NODE),
        ]
    };
    check_lines(&records, pids[0], 4, &pod("llm", "chat-0", UID_1, "server"), &["container.name"]);
    check_lines(&records, pids[1], 3, &pod("team-b", "embed-0", UID_2, "worker"), &["container.name"]);
    assert_eq!(requests_where(metrics, &[("k8s_pod_name", "chat-0"), ("k8s_container_name", "server")]), 4.0);
    assert_eq!(requests_where(metrics, &[("k8s_namespace_name", "team-b"), ("k8s_pod_uid", UID_2)]), 3.0);
    let err = scope.stop();
    assert!(err.contains("from containerd at"), "{err}");
    assert!(!err.contains("fails"), "{err}");
    drop((s1, s2));
    drop(ctd);
}

#[test]
fn docker_names_its_containers_and_cri_dockerd_pods() {
    let dir = scratch("runtime-docker");
    let mut dk = Dockerd::start(&dir);
    let labels = [
        ("io.kubernetes.pod.name", "rerank-0"),
        ("io.kubernetes.pod.namespace", "llm"),
        ("io.kubernetes.pod.uid", UID_1),
        ("io.kubernetes.container.name", "server"),
        ("io.kubernetes.docker.type", "container"),
    ];
    let pod_name = format!("k8s_server_rerank-0_llm_{UID_1}_0");
    let w1 = dk.wrapper(&dir, &pod_name, &labels);
    let w2 = dk.wrapper(&dir, "plain-web", &[("com.example.team", "ml")]);
    let s1 = Fixture::start_in(&dir, &[], &w1, &[], "fixture-1");
    let s2 = Fixture::start_in(&dir, &[], &w2, &[], "fixture-2");
    let pids = [dk.pid(&pod_name), dk.pid("plain-web")];
    let metrics = free_port();
    let marker = format!("{}/fixture-", dir.display());
    let mut scope = scope(&dir, &marker, "docker", &dk.sock, &pids, metrics);
    named(&scope, pids[0], "pod llm/rerank-0, container server");
    named(&scope, pids[1], "container plain-web");
    for (s, n) in [(&s1, 5), (&s2, 2)] {
        let t =
            loadgen(&dir, &s.url(), &["--requests", &n.to_string(), "--concurrency", "2", "--mix", "chat_stream=1"]);
        assert_eq!(t.len(), n);
    }
    let records = scope.wait_requests(7, Duration::from_secs(30));
    check_lines(
        &records,
        pids[0],
        5,
        &[
            ("k8s.pod.name", "rerank-0"),
            ("k8s.namespace.name", "llm"),
            ("k8s.container.name", "server"),
            ("container.name", &pod_name),
            ("container.runtime", "docker"),
        ],
        &[],
    );
    check_lines(
        &records,
        pids[1],
        2,
        &[("container.name", "plain-web"), ("container.runtime", "docker")],
        &["k8s.pod.name", "k8s.namespace.name", "k8s.node.name"],
    );
    assert_eq!(requests_where(metrics, &[("k8s_pod_name", "rerank-0"), ("container_name", &pod_name)]), 5.0);
    assert_eq!(requests_where(metrics, &[("container_name", "plain-web"), ("k8s_pod_name", "")]), 2.0);
    let err = scope.stop();
    assert!(err.contains("from docker at"), "{err}");
    drop((s1, s2));
    drop(dk);
}
