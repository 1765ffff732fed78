//! Command-line interface. Every flag explains itself in `--help`.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::export::otlp::OtlpProtocol;

/// When the container and pod of a process become Prometheus labels (`--identity-labels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityLabels {
    Auto,
    Always,
    Never,
}

impl IdentityLabels {
    /// (on the request families, on `pid` series)
    pub fn resolve(self) -> (bool, bool) {
        match self {
            Self::Always => (true, true),
            Self::Never => (false, false),
            Self::Auto => (std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(), true),
        }
    }
}

/// The engine every traced process runs (`--engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Vllm,
    Sglang,
}

/// Whether pod metadata comes from the Kubernetes API (`--kube-api`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeApi {
    Auto,
    On,
    Off,
}

/// Which container runtime is asked for container names and the kubelet's labels
/// (`--container-runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainerRuntime {
    Auto,
    Containerd,
    Docker,
    Off,
}

#[derive(Parser, Debug)]
#[command(
    name = "inferscope",
    version,
    about = "See where the time goes inside LLM inference servers (vLLM, SGLang), from the outside.",
    long_about = "inferscope watches inference servers with eBPF, without changing the server, its image, \
its flags or its code. From the socket syscalls of the serving process it rebuilds every HTTP request of \
the OpenAI-compatible API and its server-sent-event stream, and reports time to first token, inter-token \
latency, time per output token, duration, tokens, model and finish reason as Prometheus metrics, \
OpenTelemetry traces and metrics (OTLP), and JSON lines. From the engine's own IPC it reads queueing, \
prefill, decode and every scheduler step; with uprobes on the accelerator runtimes the engine has loaded \
(CUDA driver and runtime, NCCL, Ascend CANN and HCCL) it shows kernel and graph launches, copies, \
collectives and the time the host waits for the device, per process, stream and engine step.\n\n\
It needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE). Run `inferscope doctor` to see what this host supports.\n\n\
Prompt and completion text are never exported unless --capture-content is given.",
    after_help = "Examples:\n  inferscope attach --pid 4242 --prometheus-listen 0.0.0.0:9464\n  \
inferscope run --otlp-endpoint http://otel-collector:4317 --jsonl /var/log/inferscope.jsonl\n  inferscope doctor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace one process by PID, its descendants, and children it starts later.
    Attach {
        /// Process to trace (as seen from the host's PID namespace).
        #[arg(long, short = 'p', value_name = "PID")]
        pid: u32,
        /// Trace only this process, not its existing or future children.
        #[arg(long)]
        no_children: bool,
        #[command(flatten)]
        opts: RunOptions,
    },
    /// Find vLLM and SGLang servers on this host and keep following new and exiting ones.
    Run {
        /// Also trace processes whose command line contains this text (repeatable), e.g. a
        /// custom OpenAI-compatible server: --match my_server.py
        #[arg(long = "match", value_name = "TEXT")]
        matches: Vec<String>,
        /// How often to look for new server processes, in seconds.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        discover_interval: f64,
        #[command(flatten)]
        opts: RunOptions,
    },
    /// Check privileges and kernel features, and say what will and will not work here.
    Doctor,
    /// Sample the Python stacks of a CPython process (3.11+) with a BPF perf-event program on
    /// each of its threads, and write them as folded stacks, a flame graph (SVG) or pprof.
    Profile {
        /// Process to profile (as seen from the host's PID namespace).
        #[arg(long, short = 'p', value_name = "PID")]
        pid: u32,
        /// How long to sample, in seconds.
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        duration: f64,
        /// Samples per second of each thread's CPU time.
        #[arg(long, default_value_t = 99, value_name = "HZ")]
        rate: u64,
        /// Write the profile here instead of standard output.
        #[arg(long, short = 'o', value_name = "PATH")]
        output: Option<std::path::PathBuf>,
        /// Output format (default: from the file's extension: .svg a flame graph, .pb or
        /// .pprof pprof, anything else folded stacks).
        #[arg(long, value_enum, value_name = "FORMAT")]
        format: Option<crate::python::profile::Format>,
    },
    /// Time Python functions of a CPython 3.11-3.14 process exactly, without changing it: a
    /// hardware watchpoint on each function's first instruction and on each of its returns,
    /// on every Python thread. Writes one JSON line per call; prints a summary at the end.
    Timers {
        /// Process to watch (as seen from the host's PID namespace).
        #[arg(long, short = 'p', value_name = "PID")]
        pid: u32,
        /// Functions to time: a YAML list of `- symbol: module:Class.method` entries (optional
        /// min_version, max_version, metrics: [{type: timer|counter}]), or `default` for the
        /// built-in vLLM and SGLang set.
        #[arg(long, default_value = "default", value_name = "PATH")]
        config: String,
        /// How long to watch, in seconds (it also stops when the process exits).
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        duration: f64,
        /// Write the calls here instead of standard output.
        #[arg(long, short = 'o', value_name = "PATH")]
        output: Option<std::path::PathBuf>,
        /// On CPython 3.9/3.10, time with uprobes on the eval function. Every Python call of
        /// the process then traps twice (tens of microseconds each on a VM): opt-in.
        #[arg(long)]
        eval_uprobes: bool,
    },
    /// A live view of the inference servers in the terminal, like `top`: per process the
    /// request rate, TTFT/TPOT/ITL percentiles, tokens per second, errors; the engine's queue,
    /// prefill and decode times, steps, batch and KV cache; the device's launches, waits and
    /// copies; the Python timers and profile; and the slowest recent requests with their phases
    /// as bars. Loads its own probes (on --pid, else on every vLLM/SGLang server found), or
    /// shows what a running daemon sees (--connect). Keys: ? help, q quit.
    Top {
        /// Trace this process and its children only.
        #[arg(long, value_name = "PID", conflicts_with = "connect")]
        pid: Option<u32>,
        /// Without --pid: also trace processes whose command line contains TEXT (repeatable).
        #[arg(long = "match", value_name = "TEXT", conflicts_with = "connect")]
        matches: Vec<String>,
        /// Show what a running daemon sees, through its control socket (default
        /// /run/inferscope/control.sock), instead of loading probes.
        #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = crate::control::DEFAULT_SOCKET)]
        connect: Option<std::path::PathBuf>,
        /// Seconds between screen refreshes.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        refresh: f64,
        /// Where the daemon's own messages go while the screen is in use (default:
        /// inferscope-top-PID.log in the temporary directory); the last one is the bottom line.
        #[arg(long, value_name = "FILE")]
        log: Option<std::path::PathBuf>,
        #[command(flatten)]
        opts: RunOptions,
    },
    /// Control a running daemon through its control socket: see its layers, probe groups,
    /// processes, costs and counters; switch layers and probe groups on and off (their probes
    /// are detached, not ignored); reload the Python timer YAML; change the trace detail or the
    /// log level. Needs root or the daemon's user.
    Ctl {
        /// The daemon's control socket (its --control-socket).
        #[arg(long, default_value = crate::control::DEFAULT_SOCKET, value_name = "PATH", env = "INFERSCOPE_CONTROL_SOCKET")]
        socket: std::path::PathBuf,
        /// Reach the daemon over HTTP instead, at its Prometheus address (e.g.
        /// http://127.0.0.1:9464 through `kubectl port-forward`); needs --token-file, and the
        /// daemon's --control-token-file.
        #[arg(long, value_name = "URL", env = "INFERSCOPE_CONTROL_URL", requires = "token_file")]
        url: Option<String>,
        /// The file holding the daemon's control token (for --url).
        #[arg(long, value_name = "FILE", env = "INFERSCOPE_CONTROL_TOKEN_FILE")]
        token_file: Option<std::path::PathBuf>,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Show the CPython a process runs, read from outside without stopping it: version, where
    /// its layout came from, its threads and each thread's current Python stack.
    PythonInfo {
        /// Process to read (as seen from the host's PID namespace).
        #[arg(long, short = 'p', value_name = "PID")]
        pid: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Most frames shown per thread.
        #[arg(long, default_value_t = 64, value_name = "N")]
        max_frames: usize,
    },
}

/// What `inferscope ctl` asks a running daemon.
#[derive(Subcommand, Debug, Clone)]
pub enum CtlAction {
    /// Layers and probe groups with their state, cost and counters; traced processes; BPF
    /// programs with their run time (with `sysctl kernel.bpf_stats_enabled=1`).
    Status,
    /// Switch a layer on (requests, engine, device, timers, sites, engine_state, profile) or a
    /// device probe group (device.launch, device.graph, device.copy, device.sync,
    /// device.alloc, device.collective, device.names, device.ops).
    Enable {
        #[arg(value_name = "LAYER[.GROUP]")]
        name: String,
    },
    /// Switch a layer or device probe group off: its probes and tracepoints are detached.
    Disable {
        #[arg(value_name = "LAYER[.GROUP]")]
        name: String,
    },
    /// Read the Python timer YAML (--python-timers) again and time its functions from now on.
    Reload,
    /// Set the OTLP trace detail (0, 1 or 2; see `--tracing-level`). Also `ctl level N`.
    #[command(alias = "level")]
    TracingLevel {
        #[arg(value_parser = clap::value_parser!(u8).range(0..=2))]
        level: u8,
    },
    /// Set the log level on standard error (off, error, warn, info, debug, trace), or
    /// `default` for RUST_LOG's.
    LogLevel { level: String },
}

#[derive(Args, Debug, Clone)]
pub struct RunOptions {
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9464) at /metrics.
    #[arg(long, value_name = "ADDR", env = "INFERSCOPE_PROMETHEUS_LISTEN")]
    pub prometheus_listen: Option<SocketAddr>,

    /// Also expose request metrics under the names vLLM's own Grafana dashboard queries
    /// (vllm:time_to_first_token_seconds, ...), for servers whose own metrics are off.
    #[arg(long)]
    pub vllm_metrics: bool,

    /// Also expose the engine families Huawei's ms_service_metric exports for vLLM, under its
    /// names and labels (vllm_profiling_batch_size, vllm_profiling_fine_grained_ttft, ...;
    /// labels engine, dp, role), fed from the engine's IPC: its dashboards and alerts work
    /// without its hooks in the server.
    #[arg(long)]
    pub ms_service_metric_names: bool,

    /// Send traces and metrics with OTLP to this collector URL, e.g. http://localhost:4317
    /// (gRPC) or http://localhost:4318 (HTTP; /v1/traces and /v1/metrics are appended).
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(long, value_enum, default_value_t = OtlpProtocol::Grpc, value_name = "PROTOCOL")]
    pub otlp_protocol: OtlpProtocol,

    /// Do not send metrics over OTLP (traces only).
    #[arg(long)]
    pub no_otlp_metrics: bool,

    /// Do not send traces over OTLP (metrics only).
    #[arg(long)]
    pub no_otlp_traces: bool,

    /// OpenTelemetry service.name of the exported telemetry.
    #[arg(long, default_value = "inferscope", value_name = "NAME", env = "OTEL_SERVICE_NAME")]
    pub service_name: String,

    /// How often OTLP metrics are pushed, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub otlp_metrics_interval: f64,

    /// Trace detail: 0 = an HTTP span and an llm_request span per request; 1 = also engine
    /// stage spans (wait, prefill, decode) when the engine layer provides them; 2 = also one
    /// span event per streamed output chunk (capped by --max-span-events).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), value_name = "LEVEL")]
    pub tracing_level: u8,

    /// Most span events per span at tracing level 2.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_span_events: u32,

    /// Write one JSON object per finished request (and periodic health) to this file; `-` is
    /// standard output.
    #[arg(long, value_name = "PATH")]
    pub jsonl: Option<String>,

    /// Most MiB of JSON lines (and, likewise, of request lines on standard output) that may wait
    /// for a consumer that does not keep up (a pipe nobody reads, a stalled disk). They are
    /// written by a thread of their own, so capture never waits for them; past this, whole
    /// batches of lines are dropped, counted in inferscope_export_dropped_total and said on
    /// stderr.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536), value_name = "MIB")]
    pub export_buffer_mib: u64,

    /// Export prompt and completion text (user data!) in JSONL and spans, at most
    /// --max-content-bytes each. Off by default.
    #[arg(long)]
    pub capture_content: bool,

    /// Most bytes of prompt and of completion text kept per request with --capture-content.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    pub max_content_bytes: usize,

    /// Bytes copied from the start of each socket read or write (at most 8192).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=8192), value_name = "BYTES")]
    pub capture_bytes: u32,

    /// Bytes copied from the end of a longer read or write, where JSON bodies keep `usage`
    /// (at most 8192).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=8192), value_name = "BYTES")]
    pub capture_tail_bytes: u32,

    /// Do not stamp request arrival times from the kernel's tcp:tcp_probe tracepoint (it runs
    /// for every TCP segment the host receives). Without it a request starts when the server
    /// reads it, which misses time spent queued in the socket while the server is busy.
    #[arg(long)]
    pub no_arrival_times: bool,

    /// Do not read TLS plaintext. By default a traced server that speaks HTTPS through OpenSSL
    /// (libssl.so.3 or 1.1, or a copy linked into its binary or Python's `_ssl` module) gets
    /// uprobes on SSL_read, SSL_read_ex, SSL_write and SSL_write_ex, and its requests are
    /// reported as exactly as plain HTTP's. Each probed call costs the server a uprobe pair
    /// (a few microseconds); plain-HTTP servers pay nothing.
    #[arg(long)]
    pub no_tls: bool,

    /// Size of the kernel-to-user ring buffer, in bytes (rounded up to a power of two). Every
    /// record travels in it: socket data, device calls, Python samples and timer hits.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub ring_buffer_size: u32,

    /// The Kubernetes node this runs on, for `k8s.node.name` on the telemetry of processes in
    /// pods (the manifests set it from the downward API's spec.nodeName). Default: the host's
    /// name (/proc/1/root/etc/hostname).
    #[arg(long, value_name = "NAME", env = "K8S_NODE_NAME")]
    pub node_name: Option<String>,

    /// Where the container and pod a traced process runs in (container_id, container_runtime,
    /// k8s_namespace_name, k8s_pod_name, k8s_pod_uid, k8s_node_name) become Prometheus labels.
    /// `always`: on the request families (gen_ai_*, inferscope_requests_total, vllm:*) and on
    /// every series with a `pid` label. `auto` (default): the same when inferscope runs in
    /// Kubernetes (KUBERNETES_SERVICE_HOST set), else only on `pid` series of processes in a
    /// container, so host runs keep their label sets. `never`: only `inferscope_target_info`
    /// says them. OTLP spans and JSONL lines carry them whenever they are known.
    #[arg(long, value_enum, default_value_t = IdentityLabels::Auto, value_name = "WHEN")]
    pub identity_labels: IdentityLabels,

    /// Name the workload behind each pod from the Kubernetes API: one watch of this node's pods
    /// (--node-name), and a read of each pod's ReplicaSet or Job, give k8s.deployment.name (also
    /// replicaset, statefulset, daemonset, job, cronjob), k8s.container.name and the labels of
    /// --pod-labels, as Prometheus labels (k8s_deployment_name, ...) and OTLP attributes. Needs
    /// get/list/watch on pods and get on replicasets and jobs (deploy/ grants them). `auto`
    /// (default): when running in a pod (KUBERNETES_SERVICE_HOST) or given --kubeconfig; `on`:
    /// also with ~/.kube/config; `off`: /proc only. An API that fails is said in one line and
    /// retried; names come from /proc meanwhile.
    #[arg(long, value_enum, default_value_t = KubeApi::Auto, value_name = "WHEN")]
    pub kube_api: KubeApi,

    /// A kubeconfig file for --kube-api (default: the pod's service account).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// Pod labels that become Prometheus labels (k8s_pod_label_<key>, other characters as _)
    /// and OTLP attributes (k8s.pod.label.<key>), comma-separated, e.g.
    /// app.kubernetes.io/name,app.kubernetes.io/version. Only these: labels are bounded.
    /// Needs the Kubernetes API (--kube-api).
    #[arg(long, value_delimiter = ',', value_name = "KEYS")]
    pub pod_labels: Vec<String>,

    /// Ask the node's container runtime about each traced container: its name (container.name)
    /// and the labels the kubelet puts on it (pod name, namespace and uid, the container's name
    /// in its pod: k8s.container.name): what names pods where the Kubernetes API is not used,
    /// before it answers, or while it fails (the API's word wins). containerd: its gRPC API
    /// (namespaces k8s.io, moby, default); docker: the Engine API (also behind cri-dockerd).
    /// `auto` (default): the first of /run/containerd/containerd.sock, /run/docker.sock,
    /// /var/run/docker.sock found (also under /proc/1/root, the host's root from a pod with
    /// hostPID); `off`: never.
    #[arg(long, value_enum, default_value_t = ContainerRuntime::Auto, value_name = "RUNTIME")]
    pub container_runtime: ContainerRuntime,

    /// The runtime's socket for --container-runtime (default: its usual path).
    #[arg(long, value_name = "PATH")]
    pub container_runtime_endpoint: Option<std::path::PathBuf>,

    /// The engine the traced servers run, when inferscope cannot tell or tells wrongly. By
    /// default it is told from what each process is (its command line and process title:
    /// `vllm serve`, `VLLM::EngineCore`, `sglang.launch_server`, `sglang::scheduler`), then from
    /// the engine package it has loaded; a package merely installed beside it never decides.
    #[arg(long, value_enum, value_name = "ENGINE")]
    pub engine: Option<EngineArg>,

    /// Most distinct model names used as metric label values; more read "other".
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_models: usize,

    /// Forget a connection with no traffic for this long, in seconds (its requests are
    /// reported as incomplete).
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub idle_timeout: f64,

    /// Do not probe accelerator runtimes (CUDA, NCCL, Ascend CANN, HCCL): no kernel launches,
    /// copies, collectives or synchronisation waits.
    #[arg(long)]
    pub no_device: bool,

    /// Device probes to attach, comma-separated: `default` (graph launches, copies,
    /// synchronisations, allocations, collectives, kernel names), `all`, `none`, groups
    /// (launch, graph, copy, sync, alloc, collective, names, ops) or function names
    /// (cuLaunchKernel, aclnnMatmul...). Eager kernel launches (`launch`) and Ascend operators
    /// (`ops`) are off by default: an eager engine makes 10^4-10^5 of them a second.
    #[arg(long, default_value = "default", value_name = "LIST")]
    pub device_probes: String,

    /// Never probe this function or group (repeatable), e.g. --no-device-probe cuMemAlloc_v2.
    #[arg(long = "no-device-probe", value_name = "NAME")]
    pub no_device_probe: Vec<String>,

    /// Most calls per second one device probe reports; more are counted, not reported (0: no
    /// limit). Kernel-name lookups are never limited.
    #[arg(long, default_value_t = 20_000, value_name = "CALLS")]
    pub device_rate_limit: u32,

    /// Largest share of one CPU the device probes of one process may cost (probe hits times
    /// the cost of a hit, measured at start-up). Over it, the costliest probes of that process
    /// are switched off, with one line saying which. 0 disables the check.
    #[arg(long, default_value_t = 0.01, value_name = "FRACTION")]
    pub device_overhead_budget: f64,

    /// Kernels labelled by name in device metrics per process; the rest are `other`.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub device_top_kernels: usize,

    /// How often device activity is summed into a JSONL `device` line per process, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub device_interval: f64,

    /// Attach each device probe as a perf event of its own instead of one `uprobe_multi` link
    /// per library (what kernels before 6.6 get anyway). Each one then takes ~0.1 s to detach,
    /// one after another, when a process exits or inferscope stops.
    #[arg(long)]
    pub no_uprobe_multi: bool,

    /// With --tracing-level 1 or more, also send one `device` span per engine step (what the
    /// accelerator was asked in the step).
    #[arg(long)]
    pub device_spans: bool,

    /// Time Python functions of the traced CPython 3.11-3.14 processes exactly, with hardware
    /// breakpoints on each function's entry and returns: `default` (vLLM and SGLang scheduler
    /// functions) or a YAML file of `- symbol: module:Class.method` entries (see `inferscope
    /// timers --help`). Each timed call costs one debug trap at entry and one at return.
    #[arg(long, value_name = "PATH|default")]
    pub python_timers: Option<String>,

    /// With --python-timers, also time CPython 3.9/3.10 processes, with uprobes on their eval
    /// function: every Python call of such a process then traps twice (opt-in).
    #[arg(long)]
    pub python_timers_eval_uprobes: bool,

    /// Keep a rolling profile of every traced CPython process: sample its Python stacks at
    /// this rate (per thread, of its CPU time; 0: off). Each --python-profile-window, a JSONL
    /// `python_profile` line per process gives the functions most on CPU, and with
    /// --python-profile-dir the window's pprof and SVG flame graph are written there.
    #[arg(long, default_value_t = 0, value_name = "HZ")]
    pub python_profile_rate: u64,

    /// Length of one rolling-profile window, in seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub python_profile_window: f64,

    /// Write each process's latest profile window here as pid-PID.pb (pprof) and pid-PID.svg
    /// (flame graph), replaced every window.
    #[arg(long, value_name = "DIR")]
    pub python_profile_dir: Option<std::path::PathBuf>,

    /// How often the GPUs' and NPUs' resources are read from their management libraries
    /// (NVIDIA's NVML, Huawei's DCMI), in seconds
    /// (utilisation, memory used/total, power, temperature, clocks, throttle reasons, PCIe
    /// throughput, ECC errors; per process: memory and SM/memory utilisation): the
    /// inferscope_gpu_* families and `gpu` JSONL lines. 0: never. A host without the library
    /// (no NVIDIA driver) gets one line.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub gpu_interval: f64,

    /// NVIDIA's management library: a path, or a name the dynamic loader finds.
    #[arg(long, default_value = "libnvidia-ml.so.1", value_name = "PATH")]
    pub nvml_library: String,

    /// Huawei Ascend's management library (DCMI): a path, or a name the dynamic loader finds
    /// (also looked for in /usr/local/Ascend/driver/lib64/driver/). Per NPU: AI core, AI CPU and
    /// vector core utilisation, HBM used/total and bandwidth, temperature, power, health; per
    /// process: device memory (inferscope_npu_* families, `npu` JSONL lines).
    #[arg(long, default_value = "libdcmi.so", value_name = "PATH")]
    pub dcmi_library: String,

    /// How often the engine's live state (vLLM: scheduler running/waiting queues, KV-cache
    /// free/total blocks; SGLang: running/waiting queues) is read from the engine's own
    /// objects in memory, in seconds; 0 disables. Gauges inferscope_engine_state_* and JSONL
    /// `engine_state` lines.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub engine_state_interval: f64,

    /// Where `inferscope ctl` reaches this daemon: a unix socket, made mode 0600 (its
    /// directory 0700 when inferscope creates it), never a network port; `off` for none.
    /// In Kubernetes, `kubectl exec` into the inferscope pod and run `inferscope ctl` there.
    #[arg(long, default_value = crate::control::DEFAULT_SOCKET, value_name = "PATH|off", env = "INFERSCOPE_CONTROL_SOCKET")]
    pub control_socket: String,

    /// Also take control requests over the Prometheus HTTP server (--prometheus-listen):
    /// `POST /control` with `Authorization: Bearer <token>`, the token being the first line of
    /// this file (read at start; keep it 0600, or a Kubernetes Secret). For a port-forward:
    /// `inferscope ctl --url http://127.0.0.1:9464 --token-file FILE status`. Without it the
    /// HTTP server answers /metrics and /healthz only.
    #[arg(long, value_name = "FILE")]
    pub control_token_file: Option<std::path::PathBuf>,

    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Do not print a line per request on standard output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}
