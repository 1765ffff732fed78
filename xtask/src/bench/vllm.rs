//! `cargo xtask bench --vllm`: a real vLLM with and without inferscope, then with its Python
//! layer as well.

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{TOP_HEADER, cost_cell, costs, load, median, one_round, top_programs, wakeups_per_request};
use crate::{setup, util};

/// `cargo xtask bench --vllm`: a real vLLM (CPU, tiny model) saturated by the Rust client,
/// with and without inferscope attached to its process tree (HTTP and engine IPC), alternating.
pub fn run_vllm(seconds: u64, rounds: u32, report: Option<&Path>) -> Result<()> {
    let root = super::prepare(setup::vllm)?;
    let dir = root.join("target/bench-vllm");
    fs::create_dir_all(&dir)?;
    let port = util::free_port()?;
    let mut server = Command::new(root.join("tests/vllm/serve.sh"))
        .arg(port.to_string())
        .stdout(fs::File::create(dir.join("vllm.log"))?)
        .stderr(fs::File::create(dir.join("vllm.err"))?)
        .spawn()?;
    util::wait_http(port, "/health", Duration::from_secs(600), &mut server)?;
    let args: &[&str] = &["--no-fixture", "--concurrency", "16", "--max-tokens", "32"];
    load(port, 5, args, &dir.join("summary.json")).context("warm-up")?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let r = one_round(&dir, server.id(), port, seconds, args, with.then_some(&[][..]))?;
            eprintln!(
                "bench: vLLM round {i} {}: {:.1} req/s, {:.0} events/s{}",
                if with { "with inferscope" } else { "without" },
                r.req_per_s,
                r.events_per_s,
                r.reported.map_or(String::new(), |n| format!(
                    ", reported {n}/{} requests, {:.2} s CPU + {:.2} s BPF ({} programs)",
                    r.requests,
                    r.cpu_s,
                    r.bpf_ns as f64 / 1e9,
                    r.progs.len()
                ))
            );
            if with { on.push(r) } else { off.push(r) }
        }
    }
    let engine_lines = fs::read_to_string(dir.join("bench.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "request" && v["queue_s"].is_f64())
        .count();
    // The Python layer on top: the default scheduler timers (hardware breakpoints in
    // EngineCore) and a 99 Hz rolling profile of every process, against no inferscope.
    let python_layer: &[&str] = &["--python-timers", "default", "--python-profile-rate", "99"];
    let (mut py_off, mut py_on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let r = one_round(&dir, server.id(), port, seconds, args, with.then_some(python_layer))?;
            eprintln!(
                "bench: vLLM round {i} {}: {:.1} req/s{}",
                if with { "with inferscope + Python layer" } else { "without" },
                r.req_per_s,
                if with {
                    format!(", {:.2} s CPU + {:.2} s BPF ({} programs)", r.cpu_s, r.bpf_ns as f64 / 1e9, r.progs.len())
                } else {
                    String::new()
                }
            );
            if with { py_on.push(r) } else { py_off.push(r) }
        }
    }
    let py_calls = fs::read_to_string(dir.join("bench.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"type\":\"python_call\""))
        .count();
    util::stop(&mut server, Duration::from_secs(30));
    let py_off_rps = median(py_off.iter().map(|r| r.req_per_s).collect());
    let py_on_rps = median(py_on.iter().map(|r| r.req_per_s).collect());
    let py_cpu = median(py_on.iter().map(|r| r.cpu_s / seconds as f64 * 100.0).collect());
    let off_rps = median(off.iter().map(|r| r.req_per_s).collect());
    let on_rps = median(on.iter().map(|r| r.req_per_s).collect());
    let off_ev = median(off.iter().map(|r| r.events_per_s).collect());
    let on_ev = median(on.iter().map(|r| r.events_per_s).collect());
    let reported: u64 = on.iter().filter_map(|r| r.reported).sum();
    let completed: u64 = on.iter().map(|r| r.requests).sum();
    let cpu = median(on.iter().map(|r| r.cpu_s / seconds as f64 * 100.0).collect());
    let rss = on.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let (per_req, per_event) = costs(&on);
    let (py_req, py_event) = costs(&py_on);
    let py_rss = py_on.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let md = format!(
        "## inferscope on a real vLLM\n\nCommand: `cargo xtask bench --vllm --seconds {seconds} --rounds {rounds}`. vLLM 0.32 CPU build, \
         tiny local model, `--enforce-eager`; client: inferscope-load, 16 connections, streams of 32 tokens; inferscope \
         attached to the API server and its children (HTTP, engine IPC), default layers. Rounds alternate off/on; medians. \
         Cost: inferscope's utime+stime plus its BPF programs' run time (kernel BPF statistics), per request and per \
         SSE event completed.\n\n\
         | req/s off | req/s on | ratio | SSE events/s off | on | reported / completed | requests with engine phases (last round) \
         | cost per request (user + BPF) | cost per SSE event (user + BPF) | wakeups per request | inferscope CPU | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n\
         | {off_rps:.1} | {on_rps:.1} | **{:.3}** | {off_ev:.0} | {on_ev:.0} | {reported} / {completed} | {engine_lines} | {} | {} | {:.2} | {cpu:.1}% of a core | {:.1} MiB |\n",
        on_rps / off_rps.max(1e-9),
        cost_cell(per_req),
        cost_cell(per_event),
        wakeups_per_request(&on),
        rss as f64 / 1024.0
    ) + &format!(
        "\nWith the Python layer as well (`--python-timers default --python-profile-rate 99`: breakpoints on \
         `Scheduler.schedule` and `update_from_output` in EngineCore, every process sampled at 99 Hz):\n\n\
         | req/s off | req/s on | ratio | timed calls (last round) | cost per request (user + BPF) | cost per SSE event (user + BPF) \
         | inferscope CPU | peak RSS |\n|---|---|---|---|---|---|---|---|\n\
         | {py_off_rps:.1} | {py_on_rps:.1} | **{:.3}** | {py_calls} | {} | {} | {py_cpu:.1}% of a core | {:.1} MiB |\n",
        py_on_rps / py_off_rps.max(1e-9),
        cost_cell(py_req),
        cost_cell(py_event),
        py_rss as f64 / 1024.0
    ) + &format!(
        "\nBPF programs by run time (all rounds with inferscope):\n\n{TOP_HEADER}{}{}",
        top_programs("default layers", &on, 6),
        top_programs("+ Python layer", &py_on, 6)
    );
    println!("\n{md}");
    let p = report.map_or_else(|| dir.join("report.md"), Path::to_path_buf);
    fs::write(&p, &md)?;
    eprintln!("bench: report written to {}", p.display());
    Ok(())
}
