//! Harness shared by the integration tests: starts real processes (the fixture server on
//! uvicorn, the load generator, inferscope itself, Prometheus, the OTLP receiver), stops them
//! when dropped, and reads what they wrote. Tests that load BPF need root; `cargo xtask test`
//! prepares everything (binary, virtualenvs, Prometheus) and runs them one at a time.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The checkout the tests run from: cargo sets CARGO_MANIFEST_DIR when it runs a test too, and
/// that is the one to use (a build reused from another checkout of the same sources, as the
/// developer cache's shared build directory allows, was compiled with that checkout's path).
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).expect("tests/ lives in the repository")
}

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} not found at {} — run `cargo xtask test` (it builds and installs what the tests need)",
        p.display()
    );
    p
}

/// The inferscope binary under test (INFERSCOPE_BIN, which `cargo xtask test` sets; else
/// debug/inferscope in CARGO_TARGET_DIR or target/).
pub fn inferscope_bin() -> PathBuf {
    let p = std::env::var_os("INFERSCOPE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"))
            .join("debug/inferscope")
    });
    must_exist(p, "the inferscope binary")
}

/// Python with the fixture server's packages.
pub fn python() -> PathBuf {
    let p = std::env::var_os("INFERSCOPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    must_exist(p, "the test virtualenv's python")
}

/// Python with the OTLP receiver's packages.
pub fn receiver_python() -> PathBuf {
    must_exist(repo_root().join("tests/receivers/.venv/bin/python"), "the receivers' virtualenv")
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inferscope-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A child process, in a process group of its own, stopped with its whole group (SIGTERM,
/// then SIGKILL) when dropped: no grandchild outlives a test.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let child =
            cmd.process_group(0).stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name: name.to_string() }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: i32) {
        unsafe { libc_kill(self.child.id() as i32, sig) };
    }
    /// Sends `sig` and waits up to `timeout` for the exit; returns whether it exited.
    pub fn stop_with(&mut self, sig: i32, timeout: Duration) -> bool {
        self.signal(sig);
        self.wait_for_exit(timeout)
    }
    /// Waits up to `timeout` for the process to exit; true when it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        if self.alive() && !self.stop_with(15, Duration::from_secs(5)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever the process left behind in its group.
        unsafe { libc_kill(group, 9) };
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET on loopback; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, &[], b"")
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body). Bodies in chunked
/// encoding are returned raw.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A TCP port free on 127.0.0.1 now.
/// (family, value, whole line) of every sample in a Prometheus text exposition.
pub fn samples(port: u16) -> Vec<(String, f64, String)> {
    let (_, body) = http_get(port, "/metrics").expect("/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let name = line.split(['{', ' ']).next()?;
            let v = line.rsplit(' ').next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            Some((name.to_string(), v, line.to_string()))
        })
        .collect()
}

/// Sums of the given families in a Prometheus text exposition, over all label sets.
pub fn scrape(port: u16, names: &[&str]) -> std::collections::HashMap<String, f64> {
    let mut out: std::collections::HashMap<String, f64> = names.iter().map(|n| (n.to_string(), 0.0)).collect();
    for (name, v, _) in samples(port) {
        if let Some(sum) = out.get_mut(&name) {
            *sum += v;
        }
    }
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The first value of a PromQL query to the test Prometheus on `port`.
pub fn promql(port: u16, q: &str) -> Option<f64> {
    let out = Command::new(repo_root().join("tests/receivers/prometheus.sh"))
        .args(["query", &port.to_string(), q])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A real Prometheus server scraping `target` (host:port) every second, its data in
/// `dir/prom-data`: (the process, its port for [`promql`]).
pub fn prometheus(dir: &Path, target: &str) -> (Proc, u16) {
    let port = free_port();
    let proc = Proc::spawn(
        "prometheus",
        Command::new(repo_root().join("tests/receivers/prometheus.sh"))
            .args(["start", dir.join("prom-data").to_str().unwrap(), &port.to_string(), target, "1s"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).expect("prometheus.log")),
    );
    (proc, port)
}

/// Compiles the C file `src` into the shared library `out` (`soname` when given).
pub fn cc_shared(src: &Path, out: &Path, soname: Option<&str>) {
    let mut cmd = Command::new("cc");
    cmd.args(["-shared", "-fPIC", "-O1", "-Wall", "-o"]).arg(out).arg(src);
    if let Some(n) = soname {
        cmd.arg(format!("-Wl,-soname,{n}"));
    }
    let ok = cmd.status().expect("cc (apt install gcc)");
    assert!(ok.success(), "cc {}", src.display());
}

/// Every series of a PromQL query's answer: its labels and value.
pub fn promql_vector(port: u16, q: &str) -> Vec<(HashMap<String, String>, f64)> {
    let Ok(out) =
        Command::new(repo_root().join("tests/receivers/prometheus.sh")).args(["query", &port.to_string(), q]).output()
    else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let Some(rows) = v["data"]["result"].as_array() else { return Vec::new() };
    rows.iter()
        .filter_map(|r| {
            let labels = r["metric"]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            Some((labels, r["value"][1].as_str()?.parse().ok()?))
        })
        .collect()
}

/// The OpenAI-compatible fixture server (FastAPI on uvicorn), on a free port.
pub struct Fixture {
    pub proc: Proc,
    pub port: u16,
    /// Serving HTTPS (`--ssl-certfile`).
    pub tls: bool,
}

impl Fixture {
    pub fn start(dir: &Path, args: &[&str]) -> Fixture {
        Self::start_in(dir, args, &[], &[], "fixture")
    }

    /// The fixture server run by `wrapper` (a command and its arguments that end by running
    /// the rest of their command line, such as `unshare -m -- sh -c '...; exec "$@"'`), with
    /// `env` set; its log is `<name>.log`.
    pub fn start_in(dir: &Path, args: &[&str], wrapper: &[String], env: &[(&str, &str)], name: &str) -> Fixture {
        let port_file = dir.join(format!("{name}-port-{}", args.len()));
        let log = dir.join(format!("{name}.log"));
        let _ = fs::remove_file(&port_file);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(python());
                c
            }
            None => Command::new(python()),
        };
        cmd.arg(repo_root().join("tests/fixtures/openai_server.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--port-file"])
            .arg(&port_file)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"));
        let mut proc = Proc::spawn("fixture server", &mut cmd);
        let port = wait_for("the fixture server to listen", Duration::from_secs(60), || {
            assert!(proc.alive(), "fixture server exited: {}", fs::read_to_string(&log).unwrap_or_default());
            fs::read_to_string(&port_file).ok()?.trim().parse::<u16>().ok()
        });
        let tls = args.contains(&"--ssl-certfile");
        if !tls {
            wait_for("the fixture server's /health", Duration::from_secs(30), || {
                http_get(port, "/health").filter(|(s, _)| *s == 200)
            });
        }
        Fixture { proc, port, tls }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }
}

/// inferscope's record of a load-client truth line: by the response id, else the X-Request-Id.
pub fn find_truth<'a>(recs: &'a [Value], truth: &Value) -> Option<&'a Value> {
    let id = truth["request_id"].as_str().unwrap_or_default();
    let xid = truth["x_request_id"].as_str().unwrap_or_default();
    by_id(recs, id).or_else(|| by_id(recs, xid))
}

/// Compares every load-client truth line with inferscope's record of it (status, model, stream,
/// tokens, finish reason, output events exactly); returns (ttft diffs, e2e diffs) in s.
pub fn compare_with_client(truth: &[Value], recs: &[Value]) -> (Vec<f64>, Vec<f64>) {
    let mut ttft = Vec::new();
    let mut e2e = Vec::new();
    let mut missing = Vec::new();
    for t in truth {
        let Some(r) = find_truth(recs, t) else {
            missing.push(t["request_id"].clone());
            continue;
        };
        let ctx = format!("truth {t}\nrecord {r}");
        assert_eq!(r["path"], t["path"], "{ctx}");
        assert_eq!(r["status"], t["status"], "{ctx}");
        assert_eq!(r["aborted"], t["aborted"], "{ctx}");
        if t["aborted"] == true {
            continue;
        }
        assert_eq!(r["stream"], t["stream"], "{ctx}");
        assert_eq!(r["model"], t["model"], "{ctx}");
        if t["status"].as_u64().is_some_and(|s| s < 400) {
            assert_eq!(r["prompt_tokens"], t["prompt_tokens"], "{ctx}");
            if t["completion_tokens"].is_null() && t["stream"] == true {
                // No usage in the stream: inferscope counts output events, and says so.
                assert_eq!(r["tokens_from"], "events", "{ctx}");
                assert_eq!(r["completion_tokens"], t["output_events"], "{ctx}");
            } else {
                assert_eq!(r["completion_tokens"], t["completion_tokens"], "{ctx}");
            }
            assert_eq!(r["finish_reason"], t["finish_reason"], "{ctx}");
            if t["stream"] == true {
                assert_eq!(r["output_events"], t["output_events"], "{ctx}");
            }
        }
        if let (Some(a), Some(b)) = (f(&r["ttft_s"]), f(&t["ttft_s"])) {
            ttft.push(a - b);
        } else {
            assert_eq!(r["ttft_s"].is_null(), t["ttft_s"].is_null(), "TTFT presence differs: {ctx}");
        }
        e2e.push(f(&r["e2e_s"]).expect("e2e") - f(&t["e2e_s"]).expect("e2e"));
    }
    assert!(
        missing.is_empty(),
        "{} of {} requests missing from inferscope's output: {:?}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(10)]
    );
    (ttft, e2e)
}

/// inferscope running as a child process, writing JSONL into the scratch directory.
pub struct Inferscope {
    pub proc: Proc,
    pub jsonl: PathBuf,
    pub stderr: PathBuf,
    pub stdout: PathBuf,
}

impl Inferscope {
    /// `inferscope <args...> --jsonl <dir>/requests.jsonl --quiet`, waiting until it says
    /// it traces `ready_pids` (or, if empty, until it started).
    pub fn start(dir: &Path, args: &[String], ready_pids: &[u32]) -> Inferscope {
        Self::start_env(dir, args, ready_pids, &[])
    }

    /// [`Self::start`] with `env` set for inferscope.
    pub fn start_env(dir: &Path, args: &[String], ready_pids: &[u32], env: &[(&str, &str)]) -> Inferscope {
        let jsonl = dir.join("requests.jsonl");
        let stderr = dir.join("inferscope.stderr");
        let stdout = dir.join("inferscope.stdout");
        let _ = fs::remove_file(&jsonl);
        let mut cmd = Command::new(inferscope_bin());
        cmd.args(args)
            .arg("--jsonl")
            .arg(&jsonl)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(fs::File::create(&stdout).expect("stdout"))
            .stderr(fs::File::create(&stderr).expect("stderr"));
        let mut proc = Proc::spawn("inferscope", &mut cmd);
        wait_for("inferscope to attach", Duration::from_secs(60), || {
            let text = fs::read_to_string(&stderr).unwrap_or_default();
            assert!(proc.alive(), "inferscope exited early:\n{text}");
            let ready = if ready_pids.is_empty() {
                text.contains("inferscope:")
            } else {
                ready_pids.iter().all(|p| text.contains(&format!("tracing pid {p} ")))
            };
            ready.then_some(())
        });
        Inferscope { proc, jsonl, stderr, stdout }
    }

    pub fn attach(dir: &Path, pid: u32, extra: &[&str]) -> Inferscope {
        let mut args = vec!["attach".to_string(), "--pid".to_string(), pid.to_string(), "--quiet".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(dir, &args, &[pid])
    }

    /// Stops it with SIGINT and returns its stderr.
    pub fn stop(&mut self) -> String {
        // Detaching waits for RCU grace periods: ~1 s idle, several times that on a loaded VM.
        let t0 = Instant::now();
        let mut stopped = self.proc.stop_with(2, Duration::from_secs(10));
        if !stopped {
            // Say where it is stuck: every thread's kernel stack.
            let pid = self.proc.pid();
            for t in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
                let p = t.path();
                let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
                let stack = fs::read_to_string(p.join("stack")).unwrap_or_default();
                eprintln!("slow stop: thread {} {}{}", t.file_name().to_string_lossy(), comm, stack);
            }
            // And the user-space stacks, where gdb is installed.
            if let Ok(out) = Command::new("gdb")
                .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 20"])
                .stdin(Stdio::null())
                .output()
            {
                eprintln!("slow stop: gdb:\n{}", String::from_utf8_lossy(&out.stdout));
            }
            stopped = self.proc.wait_for_exit(Duration::from_secs(50));
        }
        // One SIGINT must be enough: the signal is never sent twice.
        assert!(stopped, "inferscope did not stop on one SIGINT within 60 s");
        let took = t0.elapsed().as_secs_f64();
        if took > 5.0 {
            eprintln!("inferscope took {took:.2} s to stop");
        }
        let status = self.proc.child.wait().expect("wait");
        let err = fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(status.success(), "inferscope failed ({status}):\n{err}");
        assert!(!err.contains("panicked"), "inferscope panicked:\n{err}");
        err
    }

    /// Every JSONL line of the given type written so far.
    pub fn lines(&self, ty: &str) -> Vec<Value> {
        read_jsonl(&self.jsonl).into_iter().filter(|v| v["type"] == ty).collect()
    }

    pub fn requests(&self) -> Vec<Value> {
        self.lines("request")
    }

    /// Waits until at least `n` request lines were written.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let r = self.requests();
            if r.len() >= n || start.elapsed() > timeout {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// inferscope's records of exactly the client's requests (`truth`: the load client's lines),
/// waiting up to 30 s for all of them (a server's health polls and a test's /metrics scrapes
/// are requests too, and are reported as such).
pub fn records_of(scope: &Inferscope, truth: &[Value]) -> Vec<Value> {
    let ids: std::collections::HashSet<&str> = truth.iter().filter_map(|t| t["request_id"].as_str()).collect();
    wait_for("inferscope to report every request", Duration::from_secs(30), || {
        let recs: Vec<Value> = scope
            .requests()
            .into_iter()
            .filter(|r| r["request_id"].as_str().is_some_and(|i| ids.contains(i)))
            .collect();
        (recs.len() == truth.len()).then_some(recs)
    })
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(f) = fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
}

/// Runs the load generator to completion; returns its truth lines (one per request).
pub fn loadgen(dir: &Path, url: &str, args: &[&str]) -> Vec<Value> {
    let out = dir.join("truth.jsonl");
    let _ = fs::remove_file(&out);
    let log = dir.join("loadgen.log");
    let status = Command::new(python())
        .arg(repo_root().join("tests/fixtures/loadgen.py"))
        .args(["--url", url, "--quiet", "--out"])
        .arg(&out)
        .args(args)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log"))
        .status()
        .expect("loadgen");
    assert!(status.success(), "loadgen failed: {}", fs::read_to_string(&log).unwrap_or_default());
    read_jsonl(&out)
}

/// Runs the Rust load client (tests/src/bin/inferscope-load.rs) to completion; returns its
/// truth lines. Its timestamps are taken at its syscalls, so they stay accurate when a Python
/// client on the same cores would lag.
pub fn rust_load(dir: &Path, url: &str, args: &[&str]) -> Vec<Value> {
    let out = dir.join("rust-truth.jsonl");
    let _ = fs::remove_file(&out);
    let log = dir.join("rust-load.log");
    // Built by cargo next to the test executables (target/<profile>/inferscope-load).
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("inferscope-load");
    // A higher priority keeps its timestamps prompt when the server saturates the CPU.
    let status = Command::new("nice")
        .args(["-n", "-10"])
        .arg(must_exist(bin, "the inferscope-load client"))
        .args(["--url", url, "--out"])
        .arg(&out)
        .args(args)
        .stderr(fs::File::create(&log).expect("log"))
        .status()
        .expect("inferscope-load");
    assert!(status.success(), "inferscope-load failed: {}", fs::read_to_string(&log).unwrap_or_default());
    read_jsonl(&out)
}

/// Finds inferscope's record for a truth line, by request id.
pub fn by_id<'a>(records: &'a [Value], id: &str) -> Option<&'a Value> {
    records.iter().find(|r| r["request_id"].as_str() == Some(id))
}

pub fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Median and maximum of absolute differences.
pub fn stats(diffs: &mut [f64]) -> (f64, f64) {
    if diffs.is_empty() {
        return (0.0, 0.0);
    }
    diffs.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    (diffs[diffs.len() / 2].abs(), diffs[diffs.len() - 1].abs())
}

/// Names of the BPF programs currently loaded in the kernel.
pub fn loaded_bpf_programs() -> Vec<String> {
    aya::programs::loaded_programs().filter_map(|p| p.ok()).map(|p| p.name_as_str().unwrap_or("").to_string()).collect()
}

/// A real OTLP receiver (gRPC and HTTP/protobuf) writing what it gets as JSON lines.
pub struct Receiver {
    _proc: Proc,
    pub grpc: u16,
    pub http: u16,
    pub spans: PathBuf,
    pub metrics: PathBuf,
}

pub fn receiver(dir: &Path) -> Receiver {
    let spans = dir.join("spans.jsonl");
    let metrics = dir.join("metrics.jsonl");
    let mut cmd = Command::new(receiver_python());
    cmd.arg(repo_root().join("tests/receivers/otlp_receiver.py"))
        .args(["--grpc-port", "0", "--http-port", "0", "--spans-out"])
        .arg(&spans)
        .arg("--metrics-out")
        .arg(&metrics)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("receiver.log")).unwrap());
    let mut proc = Proc::spawn("otlp receiver", &mut cmd);
    let mut line = String::new();
    std::io::BufReader::new(proc.child.stdout.take().unwrap()).read_line(&mut line).expect("receiver ports");
    let ports: Value = serde_json::from_str(&line).expect("ports line");
    Receiver {
        _proc: proc,
        grpc: ports["grpc_port"].as_u64().unwrap() as u16,
        http: ports["http_port"].as_u64().unwrap() as u16,
        spans,
        metrics,
    }
}

/// The BPF maps process `pid` holds now, by name (the kernel keeps 15 bytes of a name): what
/// `bpftool map show` lists with that process, read from its own file descriptors.
pub fn bpf_maps(pid: u32) -> Vec<String> {
    let names: std::collections::HashMap<u32, String> = aya::maps::loaded_maps()
        .filter_map(|m| m.ok())
        .map(|m| (m.id(), m.name_as_str().unwrap_or("").to_string()))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    let mut ids: Vec<u32> = fds
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("map_id:"))?.trim().parse::<u32>().ok())
        .collect();
    // A map can be held by several descriptors (aya keeps one per handle).
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(|id| names.get(id).cloned().unwrap_or_default()).collect()
}

/// The BPF links process `pid` holds now, by the name of the program each runs (the kernel keeps
/// 15 bytes of a name): what `bpftool link list` shows for that process. Read from the process's
/// own file descriptors, so a daemon of an earlier test whose links the kernel is still tearing
/// down (uprobe_multi links go after an RCU grace period) is not counted.
pub fn bpf_links(pid: u32) -> Vec<String> {
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.lines().any(|l| l.starts_with("link_id:")))
        .filter_map(|info| {
            let prog = info.lines().find_map(|l| l.strip_prefix("prog_id:"))?.trim().parse::<u32>().ok()?;
            Some(names.get(&prog).cloned().unwrap_or_default())
        })
        .collect()
}
