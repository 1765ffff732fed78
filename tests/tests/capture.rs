//! Socket capture completeness against a plain threaded HTTP server
//! (tests/fixtures/threaded_server.py: one blocking accept() loop, a thread per keep-alive
//! connection), with real BPF programs: a socket is learned however it appeared (an accept
//! that began before the attach, a dup()'d fd, an fd passed over a unix socket, several
//! processes accepting on one listener), and socket traffic inferscope could not classify is
//! counted, never silent. Needs root.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use inferscope_tests::*;
use serde_json::Value;

/// The threaded fixture server in `mode`, listening; returns it and its port.
fn threaded_server(dir: &Path, mode: &str) -> (Proc, u16) {
    let port_file = dir.join(format!("threaded-port-{mode}"));
    let _ = std::fs::remove_file(&port_file);
    let log = dir.join(format!("threaded-{mode}.log"));
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/fixtures/threaded_server.py"))
        .args(["--mode", mode, "--port-file"])
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut proc = Proc::spawn("threaded server", &mut cmd);
    // No request before the attach: the accept loop stays blocked in accept().
    let port = wait_for("the threaded server to listen", Duration::from_secs(30), || {
        assert!(proc.alive(), "threaded server exited: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::fs::read_to_string(&port_file).ok()?.trim().parse::<u16>().ok()
    });
    (proc, port)
}

/// Reads one HTTP/1.1 response with a Content-Length; returns its body.
fn read_response(r: &mut BufReader<TcpStream>) -> String {
    let mut len = 0usize;
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "unexpected status line {status:?}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("body");
    String::from_utf8(body).expect("utf-8 body")
}

/// `clients` keep-alive connections, each sending `per_client` GETs one after the other;
/// returns every path sent (`/c<client>/r<request>`), all answered.
fn keepalive_load(port: u16, clients: usize, per_client: usize) -> Vec<String> {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let mut sent = Vec::new();
                for i in 0..per_client {
                    let path = format!("/c{c}/r{i}");
                    write!(w, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").expect("send");
                    assert_eq!(read_response(&mut r), format!("ok {path}"));
                    sent.push(path);
                }
                sent
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("client")).collect()
}

/// Paths of the request lines inferscope wrote.
fn reported(recs: &[Value]) -> Vec<String> {
    recs.iter().filter_map(|r| r["path"].as_str().map(str::to_string)).collect()
}

/// Every path sent is reported exactly once, and nothing else is.
fn assert_all_reported(sent: &[String], recs: &[Value]) {
    let got = reported(recs);
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let have: BTreeSet<&str> = got.iter().map(String::as_str).collect();
    let missing: Vec<&&str> = want.difference(&have).collect();
    let extra: Vec<&&str> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == sent.len(),
        "{} requests sent, {} reported ({} distinct); missing {}: {:?}; never sent: {:?}",
        sent.len(),
        got.len(),
        have.len(),
        missing.len(),
        &missing[..missing.len().min(12)],
        &extra[..extra.len().min(12)]
    );
    for r in recs {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["capture_gaps"], false, "{r}");
    }
}

/// The last health line (written at the stop).
fn last_health(scope: &Inferscope) -> Value {
    scope.lines("health").pop().expect("a health line at the stop")
}

const CLIENTS: usize = 24;
const PER_CLIENT: usize = 8;

/// The accept loop was blocked in accept() when inferscope attached: the connection that
/// accept returns (its enter was never seen) is learned at the syscall's exit, like every later
/// one. Every request on every connection is reported.
#[test]
fn capture_accept_blocked_at_attach() {
    let dir = scratch("capture-accept");
    let (server, port) = threaded_server(&dir, "plain");
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let sent = keepalive_load(port, CLIENTS, PER_CLIENT);
    assert_eq!(sent.len(), CLIENTS * PER_CLIENT);
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    eprintln!("blocked accept: {} requests sent, {} reported", sent.len(), recs.len());
    assert_all_reported(&sent, &recs);
}

/// Each connection is served on `os.dup()` of the accepted socket (CPython dups with
/// `fcntl(F_DUPFD_CLOEXEC)`), and the accepted fd is closed: the copy is the same connection,
/// followed from its first byte.
#[test]
fn capture_dup_socket() {
    let dir = scratch("capture-dup");
    let (server, port) = threaded_server(&dir, "dup");
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let sent = keepalive_load(port, CLIENTS, PER_CLIENT);
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    eprintln!("dup: {} requests sent, {} reported", sent.len(), recs.len());
    assert_all_reported(&sent, &recs);
}

/// Requests are read from a `dup()` of the socket and responses written to the original:
/// both fds are one byte stream, one connection; every exchange pairs.
#[test]
fn capture_dup_split_read_write() {
    let dir = scratch("capture-split");
    let (server, port) = threaded_server(&dir, "split");
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let sent = keepalive_load(port, CLIENTS, PER_CLIENT);
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    eprintln!("split: {} requests sent, {} reported", sent.len(), recs.len());
    assert_all_reported(&sent, &recs);
}
