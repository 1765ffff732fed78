//! `cargo xtask bench`: the fixture server with and without inferscope, per workload, and
//! the host-wide cost of its tracepoints to a process it does not trace.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    TOP_HEADER, cost_cell, costs, load, median, one_round, start_inferscope, top_programs, wakeups_per_request,
};
use crate::{setup, util};

/// ns per write(2) of one byte to /dev/null, over `n` calls.
fn write_cost(n: u64) -> f64 {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null");
    let start = Instant::now();
    for _ in 0..n {
        let _ = f.write(b"x");
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

pub fn run(seconds: u64, rounds: u32, report: Option<&Path>) -> Result<()> {
    let root = super::prepare(setup::python_env)?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut md = format!(
        "## inferscope benchmark\n\nMachine: {cores} cores, {}. Command: `cargo xtask bench --seconds {seconds} --rounds {rounds}`.\n\
         Server: tests/fixtures/openai_server.py (FastAPI on uvicorn/uvloop, one process, no model: \
         it is CPU-bound on its HTTP and SSE work, the worst case for a per-syscall tracer). Client: \
         tests/src/bin/inferscope-load.rs, keep-alive, closed loop. Rounds alternate off/on.\n\n",
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    md.push_str(
        "Cost: inferscope's own CPU (utime+stime) plus its BPF programs' run time (kernel BPF statistics, \
         per program), over the round, divided by the requests and SSE events the client completed in it; \
         median of the rounds with inferscope.\n\n\
         | workload | req/s off | req/s on | ratio | SSE events/s on | reported / completed | ring-buffer drops \
         | cost per request (user + BPF) | cost per SSE event (user + BPF) | wakeups per request | inferscope peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut top = String::new();

    // The HTTPS workload: the same server with the test certificate (tests/data/tls), the load
    // client trusting it; inferscope reads the plaintext through the server's libssl.
    let cert = root.join("tests/data/tls/cert.pem").display().to_string();
    let key = root.join("tests/data/tls/key.pem").display().to_string();
    let tls_server = ["--ssl-certfile", cert.as_str(), "--ssl-keyfile", key.as_str()];
    let workloads: [(&str, &[&str], bool); 5] = [
        (
            "stream, 16 tokens, 32 conns",
            &["--concurrency", "32", "--max-tokens", "16", "--ttft-ms", "0", "--itl-ms", "0"],
            false,
        ),
        (
            "stream, 8 tokens, 64 conns",
            &["--concurrency", "64", "--max-tokens", "8", "--ttft-ms", "0", "--itl-ms", "0"],
            false,
        ),
        (
            "stream, 8 tokens, 64 conns, HTTPS",
            &["--concurrency", "64", "--max-tokens", "8", "--ttft-ms", "0", "--itl-ms", "0", "--tls-ca", cert.as_str()],
            true,
        ),
        (
            "stream, 4 tokens, 64 conns",
            &["--concurrency", "64", "--max-tokens", "4", "--ttft-ms", "0", "--itl-ms", "0"],
            false,
        ),
        (
            "unary, 16 tokens, 32 conns",
            &["--concurrency", "32", "--max-tokens", "16", "--stream-ratio", "0", "--ttft-ms", "0", "--itl-ms", "0"],
            false,
        ),
    ];
    for (name, args, tls) in workloads {
        let port = util::free_port()?;
        let mut server = Command::new(util::python())
            .arg(root.join("tests/fixtures/openai_server.py"))
            .args(["--port", &port.to_string()])
            .args(if tls { &tls_server[..] } else { &[] })
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("server.log"))?)
            .spawn()?;
        if tls {
            util::wait_listen(port, Duration::from_secs(60), &mut server)?;
        } else {
            util::wait_http(port, "/health", Duration::from_secs(60), &mut server)?;
        }
        // Warm up the server (and the page cache) before measuring.
        if let Err(e) = load(port, 3, args, &dir.join("summary.json")) {
            util::stop(&mut server, Duration::from_secs(10));
            return Err(e.context("warm-up"));
        }
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let order = if i % 2 == 0 { [false, true] } else { [true, false] };
            for with in order {
                let r = one_round(&dir, server.id(), port, seconds, args, with.then_some(&[][..]))?;
                eprintln!(
                    "bench: {name}: round {i} {}: {:.0} req/s, {:.0} events/s{}",
                    if with { "with inferscope" } else { "without" },
                    r.req_per_s,
                    r.events_per_s,
                    r.reported.map_or(String::new(), |n| format!(
                        ", reported {n}/{} requests, {} drops, {:.2} s CPU + {:.2} s BPF ({} programs)",
                        r.requests,
                        r.drops,
                        r.cpu_s,
                        r.bpf_ns as f64 / 1e9,
                        r.progs.len()
                    ))
                );
                if with { on.push(r) } else { off.push(r) }
            }
        }
        util::stop(&mut server, Duration::from_secs(10));
        let off_rps = median(off.iter().map(|r| r.req_per_s).collect());
        let on_rps = median(on.iter().map(|r| r.req_per_s).collect());
        let ev = median(on.iter().map(|r| r.events_per_s).collect());
        let reported: u64 = on.iter().filter_map(|r| r.reported).sum();
        let completed: u64 = on.iter().map(|r| r.requests).sum();
        let drops: u64 = on.iter().map(|r| r.drops).sum();
        let (per_req, per_event) = costs(&on);
        let rss = on.iter().map(|r| r.rss_kib).max().unwrap_or(0);
        md.push_str(&format!(
            "| {name} | {off_rps:.0} | {on_rps:.0} | **{:.3}** | {ev:.0} | {reported} / {completed} | {drops} | {} | {} | {:.2} | {:.1} MiB |\n",
            on_rps / off_rps.max(1e-9),
            cost_cell(per_req),
            cost_cell(per_event),
            wakeups_per_request(&on),
            rss as f64 / 1024.0
        ));
        top.push_str(&top_programs(name, &on, 5));
    }
    md.push_str(&format!("\nBPF programs by run time (all rounds with inferscope):\n\n{TOP_HEADER}{top}"));

    // Host-wide: syscalls of processes inferscope does not trace still pass its tracepoints.
    let n = 2_000_000;
    let mut base = Vec::new();
    let mut with = Vec::new();
    let port = util::free_port()?;
    let mut server = Command::new(util::python())
        .arg(root.join("tests/fixtures/openai_server.py"))
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    util::wait_http(port, "/health", Duration::from_secs(60), &mut server)?;
    for _ in 0..rounds.max(3) {
        base.push(write_cost(n));
        let mut c = start_inferscope(server.id(), &dir, &[])?;
        with.push(write_cost(n));
        util::stop(&mut c, Duration::from_secs(20));
    }
    util::stop(&mut server, Duration::from_secs(10));
    let (b, w) = (median(base), median(with));
    md.push_str(&format!(
        "\nHost-wide cost (write(2) of 1 byte to /dev/null by a process inferscope does not trace, {n} calls, median of {} rounds): \
         {b:.0} ns without, {w:.0} ns with inferscope loaded: **+{:.0} ns per syscall** (ratio {:.2}). Processes that make few \
         syscalls per unit of work (inference engines) pay little of this; a syscall-heavy neighbour pays it on every call.\n",
        rounds.max(3),
        w - b,
        w / b
    ));
    println!("\n{md}");
    let p = report.map_or_else(|| dir.join("report.md"), Path::to_path_buf);
    fs::write(&p, &md)?;
    eprintln!("bench: report written to {}", p.display());
    Ok(())
}
