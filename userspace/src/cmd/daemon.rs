//! `inferscope attach` and `inferscope run`: the daemon ([`crate::daemon`]) on one process tree
//! or on every server found on the host, on an async runtime of two worker threads. Here the
//! options become the daemon's parts: the BPF programs loaded, the layers asked for, the sinks.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    bpf::{self, LoadOptions},
    cli::{ContainerRuntime, KubeApi, RunOptions},
    clock::Clock,
    daemon::{self, Parts, Target},
    export::{
        jsonl::JsonlWriter,
        otlp::{Otlp, OtlpOptions},
        prom::{self, PromMetrics},
        sink::{ConsoleSink, JsonlSink, OtlpSink, PromSink, Sinks},
    },
    process::{identity, kubernetes, procfs, runtime},
};

/// `inferscope attach`: one process, and its children unless `no_children`.
pub fn attach(pid: u32, no_children: bool, opts: RunOptions) -> ExitCode {
    serve(Target::Pid { pid, children: !no_children }, opts)
}

/// `inferscope run`: every server found (and processes whose command line contains one of
/// `matches`), looked for every `discover_interval` seconds.
pub fn run(matches: Vec<String>, discover_interval: f64, opts: RunOptions) -> ExitCode {
    serve(Target::Discover { matches, interval: Duration::from_secs_f64(discover_interval.max(0.1)) }, opts)
}

/// Runs the daemon on `target` until it stops.
fn serve(target: Target, opts: RunOptions) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inferscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { daemon::run(target.clone(), parts(&target, &opts).await?).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::failure(&e),
    }
}

/// The probes loaded, the layers and the sinks the options ask for. Errors are for the
/// operator: one line, with what to do.
pub(crate) async fn parts(target: &Target, o: &RunOptions) -> Result<Parts> {
    check_options(o)?;
    if let Target::Pid { pid, .. } = target
        && !procfs::exists(*pid)
    {
        bail!(
            "no process with PID {pid} (if it runs in a container, use the PID the host sees, and run inferscope in the host PID namespace)"
        );
    }
    if procfs::in_child_pid_namespace() {
        bail!(
            "inferscope runs in a child PID namespace, where its PIDs do not match the kernel's: run it in the host PID namespace (Kubernetes: hostPID: true; docker: --pid=host)"
        );
    }
    let mut probes = bpf::load(&LoadOptions {
        capture_head: o.capture_bytes,
        capture_tail: o.capture_tail_bytes,
        ring_buffer_bytes: o.ring_buffer_size,
        arrival_times: !o.no_arrival_times,
        device: !o.no_device,
        uprobe_multi: !o.no_uprobe_multi,
    })?;
    for (cap, loss) in crate::privileges::missing_optional(crate::privileges::effective_caps()) {
        eprintln!("inferscope: warning: no {cap}: {loss}");
    }
    let node_name = o.node_name.clone().or_else(identity::host_name);
    let pods = pod_source(o, node_name.as_deref()).await;
    let containers = runtime_source(o);
    let mut prom = if o.vllm_metrics || o.prometheus_listen.is_some() {
        let names = prom::identity::label_names(pods.as_ref().map(|_| o.pod_labels.as_slice()), containers.is_some());
        Some(PromMetrics::new(o.vllm_metrics, o.ms_service_metric_names, o.identity_labels.resolve(), names)?)
    } else {
        None
    };
    let layers = crate::layers::build(o, &mut probes)?;
    if let Some(p) = prom.as_mut() {
        for f in layers.iter().flat_map(|l| l.families()) {
            p.declare(f)?;
        }
    }
    let (http_control, http_calls) = match &o.control_token_file {
        Some(path) => {
            let token = crate::control::read_token(path)?;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            (Some(prom::HttpControl { token: token.into(), tx }), Some(rx))
        }
        None => (None, None),
    };
    let sinks = sinks(o, prom, http_control).await?;
    Ok(Parts {
        probes,
        layers,
        sinks,
        max_models: o.max_models,
        node_name,
        pods,
        containers,
        http_calls,
        control: (o.control_socket != "off").then(|| o.control_socket.clone().into()),
        tracing_level: o.tracing_level,
        stop: stop(o.duration)?,
    })
}

/// What the options alone can tell is wrong, said before anything is loaded into the kernel
/// (loading and calibrating the probes takes seconds and leaves traces in the kernel's logs).
fn check_options(o: &RunOptions) -> Result<()> {
    if let Some(endpoint) = &o.otlp_endpoint {
        crate::export::otlp::check_endpoint(endpoint)?;
    }
    if let Some(path) = &o.control_token_file {
        if o.prometheus_listen.is_none() {
            bail!(
                "--control-token-file serves control requests on the Prometheus server: give --prometheus-listen too"
            );
        }
        crate::control::read_token(path)?;
    }
    if let Some(path) = o.jsonl.as_deref().filter(|p| *p != "-") {
        let dir = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir.filter(|d| !d.is_dir()) {
            bail!("--jsonl {path}: no directory {}", d.display());
        }
    }
    if let Some(d) = o.duration
        && !(d.is_finite() && d >= 0.0)
    {
        bail!("--duration must be a number of seconds, 0 or more (got {d})");
    }
    Ok(())
}

/// The Kubernetes API pod source, when `--kube-api` asks for it and it can be configured; else
/// one line saying why not, and identity from /proc only.
async fn pod_source(o: &RunOptions, node: Option<&str>) -> Option<kubernetes::PodSource> {
    let opts = kubernetes::Options {
        force: o.kube_api == KubeApi::On,
        kubeconfig: o.kubeconfig.as_deref(),
        node: node.unwrap_or_default(),
        pod_labels: &o.pod_labels,
    };
    if o.kube_api == KubeApi::Off || !kubernetes::wanted(&opts) {
        if !o.pod_labels.is_empty() {
            eprintln!("inferscope: --pod-labels needs the Kubernetes API (--kube-api on or --kubeconfig): ignored");
        }
        return None;
    }
    if opts.node.is_empty() {
        eprintln!(
            "inferscope: Kubernetes API not used: no node name (--node-name or K8S_NODE_NAME); pods named from /proc"
        );
        return None;
    }
    match kubernetes::start(&opts).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("inferscope: Kubernetes API not used: {e:#}; pods named from /proc");
            None
        }
    }
}

/// The container runtime to ask (`--container-runtime`): in `auto`, when a runtime's socket is
/// found. With the Kubernetes API it is what names a container until the API answers, or when
/// the API fails; the API's word wins.
fn runtime_source(o: &RunOptions) -> Option<runtime::RuntimeSource> {
    let kind = match o.container_runtime {
        ContainerRuntime::Off => return None,
        ContainerRuntime::Auto => None,
        ContainerRuntime::Containerd => Some(runtime::Kind::Containerd),
        ContainerRuntime::Docker => Some(runtime::Kind::Docker),
    };
    let Some((kind, endpoint)) = runtime::find(kind, o.container_runtime_endpoint.as_deref()) else {
        if o.container_runtime != ContainerRuntime::Auto {
            let want = kind.map_or("container runtime", runtime::Kind::name);
            eprintln!(
                "inferscope: no {want} socket found (--container-runtime-endpoint): containers named from /proc only"
            );
        }
        return None;
    };
    eprintln!(
        "inferscope: container names and the kubelet's pod labels from {} at {}",
        kind.name(),
        endpoint.display()
    );
    Some(runtime::start(kind, endpoint))
}

/// Resolves at `--duration`, or at SIGINT or SIGTERM. The signal streams are made now, and
/// live as long as the future: one made afresh per wait misses a signal that arrives between.
fn stop(duration: Option<f64>) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let deadline = duration.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    Ok(Box::pin(async move {
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    }))
}

/// Prometheus (served once every family is registered), OTLP, JSONL, the console.
async fn sinks(o: &RunOptions, prom: Option<PromMetrics>, control: Option<prom::HttpControl>) -> Result<Sinks> {
    let mut sinks = Sinks::new(Clock::new());
    if let Some(p) = prom {
        if let Some(addr) = o.prometheus_listen {
            let with_control = control.is_some();
            prom::serve(addr, p.registry.clone(), p.identity.by_pid.clone(), control).await?;
            eprintln!("inferscope: Prometheus metrics at http://{addr}/metrics");
            if with_control {
                eprintln!(
                    "inferscope: control requests at http://{addr}/control (bearer token of --control-token-file)"
                );
            }
        }
        sinks.add(PromSink::new(p));
    }
    if let Some(endpoint) = &o.otlp_endpoint {
        let otlp = Otlp::new(OtlpOptions {
            endpoint: endpoint.clone(),
            protocol: o.otlp_protocol,
            service_name: o.service_name.clone(),
            tracing_level: o.tracing_level,
            max_span_events: o.max_span_events,
            metrics_interval: Duration::from_secs_f64(o.otlp_metrics_interval.max(0.1)),
            traces: !o.no_otlp_traces,
            metrics: !o.no_otlp_metrics,
        })?;
        eprintln!("inferscope: sending OTLP ({:?}) to {endpoint}", o.otlp_protocol);
        sinks.add(OtlpSink { o: otlp, device_spans: o.device_spans });
    }
    let pending = o.export_buffer_mib.saturating_mul(1 << 20);
    if let Some(path) = o.jsonl.as_deref() {
        sinks.add(JsonlSink::new(JsonlWriter::open(path, pending)?));
    }
    sinks.add(ConsoleSink::new(!o.quiet && o.jsonl.as_deref() != Some("-"), pending)?);
    Ok(sinks)
}
