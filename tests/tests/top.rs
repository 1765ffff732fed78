//! `inferscope top` as a person uses it: run in a terminal (a tmux session of its own), keys
//! typed with `send-keys`, the screen read with `capture-pane`. Against the fixture server
//! under load from the Rust client: the screen must show exactly the requests the client sent,
//! the request view their bars, help its keys, and `q` must give the terminal back with a
//! summary. The same through a running daemon's control socket (`--connect`). Needs root and
//! tmux.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use inferscope_tests::*;

/// A tmux server and session of the test's own.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, cols: u16, rows: u16, command: &str) -> Tmux {
        let t = Tmux { socket: format!("inferscope-test-{name}-{}", std::process::id()) };
        let ok = Command::new("tmux")
            .args(["-L", &t.socket, "new-session", "-d", "-s", "t", "-x", &cols.to_string(), "-y", &rows.to_string()])
            .arg(command)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .status()
            .expect("tmux (apt install tmux)")
            .success();
        assert!(ok, "tmux could not start `{command}`");
        t
    }

    fn screen(&self) -> String {
        let out =
            Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"]).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t"])
            .args(keys)
            .status()
            .unwrap()
            .success();
        assert!(ok, "send-keys {keys:?}");
    }

    /// Waits until the screen satisfies `f`; returns it.
    fn wait(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..600 {
            last = self.screen();
            if f(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the screen never showed {what}; it shows:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// The REQS column of the process row of `pid` on a process screen.
fn requests_of(screen: &str, pid: u32) -> Option<u64> {
    screen.lines().find_map(|l| {
        let t: Vec<&str> = l.trim_start_matches('>').split_whitespace().collect();
        (t.first() == Some(&pid.to_string().as_str())).then(|| t.get(2)?.parse().ok()).flatten()
    })
}

/// `inferscope top ARGS`, then the exit status and a pause, so the last screen stays readable.
fn top_command(dir: &Path, args: &str) -> String {
    format!(
        "{} top {args} --refresh 0.5 --log {}/top.log; echo TOP-EXIT=$?; sleep 60",
        inferscope_bin().display(),
        dir.display()
    )
}

#[test]
fn top_shows_the_requests_the_client_sent() {
    let dir = scratch("top");
    let server = Fixture::start(&dir, &[]);
    let pid = server.proc.pid();
    let tmux = Tmux::start("top", 100, 30, &top_command(&dir, &format!("--pid {pid}")));
    let s =
        tmux.wait("the traced server's row", |s| s.contains(&format!("pid {pid} ")) && requests_of(s, pid).is_some());
    assert!(s.contains("[p]rocesses [r]equests [?]help"), "{s}");
    assert!(s.contains("TTFT50") && s.contains("TOK/S i/o"), "{s}");
    assert_eq!(requests_of(&s, pid), Some(0), "{s}");

    let truth = rust_load(&dir, &server.url(), &["--requests", "37", "--concurrency", "3", "--max-tokens", "8"]);
    assert_eq!(truth.len(), 37);
    let s = tmux.wait("37 requests", |s| requests_of(s, pid) == Some(37));
    assert!(s.contains("1 process, 37 requests"), "{s}");
    // The detail of the selected server: its model, a sparkline with traffic.
    assert!(s.contains(&format!("pid {pid} openai_compatible")), "{s}");
    assert!(s.contains("model tiny-llama"), "{s}");
    assert!(s.contains("req/s, last"), "{s}");

    // The slowest requests, with their bars (no engine here: first token, then the stream).
    tmux.keys(&["r"]);
    let s = tmux.wait("the request view", |s| s.contains("slowest of the last"));
    let rows: Vec<&str> = s.lines().filter(|l| l.trim_start().starts_with(&pid.to_string())).collect();
    assert!(rows.len() >= 10, "request rows:\n{s}");
    assert!(rows.iter().all(|r| r.contains(" 200 ") && r.contains("tiny-llama") && r.trim_end().ends_with('s')), "{s}");
    assert!(rows[0].contains("ffs") || rows[0].contains("fss"), "a bar of f then s:\n{s}");

    // Filter to nothing, then back; help; pause.
    tmux.keys(&["p", "/", "n", "o", "p", "e", "Enter"]);
    tmux.wait("an empty filter result", |s| s.contains("nothing matches the filter `nope`"));
    tmux.keys(&["Escape"]);
    tmux.wait("the row again", |s| requests_of(s, pid) == Some(37));
    tmux.keys(&["?"]);
    tmux.wait("help", |s| s.contains("Keys") && s.contains("space      pause"));
    tmux.keys(&["?", "Space"]);
    tmux.wait("paused", |s| s.contains("[PAUSED]"));
    tmux.keys(&["Space"]);

    // q gives the terminal back, with what was seen.
    tmux.keys(&["q"]);
    let s = tmux.wait("the exit", |s| s.contains("TOP-EXIT="));
    assert!(s.contains("TOP-EXIT=0"), "{s}");
    assert!(s.contains("inferscope top: 37 requests seen"), "{s}");
    let log = std::fs::read_to_string(dir.join("top.log")).unwrap();
    assert!(log.contains(&format!("tracing pid {pid} ")), "the daemon's lines go to the log:\n{log}");
}

#[test]
fn top_shows_what_a_running_daemon_sees() {
    let dir = scratch("top-connect");
    let server = Fixture::start(&dir, &[]);
    let pid = server.proc.pid();
    let sock = dir.join("ctl.sock");
    let sock_s = sock.display().to_string();
    let mut scope = Inferscope::attach(&dir, pid, &["--control-socket", &sock_s]);
    let tmux = Tmux::start("top-connect", 90, 24, &top_command(&dir, &format!("--connect {sock_s}")));
    tmux.wait("the daemon's process", |s| s.contains(&format!("daemon at {sock_s}")) && requests_of(s, pid).is_some());
    let truth = rust_load(&dir, &server.url(), &["--requests", "23", "--concurrency", "2", "--max-tokens", "4"]);
    assert_eq!(truth.len(), 23);
    let s = tmux.wait("23 requests", |s| requests_of(s, pid) == Some(23));
    assert!(s.lines().count() <= 24);
    tmux.keys(&["q"]);
    let s = tmux.wait("the exit", |s| s.contains("TOP-EXIT="));
    assert!(s.contains("TOP-EXIT=0"), "{s}");
    // The daemon goes on, untouched.
    assert!(scope.proc.alive());
    assert_eq!(scope.wait_requests(23, Duration::from_secs(10)).len(), 23);
    scope.stop();
}

#[test]
fn top_says_why_it_cannot_connect() {
    let dir = scratch("top-noconnect");
    let out = Command::new(inferscope_bin())
        .args(["top", "--connect"])
        .arg(dir.join("nobody.sock"))
        .output()
        .expect("inferscope top");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("is an inferscope daemon running here?"), "{err}");
}
