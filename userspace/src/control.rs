//! The control endpoint of a running daemon: a unix socket (`--control-socket`, default
//! /run/inferscope/control.sock, mode 0600 in a 0700 directory when inferscope makes it),
//! never a network port. One JSON request per line, one JSON response line back. Only root or
//! the daemon's own user may talk to it: the file's permissions, and the peer's credentials
//! checked on every connection. `inferscope ctl` is its client (cmd/ctl.rs); the daemon
//! answers in its event loop (daemon/control.rs), so a switch happens between two records.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// Where the daemon listens and `inferscope ctl` connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/inferscope/control.sock";

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 << 10;

/// What `inferscope ctl` asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Layers, probe groups, processes, costs and counters.
    Status,
    /// Switches a layer (`device`) or a probe group of one (`device.launch`) on.
    Enable { name: String },
    /// ... or off: its probes are detached.
    Disable { name: String },
    /// Reads the configuration files again (the Python timer YAML).
    Reload,
    /// The OTLP trace detail (`--tracing-level`).
    TracingLevel { level: u8 },
    /// What is logged on standard error beyond inferscope's own lines (RUST_LOG's level).
    LogLevel { level: String },
    /// The live view's model (`inferscope top --connect`); the daemon keeps one from the first
    /// such request on.
    Top,
}

/// The daemon's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What was done, in words (or why not).
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub top: Option<crate::top::Snapshot>,
}

impl Response {
    pub fn done(message: impl Into<String>) -> Self {
        Self { ok: true, message: message.into(), status: None, top: None }
    }

    pub fn refused(e: &anyhow::Error) -> Self {
        Self { ok: false, message: format!("{e:#}"), status: None, top: None }
    }
}

/// What `inferscope ctl status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: f64,
    /// The daemon's own CPU time (user + system), seconds.
    pub cpu_s: f64,
    pub tracing_level: u8,
    pub log_level: String,
    /// Whether the kernel counts BPF run time (`sysctl kernel.bpf_stats_enabled`).
    pub bpf_stats_enabled: bool,
    pub processes: Vec<ProcessStatus>,
    pub layers: Vec<LayerStatus>,
    /// Tracepoint groups: attached now, attached at start.
    pub tracepoints: Vec<TracepointStatus>,
    pub programs: Vec<ProgramStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub pid: u32,
    pub engine: String,
    /// Its container and pod, as OpenTelemetry attributes.
    pub identity: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerStatus {
    pub name: String,
    pub on: bool,
    /// The tracepoint groups it needs.
    pub tracepoints: Vec<String>,
    /// Its own probe groups and whether each is on.
    pub groups: Vec<(String, bool)>,
    /// Time spent in its user-space work so far (records sampled 1 in 16), seconds.
    pub cpu_s: f64,
    /// BPF run time of the programs it needs, seconds (0 without bpf_stats).
    pub bpf_s: f64,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TracepointStatus {
    pub group: String,
    pub attached: usize,
    pub total: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    /// The tracepoint group or layer it works for.
    pub group: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// The listening endpoint; the socket file goes away with it.
pub struct Endpoint {
    path: PathBuf,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path`; requests arrive on the returned channel. A socket file nobody answers
/// on (a daemon that died) is replaced; one another daemon answers on is an error that says so.
pub fn listen(path: &Path) -> Result<(Endpoint, mpsc::Receiver<Call>)> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another inferscope answers on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let endpoint = Endpoint { path: path.to_path_buf() };
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, tx));
    Ok((endpoint, rx))
}

async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, tx.clone()));
            }
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether a peer may control this daemon: root, or the user the daemon runs as.
fn allowed(stream: &UnixStream) -> bool {
    let me = unsafe { libc::geteuid() };
    stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == me).unwrap_or(false)
}

/// One connection: request lines in, response lines out, until the peer closes.
async fn serve(stream: UnixStream, tx: mpsc::Sender<Call>) {
    if !allowed(&stream) {
        let (_, mut w) = stream.into_split();
        let r = Response {
            ok: false,
            message: "only root or the daemon's user may control it".into(),
            status: None,
            top: None,
        };
        let _ = w.write_all(line(&r).as_bytes()).await;
        return;
    }
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 * 64)).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let resp = match serde_json::from_str::<Request>(&l) {
            Ok(req) => {
                let (reply, answer) = oneshot::channel();
                if tx.send((req, reply)).await.is_err() {
                    return;
                }
                answer.await.unwrap_or_else(|_| Response::done("the daemon is stopping"))
            }
            Err(e) if l.len() <= MAX_REQUEST => Response {
                ok: false,
                message: format!("not a control request ({e}); see `inferscope ctl --help`"),
                ..Response::default()
            },
            Err(_) => Response { ok: false, message: "request too long".into(), status: None, top: None },
        };
        if w.write_all(line(&resp).as_bytes()).await.is_err() {
            return;
        }
    }
}

fn line(r: &Response) -> String {
    let mut s = serde_json::to_string(r).unwrap_or_else(|_| r#"{"ok":false,"message":"unencodable"}"#.into());
    s.push('\n');
    s
}

/// Sends one request to the daemon at `path` and waits for its answer (blocking; the CLI).
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is an inferscope daemon running here? (`--control-socket` of the daemon; in Kubernetes run \
                 `kubectl exec` into its pod)"
            }
            std::io::ErrorKind::PermissionDenied => "run as root, or as the daemon's user",
            _ => "",
        };
        anyhow::anyhow!("cannot reach the inferscope daemon at {}: {e}; {hint}", path.display())
    })?;
    s.set_read_timeout(Some(timeout))?;
    let mut req = serde_json::to_string(req)?;
    req.push('\n');
    s.write_all(req.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut answer)
        .with_context(|| format!("no answer from {} within {timeout:?}", path.display()))?;
    serde_json::from_str(&answer).with_context(|| format!("not an inferscope answer: {:?}", answer.trim()))
}

/// The token of `--control-token-file`: its first line, which must not be empty.
pub fn read_token(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the control token {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.len() < 16 {
        bail!("the control token in {} is shorter than 16 characters", path.display());
    }
    Ok(token)
}

/// Whether `header` (an Authorization header's value) carries `token`, compared in time that
/// does not depend on where they differ.
pub fn bearer_matches(header: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else { return false };
    let want = token.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Answers one HTTP control request (`POST /control`, body one JSON request): the daemon's
/// response, or why not, with the HTTP status that says it.
pub async fn answer_http(
    tx: &mpsc::Sender<Call>,
    token: &str,
    method: &hyper::Method,
    auth: Option<&[u8]>,
    body: &[u8],
) -> (hyper::StatusCode, Response) {
    use hyper::StatusCode;
    let refuse = |code, message: &str| (code, Response { ok: false, message: message.into(), ..Response::default() });
    if method != hyper::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST a control request");
    }
    if !bearer_matches(auth, token) {
        return refuse(StatusCode::UNAUTHORIZED, "a wrong or missing bearer token");
    }
    let req = match serde_json::from_slice::<Request>(body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not a control request ({e})")),
    };
    let (reply, answer) = oneshot::channel();
    if tx.send((req, reply)).await.is_err() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    match answer.await {
        Ok(r) => (StatusCode::OK, r),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
    }
}

/// Sends one request to the daemon's HTTP server at `url` with the token in `token_file`
/// (blocking; the CLI).
pub fn call_http(url: &str, token_file: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let token = read_token(token_file)?;
    let uri: hyper::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://HOST:PORT (the daemon's --prometheus-listen), not {url}");
    }
    let host = uri.host().context("no host in --url")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let body = serde_json::to_vec(req)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) = rt.block_on(async {
        tokio::time::timeout(timeout, async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .with_context(|| format!("cannot reach the inferscope daemon at {url}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let r = hyper::Request::post("/control")
                .header("Host", format!("{host}:{port}"))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
            let resp = sender.send_request(r).await?;
            let status = resp.status();
            use http_body_util::BodyExt as _;
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))?
    })?;
    if status == hyper::StatusCode::NOT_FOUND {
        bail!("{url} has no /control: start the daemon with --control-token-file (and --prometheus-listen)");
    }
    serde_json::from_slice(&text)
        .with_context(|| format!("not an inferscope answer (HTTP {status}): {:?}", String::from_utf8_lossy(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_cli_writes_them() {
        for (text, req) in [
            (r#"{"cmd":"status"}"#, Request::Status),
            (r#"{"cmd":"enable","name":"device.launch"}"#, Request::Enable { name: "device.launch".into() }),
            (r#"{"cmd":"disable","name":"requests"}"#, Request::Disable { name: "requests".into() }),
            (r#"{"cmd":"reload"}"#, Request::Reload),
            (r#"{"cmd":"tracing-level","level":2}"#, Request::TracingLevel { level: 2 }),
            (r#"{"cmd":"log-level","level":"debug"}"#, Request::LogLevel { level: "debug".into() }),
        ] {
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), req);
            assert_eq!(serde_json::from_str::<Request>(&serde_json::to_string(&req).unwrap()).unwrap(), req);
        }
        for bad in ["", "{}", r#"{"cmd":"explode"}"#, r#"{"cmd":"enable"}"#, "\u{0}\u{1}garbage"] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_tokens_must_match_whole() {
        let t = "0123456789abcdef0123";
        assert!(bearer_matches(Some(b"Bearer 0123456789abcdef0123"), t));
        for bad in [&b"Bearer 0123456789abcdef012"[..], b"Bearer 0123456789abcdef01234", b"0123456789abcdef0123", b""] {
            assert!(!bearer_matches(Some(bad), t), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!bearer_matches(None, t));
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = std::env::temp_dir().join(format!("inferscope-ctl-{}", std::process::id()));
        let path = dir.join("sub/control.sock");
        let _ = std::fs::remove_dir_all(&dir);
        // A socket file left by a daemon that died: nobody answers.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (endpoint, mut rx) = listen(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let refused = listen(&path).err().expect("a second daemon must be refused");
        assert!(refused.to_string().contains("another inferscope answers"), "{refused}");
        let answer = tokio::spawn(async move {
            let (req, reply) = rx.recv().await.unwrap();
            assert_eq!(req, Request::Reload);
            reply.send(Response::done("reloaded")).unwrap();
        });
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || call(&p, &Request::Reload, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        answer.await.unwrap();
        assert!(r.ok);
        assert_eq!(r.message, "reloaded");
        drop(endpoint);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
