//! Pod metadata from the node's container runtime, where there is no Kubernetes API (or it is
//! not used): the labels the kubelet puts on every container it creates
//! (`io.kubernetes.pod.name`, `io.kubernetes.pod.namespace`, `io.kubernetes.pod.uid`,
//! `io.kubernetes.container.name`), and the runtime's own container name.
//!
//! - containerd: its gRPC API on its socket (`containerd.services.containers.v1.Containers/Get`,
//!   the namespace in the `containerd-namespace` header: `k8s.io`, where the CRI plugin keeps the
//!   kubelet's containers, then `moby` and `default`). The few protobuf messages are declared
//!   here with prost; the transport is tonic, as for OTLP.
//! - Docker (also behind cri-dockerd): the Engine API on its unix socket,
//!   `GET /containers/<id>/json` (`Name`, `Config.Labels`).
//!
//! A container is asked for once, when a process in it is traced, on a task of its own; the
//! daemon is told when the answer is in and names that container's processes again. A runtime
//! that does not answer is said once and asked again for the next container.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::identity::Identity;

/// A container runtime inferscope can ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Containerd,
    Docker,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Containerd => "containerd",
            Kind::Docker => "docker",
        }
    }
}

/// Where runtimes listen by default, tried in this order by `auto`. Also looked for under
/// /proc/1/root, the host's root as a pod with hostPID sees it.
pub const DEFAULT_ENDPOINTS: [(Kind, &str); 3] = [
    (Kind::Containerd, "/run/containerd/containerd.sock"),
    (Kind::Docker, "/run/docker.sock"),
    (Kind::Docker, "/var/run/docker.sock"),
];

/// The containerd namespaces asked, in order.
const CONTAINERD_NAMESPACES: [&str; 3] = ["k8s.io", "moby", "default"];

/// What the runtime says of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// The runtime's name for it (Docker's, without the leading `/`).
    pub name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    /// The container's name in its pod.
    pub k8s_container_name: Option<String>,
}

impl ContainerMeta {
    /// From a container's labels (and the runtime's name for it).
    pub fn from_labels(name: Option<String>, labels: &HashMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        ContainerMeta {
            name: name.filter(|n| !n.is_empty()),
            pod_name: get("io.kubernetes.pod.name"),
            pod_namespace: get("io.kubernetes.pod.namespace"),
            pod_uid: get("io.kubernetes.pod.uid"),
            k8s_container_name: get("io.kubernetes.container.name"),
        }
    }
}

/// Adds what the runtime said to what /proc told. The kubelet's labels are right where both
/// speak (a pod may set its hostname).
pub fn enrich(id: &mut Identity, c: &ContainerMeta, node: Option<&str>) {
    id.container_name = c.name.clone().or(id.container_name.take());
    if c.pod_name.is_some() {
        id.pod_name = c.pod_name.clone();
    }
    if c.pod_namespace.is_some() {
        id.namespace = c.pod_namespace.clone();
    }
    if c.pod_uid.is_some() {
        id.pod_uid = c.pod_uid.clone();
    }
    if c.k8s_container_name.is_some() {
        id.k8s_container_name = c.k8s_container_name.clone();
    }
    if id.node_name.is_none() && (id.pod_uid.is_some() || id.namespace.is_some()) {
        id.node_name = node.map(str::to_string);
    }
}

/// Answers by container id; `None` for one the runtime does not know (or not yet asked).
#[derive(Clone, Default)]
pub struct ContainerIndex {
    known: Arc<RwLock<HashMap<String, Option<Arc<ContainerMeta>>>>>,
    ask: Option<mpsc::UnboundedSender<String>>,
}

/// Most containers remembered; the cache starts over past it.
const MAX_CONTAINERS: usize = 4096;

impl ContainerIndex {
    /// What is known of `id`; the first time, asks the runtime (the answer comes later).
    pub fn get(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        if let Some(known) = self.known.read().ok()?.get(id) {
            return known.clone();
        }
        if let Ok(mut m) = self.known.write() {
            if m.len() >= MAX_CONTAINERS {
                m.clear();
            }
            m.insert(id.to_string(), None);
        }
        if let Some(ask) = &self.ask {
            let _ = ask.send(id.to_string());
        }
        None
    }

    fn put(&self, id: &str, meta: ContainerMeta) {
        if let Ok(mut m) = self.known.write() {
            m.insert(id.to_string(), Some(Arc::new(meta)));
        }
    }
}

/// The running runtime source: the index, and the ids of containers whose answer came in.
pub struct RuntimeSource {
    pub kind: Kind,
    pub endpoint: PathBuf,
    pub index: ContainerIndex,
    pub changes: mpsc::UnboundedReceiver<String>,
}

/// The runtime to ask: `kind` and `endpoint` as given, else the first default socket found.
pub fn find(kind: Option<Kind>, endpoint: Option<&Path>) -> Option<(Kind, PathBuf)> {
    if let Some(e) = endpoint {
        let k = kind.unwrap_or(if e.to_string_lossy().contains("docker") { Kind::Docker } else { Kind::Containerd });
        return Some((k, e.to_path_buf()));
    }
    for (k, p) in DEFAULT_ENDPOINTS {
        if kind.is_some_and(|want| want != k) {
            continue;
        }
        for root in ["/", "/proc/1/root"] {
            let path = Path::new(root).join(p.trim_start_matches('/'));
            if is_socket(&path) {
                return Some((k, path));
            }
        }
    }
    None
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Starts the task that asks the runtime, on the current tokio runtime.
pub fn start(kind: Kind, endpoint: PathBuf) -> RuntimeSource {
    let (ask, mut asked) = mpsc::unbounded_channel::<String>();
    let (tx, changes) = mpsc::unbounded_channel();
    let index = ContainerIndex { known: Arc::default(), ask: Some(ask) };
    let ix = index.clone();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        let mut failing = false;
        while let Some(id) = asked.recv().await {
            let answer = tokio::time::timeout(Duration::from_secs(5), inspect(kind, &ep, &id)).await;
            match answer.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 5 s"))) {
                Ok(Some(meta)) => {
                    failing = false;
                    ix.put(&id, meta);
                    if tx.send(id).is_err() {
                        return;
                    }
                }
                Ok(None) => log::debug!("{}: no container {id}", kind.name()),
                Err(e) => {
                    if !failing {
                        eprintln!(
                            "inferscope: {} at {} fails: {e:#}; containers named from /proc meanwhile",
                            kind.name(),
                            ep.display()
                        );
                    }
                    failing = true;
                    // Asked again when a process of it is traced again.
                    if let Ok(mut m) = ix.known.write() {
                        m.remove(&id);
                    }
                }
            }
        }
    });
    RuntimeSource { kind, endpoint, index, changes }
}

/// Asks the runtime about one container; `None` when it does not know it.
pub async fn inspect(kind: Kind, endpoint: &Path, id: &str) -> Result<Option<ContainerMeta>> {
    match kind {
        Kind::Docker => docker_inspect(endpoint, id).await,
        Kind::Containerd => containerd_get(endpoint, id).await,
    }
}

/// Docker's Engine API: `GET /containers/<id>/json`.
async fn docker_inspect(endpoint: &Path, id: &str) -> Result<Option<ContainerMeta>> {
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("not a container id: {id:?}");
    }
    let stream = tokio::net::UnixStream::connect(endpoint).await.with_context(|| format!("{}", endpoint.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("/containers/{id}/json"))
        .header("Host", "docker")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(Some(docker_meta(&body)?))
}

/// The fields of Docker's container JSON that identity needs.
pub fn docker_meta(body: &[u8]) -> Result<ContainerMeta> {
    let v: serde_json::Value = serde_json::from_slice(body).context("container JSON")?;
    let name = v["Name"].as_str().map(|n| n.trim_start_matches('/').to_string());
    let labels: HashMap<String, String> = v["Config"]["Labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    Ok(ContainerMeta::from_labels(name, &labels))
}

/// containerd's `Containers/Get`, as declared in containerd's api/services/containers/v1.
mod pb {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerRequest {
        #[prost(string, tag = "1")]
        pub id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerResponse {
        #[prost(message, optional, tag = "1")]
        pub container: Option<Container>,
    }

    /// Only the fields read; prost skips the others.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(map = "string, string", tag = "2")]
        pub labels: HashMap<String, String>,
    }
}

async fn containerd_get(endpoint: &Path, id: &str) -> Result<Option<ContainerMeta>> {
    let path = endpoint.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://containerd.sock")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .with_context(|| format!("{}", endpoint.display()))?;
    for ns in CONTAINERD_NAMESPACES {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut req = tonic::Request::new(pb::GetContainerRequest { id: id.to_string() });
        req.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(ns));
        let method = http::uri::PathAndQuery::from_static("/containerd.services.containers.v1.Containers/Get");
        let codec = tonic_prost::ProstCodec::<pb::GetContainerRequest, pb::GetContainerResponse>::default();
        match grpc.unary(req, method, codec).await {
            Ok(resp) => {
                let labels = resp.into_inner().container.map(|c| c.labels).unwrap_or_default();
                return Ok(Some(ContainerMeta::from_labels(None, &labels)));
            }
            Err(s) if s.code() == tonic::Code::NotFound => continue,
            Err(s) => bail!("{}: {}", s.code(), s.message()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_json_as_cri_dockerd_labels_it() {
        let body = br#"{"Id":"ab","Name":"/k8s_server_chat-0_llm_3e4f_0","Config":{"Labels":{
            "io.kubernetes.pod.name":"chat-0","io.kubernetes.pod.namespace":"llm",
            "io.kubernetes.pod.uid":"3e4f","io.kubernetes.container.name":"server","other":"x"}}}"#;
        let m = docker_meta(body).unwrap();
        assert_eq!(m.name.as_deref(), Some("k8s_server_chat-0_llm_3e4f_0"));
        assert_eq!(m.pod_name.as_deref(), Some("chat-0"));
        assert_eq!(m.k8s_container_name.as_deref(), Some("server"));
        let plain = docker_meta(br#"{"Name":"/web","Config":{"Labels":null}}"#).unwrap();
        assert_eq!(plain, ContainerMeta { name: Some("web".into()), ..ContainerMeta::default() });
        assert!(docker_meta(b"garbage").is_err());
    }

    #[test]
    fn labels_name_the_pod_and_keep_what_proc_said_otherwise() {
        let mut id = Identity { container_id: Some("ab".repeat(32)), ..Identity::default() };
        let labels: HashMap<String, String> =
            [("io.kubernetes.pod.name", "chat-0"), ("io.kubernetes.pod.namespace", "llm")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        enrich(&mut id, &ContainerMeta::from_labels(None, &labels), Some("node-7"));
        assert_eq!(id.pod_name.as_deref(), Some("chat-0"));
        assert_eq!(id.namespace.as_deref(), Some("llm"));
        assert_eq!(id.node_name.as_deref(), Some("node-7"));
        let mut host = Identity { container_id: Some("cd".repeat(32)), ..Identity::default() };
        enrich(&mut host, &ContainerMeta { name: Some("web".into()), ..ContainerMeta::default() }, Some("node-7"));
        assert_eq!(host.container_name.as_deref(), Some("web"));
        assert_eq!(host.node_name, None, "not in a pod: no node");
    }

    #[test]
    fn endpoints_given_win_and_name_their_kind() {
        assert_eq!(find(None, Some(Path::new("/x/docker.sock"))).unwrap().0, Kind::Docker);
        assert_eq!(find(None, Some(Path::new("/x/containerd.sock"))).unwrap().0, Kind::Containerd);
        assert_eq!(find(Some(Kind::Docker), Some(Path::new("/x/c.sock"))).unwrap().0, Kind::Docker);
    }
}
