//! Workload identity of a traced process: the container it runs in and, on Kubernetes, its
//! pod. What /proc alone tells, with no API server and no runtime socket:
//!
//! - the container id, its runtime and the pod uid, from the cgroup path (/proc/PID/cgroup,
//!   cgroup v1 and v2, the systemd and cgroupfs drivers' naming: `cri-containerd-<id>.scope`,
//!   `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`,
//!   `kubepods-burstable-pod<uid>.slice`, `/kubepods/besteffort/pod<uid>/<id>`, `/docker/<id>`);
//! - the pod's namespace, from the service-account token the kubelet mounts
//!   (/proc/PID/root/var/run/secrets/kubernetes.io/serviceaccount/namespace);
//! - the pod's name, which is its hostname unless the pod sets `spec.hostname`: the
//!   `HOSTNAME` the runtime puts in the container's environment, else its /etc/hostname.
//!
//! Parsing takes text and is unit-tested; the readers return what they could read. What only
//! the Kubernetes API knows (the owning workload, the container's name, the pod's labels) is
//! added by [`super::kubernetes`] when the daemon has it.

use std::{borrow::Cow, fs, path::Path};

use super::procfs::proc_root;

/// A container runtime, as OpenTelemetry's `container.runtime` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A container id in a kubelet cgroup (cgroupfs driver), whose runtime the path does not name.
    Unknown,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// What a process's cgroup path says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// 64 lowercase hex digits.
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// The pod's uid, with hyphens (the systemd driver writes underscores).
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`: the kubelet's QoS class slice.
    pub qos_class: Option<&'static str>,
}

/// Everything known about where a process runs. Empty on a host without containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    pub pod_uid: Option<String>,
    pub qos_class: Option<&'static str>,
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub node_name: Option<String>,
    /// The container runtime's name for the container (Docker's, say).
    pub container_name: Option<String>,
    /// The container's name in its pod (Kubernetes API, or the kubelet's container labels).
    pub k8s_container_name: Option<String>,
    /// The pod's owners, nearest first: ReplicaSet then Deployment, Job then CronJob, or a
    /// StatefulSet or DaemonSet (Kubernetes API).
    pub workload: Vec<(Workload, String)>,
    /// The pod's labels the operator allowed (`--pod-labels`), by key.
    pub pod_labels: Vec<(String, String)>,
}

/// A kind of workload that owns pods, as OpenTelemetry's `k8s.<kind>.name` attributes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    ReplicaSet,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::ReplicaSet,
        Workload::Deployment,
        Workload::StatefulSet,
        Workload::DaemonSet,
        Workload::Job,
        Workload::CronJob,
    ];

    /// The Kubernetes kind, as in an owner reference.
    pub fn kind(self) -> &'static str {
        match self {
            Workload::ReplicaSet => "ReplicaSet",
            Workload::Deployment => "Deployment",
            Workload::StatefulSet => "StatefulSet",
            Workload::DaemonSet => "DaemonSet",
            Workload::Job => "Job",
            Workload::CronJob => "CronJob",
        }
    }

    pub fn of_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.kind() == kind)
    }

    /// The OpenTelemetry resource attribute.
    pub fn attribute(self) -> &'static str {
        match self {
            Workload::ReplicaSet => "k8s.replicaset.name",
            Workload::Deployment => "k8s.deployment.name",
            Workload::StatefulSet => "k8s.statefulset.name",
            Workload::DaemonSet => "k8s.daemonset.name",
            Workload::Job => "k8s.job.name",
            Workload::CronJob => "k8s.cronjob.name",
        }
    }
}

/// The attribute of an allowed pod label (OpenTelemetry's `k8s.pod.label.<key>`).
pub fn pod_label_attribute(key: &str) -> String {
    format!("k8s.pod.label.{key}")
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none() && self.namespace.is_none() && self.pod_name.is_none()
    }

    /// Whether it runs in a Kubernetes pod, as far as is known.
    pub fn in_pod(&self) -> bool {
        self.pod_uid.is_some() || self.namespace.is_some()
    }

    /// The identity as OpenTelemetry resource attributes (semantic-convention names), in a
    /// fixed order; attributes not known are left out. `k8s.node.name` only with a pod.
    pub fn attributes(&self) -> Vec<(Cow<'static, str>, String)> {
        let mut a = Vec::new();
        let mut put = |k: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                a.push((Cow::Borrowed(k), v.clone()));
            }
        };
        put("container.id", &self.container_id);
        put("container.runtime", &self.runtime.map(|r| r.name().to_string()));
        put("k8s.namespace.name", &self.namespace);
        put("k8s.pod.name", &self.pod_name);
        put("k8s.pod.uid", &self.pod_uid);
        if self.pod_uid.is_some() || self.namespace.is_some() {
            put("k8s.node.name", &self.node_name);
        }
        put("container.name", &self.container_name);
        put("k8s.container.name", &self.k8s_container_name);
        for (w, name) in &self.workload {
            a.push((Cow::Borrowed(w.attribute()), name.clone()));
        }
        for (k, v) in &self.pod_labels {
            a.push((Cow::Owned(pod_label_attribute(k)), v.clone()));
        }
        a
    }

    /// The workload that says most of a pod: its Deployment, StatefulSet, DaemonSet, CronJob
    /// or Job (a ReplicaSet only without a Deployment above it).
    pub fn workload_name(&self) -> Option<(Workload, &str)> {
        self.workload.last().map(|(w, n)| (*w, n.as_str()))
    }

    /// For the "tracing pid" line: `, pod ns/name, container 0123456789ab (containerd)`, or nothing.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (&self.namespace, &self.pod_name) {
            (Some(ns), Some(p)) => parts.push(format!("pod {ns}/{p}")),
            (None, Some(p)) => parts.push(format!("pod {p}")),
            (Some(ns), None) => parts.push(format!("namespace {ns}")),
            (None, None) => {
                if let Some(uid) = &self.pod_uid {
                    parts.push(format!("pod uid {uid}"));
                }
            }
        }
        if let Some((w, name)) = self.workload_name() {
            parts.push(format!("{} {name}", w.kind().to_lowercase()));
        }
        let named = self
            .k8s_container_name
            .as_deref()
            .or(self.container_name.as_deref())
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        match &self.container_id {
            Some(id) => {
                let short = &id[..id.len().min(12)];
                match self.runtime {
                    Some(r) if r != Runtime::Unknown => parts.push(format!("container{named} {short} ({})", r.name())),
                    _ => parts.push(format!("container{named} {short}")),
                }
            }
            None if !named.is_empty() => parts.push(format!("container{named}")),
            None => {}
        }
        parts.iter().map(|p| format!(", {p}")).collect()
    }
}

/// Reads what /proc tells about `pid`. `node_name` is the node's, given by the operator or
/// read from the host; it is kept only for a process in a pod.
pub fn read(pid: u32, node_name: Option<&str>) -> Identity {
    let dir = proc_root().join(pid.to_string());
    let cg = fs::read_to_string(dir.join("cgroup")).map(|t| parse_cgroup(&t)).unwrap_or_default();
    let in_pod = cg.pod_uid.is_some();
    let root = dir.join("root");
    let namespace = [
        "var/run/secrets/kubernetes.io/serviceaccount/namespace",
        "run/secrets/kubernetes.io/serviceaccount/namespace",
    ]
    .iter()
    .find_map(|p| read_name(&root.join(p)));
    let in_pod = in_pod || namespace.is_some();
    let pod_name = if in_pod {
        fs::read(dir.join("environ"))
            .ok()
            .and_then(|env| environ_value(&env, "HOSTNAME"))
            .filter(|h| is_dns_name(h))
            .or_else(|| read_name(&root.join("etc/hostname")))
    } else {
        None
    };
    Identity {
        container_id: cg.container_id,
        runtime: cg.runtime,
        pod_uid: cg.pod_uid,
        qos_class: cg.qos_class,
        namespace,
        pod_name,
        node_name: node_name.filter(|_| in_pod).map(str::to_string),
        ..Identity::default()
    }
}

/// The host's name, for `k8s.node.name` when the operator gave none: /proc/1's /etc/hostname
/// (the host's, when inferscope shares the host's PID namespace), else the kernel's hostname.
pub fn host_name() -> Option<String> {
    let proc = proc_root();
    read_name(&proc.join("1/root/etc/hostname")).or_else(|| read_name(&proc.join("sys/kernel/hostname")))
}

fn read_name(path: &Path) -> Option<String> {
    let t = fs::read_to_string(path).ok()?;
    let t = t.trim();
    is_dns_name(t).then(|| t.to_string())
}

/// A Kubernetes object name or hostname: 1-253 of `[a-z0-9.-]` (upper case too, for hostnames).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The value of `key` in a NUL-separated environment block.
pub fn environ_value(env: &[u8], key: &str) -> Option<String> {
    env.split(|&b| b == 0).find_map(|kv| {
        let rest = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        std::str::from_utf8(rest).ok().map(str::to_string)
    })
}

/// Parses /proc/PID/cgroup. The unified (v2) line is preferred; v1 lines are read when it says
/// nothing (hybrid hosts keep containers in the v1 hierarchies).
pub fn parse_cgroup(text: &str) -> Cgroup {
    let mut paths: Vec<(bool, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let hier = it.next()?;
            let _controllers = it.next()?;
            Some((hier == "0", it.next()?))
        })
        .collect();
    paths.sort_by_key(|(v2, _)| !v2);
    let mut best = Cgroup::default();
    for (_, path) in paths {
        let cg = parse_cgroup_path(path);
        if cg.container_id.is_some() || cg.pod_uid.is_some() {
            if cg.container_id.is_some() {
                return cg;
            }
            if best.pod_uid.is_none() {
                best = cg;
            }
        }
    }
    best
}

/// One cgroup path, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_..slice/cri-containerd-<id>.scope`.
pub fn parse_cgroup_path(path: &str) -> Cgroup {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut cg = Cgroup::default();
    let kubepods = segs.iter().any(|s| *s == "kubepods" || s.starts_with("kubepods.") || s.starts_with("kubepods-"));
    for (i, seg) in segs.iter().enumerate() {
        if kubepods {
            if let Some(uid) = pod_uid_of(seg) {
                cg.pod_uid = Some(uid);
            }
            if cg.qos_class.is_none() {
                cg.qos_class = ["burstable", "besteffort"]
                    .into_iter()
                    .find(|q| *seg == *q || seg.strip_prefix("kubepods-").is_some_and(|r| r.starts_with(q)));
            }
        }
        if let Some((id, runtime)) = container_of(seg, segs.get(i.wrapping_sub(1)).copied(), kubepods) {
            // The innermost id wins (a container's own nested cgroups do not carry ids).
            cg.container_id = Some(id);
            cg.runtime = Some(runtime);
        }
    }
    if kubepods && cg.pod_uid.is_some() && cg.qos_class.is_none() {
        cg.qos_class = Some("guaranteed");
    }
    cg
}

fn container_of(seg: &str, parent: Option<&str>, kubepods: bool) -> Option<(String, Runtime)> {
    let scoped = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    if let Some(stem) = seg.strip_suffix(".scope") {
        for (prefix, rt) in scoped {
            if let Some(id) = stem.strip_prefix(prefix) {
                return is_container_id(id).then(|| (id.to_string(), rt));
            }
        }
        return None;
    }
    if !is_container_id(seg) {
        return None;
    }
    let runtime = match parent {
        Some("docker") => Runtime::Docker,
        _ if kubepods => Runtime::Unknown,
        Some(p) if p.starts_with("libpod") || p == "machine.slice" => Runtime::Podman,
        _ => Runtime::Unknown,
    };
    Some((seg.to_string(), runtime))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid with _>.slice` (systemd).
fn pod_uid_of(seg: &str) -> Option<String> {
    let raw = if let Some(stem) = seg.strip_suffix(".slice") {
        &stem[stem.rfind("-pod")? + 4..]
    } else {
        seg.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    (shape && uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())).then(|| uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2a7e9b3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const UID: &str = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";

    #[test]
    fn kubelet_systemd_driver_v2() {
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
        );
        let cg = parse_cgroup(&text);
        assert_eq!(cg.container_id.as_deref(), Some(ID));
        assert_eq!(cg.runtime, Some(Runtime::Containerd));
        assert_eq!(cg.pod_uid.as_deref(), Some(UID));
        assert_eq!(cg.qos_class, Some("burstable"));
    }

    #[test]
    fn guaranteed_pods_have_no_qos_slice() {
        let uid_ = UID.replace('-', "_");
        let cg = parse_cgroup(&format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope\n"));
        assert_eq!((cg.runtime, cg.qos_class), (Some(Runtime::CriO), Some("guaranteed")));
        assert_eq!(cg.pod_uid.as_deref(), Some(UID));
        // CRI-O's conmon scope is not the container.
        let cg = parse_cgroup(&format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope\n"));
        assert_eq!(cg.container_id, None);
        assert_eq!(cg.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn kubelet_cgroupfs_driver_v1_hybrid() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n4:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        let cg = parse_cgroup(&text);
        assert_eq!(cg.container_id.as_deref(), Some(ID));
        assert_eq!(cg.runtime, Some(Runtime::Unknown));
        assert_eq!(cg.pod_uid.as_deref(), Some(UID));
        assert_eq!(cg.qos_class, Some("besteffort"));
    }

    #[test]
    fn docker_and_podman_without_kubernetes() {
        let cg = parse_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!((cg.container_id.as_deref(), cg.runtime, cg.pod_uid), (Some(ID), Some(Runtime::Docker), None));
        let cg = parse_cgroup(&format!("5:devices:/docker/{ID}\n0::/\n"));
        assert_eq!((cg.container_id.as_deref(), cg.runtime), (Some(ID), Some(Runtime::Docker)));
        let cg = parse_cgroup(&format!("0::/machine.slice/libpod-{ID}.scope/container\n"));
        assert_eq!((cg.container_id.as_deref(), cg.runtime), (Some(ID), Some(Runtime::Podman)));
        assert_eq!(cg.qos_class, None);
    }

    #[test]
    fn hosts_and_garbage_say_nothing() {
        for text in [
            "0::/\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "4:memory:/process_api/d6bac3725899e7fac76fc7c349906306\n0::/\n",
            "",
            "garbage\n::\n0::",
            "0::/kubepods.slice/kubepods-podnot-a-uid.slice/cri-containerd-xyz.scope",
            &format!("0::/system.slice/cri-containerd-{}.scope", &ID[..63]),
        ] {
            assert_eq!(parse_cgroup(text), Cgroup::default(), "{text:?}");
        }
    }

    #[test]
    fn environ_values_and_attributes() {
        let env = b"PATH=/usr/bin\0HOSTNAME=vllm-7d9f-abcde\0HOSTNAMEX=no\0";
        assert_eq!(environ_value(env, "HOSTNAME").as_deref(), Some("vllm-7d9f-abcde"));
        assert_eq!(environ_value(env, "HOME"), None);
        let id = Identity {
            container_id: Some(ID.into()),
            runtime: Some(Runtime::Containerd),
            pod_uid: Some(UID.into()),
            qos_class: Some("burstable"),
            namespace: Some("llm".into()),
            pod_name: Some("vllm-0".into()),
            node_name: Some("node-a".into()),
            ..Identity::default()
        };
        let keys: Vec<_> = id.attributes().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["container.id", "container.runtime", "k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.node.name"]
        );
        assert_eq!(id.describe(), ", pod llm/vllm-0, container 4f1c2a7e9b3d (containerd)");
        // What the Kubernetes API adds.
        let id = Identity {
            k8s_container_name: Some("server".into()),
            workload: vec![(Workload::ReplicaSet, "vllm-7d9f".into()), (Workload::Deployment, "vllm".into())],
            pod_labels: vec![("app.kubernetes.io/name".into(), "chat".into())],
            ..id
        };
        let kv: Vec<_> = id.attributes().into_iter().skip(6).map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            kv,
            [
                "k8s.container.name=server",
                "k8s.replicaset.name=vllm-7d9f",
                "k8s.deployment.name=vllm",
                "k8s.pod.label.app.kubernetes.io/name=chat"
            ]
        );
        assert_eq!(id.describe(), ", pod llm/vllm-0, deployment vllm, container server 4f1c2a7e9b3d (containerd)");
        assert!(Identity::default().attributes().is_empty());
        assert!(Identity::default().is_empty());
    }
}
