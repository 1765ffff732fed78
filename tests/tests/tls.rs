//! HTTPS servers: request, SSE and tokens read from the server's OpenSSL (uprobes on
//! SSL_read/SSL_write, tied to sockets by SSL_do_handshake and the socket syscalls), as exact as
//! plain HTTP. Real servers over the system's libssl.so.3: the OpenAI fixture on uvicorn with
//! uvloop and with asyncio (memory BIOs: the event loop moves the ciphertext), and a blocking
//! threaded server (socket BIOs: OpenSSL makes the syscalls), read one byte at a time, and with
//! connections whose handshake came before the attach. Needs root.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use inferscope_tests::*;
use serde_json::Value;

fn cert() -> (String, String) {
    let d = repo_root().join("tests/data/tls");
    (d.join("cert.pem").display().to_string(), d.join("key.pem").display().to_string())
}

/// The last health line (written at the stop).
fn last_health(scope: &Inferscope) -> Value {
    scope.lines("health").pop().expect("a health line at the stop")
}

/// The OpenAI fixture over HTTPS on event loop `lp`, every kind of request: each reported with
/// the client's token counts and times, marked TLS.
fn openai_over_tls(lp: &str, requests: usize) {
    let dir = scratch(&format!("tls-openai-{lp}"));
    let (cert, key) = cert();
    let http = if lp == "asyncio" { "h11" } else { "httptools" };
    let server = Fixture::start(&dir, &["--ssl-keyfile", &key, "--ssl-certfile", &cert, "--loop", lp, "--http", http]);
    assert!(server.url().starts_with("https://"));
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &[]);
    let n = requests.to_string();
    let truth = loadgen(
        &dir,
        &server.url(),
        &["--requests", &n, "--concurrency", "8", "--mix", "all", "--usage-ratio", "0.5", "--seed", "11"],
    );
    assert_eq!(truth.len(), requests);
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(30));
    let err = scope.stop();
    assert!(err.contains("TLS from libssl"), "the TLS probes were not attached:\n{err}");
    let (mut ttft, mut e2e) = compare_with_client(&truth, &recs);
    let (ttft_med, ttft_max) = stats(&mut ttft);
    let (e2e_med, e2e_max) = stats(&mut e2e);
    eprintln!(
        "HTTPS on {lp}: {} requests; |TTFT - client| median {:.2} ms max {:.2} ms; |e2e - client| median {:.2} ms max {:.2} ms",
        recs.len(),
        ttft_med * 1e3,
        ttft_max * 1e3,
        e2e_med * 1e3,
        e2e_max * 1e3
    );
    assert!(ttft.len() > requests / 3, "too few streams with a first token: {}", ttft.len());
    assert!(ttft_med < 0.003 && e2e_med < 0.003, "medians too far from the client's: ttft {ttft_med}, e2e {e2e_med}");
    assert!(
        ttft_max < 0.025 && e2e_max < 0.025,
        "worst case too far from the client's: ttft {ttft_max}, e2e {e2e_max}"
    );
    for r in &recs {
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["capture_gaps"], false, "{r}");
    }
    // Plaintext only: nothing of the ciphertext reached a parser, every call found its socket.
    let h = last_health(&scope);
    assert_eq!(h["unparsed_bytes"], 0, "{h}");
    assert_eq!(h["parse_errors"], serde_json::json!({}), "{h}");
    assert_eq!(h["tls"]["calls_without_socket"], 0, "{h}");
    assert_eq!(h["tls"]["unread_connections"], 0, "{h}");
    let conns = h["tls"]["connections"].as_u64().unwrap_or(0);
    assert!(conns >= 8, "{h}");
    // One tie per connection (more only where a handshake step was first tied elsewhere).
    assert!(h["tls"]["tied"].as_u64().unwrap_or(0) >= conns, "{h}");
}

/// uvicorn on uvloop, vLLM's and SGLang's stack with `--ssl-keyfile/--ssl-certfile`. uvloop
/// reads a connection's first request some time after the read that brought it (other
/// connections' reads come between): the handshake ties the object to its socket.
#[test]
fn openai_server_over_https_uvloop() {
    openai_over_tls("uvloop", 200);
}

/// The same server on asyncio's own event loop and SSL protocol.
#[test]
fn openai_server_over_https_asyncio() {
    openai_over_tls("asyncio", 80);
}

/// The threaded fixture server over TLS (`--tls-cert`), with more arguments.
fn threaded_tls_server(dir: &Path, extra: &[&str]) -> (Proc, u16) {
    let (cert, key) = cert();
    let port_file = dir.join("threaded-tls-port");
    let _ = std::fs::remove_file(&port_file);
    let log = dir.join("threaded-tls.log");
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/fixtures/threaded_server.py"))
        .args(["--tls-cert", &cert, "--tls-key", &key, "--port-file"])
        .arg(&port_file)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut proc = Proc::spawn("threaded TLS server", &mut cmd);
    let port = wait_for("the threaded TLS server to listen", Duration::from_secs(30), || {
        assert!(proc.alive(), "threaded TLS server exited: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::fs::read_to_string(&port_file).ok()?.trim().parse::<u16>().ok()
    });
    (proc, port)
}

/// tests/fixtures/tls_client.py; with `pause`, each connection's first request, then the
/// pause (the returned client runs on; `go` lets it finish).
fn tls_client(dir: &Path, port: u16, clients: usize, requests: usize, pause: bool, extra: &[&str]) -> (Proc, PathBuf) {
    let out = dir.join("tls-client.json");
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/fixtures/tls_client.py"))
        .args(["--port", &port.to_string(), "--clients", &clients.to_string(), "--requests", &requests.to_string()])
        .args(extra)
        .arg("--out")
        .arg(&out);
    if pause {
        cmd.arg("--ready-file").arg(dir.join("ready")).arg("--go-file").arg(dir.join("go"));
    }
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("tls-client.log")).expect("log"));
    (Proc::spawn("TLS client", &mut cmd), out)
}

/// Waits for the client to finish; returns (paths sent before the pause, after it, its whole
/// report).
fn client_result(mut client: Proc, out: &Path) -> (Vec<String>, Vec<String>, Value) {
    assert!(client.wait_for_exit(Duration::from_secs(60)), "the TLS client did not finish");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out).expect("client output")).expect("json");
    assert_eq!(v["errors"], serde_json::json!([]), "client errors: {v}");
    let list = |k: &str| -> Vec<String> {
        v[k].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_string)).collect()
    };
    (list("before"), list("after"), v)
}

/// Every path in `sent` reported exactly once over TLS, complete, and nothing else.
fn assert_reported(sent: &[String], recs: &[Value]) {
    let got: Vec<&str> = recs.iter().filter_map(|r| r["path"].as_str()).collect();
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let have: BTreeSet<&str> = got.iter().copied().collect();
    assert!(
        want == have && got.len() == sent.len(),
        "{} sent, {} reported; missing {:?}; never sent (or twice): {:?}",
        sent.len(),
        got.len(),
        want.difference(&have).take(10).collect::<Vec<_>>(),
        got.iter().filter(|p| !want.contains(**p)).take(10).collect::<Vec<_>>()
    );
    for r in recs {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["complete"], true, "{r}");
        assert_eq!(r["capture_gaps"], false, "{r}");
    }
}

/// A blocking server whose OpenSSL reads from the socket itself, one byte per SSL_read: every
/// request is reassembled from 1-byte plaintext reads, as from a plain socket.
#[test]
fn blocking_tls_server_reading_a_byte_at_a_time() {
    let dir = scratch("tls-bytewise");
    let (server, port) = threaded_tls_server(&dir, &["--unbuffered"]);
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let (client, out) = tls_client(&dir, port, 6, 8, false, &[]);
    let (_, sent, _) = client_result(client, &out);
    assert_eq!(sent.len(), 48);
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    assert_reported(&sent, &recs);
    let h = last_health(&scope);
    assert_eq!(h["tls"]["connections"], 6, "{h}");
    assert_eq!(h["tls"]["unread_connections"], 0, "{h}");
    assert_eq!(h["unparsed_bytes"], 0, "{h}");
}

/// TLS 1.2 and TLS 1.3, each with sessions resumed on later connections (abbreviated
/// handshakes): every request of every connection is reported.
#[test]
fn tls12_tls13_and_resumed_sessions() {
    let dir = scratch("tls-versions");
    let (server, port) = threaded_tls_server(&dir, &[]);
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let mut sent = Vec::new();
    for version in ["1.2", "1.3"] {
        let (client, out) =
            tls_client(&dir, port, 3, 12, false, &["--tls-max", version, "--connections", "4", "--resume"]);
        let (_, paths, v) = client_result(client, &out);
        assert_eq!(paths.len(), 36);
        assert_eq!(v["versions"], serde_json::json!([format!("TLSv{version}")]), "{v}");
        // 3 clients x 3 later connections, resumed (the case under test happened).
        assert_eq!(v["reconnections"], 9, "{v}");
        assert!(v["resumed"].as_u64().unwrap_or(0) >= 6, "sessions were not resumed: {v}");
        sent.extend(paths);
        // The same paths again under the other version: keep them apart.
        std::fs::rename(&out, dir.join(format!("tls-client-{version}.json"))).expect("rename");
    }
    // Paths repeat across the two versions: compare as a multiset.
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    let mut got: Vec<&str> = recs.iter().filter_map(|r| r["path"].as_str()).collect();
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    for r in &recs {
        assert_eq!(
            (r["status"].as_u64(), r["tls"].as_bool(), r["capture_gaps"].as_bool()),
            (Some(200), Some(true), Some(false)),
            "{r}"
        );
    }
    let h = last_health(&scope);
    assert_eq!(h["tls"]["connections"], 24, "{h}");
    assert_eq!(h["tls"]["unread_connections"], 0, "{h}");
}

/// Connections whose handshake happened before the attach: their sockets are learned from
/// /proc, their next records show they carry TLS, and their SSL objects are tied at their next
/// read. What they send from then on is reported; nothing from before is invented.
#[test]
fn tls_connections_open_before_the_attach() {
    let dir = scratch("tls-before-attach");
    let (server, port) = threaded_tls_server(&dir, &[]);
    let (client, out) = tls_client(&dir, port, 4, 6, true, &[]);
    wait_for("the TLS clients' first requests", Duration::from_secs(30), || dir.join("ready").exists().then_some(()));
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    std::fs::write(dir.join("go"), "go\n").expect("go file");
    let (before, after, _) = client_result(client, &out);
    assert_eq!((before.len(), after.len()), (4, 20));
    scope.wait_requests(after.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    assert_reported(&after, &recs);
    let h = last_health(&scope);
    assert_eq!(h["tls"]["connections"], 4, "{h}");
    assert_eq!(h["tls"]["tied"], 4, "{h}");
}

/// A C server with OpenSSL linked into the program (no libssl.so mapped), calling the classic
/// SSL_accept/SSL_read/SSL_write: the functions are found by the program's symbol table.
#[test]
fn openssl_linked_into_the_program() {
    let dir = scratch("tls-static");
    let exe = dir.join("static_server");
    let ok = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(repo_root().join("tests/fixtures/tls/static_server.c"))
        .args(["-Wl,-Bstatic", "-lssl", "-lcrypto", "-Wl,-Bdynamic", "-lpthread", "-ldl"])
        .status()
        .expect("cc (apt install gcc libssl-dev)");
    assert!(ok.success(), "building the static OpenSSL server failed (apt install libssl-dev)");
    let maps_libssl =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().contains("libssl");
    let (cert, key) = cert();
    let port_file = dir.join("port");
    let mut cmd = Command::new(&exe);
    cmd.args([&cert, &key])
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).expect("log"));
    let mut server = Proc::spawn("static TLS server", &mut cmd);
    let port = wait_for("the static TLS server to listen", Duration::from_secs(30), || {
        assert!(
            server.alive(),
            "static TLS server exited: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::fs::read_to_string(&port_file).ok()?.trim().parse::<u16>().ok()
    });
    assert!(!maps_libssl(server.pid()), "the server maps a shared libssl: not the case under test");
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let (client, out) = tls_client(&dir, port, 4, 10, false, &[]);
    let (_, sent, _) = client_result(client, &out);
    assert_eq!(sent.len(), 40);
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    let err = scope.stop();
    assert!(err.contains("functions in static_server"), "OpenSSL not found in the program:\n{err}");
    assert_reported(&sent, &scope.requests());
}

/// Without the TLS probes (`--no-tls`) an HTTPS server's requests cannot be read: none is
/// invented from ciphertext, and the operator is told why in one line.
#[test]
fn without_tls_probes_the_operator_is_told() {
    let dir = scratch("tls-off");
    let (server, port) = threaded_tls_server(&dir, &[]);
    let mut scope = Inferscope::attach(&dir, server.pid(), &["--no-tls"]);
    let (client, out) = tls_client(&dir, port, 3, 4, false, &[]);
    let (_, sent, _) = client_result(client, &out);
    assert_eq!(sent.len(), 12);
    let h = wait_for("the closed TLS connections to be counted", Duration::from_secs(30), || {
        scope.lines("health").pop().filter(|h| h["tls"]["unread_connections"] == 3)
    });
    let err = scope.stop();
    assert!(scope.requests().is_empty(), "requests reported from ciphertext: {:?}", scope.requests());
    assert_eq!(h["unparsed_bytes"], 0, "{h}");
    assert!(
        err.contains("3 TLS connections closed with no plaintext seen"),
        "the operator was not told why HTTPS requests are missing:\n{err}"
    );
}
