//! What to time: the operator's timer file (`TimerSpec`, YAML), the built-in set, and the
//! package version ranges a spec applies to.

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// The default set (vLLM and SGLang scheduling functions).
pub const DEFAULT_CONFIG: &str = include_str!("../default-timers.yaml");

/// One function to time, as the operator wrote it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    /// `module:Class.method` or `module:function`.
    pub symbol: String,
    /// Package whose `__version__` min/max_version compare with (default: the module's
    /// top-level name).
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// The metric's name in the operator's hook files (ms_service_metric's `name`, such as
    /// `scheduler:update_from_output:duration`): inferscope's series are named by the function;
    /// with --ms-service-metric-names this name is also served (`vllm_profiling_<name>`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: MetricKind,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// A duration histogram and a call count.
    Timer,
    /// A call count only.
    Counter,
}

fn default_metrics() -> Vec<MetricSpec> {
    vec![MetricSpec { name: None, kind: MetricKind::Timer }]
}

impl TimerSpec {
    pub(super) fn wants_durations(&self) -> bool {
        self.metrics.iter().any(|m| m.kind == MetricKind::Timer)
    }

    /// The short name series carry: the qualified name after the module.
    pub fn function(&self) -> &str {
        self.symbol.split_once(':').map_or(&self.symbol, |(_, q)| q)
    }
}

/// Parses a timer file (a YAML list of [`TimerSpec`]).
pub fn parse_config(text: &str) -> Result<Vec<TimerSpec>> {
    let specs: Vec<TimerSpec> =
        serde_yaml::from_str(text).context("not a list of `- symbol: module:Class.method` entries")?;
    for s in &specs {
        let Some((m, q)) = s.symbol.split_once(':') else {
            bail!("{}: expected module:Class.method or module:function", s.symbol);
        };
        if m.is_empty() || q.is_empty() || q.split('.').any(str::is_empty) {
            bail!("{}: expected module:Class.method or module:function", s.symbol);
        }
        if s.metrics.is_empty() {
            bail!("{}: `metrics` is empty (say `- type: timer` or `- type: counter`)", s.symbol);
        }
    }
    Ok(specs)
}

/// Loads `default` (the built-in set) or a YAML file.
pub fn load_config(arg: &str) -> Result<Vec<TimerSpec>> {
    if arg == "default" {
        return parse_config(DEFAULT_CONFIG);
    }
    let text = std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?;
    parse_config(&text).with_context(|| arg.to_string())
}

/// Whether `version` lies in [min, max] (inclusive; missing bounds are open).
pub fn version_in_range(version: &str, min: Option<&str>, max: Option<&str>) -> bool {
    let v = crate::process::version::key(version);
    min.is_none_or(|m| v >= crate::process::version::key(m)) && max.is_none_or(|m| v <= crate::process::version::key(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let specs = parse_config(DEFAULT_CONFIG).unwrap();
        assert!(specs.iter().any(|s| s.symbol == "vllm.v1.core.sched.scheduler:Scheduler.schedule"));
        assert!(specs.iter().all(|s| !s.metrics.is_empty()));
    }

    #[test]
    fn config_errors_say_what_is_wrong() {
        assert!(parse_config("- symbol: nocolon").unwrap_err().to_string().contains("module:Class.method"));
        assert!(parse_config("- symbol: a:B.c\n  metrics: [{type: gauge}]").is_err());
        assert!(parse_config("- symbol: a:B.c\n  colour: red").is_err());
        let s = parse_config("- symbol: a.b:C.d\n  metrics: [{name: x, type: counter}]").unwrap();
        assert_eq!(s[0].metrics[0].kind, MetricKind::Counter);
        assert_eq!(s[0].function(), "C.d");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_in_range("0.10.1rc1+cpu", Some("0.8.0"), None));
        assert!(!version_in_range("0.7.3", Some("0.8.0"), None));
        assert!(version_in_range("0.32.0", Some("0.8"), Some("0.32")));
        assert!(!version_in_range("1.0.0", None, Some("0.99")));
        assert_eq!(crate::process::version::key("2.13.0+cpu"), vec![2, 13]);
        assert_eq!(crate::process::version::key("0.8.5"), vec![0, 8, 5]);
    }
}
