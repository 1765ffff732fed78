//! `cargo xtask demo`: inferscope's main job for real. Starts a real OpenAI-compatible server
//! (FastAPI on uvicorn, or with --vllm a real vLLM, with --sglang a real SGLang), attaches
//! inferscope to it without touching it, sends a mix of requests, and shows inferscope's
//! per-request lines, what the client measured for the same requests, the Prometheus metrics,
//! and for a real engine its own counters beside inferscope's figures for the same requests.

use std::{
    collections::HashMap,
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{cache, setup, util};

fn read_jsonl(p: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(p).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        util::stop(&mut self.0, Duration::from_secs(15));
    }
}

/// The server the demo watches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Fixture,
    Vllm,
    Sglang,
}

impl Server {
    /// (engine metric for: requests, prompt tokens, generated tokens, queue time sum, TTFT sum,
    /// TTFT count) on the engine's own /metrics.
    fn counters(self) -> Option<[&'static str; 6]> {
        match self {
            Server::Fixture => None,
            Server::Vllm => Some([
                "vllm:request_success_total",
                "vllm:prompt_tokens_total",
                "vllm:generation_tokens_total",
                "vllm:request_queue_time_seconds_sum",
                "vllm:time_to_first_token_seconds_sum",
                "vllm:time_to_first_token_seconds_count",
            ]),
            Server::Sglang => Some([
                "sglang:num_requests_total",
                "sglang:prompt_tokens_total",
                "sglang:generation_tokens_total",
                "sglang:queue_time_seconds_sum",
                "sglang:time_to_first_token_seconds_sum",
                "sglang:time_to_first_token_seconds_count",
            ]),
        }
    }
}

/// Sums over label sets of the named families in a Prometheus text exposition.
fn sums(body: &str, names: &[&str]) -> Vec<f64> {
    names
        .iter()
        .map(|n| {
            body.lines()
                .filter(|l| l.split(['{', ' ']).next() == Some(n))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect()
}

pub fn run(server_kind: Server, requests: u32) -> Result<()> {
    if !util::is_root() {
        bail!("the demo loads BPF programs: run it as root (e.g. sudo -E env PATH=$PATH cargo xtask demo)");
    }
    let engine = server_kind != Server::Fixture;
    setup::check_disk(engine, false)?;
    cache::lock_build()?;
    setup::toolchain()?;
    setup::python_env()?;
    if engine {
        setup::vllm()?;
    }
    if server_kind == Server::Sglang {
        setup::sglang()?;
    }
    let root = util::root();
    util::run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "inferscope"]))?;
    let out = root.join("target/demo");
    fs::create_dir_all(&out)?;
    let jsonl = out.join("requests.jsonl");
    let truth = out.join("client.jsonl");
    let _ = fs::remove_file(&jsonl);
    let port = util::free_port()?;
    let metrics_port = util::free_port()?;

    eprintln!(
        "\n=== starting {} on 127.0.0.1:{port}",
        match server_kind {
            Server::Vllm => "a real vLLM (CPU, tiny local model)",
            Server::Sglang => "a real SGLang (CPU, its generic platform, tiny local model)",
            Server::Fixture => "an OpenAI-compatible server on uvicorn",
        }
    );
    let mut server = if server_kind == Server::Sglang {
        Command::new(root.join("tests/sglang/serve.sh"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(fs::File::create(out.join("server.log"))?)
            .spawn()?
    } else if engine {
        Command::new(root.join("tests/vllm/serve.sh"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(fs::File::create(out.join("server.log"))?)
            .spawn()?
    } else {
        Command::new(util::python())
            .arg(root.join("tests/fixtures/openai_server.py"))
            .args(["--port", &port.to_string(), "--itl-ms", "8"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(out.join("server.log"))?)
            .spawn()?
    };
    let server_pid = server.id();
    // SGLang answers /health before its first generation: /health_generate waits for one.
    let health = if server_kind == Server::Sglang { "/health_generate" } else { "/health" };
    util::wait_http(port, health, Duration::from_secs(if engine { 400 } else { 60 }), &mut server)
        .with_context(|| format!("the server did not start; see {}", out.join("server.log").display()))?;
    let _server = Guard(server);

    eprintln!("=== attaching inferscope (release build) to pid {server_pid}: no change to the server\n");
    let bin = util::target().join("release/inferscope");
    let listen = format!("127.0.0.1:{metrics_port}");
    let scope = Command::new(&bin)
        .args(["attach", "--pid", &server_pid.to_string(), "--prometheus-listen", &listen])
        .arg("--jsonl")
        .arg(&jsonl)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut scope = Guard(scope);
    util::wait_http(metrics_port, "/healthz", Duration::from_secs(30), &mut scope.0)?;
    std::thread::sleep(Duration::from_millis(500));

    eprintln!("=== sending {requests} requests (streaming and not, chat and completions, errors, aborts)\n");
    let mut load = Command::new(util::python());
    load.arg(root.join("tests/fixtures/loadgen.py"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--requests",
            &requests.to_string(),
            "--concurrency",
            "4",
            "--quiet",
            "--seed",
            "1",
        ])
        .arg("--out")
        .arg(&truth);
    if engine {
        load.args(["--no-fixture", "--mix", "chat_stream=3,chat_nostream=1,cmpl_stream=1"]);
    } else {
        load.args(["--mix", "all", "--abort-ratio", "0.1", "--error-ratio", "0.05"]);
    }
    let engine_before = server_kind.counters().map(|c| sums(&http_get(port, "/metrics").unwrap_or_default().1, &c));
    util::run(&mut load)?;
    std::thread::sleep(Duration::from_secs(2));
    let engine_after = server_kind.counters().map(|c| sums(&http_get(port, "/metrics").unwrap_or_default().1, &c));

    let (_, body) = http_get(metrics_port, "/metrics").unwrap_or_default();
    let ours = read_jsonl(&jsonl).into_iter().filter(|v| v["type"] == "request").collect::<Vec<_>>();
    let client = read_jsonl(&truth);
    drop(scope);

    println!("\n=== what inferscope's Prometheus endpoint says (selected families)");
    for line in body.lines().filter(|l| {
        (l.starts_with("gen_ai_server_time_to_first_token_seconds_count")
            || l.starts_with("gen_ai_server_time_to_first_token_seconds_sum")
            || l.starts_with("gen_ai_server_request_duration_seconds_count")
            || l.starts_with("gen_ai_server_token_usage_sum")
            || l.starts_with("inferscope_requests_total")
            || l.starts_with("inferscope_dropped_events_total")
            || l.starts_with("process_resident_memory_bytes"))
            && !l.starts_with('#')
    }) {
        println!("  {line}");
    }
    let by_id: HashMap<&str, &Value> = ours.iter().filter_map(|r| Some((r["request_id"].as_str()?, r))).collect();
    let mut diffs = Vec::new();
    let mut matched = 0;
    for t in &client {
        let r = t["request_id"]
            .as_str()
            .and_then(|i| by_id.get(i))
            .or_else(|| t["x_request_id"].as_str().and_then(|i| by_id.get(i)));
        if let Some(r) = r {
            matched += 1;
            if let (Some(a), Some(b)) = (r["ttft_s"].as_f64(), t["ttft_s"].as_f64()) {
                diffs.push((a - b).abs() * 1e3);
            }
        }
    }
    diffs.sort_by(f64::total_cmp);
    println!("\n=== inferscope versus the client, request by request");
    println!("  requests the client sent:        {}", client.len());
    println!("  of them reported by inferscope:  {matched} (matched by response id)");
    if !diffs.is_empty() {
        println!(
            "  |TTFT inferscope - client|:      median {:.2} ms, max {:.2} ms over {} streams",
            diffs[diffs.len() / 2],
            diffs[diffs.len() - 1],
            diffs.len()
        );
    }
    if let (Some(b), Some(a)) = (engine_before, engine_after) {
        let d: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a - b).collect();
        let llm: Vec<&Value> =
            ours.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v1/"))).collect();
        let sum = |k: &str| llm.iter().filter_map(|r| r[k].as_f64()).sum::<f64>();
        let n_ttft = llm.iter().filter(|r| r["ttft_s"].is_f64()).count().max(1) as f64;
        let name = if server_kind == Server::Sglang { "SGLang" } else { "vLLM" };
        println!("\n=== inferscope versus {name}'s own /metrics, over the same requests");
        println!("  {:<28} {:>14} {:>14}", "", "inferscope", name);
        println!("  {:<28} {:>14} {:>14}", "requests", llm.len(), d[0]);
        println!("  {:<28} {:>14} {:>14}", "prompt tokens", sum("prompt_tokens"), d[1]);
        println!("  {:<28} {:>14} {:>14}", "generated tokens", sum("completion_tokens"), d[2]);
        println!("  {:<28} {:>14.6} {:>14.6}", "queue time, sum (s)", sum("queue_s"), d[3]);
        println!(
            "  {:<28} {:>14.2} {:>14.2}",
            "TTFT mean (ms)",
            sum("ttft_s") / n_ttft * 1e3,
            d[4] / d[5].max(1.0) * 1e3
        );
        println!(
            "  {:<28} {:>14}",
            "with queue/prefill/decode",
            llm.iter().filter(|r| r["queue_s"].is_f64() && r["prefill_s"].is_f64() && r["decode_s"].is_f64()).count()
        );
        println!("  (the engine's TTFT starts when it has parsed the request, inferscope's at its first byte;");
        println!("   the engine counts TTFT of unary requests too, inferscope only of streams)");
    }
    println!("  per-request JSON lines:          {}", jsonl.display());
    println!("  the client's own measurements:   {}", truth.display());
    if (matched as usize) < client.len() && !engine {
        bail!("inferscope missed {} requests", client.len() - matched as usize);
    }
    Ok(())
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}
