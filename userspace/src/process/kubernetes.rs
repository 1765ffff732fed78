//! Pod metadata from the Kubernetes API, for what /proc cannot tell ([`super::identity`]): the
//! workload that owns a pod (ReplicaSet -> Deployment, Job -> CronJob, StatefulSet,
//! DaemonSet), the container's name, and the pod labels the operator allowed.
//!
//! One watch of this node's pods (`spec.nodeName` field selector) through kube-rs's watcher:
//! list, then watch from the list's resourceVersion with bookmarks, list again after 410 Gone,
//! back off on errors. Owners above a pod are read once each (`get` on the ReplicaSet or Job)
//! and kept; when a ReplicaSet cannot be read (RBAC), its Deployment is named from the
//! `pod-template-hash` label as the Deployment controller names its ReplicaSets. The index is
//! shared with the daemon, which is told of each pod that changed and refreshes the identity
//! of its processes. Errors never stop the daemon: one line when the API fails, one when it
//! answers again; names come from /proc meanwhile.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client,
    api::ObjectMeta,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use super::identity::{Identity, Workload};

/// What the API says of one pod, reduced to what identity needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// (container id without the `containerd://` scheme, container name), of every container,
    /// init and ephemeral ones included, that has started.
    pub containers: Vec<(String, String)>,
    /// Owners, nearest first (see [`Identity::workload`]).
    pub workload: Vec<(Workload, String)>,
    /// The allowed labels, in the allow-list's order.
    pub labels: Vec<(String, String)>,
}

/// The pods of this node, by uid; shared by the watch task and the daemon.
#[derive(Clone, Default)]
pub struct PodIndex(Arc<RwLock<HashMap<String, Arc<PodMeta>>>>);

impl PodIndex {
    /// The pod of a process: by its pod uid (from its cgroup), else by its container id.
    pub fn find(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> Option<Arc<PodMeta>> {
        let m = self.0.read().ok()?;
        if let Some(p) = pod_uid.and_then(|u| m.get(u)) {
            return Some(p.clone());
        }
        let cid = container_id?;
        m.values().find(|p| p.containers.iter().any(|(id, _)| id == cid)).cloned()
    }

    /// Stores `p`; whether anything changed.
    fn put(&self, p: PodMeta) -> bool {
        let Ok(mut m) = self.0.write() else { return false };
        if m.get(&p.uid).is_some_and(|old| **old == p) {
            return false;
        }
        m.insert(p.uid.clone(), Arc::new(p));
        true
    }

    fn remove(&self, uid: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(uid);
        }
    }

    /// Keeps only the pods a fresh list named.
    fn retain(&self, uids: &HashSet<String>) {
        if let Ok(mut m) = self.0.write() {
            m.retain(|u, _| uids.contains(u));
        }
    }

    pub fn len(&self) -> usize {
        self.0.read().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Adds what the API knows of `pod` to what /proc told (`node`: this node's name). The API is
/// right where both speak: a pod may set its hostname, which /proc takes for its name.
pub fn enrich(id: &mut Identity, pod: &PodMeta, node: Option<&str>) {
    id.pod_uid = Some(pod.uid.clone());
    id.namespace = Some(pod.namespace.clone());
    id.pod_name = Some(pod.name.clone());
    if id.node_name.is_none() {
        id.node_name = node.map(str::to_string);
    }
    id.k8s_container_name = match &id.container_id {
        Some(cid) => pod.containers.iter().find(|(i, _)| i == cid).map(|(_, n)| n.clone()),
        // A pod of one container: no doubt which.
        None if pod.containers.len() == 1 => Some(pod.containers[0].1.clone()),
        None => None,
    };
    id.workload = pod.workload.clone();
    id.pod_labels = pod.labels.clone();
}

/// The pod reduced to [`PodMeta`], with `workload` as resolved by the caller; `None` for a pod
/// without uid, name or namespace.
pub fn meta_of(pod: &Pod, allowed_labels: &[String], workload: Vec<(Workload, String)>) -> Option<PodMeta> {
    let md = &pod.metadata;
    let mut containers = Vec::new();
    if let Some(st) = &pod.status {
        let all = [&st.container_statuses, &st.init_container_statuses, &st.ephemeral_container_statuses];
        for s in all.into_iter().flatten().flatten() {
            if let Some(id) = s.container_id.as_deref().map(strip_scheme).filter(|id| !id.is_empty()) {
                containers.push((id.to_string(), s.name.clone()));
            }
        }
    }
    let labels = md.labels.as_ref();
    Some(PodMeta {
        uid: md.uid.clone()?,
        namespace: md.namespace.clone()?,
        name: md.name.clone()?,
        containers,
        workload,
        labels: allowed_labels
            .iter()
            .filter_map(|k| labels.and_then(|l| l.get(k)).map(|v| (k.clone(), v.clone())))
            .collect(),
    })
}

/// `containerd://0123...` -> `0123...` (also `cri-o://`, `docker://`).
fn strip_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// The controlling owner of an object (the one with `controller: true`, else the first).
fn controller_of(md: &ObjectMeta) -> Option<(String, String)> {
    let refs = md.owner_references.as_ref()?;
    let r = refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first())?;
    Some((r.kind.clone(), r.name.clone()))
}

/// A ReplicaSet's Deployment as the Deployment controller names it: `<deployment>-<hash>`,
/// with `<hash>` the pod's `pod-template-hash` label.
pub fn deployment_by_name(replicaset: &str, pod_template_hash: Option<&str>) -> Option<String> {
    let h = pod_template_hash.filter(|h| !h.is_empty())?;
    let d = replicaset.strip_suffix(h)?.strip_suffix('-')?;
    (!d.is_empty()).then(|| d.to_string())
}

/// Owners above a pod's controller, read once each.
struct Owners {
    client: Client,
    /// (namespace, kind, name) -> the owner's own controller, when a Deployment or CronJob.
    parents: HashMap<(String, Workload, String), Option<String>>,
    /// Kinds whose reads failed, said once each.
    said: HashSet<Workload>,
}

/// Most owners kept; the cache starts over past it (a node runs a few hundred pods).
const MAX_OWNERS: usize = 4096;

impl Owners {
    /// The workload chain of a pod, nearest first.
    async fn of(&mut self, pod: &Pod) -> Vec<(Workload, String)> {
        let Some((kind, name)) = controller_of(&pod.metadata) else { return Vec::new() };
        let Some(w) = Workload::of_kind(&kind) else { return Vec::new() };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let mut chain = vec![(w, name.clone())];
        let parent_kind = match w {
            Workload::ReplicaSet => Workload::Deployment,
            Workload::Job => Workload::CronJob,
            _ => return chain,
        };
        let key = (ns.clone(), w, name.clone());
        let parent = match self.parents.get(&key) {
            Some(p) => p.clone(),
            None => {
                let read = match w {
                    Workload::ReplicaSet => {
                        Api::<ReplicaSet>::namespaced(self.client.clone(), &ns).get(&name).await.map(|o| o.metadata)
                    }
                    _ => Api::<Job>::namespaced(self.client.clone(), &ns).get(&name).await.map(|o| o.metadata),
                };
                let hash = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).map(String::as_str);
                let p = match read {
                    Ok(md) => controller_of(&md).filter(|(k, _)| k == parent_kind.kind()).map(|(_, n)| n),
                    Err(e) => {
                        if self.said.insert(w) {
                            eprintln!(
                                "inferscope: Kubernetes API: cannot read {}s ({}); {}",
                                w.kind(),
                                client_error(&e),
                                match w {
                                    Workload::ReplicaSet => "Deployments are named from the pod-template-hash label",
                                    _ => "CronJobs are not named (the RBAC rules in deploy/ allow it)",
                                }
                            );
                        }
                        (w == Workload::ReplicaSet).then(|| deployment_by_name(&name, hash)).flatten()
                    }
                };
                if self.parents.len() >= MAX_OWNERS {
                    self.parents.clear();
                }
                self.parents.insert(key, p.clone());
                p
            }
        };
        if let Some(p) = parent {
            chain.push((parent_kind, p));
        }
        chain
    }
}

/// A client error in one short line: the API's own status where it answered.
fn client_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => api_status(s),
        e => one_line(e),
    }
}

fn api_status(s: &kube::core::Status) -> String {
    format!("{} {}: {}", s.code, s.reason, s.message)
}

/// A watch error in one short line.
fn watch_error(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(c) => format!("listing pods: {}", client_error(c)),
        watcher::Error::WatchStartFailed(c) | watcher::Error::WatchFailed(c) => {
            format!("watching pods: {}", client_error(c))
        }
        watcher::Error::WatchError(s) => format!("watching pods: {}", api_status(s)),
        e => one_line(e),
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The running pod source: the index, and the uids of pods that changed.
pub struct PodSource {
    pub index: PodIndex,
    pub changes: mpsc::UnboundedReceiver<String>,
}

/// How the API is found.
pub struct Options<'a> {
    /// Use the API even outside a cluster (with the kubeconfig's or the in-cluster settings).
    pub force: bool,
    pub kubeconfig: Option<&'a Path>,
    pub node: &'a str,
    pub pod_labels: &'a [String],
}

/// Whether the API is to be used: in a pod (KUBERNETES_SERVICE_HOST), with a kubeconfig given,
/// or when forced.
pub fn wanted(o: &Options<'_>) -> bool {
    o.force || o.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// Starts the watch of this node's pods on the current tokio runtime. An API that cannot be
/// configured is an error (for the caller to say and go on without); one that does not answer
/// is retried in the background.
pub async fn start(o: &Options<'_>) -> Result<PodSource> {
    let config = match o.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no in-cluster service account or kubeconfig")?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).context("Kubernetes client")?;
    let index = PodIndex::default();
    let (tx, changes) = mpsc::unbounded_channel();
    eprintln!(
        "inferscope: pod metadata from the Kubernetes API at {url} (pods of node {}); from /proc until it answers",
        o.node
    );
    let node = o.node.to_string();
    let allowed = o.pod_labels.to_vec();
    let ix = index.clone();
    tokio::spawn(watch(client, node, allowed, ix, tx));
    Ok(PodSource { index, changes })
}

/// The watch loop: runs until the daemon drops its end.
async fn watch(client: Client, node: String, allowed: Vec<String>, index: PodIndex, tx: mpsc::UnboundedSender<String>) {
    let api = Api::<Pod>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut owners = Owners { client, parents: HashMap::new(), said: HashSet::new() };
    let mut listed: HashSet<String> = HashSet::new();
    let mut failing = false;
    let mut answered = false;
    while let Some(ev) = events.next().await {
        let pod = match ev {
            Ok(watcher::Event::Init) => {
                listed.clear();
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                index.retain(&listed);
                if !answered || failing {
                    let again = if answered { " again" } else { "" };
                    eprintln!("inferscope: Kubernetes API answers{again}: {} pods on node {node}", listed.len());
                }
                answered = true;
                failing = false;
                continue;
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = &p.metadata.uid {
                    index.remove(uid);
                }
                continue;
            }
            Ok(watcher::Event::InitApply(p)) => {
                if let Some(uid) = &p.metadata.uid {
                    listed.insert(uid.clone());
                }
                p
            }
            Ok(watcher::Event::Apply(p)) => p,
            Err(e) => {
                // 410 Gone: the watch is too old and the watcher lists again; not a failure.
                let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                if gone {
                    log::debug!("Kubernetes API: watch expired (410 Gone); listing again");
                } else if !failing {
                    failing = true;
                    eprintln!(
                        "inferscope: Kubernetes API fails: {}; retrying with back-off, pods named from /proc meanwhile",
                        watch_error(&e)
                    );
                }
                continue;
            }
        };
        let workload = owners.of(&pod).await;
        let Some(meta) = meta_of(&pod, &allowed, workload) else { continue };
        let uid = meta.uid.clone();
        if index.put(meta) && tx.send(uid).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};

    use super::*;

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some("7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f".into());
        p.metadata.namespace = Some("llm".into());
        p.metadata.name = Some("chat-5f7b9c-x2x9q".into());
        p.metadata.labels = Some(
            [("app.kubernetes.io/name", "chat"), ("pod-template-hash", "5f7b9c"), ("secret", "no")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let status = |name: &str, id: Option<&str>| ContainerStatus {
            name: name.into(),
            container_id: id.map(str::to_string),
            ..ContainerStatus::default()
        };
        p.status = Some(PodStatus {
            container_statuses: Some(vec![
                status("server", Some(&format!("containerd://{}", "ab".repeat(32)))),
                status("sidecar", Some(&format!("cri-o://{}", "cd".repeat(32)))),
                status("waiting", None),
            ]),
            init_container_statuses: Some(vec![status("init", Some(&format!("docker://{}", "ef".repeat(32))))]),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn a_pod_reduced_to_what_identity_needs() {
        let allowed = vec!["app.kubernetes.io/name".to_string(), "absent".to_string()];
        let w = vec![(Workload::ReplicaSet, "chat-5f7b9c".to_string()), (Workload::Deployment, "chat".to_string())];
        let m = meta_of(&pod(), &allowed, w.clone()).unwrap();
        assert_eq!(m.name, "chat-5f7b9c-x2x9q");
        assert_eq!(
            m.containers,
            [("ab".repeat(32), "server".into()), ("cd".repeat(32), "sidecar".into()), ("ef".repeat(32), "init".into())]
        );
        assert_eq!(m.labels, [("app.kubernetes.io/name".to_string(), "chat".to_string())]);
        let mut no_uid = pod();
        no_uid.metadata.uid = None;
        assert_eq!(meta_of(&no_uid, &allowed, w), None);
    }

    #[test]
    fn identity_takes_the_apis_word() {
        let m = meta_of(&pod(), &[], vec![(Workload::StatefulSet, "chat".into())]).unwrap();
        let ix = PodIndex::default();
        assert!(ix.put(m.clone()));
        assert!(!ix.put(m.clone()), "the same pod again is no change");
        // Found by pod uid, or by container id when the cgroup names no pod.
        assert!(ix.find(Some(&m.uid), None).is_some());
        assert_eq!(ix.find(None, Some(&"cd".repeat(32))).unwrap().uid, m.uid);
        assert!(ix.find(Some("other"), Some("other")).is_none());
        let mut id = Identity {
            container_id: Some("cd".repeat(32)),
            pod_name: Some("custom-hostname".into()),
            ..Identity::default()
        };
        enrich(&mut id, &m, Some("node-7"));
        assert_eq!(id.pod_name.as_deref(), Some("chat-5f7b9c-x2x9q"));
        assert_eq!(id.k8s_container_name.as_deref(), Some("sidecar"));
        assert_eq!(id.node_name.as_deref(), Some("node-7"));
        assert_eq!(id.workload_name(), Some((Workload::StatefulSet, "chat")));
        ix.retain(&HashSet::new());
        assert!(ix.is_empty());
    }

    #[test]
    fn deployments_named_as_their_controller_names_replicasets() {
        assert_eq!(deployment_by_name("chat-5f7b9c", Some("5f7b9c")).as_deref(), Some("chat"));
        assert_eq!(deployment_by_name("my-app-v2-6d4cf56db6", Some("6d4cf56db6")).as_deref(), Some("my-app-v2"));
        assert_eq!(deployment_by_name("chat-5f7b9c", Some("other")), None);
        assert_eq!(deployment_by_name("chat-5f7b9c", None), None);
        assert_eq!(deployment_by_name("5f7b9c", Some("5f7b9c")), None);
        assert_eq!(deployment_by_name("-5f7b9c", Some("5f7b9c")), None);
    }
}
