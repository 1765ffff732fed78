//! Where each traced process runs, on the Prometheus side: `inferscope_target_info{pid,
//! engine, container_id, ..., k8s_pod_name, ...} 1` per process, and (unless
//! `--no-identity-labels`) the same container and pod labels added at scrape time to every
//! series that has a `pid` label, so that `sum by (k8s_pod_name) (...)` works without a join.
//! One place adds them: families need not know about identity.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use anyhow::Result;
use prometheus::{
    IntGaugeVec, Registry,
    proto::{LabelPair, MetricFamily},
};

use super::common::gauge_vec_int;
use crate::process::identity::{Identity, Workload, pod_label_attribute};

/// The identity label names every run has, in the order they are added (OpenTelemetry attribute
/// names with dots as underscores, as the OpenTelemetry-to-Prometheus mapping writes them).
pub const LABELS: [&str; 6] =
    ["container_id", "container_runtime", "k8s_namespace_name", "k8s_pod_name", "k8s_pod_uid", "k8s_node_name"];

/// The Prometheus label name of an identity attribute: every character other than a letter, a
/// digit or `_` becomes `_` (`k8s.pod.label.app.kubernetes.io/name` ->
/// `k8s_pod_label_app_kubernetes_io_name`).
pub fn label_name(attribute: &str) -> String {
    attribute.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The identity label names of a run: [`LABELS`]; when a container runtime is asked, the
/// runtime's and the pod's container names; when pod metadata comes from the Kubernetes API
/// (`pod_labels` is the allow-list), the container's name in its pod, one label per owning
/// workload kind and one per allowed pod label. Fixed at start, as label sets must be.
pub fn label_names(kube: Option<&[String]>, runtime: bool) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = LABELS.to_vec();
    let mut more = Vec::new();
    if runtime {
        more.extend([label_name("container.name"), label_name("k8s.container.name")]);
    }
    if let Some(pod_labels) = kube {
        more.push(label_name("k8s.container.name"));
        more.extend(Workload::ALL.iter().map(|w| label_name(w.attribute())));
        more.extend(pod_labels.iter().map(|k| label_name(&pod_label_attribute(k))));
    }
    for n in more {
        if !names.contains(&n.as_str()) {
            // Made once at start from the flags: a bounded set that lives as long as the run.
            names.push(Box::leak(n.into_boxed_str()));
        }
    }
    names
}

/// Identity labels by `pid` label value, shared with the scrape handler.
pub type ByPid = Arc<RwLock<HashMap<String, Vec<(&'static str, String)>>>>;

pub struct IdentityMetrics {
    info: IntGaugeVec,
    /// The identity label names of this run ([`label_names`]).
    names: Vec<&'static str>,
    /// Label values each process's info series was made with (pid, engine, then `names`).
    info_values: HashMap<u32, Vec<String>>,
    pub by_pid: ByPid,
    on_every_series: bool,
}

impl IdentityMetrics {
    pub fn new(reg: &Registry, on_every_series: bool, names: Vec<&'static str>) -> Result<Self> {
        let mut labels = vec!["pid", "engine"];
        labels.extend(&names);
        let info = gauge_vec_int(
            reg,
            "inferscope_target_info",
            "A traced process: its engine and the container and Kubernetes pod it runs in (empty when not in one); value 1",
            &labels,
        )?;
        Ok(Self { info, names, info_values: HashMap::new(), by_pid: ByPid::default(), on_every_series })
    }

    /// A process traced from now, or one whose identity changed (the Kubernetes API answered
    /// after it was found): its info series is replaced.
    pub fn added(&mut self, pid: u32, engine: &str, id: &Identity) {
        self.forget(pid);
        let pairs = pairs(id, &self.names);
        let mut values = vec![pid.to_string(), engine.to_string()];
        values.extend(
            self.names.iter().map(|l| pairs.iter().find(|(k, _)| k == l).map(|(_, v)| v.clone()).unwrap_or_default()),
        );
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        self.info.with_label_values(&refs).set(1);
        self.info_values.insert(pid, values);
        if self.on_every_series
            && !pairs.is_empty()
            && let Ok(mut m) = self.by_pid.write()
        {
            m.insert(pid.to_string(), pairs);
        }
    }

    /// The identity label names of this run.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The identity label values of a process (in [`Self::names`]' order), empty where unknown.
    pub fn values(&self, pid: u32) -> Vec<&str> {
        match self.info_values.get(&pid) {
            Some(vals) => vals.iter().skip(2).map(String::as_str).collect(),
            None => vec![""; self.names.len()],
        }
    }

    pub fn forget(&mut self, pid: u32) {
        if let Some(values) = self.info_values.remove(&pid) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = self.info.remove_label_values(&refs);
        }
        if let Ok(mut m) = self.by_pid.write() {
            m.remove(&pid.to_string());
        }
    }
}

/// The Prometheus label pairs of an identity: only those known, and only of `names`.
fn pairs(id: &Identity, names: &[&'static str]) -> Vec<(&'static str, String)> {
    id.attributes()
        .into_iter()
        .filter_map(|(k, v)| {
            let n = label_name(&k);
            names.iter().find(|l| **l == n).map(|l| (*l, v))
        })
        .collect()
}

/// Adds the identity labels to every series with a `pid` label whose process has one. Series
/// that already carry one of the names (none of inferscope's do) are left as they are.
pub fn apply(families: &mut [MetricFamily], by_pid: &ByPid) {
    let Ok(by_pid) = by_pid.read() else { return };
    if by_pid.is_empty() {
        return;
    }
    for f in families {
        if f.name() == "inferscope_target_info" {
            continue;
        }
        for m in f.mut_metric() {
            let Some(extra) = m.get_label().iter().find(|l| l.name() == "pid").and_then(|l| by_pid.get(l.value()))
            else {
                continue;
            };
            if m.get_label().iter().any(|l| extra.iter().any(|(k, _)| *k == l.name())) {
                continue;
            }
            let mut labels = m.take_label();
            for (k, v) in extra {
                let mut p = LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.clone());
                labels.push(p);
            }
            m.set_label(labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::identity::Runtime;

    #[test]
    fn series_with_a_pid_name_their_pod() {
        let reg = Registry::new();
        let mut idm = IdentityMetrics::new(&reg, true, label_names(None, false)).unwrap();
        let c = super::super::common::counter(&reg, "x_total", "x", &["pid"]).unwrap();
        c.with_label_values(&["7"]).inc();
        c.with_label_values(&["8"]).inc();
        let id = Identity {
            container_id: Some("ab".repeat(32)),
            runtime: Some(Runtime::Containerd),
            pod_uid: Some("1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d".into()),
            namespace: Some("llm".into()),
            pod_name: Some("vllm-0".into()),
            node_name: Some("n1".into()),
            qos_class: None,
            ..Identity::default()
        };
        idm.added(7, "vllm", &id);
        idm.added(8, "vllm", &Identity::default());
        let text = String::from_utf8(super::super::PromMetrics::encode(&reg, &idm.by_pid)).unwrap();
        let line = |p: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(p.split('{').next().unwrap_or(p))
                        && l.contains(&p[p.find('{').map_or(0, |i| i + 1)..])
                })
                .unwrap_or_else(|| panic!("no {p} in\n{text}"))
                .to_string()
        };
        let x7 = line("x_total{pid=\"7\"");
        assert!(x7.contains("k8s_pod_name=\"vllm-0\"") && x7.contains("k8s_namespace_name=\"llm\""), "{x7}");
        assert!(x7.contains("container_runtime=\"containerd\"") && x7.contains("k8s_node_name=\"n1\""), "{x7}");
        assert_eq!(line("x_total{pid=\"8\""), "x_total{pid=\"8\"} 1");
        let info = line("inferscope_target_info{pid=\"7\"");
        assert!(
            info.contains("engine=\"vllm\"") && info.contains("k8s_pod_uid=\"1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d\"")
        );
        idm.forget(7);
        let text = String::from_utf8(super::super::PromMetrics::encode(&reg, &idm.by_pid)).unwrap();
        assert!(!text.contains("vllm-0"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("inferscope_target_info{") && l.contains("pid=\"8\"")), "{text}");
    }
}
