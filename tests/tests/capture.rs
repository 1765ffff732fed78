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
    let h = last_health(&scope);
    // The one accept in progress at the attach was learned from its exit.
    assert_eq!(h["accepts_without_enter"], 1, "{h}");
    // Every byte went through traced syscalls on known sockets: nothing unclassified.
    assert_eq!(h["unclassified_socket_io"], 0, "{h}");
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
    let h = last_health(&scope);
    assert_eq!(h["dups_followed"], CLIENTS, "{h}");
    assert_eq!(h["unclassified_socket_io"], 0, "{h}");
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

/// One keep-alive connection.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Client { w: s.try_clone().expect("clone"), r: BufReader::new(s) }
    }
    /// GET `path`; the server answers `ok <path>`.
    fn get(&mut self, path: &str) {
        write!(self.w, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        assert_eq!(read_response(&mut self.r), format!("ok {path}"));
    }
}

/// The accept loop hands each connection to a worker process over a unix socket
/// (`SCM_RIGHTS`) and closes its copy: the worker's fd was never accepted, connected or dup'd
/// there. Its traffic shows up as unclassified socket I/O (counted, said once on stderr),
/// inferscope looks in /proc and learns the socket; from then on every request is reported.
#[test]
fn capture_fd_passed_to_worker() {
    let dir = scratch("capture-fdpass");
    let (server, port) = threaded_server(&dir, "fdpass");
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(port)).collect();
    // Until inferscope has learned a connection its requests are lost (counted): probe each
    // until one of its probes is reported.
    let mut probes = 0usize;
    for (c, client) in clients.iter_mut().enumerate() {
        wait_for(&format!("connection {c} to be learned"), Duration::from_secs(30), || {
            probes += 1;
            client.get(&format!("/c{c}/probe{probes}"));
            let prefix = format!("/c{c}/probe");
            scope.requests().iter().any(|r| r["path"].as_str().is_some_and(|p| p.starts_with(&prefix))).then_some(())
        });
    }
    let mut sent = Vec::new();
    for i in 0..PER_CLIENT {
        for (c, client) in clients.iter_mut().enumerate() {
            let path = format!("/c{c}/r{i}");
            client.get(&path);
            sent.push(path);
        }
    }
    drop(clients);
    let probed = scope.requests().len();
    scope.wait_requests(probed + sent.len(), Duration::from_secs(20));
    let err = scope.stop();
    let recs: Vec<Value> =
        scope.requests().into_iter().filter(|r| !r["path"].as_str().unwrap_or("").contains("/probe")).collect();
    eprintln!(
        "fd passing: {probes} probes for {CLIENTS} connections; {} requests sent after, {} reported",
        sent.len(),
        recs.len()
    );
    assert_all_reported(&sent, &recs);
    let h = last_health(&scope);
    assert!(h["unclassified_socket_io"].as_u64().is_some_and(|n| n > 0), "{h}");
    // Said once, for the worker.
    let said = err.lines().filter(|l| l.contains("that capture did not see")).count();
    assert_eq!(said, 1, "{err}");
    let pids: BTreeSet<u64> = recs.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert!(!pids.contains(&u64::from(server.pid())), "served by the worker, not the accept loop: {pids:?}");
}

/// Pre-fork: two worker processes inherited one listening socket and each blocks in its own
/// accept() when inferscope attaches. Every request is reported, from both processes' accepts.
#[test]
fn capture_prefork_shared_listener() {
    let dir = scratch("capture-prefork");
    let (server, port) = threaded_server(&dir, "prefork");
    let pid = server.pid();
    let workers: Vec<u32> = wait_for("the two workers", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let w: Vec<u32> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        (w.len() == 2).then_some(w)
    });
    // Clients only once inferscope traces the workers too: an accept that returns in a process
    // not traced yet is not inferscope's to see.
    let args: Vec<String> = ["attach", "--pid", &pid.to_string(), "--quiet"].iter().map(|s| s.to_string()).collect();
    let mut scope = Inferscope::start(&dir, &args, &[pid, workers[0], workers[1]]);
    let sent = keepalive_load(port, CLIENTS, PER_CLIENT);
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    eprintln!("prefork: {} requests sent, {} reported", sent.len(), recs.len());
    assert_all_reported(&sent, &recs);
    let h = last_health(&scope);
    // Both workers were blocked in accept() at the attach.
    assert!(h["accepts_without_enter"].as_u64().is_some_and(|n| n >= 2), "{h}");
}

/// Requests whose head is longer than what is captured of a read (4096 bytes from its start and
/// 1024 from its end by default): a 10 KB cookie, and 70 KB of headers over seven lines. Each
/// is reported with its method and path, marked `head_truncated`, and counted; the requests
/// around them on the same keep-alive connections are whole.
#[test]
fn requests_behind_large_headers_are_reported_and_marked() {
    let dir = scratch("capture-large-head");
    let (server, port) = threaded_server(&dir, "plain");
    let mut scope = Inferscope::attach(&dir, server.pid(), &[]);
    let line = |n: usize| "x".repeat(n);
    let threads: Vec<_> = (0..4)
        .map(|c| {
            let (cookie, big) = (line(10 * 1024), line(10 * 1024));
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let mut sent = Vec::new();
                for i in 0..6 {
                    let path = format!("/c{c}/r{i}");
                    let extra = match i % 3 {
                        0 => String::new(),
                        1 => format!("Cookie: session={cookie}\r\n"),
                        _ => (0..7).map(|k| format!("X-Big-{k}: {big}\r\n")).collect(),
                    };
                    write!(w, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Accept: */*\r\n\r\n")
                        .expect("send");
                    assert_eq!(read_response(&mut r), format!("ok {path}"));
                    sent.push((path, i % 3 != 0));
                }
                sent
            })
        })
        .collect();
    let sent: Vec<(String, bool)> = threads.into_iter().flat_map(|t| t.join().expect("client")).collect();
    scope.wait_requests(sent.len(), Duration::from_secs(20));
    scope.stop();
    let recs = scope.requests();
    let paths: Vec<String> = sent.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(reported(&recs).len(), sent.len(), "{} sent, {} reported", sent.len(), recs.len());
    let by_path: std::collections::HashMap<&str, &Value> =
        recs.iter().filter_map(|r| Some((r["path"].as_str()?, r))).collect();
    for (path, big) in &sent {
        let r = by_path.get(path.as_str()).unwrap_or_else(|| panic!("{path} not reported; have {paths:?}"));
        assert_eq!((r["method"].as_str(), &r["status"]), (Some("GET"), &Value::from(200)), "{r}");
        assert_eq!(r["head_truncated"], *big, "{path}: {r}");
        assert!(r["e2e_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    }
    let truncated = sent.iter().filter(|(_, big)| *big).count() as u64;
    let h = last_health(&scope);
    eprintln!("large heads: {} requests, {truncated} with heads past the capture; health {}", sent.len(), h);
    assert_eq!(h["head_truncated_requests"], truncated, "{h}");
}
