//! Run-time control of a running daemon (`inferscope ctl` over its control socket), as an
//! operator uses it: every layer switched off and on while a real server is under load, with
//! the kernel's own list of BPF links as the judge of "detached" (what `bpftool link list`
//! shows), requests counted only while request capture is on and none lost while it is on, the
//! Python timer YAML reloaded (a changed file times the new function; a broken one is refused
//! with its line and column and the old timers keep working), and the device layer's uprobes on
//! a stand-in CUDA driver gone and back. Needs root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use inferscope_tests::*;
use serde_json::Value;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// `inferscope ctl --socket S ARGS...`: (exit status ok, stdout, stderr).
fn ctl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(inferscope_bin()).arg("ctl").arg("--socket").arg(socket).args(args).output().expect("ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a ctl command that must succeed; returns what it printed.
fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let (ok, out, err) = ctl(socket, args);
    assert!(ok, "inferscope ctl {args:?} failed:\n{out}{err}");
    out
}

/// `inferscope ctl status --json`'s status object.
fn status(socket: &Path) -> Value {
    let out = ctl_ok(socket, &["--json", "status"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{out}"));
    assert_eq!(v["ok"], true, "{v}");
    v["status"].clone()
}

fn layer<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["layers"].as_array().unwrap().iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no layer {name}: {s}"))
}

fn counter(s: &Value, name: &str, c: &str) -> u64 {
    layer(s, name)["counters"][c].as_u64().unwrap_or_else(|| panic!("no counter {name}.{c}: {s}"))
}

/// The daemon's links to the programs a layer runs (names as the kernel keeps them, 15 bytes).
fn links_of(scope: &Inferscope, layer: &str) -> usize {
    let of = |n: &str| match layer {
        // Socket syscalls, socket lengths and TCP arrival times; not the mmap follow.
        "requests" => (n.starts_with("sys_") && !n.contains("mmap")) || n.starts_with("sock_") || n.starts_with("tcp_"),
        "timers" => n == "py_call",
        "profile" => n == "py_sample",
        "device" => n.starts_with("device_") || n.contains("mmap"),
        _ => false,
    };
    bpf_links(scope.proc.pid()).iter().filter(|n| of(n)).count()
}

fn timer_yaml(function: &str) -> String {
    format!("- symbol: __main__:{function}\n  metrics:\n    - type: timer\n")
}

/// Calls of `function` the daemon wrote that began in [from, to) (monotonic ns).
fn calls(scope: &Inferscope, function: &str, from: u64, to: u64) -> usize {
    scope
        .lines("python_call")
        .iter()
        .filter(|c| c["function"] == function)
        .filter(|c| c["start_ns"].as_u64().is_some_and(|t| t >= from && t < to))
        .count()
}

/// The fixture server (a real uvicorn/FastAPI process on CPython) under steady keep-alive load
/// from the Rust client: request capture (and the engine layer with it), the Python timers, the
/// rolling profiler, the launch-site and engine-state readers each switched off and on again.
#[test]
fn every_layer_switches_off_and_on_under_load() {
    let dir = scratch("control");
    let server = Fixture::start(&dir, &[]);
    let yaml = dir.join("timers.yaml");
    fs::write(&yaml, timer_yaml("finish_stats")).unwrap();
    let sock = dir.join("run/ctl.sock");
    let (sock_s, yaml_s) = (sock.display().to_string(), yaml.display().to_string());
    let mut scope = Inferscope::attach(
        &dir,
        server.proc.pid(),
        &["--control-socket", &sock_s, "--python-timers", &yaml_s, "--python-profile-rate", "19"],
    );
    let err = fs::read_to_string(&scope.stderr).unwrap();
    assert!(err.contains(&format!("control socket at {sock_s}")), "{err}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the control socket must be the daemon user's alone");
        let dmode = fs::metadata(sock.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700, "the directory inferscope made for it");
    }
    wait_for("the timer's breakpoints", Duration::from_secs(30), || {
        fs::read_to_string(&scope.stderr).unwrap().contains("timing finish_stats").then_some(())
    });

    let s = status(&sock);
    let names: Vec<String> =
        s["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_string()).collect();
    for want in ["requests", "engine", "timers", "profile", "sites", "engine_state"] {
        assert!(names.iter().any(|n| n == want), "layer {want} missing from {names:?}");
    }
    assert!(s["layers"].as_array().unwrap().iter().all(|l| l["on"] == true), "{s}");
    assert_eq!(s["processes"][0]["pid"], server.proc.pid());
    let tp = s["tracepoints"].as_array().unwrap().iter().find(|t| t["group"] == "sockets").unwrap().clone();
    assert!(tp["total"].as_u64().unwrap() >= 30 && tp["attached"] == tp["total"], "{tp}");
    let socket_links = links_of(&scope, "requests");
    assert_eq!(socket_links as u64, tp["total"].as_u64().unwrap(), "kernel links of the socket programs");
    assert!(links_of(&scope, "timers") > 0 && links_of(&scope, "profile") > 0, "breakpoint and sampler links");
    // Every layer runs from one loaded BPF object: each map exists once in the daemon (the
    // timers and the sampler each loaded a copy of their own before, every map included).
    let maps = bpf_maps(scope.proc.pid());
    for name in ["SOCKETS", "ARRIVALS", "EVENTS", "PY_LAYOUTS", "PY_TSTATES"] {
        assert_eq!(maps.iter().filter(|m| *m == name).count(), 1, "map {name} in the daemon: {maps:?}");
    }
    // The table a person reads.
    let table = ctl_ok(&sock, &["status"]);
    assert!(table.contains("requests") && table.contains(&format!("{}", server.proc.pid())), "{table}");

    // Steady load for the whole test: 4 keep-alive connections, 8-token streams.
    let (d2, url) = (dir.clone(), server.url());
    let load = std::thread::spawn(move || {
        rust_load(&d2, &url, &["--duration", "16", "--concurrency", "4", "--max-tokens", "8", "--itl-ms", "2"])
    });
    std::thread::sleep(Duration::from_secs(3));

    // Request capture off: the engine layer, which reads its IPC, goes off with it.
    let off0 = mono_ns();
    let said = ctl_ok(&sock, &["disable", "requests"]);
    let off1 = mono_ns();
    assert!(said.contains("requests off") && said.contains("engine off"), "{said}");
    let s = status(&sock);
    assert_eq!(layer(&s, "requests")["on"], false);
    assert_eq!(layer(&s, "engine")["on"], false);
    assert_eq!(links_of(&scope, "requests"), 0, "socket tracepoints still linked in the kernel");
    let reported_off = counter(&s, "requests", "requests_reported");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counter(&status(&sock), "requests", "requests_reported"), reported_off, "counted while off");
    let on0 = mono_ns();
    let said = ctl_ok(&sock, &["enable", "requests"]);
    let on1 = mono_ns();
    assert!(said.contains("requests on"), "{said}");
    assert_eq!(links_of(&scope, "requests"), socket_links, "socket tracepoints back in the kernel");
    ctl_ok(&sock, &["enable", "engine"]);

    // Timers: a changed YAML times the new function from the reload on.
    std::thread::sleep(Duration::from_secs(2));
    fs::write(&yaml, timer_yaml("fixture_of")).unwrap();
    let r0 = mono_ns();
    let said = ctl_ok(&sock, &["reload"]);
    let r1 = mono_ns();
    assert!(said.contains("1 function(s)") && said.contains("1 CPython"), "{said}");
    std::thread::sleep(Duration::from_secs(2));
    // A broken one is refused with its line and column; the old timers go on.
    fs::write(&yaml, "- symbol: __main__:finish_stats\n  metrics: [ {type: timer\n").unwrap();
    let (ok, out, e) = ctl(&sock, &["reload"]);
    let b1 = mono_ns();
    assert!(!ok, "a broken YAML was accepted: {out}");
    assert!(e.contains("line 3 column 1") && e.contains("nothing changed"), "{e}");
    std::thread::sleep(Duration::from_secs(2));
    let b2 = mono_ns();

    // Every other layer: off means its links are gone and its work stops; on brings them back.
    for name in ["timers", "profile", "sites", "engine_state"] {
        let before = links_of(&scope, name);
        ctl_ok(&sock, &["disable", name]);
        assert_eq!(layer(&status(&sock), name)["on"], false, "{name}");
        assert_eq!(links_of(&scope, name), 0, "{name}: links left in the kernel");
        let (ok, out, _) = ctl(&sock, &["disable", name]);
        assert!(ok && out.contains("already off"), "{name}: {out}");
        ctl_ok(&sock, &["enable", name]);
        assert_eq!(layer(&status(&sock), name)["on"], true, "{name}");
        if before > 0 {
            wait_for(&format!("{name}'s links back"), Duration::from_secs(20), || {
                (links_of(&scope, name) == before).then_some(())
            });
        }
    }
    // A name that is not there is refused with what there is.
    let (ok, _, e) = ctl(&sock, &["disable", "gpu"]);
    assert!(!ok && e.contains("no layer `gpu`") && e.contains("requests"), "{e}");

    let truth = load.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let recs = scope.requests();
    assert!(truth.len() > 100, "the load ran: {} requests", truth.len());
    let (mut before, mut during, mut after) = (0, 0, 0);
    for t in &truth {
        let start = t["start_ns"].as_u64().unwrap();
        let end = start + (t["e2e_s"].as_f64().unwrap() * 1e9) as u64;
        let found = by_id(&recs, t["request_id"].as_str().unwrap()).is_some();
        if end < off0 {
            assert!(found, "lost while on (before the switch): {t}");
            before += 1;
        } else if start > off1 && end < on0 {
            assert!(!found, "reported while request capture was off: {t}");
            during += 1;
        } else if start > on1 {
            assert!(found, "lost after request capture came back: {t}");
            after += 1;
        }
    }
    assert!(before > 20 && during > 20 && after > 20, "requests before/while off/after: {before}/{during}/{after}");

    // The old timer until the reload, the new one after it, through the refused reload.
    assert!(calls(&scope, "finish_stats", 0, r0) > 10, "finish_stats timed before the reload");
    assert_eq!(calls(&scope, "finish_stats", r1, u64::MAX), 0, "finish_stats still timed after the reload");
    assert!(calls(&scope, "fixture_of", r1, b1) > 10, "fixture_of timed after the reload");
    assert!(calls(&scope, "fixture_of", b1, b2) > 10, "the timers stopped after a refused reload");

    // The timers, the sampler and the launch sites share the object's Python maps: with the
    // other two off (their entries for the server let go), the timers still read its frames.
    ctl_ok(&sock, &["disable", "profile"]);
    ctl_ok(&sock, &["disable", "sites"]);
    let (o0, url) = (mono_ns(), server.url());
    rust_load(&dir, &url, &["--duration", "3", "--concurrency", "2", "--max-tokens", "4"]);
    std::thread::sleep(Duration::from_secs(1));
    let o1 = mono_ns();
    assert!(calls(&scope, "fixture_of", o0, o1) > 10, "the timers stopped when the profile and sites layers went off");
    let err = scope.stop();
    assert!(err.contains("; requests off: ") && err.contains("control: reloaded"), "said on stderr:\n{err}");
    assert!(!sock.exists(), "the socket file outlived the daemon");
}

fn build_device(dir: &Path) -> PathBuf {
    let src = repo_root().join("tests/fixtures/device");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(src.join("stub_cuda.c"))
        .arg("-Wl,-soname,libcuda.so.1")
        .status()
        .expect("cc (apt install gcc)");
    assert!(st.success());
    let exe = dir.join("device_fixture");
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(src.join("device_fixture.c"))
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("cc");
    assert!(st.success());
    exe
}

/// Syncs the daemon reported in device lines written in [from, to) (Unix ns).
fn syncs(scope: &Inferscope, from: u64, to: u64) -> u64 {
    scope
        .lines("device")
        .iter()
        .filter(|l| l["ts_ns"].as_u64().is_some_and(|t| t >= from && t < to))
        .map(|l| l["syncs"].as_u64().unwrap_or(0))
        .sum()
}

/// A process synchronising a stream of the stand-in CUDA driver in a loop: the device layer
/// off drops its uprobe links (the kernel's list says so) and its counts stop; a probe group
/// off detaches that group only; on again, the library is probed again and counts resume.
#[test]
fn device_probes_are_detached_and_attached_again() {
    let dir = scratch("control-device");
    let exe = build_device(&dir);
    let fx = dir.join("ctl");
    fs::create_dir_all(&fx).unwrap();
    let fixture = Proc::spawn("device_fixture", Command::new(&exe).arg(&dir).arg(&fx).args(["hot", "30", "sync"]));
    let sock = dir.join("ctl.sock");
    let sock_s = sock.display().to_string();
    let mut scope = Inferscope::attach(
        &dir,
        fixture.pid(),
        &["--control-socket", &sock_s, "--device-interval", "0.25", "--device-overhead-budget", "0"],
    );
    fs::write(fx.join("go1"), b"").unwrap();
    wait_for("probes on the stand-in driver", Duration::from_secs(30), || {
        fs::read_to_string(&scope.stderr).unwrap().contains(" in libcuda.so.1").then_some(())
    });
    fs::write(fx.join("go2"), b"").unwrap();
    let links = links_of(&scope, "device");
    assert!(links >= 2, "uprobe links and the mmap follow: {links}");
    wait_for("syncs counted", Duration::from_secs(10), || (syncs(&scope, 0, u64::MAX) > 0).then_some(()));
    let s = status(&sock);
    assert!(counter(&s, "device", "probes_sync") > 0, "{s}");

    // One group off: its probes go, the layer stays.
    let said = ctl_ok(&sock, &["disable", "device.sync"]);
    assert!(said.contains("device.sync off"), "{said}");
    let s = status(&sock);
    assert_eq!(counter(&s, "device", "probes_sync"), 0, "{s}");
    assert_eq!(layer(&s, "device")["on"], true);
    let groups = layer(&s, "device")["groups"].as_array().unwrap().clone();
    assert!(groups.iter().any(|g| g[0] == "sync" && g[1] == false), "{groups:?}");
    let g0 = unix_ns();
    std::thread::sleep(Duration::from_secs(3));
    let g1 = unix_ns();
    ctl_ok(&sock, &["enable", "device.sync"]);
    wait_for("sync probes back", Duration::from_secs(20), || {
        (counter(&status(&sock), "device", "probes_sync") > 0).then_some(())
    });

    // The whole layer off: every uprobe link and the mmap follow leave the kernel.
    ctl_ok(&sock, &["disable", "device"]);
    let off = unix_ns();
    // Links are dropped on a thread of their own (each waits for an RCU grace period).
    wait_for("device links out of the kernel", Duration::from_secs(10), || {
        (links_of(&scope, "device") == 0).then_some(())
    });
    assert_eq!(counter(&status(&sock), "device", "probes_attached"), 0);
    std::thread::sleep(Duration::from_secs(3));
    let on = unix_ns();
    ctl_ok(&sock, &["enable", "device"]);
    wait_for("device links back", Duration::from_secs(20), || (links_of(&scope, "device") == links).then_some(()));
    let back = unix_ns();
    wait_for("syncs counted again", Duration::from_secs(10), || (syncs(&scope, back, u64::MAX) > 0).then_some(()));
    // Lines written well after the switch (an interval, and records of calls made before it
    // still in the ring buffer of a loaded machine) hold no call made while it was off.
    let margin = 1_500_000_000;
    assert_eq!(syncs(&scope, g0 + margin, g1), 0, "syncs counted while device.sync was off");
    assert_eq!(syncs(&scope, off + margin, on), 0, "syncs counted while the device layer was off");
    fs::write(fx.join("go3"), b"").unwrap();
    drop(fixture);
    let _ = scope.stop();
}

/// `inferscope ctl --url --token-file` against the daemon's Prometheus server (what a
/// `kubectl port-forward` reaches): the right token switches a layer (links gone and back), a
/// wrong or missing one is refused with 401 and changes nothing, and without
/// --control-token-file there is no /control at all.
#[test]
fn control_over_http_needs_the_token() {
    let dir = scratch("control-http");
    let server = Fixture::start(&dir, &[]);
    let token = dir.join("token");
    fs::write(&token, "7f3a9c2e5b1d4f6a8e0c2b4d6f8a1c3e\n").unwrap();
    let wrong = dir.join("wrong");
    fs::write(&wrong, "7f3a9c2e5b1d4f6a8e0c2b4d6f8a1c3f\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let scope = Inferscope::attach(
        &dir,
        server.proc.pid(),
        &["--control-socket", "off", "--prometheus-listen", &listen, "--control-token-file", token.to_str().unwrap()],
    );
    let url = format!("http://{listen}");
    let http_ctl = |tok: &Path, args: &[&str]| {
        let out = Command::new(inferscope_bin())
            .args(["ctl", "--url", &url, "--token-file"])
            .arg(tok)
            .args(args)
            .output()
            .expect("ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = http_ctl(&token, &["--json", "status"]);
    assert!(ok, "{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["status"]["processes"][0]["pid"], server.proc.pid(), "{s}");
    let socket_links = links_of(&scope, "requests");
    assert!(socket_links > 0);

    // A wrong token: refused, nothing switched.
    let (ok, out) = http_ctl(&wrong, &["disable", "requests"]);
    assert!(!ok && out.contains("wrong or missing bearer token"), "{out}");
    assert_eq!(links_of(&scope, "requests"), socket_links);
    // No token, or a GET: refused by the server itself.
    let (code, body) = http_get(port, "/control").unwrap();
    assert_eq!(code, 405, "{body}");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    let req = r#"{"cmd":"disable","name":"requests"}"#;
    write!(c, "POST /control HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{req}", req.len())
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(links_of(&scope, "requests"), socket_links);

    // The right one: off, and on again.
    let (ok, out) = http_ctl(&token, &["disable", "requests"]);
    assert!(ok && out.contains("requests off"), "{out}");
    assert_eq!(links_of(&scope, "requests"), 0, "socket tracepoints still linked");
    let (ok, out) = http_ctl(&token, &["enable", "requests"]);
    assert!(ok && out.contains("requests on"), "{out}");
    assert_eq!(links_of(&scope, "requests"), socket_links);
    // The metrics are still there, on the same server.
    let (code, text) = http_get(port, "/metrics").unwrap();
    assert!(code == 200 && text.contains("inferscope_build_info"));
    drop(scope);

    // Without --control-token-file: no /control.
    let port2 = free_port();
    let listen2 = format!("127.0.0.1:{port2}");
    let _scope2 =
        Inferscope::attach(&dir, server.proc.pid(), &["--control-socket", "off", "--prometheus-listen", &listen2]);
    let out = Command::new(inferscope_bin())
        .args(["ctl", "--url", &format!("http://{listen2}"), "--token-file"])
        .arg(&token)
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no /control"), "{err}");
}
