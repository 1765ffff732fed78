//! A lean OpenAI streaming load client for accuracy tests and benchmarks: one tokio task per
//! keep-alive connection, timestamps (CLOCK_MONOTONIC) taken right after the syscalls that sent
//! the request and received each event, so its truth is not skewed by client-side queueing the
//! way a busy Python client's is. Shares no code with inferscope's parsers.
//!
//! Writes one truth line per request (same schema as tests/fixtures/loadgen.py) and a summary.
//! `--url https://...` with `--tls-ca CERT` speaks HTTPS (rustls), trusting that certificate.

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};

/// A connection: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone)]
struct Opts {
    addr: String,
    requests: usize,
    concurrency: usize,
    duration: Option<Duration>,
    max_tokens: u32,
    stream_ratio: f64,
    ttft_ms: Option<f64>,
    itl_ms: Option<f64>,
    fixture: bool,
    model: String,
    prefix: String,
    /// HTTPS (`--tls-ca CERT`: the server's certificate, trusted as a root).
    tls: Option<TlsConnector>,
}

/// A TLS client that trusts the certificate in `path` (PEM).
fn tls_connector(path: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).expect("--tls-ca: a PEM file") {
        roots.add(c.expect("--tls-ca: a certificate")).expect("--tls-ca: a usable certificate");
    }
    // ring's provider, as kube-rs uses (deprecated only for lacking post-quantum key exchange).
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn parse_args() -> (Opts, Option<String>, Option<String>) {
    let mut o = Opts {
        addr: "127.0.0.1:8000".into(),
        requests: 100,
        concurrency: 8,
        duration: None,
        max_tokens: 16,
        stream_ratio: 1.0,
        ttft_ms: None,
        itl_ms: None,
        fixture: true,
        model: "tiny-llama".into(),
        prefix: format!("rl{:x}-", mono_ns() & 0xffffff),
        tls: None,
    };
    let (mut out, mut summary) = (None, None);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--url" => {
                o.addr =
                    v.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_string()
            }
            "--tls-ca" => o.tls = Some(tls_connector(&v)),
            "--requests" => o.requests = v.parse().expect("--requests"),
            "--concurrency" => o.concurrency = v.parse().expect("--concurrency"),
            "--duration" => o.duration = Some(Duration::from_secs_f64(v.parse().expect("--duration"))),
            "--max-tokens" => o.max_tokens = v.parse().expect("--max-tokens"),
            "--stream-ratio" => o.stream_ratio = v.parse().expect("--stream-ratio"),
            "--ttft-ms" => o.ttft_ms = Some(v.parse().expect("--ttft-ms")),
            "--itl-ms" => o.itl_ms = Some(v.parse().expect("--itl-ms")),
            "--model" => o.model = v,
            "--id-prefix" => o.prefix = v,
            "--out" => out = Some(v),
            "--summary-json" => summary = Some(v),
            "--no-fixture" => {
                o.fixture = false;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    (o, out, summary)
}

/// Reads until `buf` holds `\r\n\r\n`; returns the head's length.
async fn read_head(s: &mut (impl Stream + ?Sized), buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        let mut tmp = [0u8; 16384];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[derive(Default)]
struct Outcome {
    status: u16,
    first_token_ns: Option<u64>,
    end_ns: u64,
    output_events: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    finish_reason: Option<String>,
    events: u64,
}

fn has_output(v: &Value) -> bool {
    v["choices"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            let d = if c["delta"].is_object() { &c["delta"] } else { &c["message"] };
            ["content", "reasoning_content", "reasoning"].iter().any(|k| d[*k].as_str().is_some_and(|s| !s.is_empty()))
                || d["tool_calls"].as_array().is_some_and(|a| !a.is_empty())
                || c["text"].as_str().is_some_and(|s| !s.is_empty())
        })
    })
}

fn absorb(v: &Value, now: u64, o: &mut Outcome) {
    o.events += 1;
    if has_output(v) {
        o.output_events += 1;
        o.first_token_ns.get_or_insert(now);
    }
    if let Some(f) = v["choices"].as_array().and_then(|cs| cs.iter().find_map(|c| c["finish_reason"].as_str())) {
        o.finish_reason.get_or_insert_with(|| f.to_string());
    }
    if v["usage"].is_object() {
        o.prompt_tokens = v["usage"]["prompt_tokens"].as_u64();
        o.completion_tokens = v["usage"]["completion_tokens"].as_u64();
    }
}

/// Sends one request on `s` and reads its whole response.
async fn exchange(s: &mut (impl Stream + ?Sized), req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<Outcome> {
    s.write_all(req).await?;
    buf.clear();
    let head_len = read_head(s, buf).await?;
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    let mut o = Outcome {
        status: head.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0),
        ..Default::default()
    };
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body: Vec<u8> = buf[head_len..].to_vec();
    let mut tmp = vec![0u8; 65536];
    if !chunked {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&tmp[..n]);
        }
        o.end_ns = mono_ns();
        if let Ok(v) = serde_json::from_slice::<Value>(&body[..len]) {
            absorb(&v, o.end_ns, &mut o);
            o.output_events = 0;
            o.first_token_ns = None;
        }
        return Ok(o);
    }
    // Chunked: decode chunks as bytes come, split SSE events on blank lines.
    let mut sse: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut now = mono_ns();
    loop {
        // Parse as many whole chunks as buffered.
        loop {
            let rest = &body[pos..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { break };
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..eol]).unwrap_or("x").split(';').next().unwrap_or(""),
                16,
            )
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                if rest.len() >= eol + 4 {
                    o.end_ns = now;
                    return Ok(o);
                }
                break;
            }
            if rest.len() < eol + 2 + size + 2 {
                break;
            }
            sse.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            pos += eol + 2 + size + 2;
            while let Some(e) = sse.windows(2).position(|w| w == b"\n\n") {
                let ev: Vec<u8> = sse.drain(..e + 2).collect();
                for line in ev.split(|&b| b == b'\n') {
                    if let Some(data) = line.strip_prefix(b"data: ")
                        && data != b"[DONE]"
                        && let Ok(v) = serde_json::from_slice::<Value>(data)
                    {
                        absorb(&v, now, &mut o);
                    }
                }
            }
        }
        let n = s.read(&mut tmp).await?;
        now = mono_ns();
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.drain(..pos);
        pos = 0;
        body.extend_from_slice(&tmp[..n]);
    }
}

fn request_bytes(o: &Opts, idx: usize, stream: bool) -> (String, Vec<u8>) {
    let xid = format!("{}{idx:08}", o.prefix);
    let mut body = json!({
        "model": o.model,
        "messages": [{"role": "user", "content": format!("request {idx}: tell me about foxes")}],
        "max_tokens": o.max_tokens,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if o.fixture {
        let mut f = json!({});
        if let Some(t) = o.ttft_ms {
            f["ttft_ms"] = json!(t);
        }
        if let Some(t) = o.itl_ms {
            f["itl_ms"] = json!(t);
        }
        body["fixture"] = f;
    } else {
        body["ignore_eos"] = json!(true);
        body["temperature"] = json!(0);
    }
    let body = serde_json::to_vec(&body).expect("json");
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-Request-Id: {xid}\r\nContent-Length: {}\r\n\r\n",
        o.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    (xid, req)
}

async fn worker(
    o: Arc<Opts>,
    next: Arc<AtomicUsize>,
    deadline: Option<Instant>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    events: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    let mut conn: Option<Box<dyn Stream>> = None;
    let mut buf = Vec::with_capacity(65536);
    loop {
        let idx = next.fetch_add(1, Ordering::Relaxed);
        if deadline.map_or(idx >= o.requests, |d| Instant::now() >= d) {
            return;
        }
        let stream = (idx as f64 * 0.618_034).fract() < o.stream_ratio;
        let (xid, req) = request_bytes(&o, idx, stream);
        if conn.is_none() {
            let connected = match TcpStream::connect(&o.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    match &o.tls {
                        None => Ok(Box::new(s) as Box<dyn Stream>),
                        Some(tls) => {
                            let host = o.addr.rsplit_once(':').map_or(o.addr.as_str(), |(h, _)| h);
                            let name = ServerName::try_from(host.to_string()).expect("server name");
                            tls.connect(name, s).await.map(|t| Box::new(t) as Box<dyn Stream>)
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match connected {
                Ok(s) => conn = Some(s),
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let s = conn.as_deref_mut().expect("connected");
        let start_ns = mono_ns();
        match exchange(s, &req, &mut buf).await {
            Ok(out) => {
                events.fetch_add(out.events, Ordering::Relaxed);
                let line = json!({
                    "request_id": format!("chatcmpl-{xid}"),
                    "x_request_id": xid,
                    "kind": if stream { "chat_stream" } else { "chat_nostream" },
                    "path": "/v1/chat/completions",
                    "stream": stream,
                    "n": 1,
                    "status": out.status,
                    "start_ns": start_ns,
                    "first_token_ns": out.first_token_ns,
                    "end_ns": out.end_ns,
                    "ttft_s": out.first_token_ns.map(|t| (t - start_ns) as f64 / 1e9),
                    "e2e_s": (out.end_ns - start_ns) as f64 / 1e9,
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                    "output_events": out.output_events,
                    "finish_reason": out.finish_reason,
                    "aborted": false,
                    "model": o.model,
                });
                lines.lock().expect("lines").push(line.to_string());
            }
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

fn main() {
    let (o, out, summary) = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let o = Arc::new(o);
    let next = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let events = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = o.duration.map(|d| started + d);
    rt.block_on(async {
        let tasks: Vec<_> = (0..o.concurrency)
            .map(|_| {
                tokio::spawn(worker(o.clone(), next.clone(), deadline, lines.clone(), events.clone(), failures.clone()))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let lines = lines.lock().expect("lines");
    if let Some(path) = out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("--out"));
        for l in lines.iter() {
            writeln!(f, "{l}").expect("write");
        }
    }
    let ev = events.load(Ordering::Relaxed);
    let fails = failures.load(Ordering::Relaxed);
    let s = json!({"requests": lines.len(), "duration_s": secs, "req_per_s": lines.len() as f64 / secs, "events_per_s": ev as f64 / secs, "failures": fails});
    if let Some(path) = summary {
        std::fs::write(path, s.to_string()).expect("--summary-json");
    }
    eprintln!(
        "inferscope-load: {} requests in {secs:.2}s = {:.0} req/s, {:.0} SSE events/s, {fails} failures",
        lines.len(),
        lines.len() as f64 / secs,
        ev as f64 / secs
    );
    if fails > 0 {
        std::process::exit(1);
    }
}
