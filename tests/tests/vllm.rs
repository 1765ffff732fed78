//! Against a real vLLM (CPU build, tiny local model; tests/vllm/setup.sh installs it), found by
//! `inferscope run` the way an operator would run it. inferscope's request count and token
//! totals must equal vLLM's own counters, and its TTFT must be vLLM's own figure plus the HTTP
//! path's overhead. Ignored by plain `cargo test`: `cargo xtask test` installs vLLM and runs it.

use std::{collections::HashMap, process::Command, time::Duration};

use inferscope_tests::*;
use serde_json::Value;

/// The client's requests to a real vLLM (Python loadgen), token usage in every response so
/// that counts are exact on both sides.
fn load(
    dir: &std::path::Path,
    url: &str,
    requests: u32,
    concurrency: u32,
    mix: &str,
    max_tokens: u32,
    seed: u32,
) -> Vec<Value> {
    let (r, c, t, s) = (requests.to_string(), concurrency.to_string(), max_tokens.to_string(), seed.to_string());
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
        &t,
        "--seed",
        &s,
    ];
    loadgen(dir, url, &args)
}

const COUNTERS: &[&str] = &[
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:request_queue_time_seconds_count",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_count",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_count",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_inference_time_seconds_count",
    "vllm:request_inference_time_seconds_sum",
];

/// inferscope's engine counters that vLLM also keeps.
const OUR_ENGINE_COUNTERS: &[&str] = &[
    "inferscope_engine_prefix_cache_queries_total",
    "inferscope_engine_prefix_cache_hits_total",
    "vllm_profiling_fine_grained_ttft_count",
    "vllm_profiling_second_token_latency_count",
    "vllm_profiling_batch_size_count",
];

/// The prefix cache as vLLM counts it (its scheduler's own reports, read from the engine's
/// IPC by inferscope), and ms_service_metric's per-request families: one TTFT per request,
/// as vLLM's own TTFT histogram.
fn check_engine_families(
    prom: u16,
    ours_before: &HashMap<String, f64>,
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) {
    let theirs = |name: &str| delta(before, after, name);
    let want_q = theirs("vllm:prefix_cache_queries_total");
    let want_h = theirs("vllm:prefix_cache_hits_total");
    assert!(want_q > 0.0, "vLLM counted no prefix-cache queries");
    let ttfts = theirs("vllm:time_to_first_token_seconds_count");
    let want = |now: &HashMap<String, f64>| {
        let ours = |n: &str| now[n] - ours_before[n];
        ours("inferscope_engine_prefix_cache_queries_total") == want_q
            && ours("inferscope_engine_prefix_cache_hits_total") == want_h
            && ours("vllm_profiling_fine_grained_ttft_count") == ttfts
    };
    let start = std::time::Instant::now();
    let mut last = scrape(prom, OUR_ENGINE_COUNTERS);
    while !want(&last) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
        last = scrape(prom, OUR_ENGINE_COUNTERS);
    }
    let ours = |n: &str| last[n] - ours_before[n];
    assert!(
        want(&last),
        "prefix cache queries {} vs vLLM {want_q}, hits {} vs {want_h}, TTFTs {} vs {ttfts}",
        ours("inferscope_engine_prefix_cache_queries_total"),
        ours("inferscope_engine_prefix_cache_hits_total"),
        ours("vllm_profiling_fine_grained_ttft_count"),
    );
    assert!(ours("vllm_profiling_second_token_latency_count") > 0.0);
    assert!(ours("vllm_profiling_batch_size_count") > 0.0);
    eprintln!(
        "prefix cache: {want_q} tokens looked up, {want_h} found, equal on both sides; {ttfts} engine TTFTs on both"
    );
}

/// The engine layer against vLLM's own histograms: one observation per request of each phase,
/// and sums that agree (same engine timestamps; only float rounding differs).
fn check_phases(recs: &[Value], before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
    for (field, family) in [
        ("queue_s", "vllm:request_queue_time_seconds"),
        ("prefill_s", "vllm:request_prefill_time_seconds"),
        ("decode_s", "vllm:request_decode_time_seconds"),
        ("inference_s", "vllm:request_inference_time_seconds"),
    ] {
        let ours: Vec<f64> = recs.iter().filter_map(|r| r[field].as_f64()).collect();
        let count = delta(before, after, &format!("{family}_count"));
        let sum = delta(before, after, &format!("{family}_sum"));
        let our_sum: f64 = ours.iter().sum();
        eprintln!("{family}: vLLM {count} observations, sum {sum:.6} s; inferscope {} and {our_sum:.6} s", ours.len());
        assert_eq!(ours.len() as f64, count, "{field}: observations, inferscope vs vLLM");
        assert!((our_sum - sum).abs() <= 0.02 * sum.abs() + 1e-4, "{field}: sum {our_sum} vs vLLM's {sum}");
    }
    for r in recs {
        assert!(r["engine"].as_u64().is_some(), "engine index missing: {r}");
        assert_eq!(r["preemptions"], 0, "{r}");
        let engine_ids = r["engine_request_ids"].as_array().expect("engine request ids");
        let id = r["request_id"].as_str().unwrap();
        assert!(engine_ids.iter().all(|e| e.as_str().is_some_and(|e| e.contains(id))), "{r}");
    }
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, name: &str) -> f64 {
    after[name] - before[name]
}

#[test]
#[ignore = "needs the real vLLM: run `cargo xtask test` (it installs vLLM with tests/vllm/setup.sh)"]
fn real_vllm_counts_tokens_and_ttft() {
    let dir = scratch("vllm");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // inferscope first, as a DaemonSet would be: it finds vLLM when it starts.
    let prom = free_port();
    let listen = format!("127.0.0.1:{prom}");
    let args: Vec<String> =
        ["run", "--discover-interval", "0.5", "--quiet", "--prometheus-listen", &listen, "--ms-service-metric-names"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut scope = Inferscope::start(&dir, &args, &[]);
    let mut vllm = Proc::spawn(
        "vLLM",
        Command::new(repo_root().join("tests/vllm/serve.sh"))
            .args([&port.to_string(), "--max-model-len", "2048"])
            .stdout(std::fs::File::create(dir.join("vllm.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("vllm.err")).unwrap()),
    );
    let api_pid = vllm.pid();
    wait_for("vLLM to answer /health", Duration::from_secs(400), || {
        assert!(vllm.alive(), "vLLM exited: {}", std::fs::read_to_string(dir.join("vllm.err")).unwrap_or_default());
        http_get(port, "/health").filter(|(s, _)| *s == 200)
    });
    wait_for("inferscope to trace the vLLM API server", Duration::from_secs(20), || {
        std::fs::read_to_string(&scope.stderr).ok()?.contains(&format!("tracing pid {api_pid} (")).then_some(())
    });
    let stderr = std::fs::read_to_string(&scope.stderr).unwrap();
    assert!(stderr.contains("vllm"), "vLLM not recognised as vLLM: {stderr}");
    let url = format!("http://127.0.0.1:{port}");

    // Phase 1: every kind, with usage everywhere so counts are exact on both sides.
    let before = scrape(port, COUNTERS);
    let ours_before = scrape(prom, OUR_ENGINE_COUNTERS);
    let truth = load(&dir, &url, 40, 8, "chat_stream=3,chat_nostream=1,cmpl_stream=1,cmpl_nostream=1", 16, 11);
    assert!(
        truth.iter().all(|t| t["status"] == 200),
        "vLLM rejected requests: {:?}",
        truth.iter().find(|t| t["status"] != 200)
    );
    let recs = records_of(&scope, &truth);
    let after = scrape(port, COUNTERS);
    let llm: Vec<&Value> = recs.iter().collect();
    assert_eq!(llm.len() as f64, delta(&before, &after, "vllm:request_success_total"), "requests: inferscope vs vLLM");
    let prompt: u64 = llm.iter().filter_map(|r| r["prompt_tokens"].as_u64()).sum();
    let generated: u64 = llm.iter().filter_map(|r| r["completion_tokens"].as_u64()).sum();
    assert_eq!(prompt as f64, delta(&before, &after, "vllm:prompt_tokens_total"), "prompt tokens");
    assert_eq!(generated as f64, delta(&before, &after, "vllm:generation_tokens_total"), "generation tokens");
    assert!(llm.iter().all(|r| r["provider"] == "vllm" && r["tokens_from"] == "usage"), "{:?}", llm[0]);
    eprintln!("vLLM: {} requests, {prompt} prompt and {generated} generation tokens, equal on both sides", llm.len());
    check_phases(&recs, &before, &after);
    check_engine_families(prom, &ours_before, &before, &after);
    // Engine steps: every generated token was produced by a step inferscope saw.
    let ids: std::collections::HashSet<String> = llm
        .iter()
        .filter_map(|r| r["engine_request_ids"].as_array())
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let steps: Vec<Value> = scope
        .lines("step")
        .into_iter()
        .filter(|s| {
            s["request_ids"].as_array().is_some_and(|a| a.iter().any(|i| i.as_str().is_some_and(|i| ids.contains(i))))
        })
        .collect();
    assert!(!steps.is_empty(), "no engine step lines");
    let step_tokens: u64 = steps.iter().filter_map(|s| s["tokens"].as_u64()).sum();
    assert_eq!(step_tokens, generated, "tokens in step lines vs generated tokens");
    assert!(steps.iter().all(|s| s["running"].is_u64() && s["kv_cache_usage"].is_f64()), "{}", steps[0]);
    let max_batch = steps.iter().filter_map(|s| s["batch_size"].as_u64()).max().unwrap_or(0);
    // Every request's prefill ended in exactly one step (its first token), whatever the step ran.
    let first_tokens: u64 = steps.iter().filter_map(|s| s["first_tokens"].as_u64()).sum();
    assert_eq!(first_tokens, llm.len() as u64, "steps that ran a request's prefill");
    let phase_of = |p: &str| steps.iter().filter(|s| s["phase"] == p).count();
    eprintln!(
        "engine steps by phase: {} prefill, {} mixed, {} decode",
        phase_of("prefill"),
        phase_of("mixed"),
        phase_of("decode")
    );
    assert!(phase_of("decode") > 0 && phase_of("prefill") + phase_of("mixed") > 0);
    eprintln!("engine: {} steps, {step_tokens} tokens, largest batch {max_batch}", steps.len());
    assert!(max_batch > 1, "8 concurrent requests never batched together?");

    // Phase 2: streams only, so both TTFT populations are the same requests.
    let before = scrape(port, COUNTERS);
    let truth = load(&dir, &url, 30, 4, "chat_stream", 16, 12);
    let recs = records_of(&scope, &truth);
    let after = scrape(port, COUNTERS);
    let count = delta(&before, &after, "vllm:time_to_first_token_seconds_count");
    assert_eq!(count, truth.len() as f64);
    let vllm_mean = delta(&before, &after, "vllm:time_to_first_token_seconds_sum") / count;
    let ours: Vec<f64> = recs.iter().filter_map(|r| r["ttft_s"].as_f64()).collect();
    assert_eq!(ours.len(), truth.len());
    let our_mean = ours.iter().sum::<f64>() / ours.len() as f64;
    let client_mean = truth.iter().filter_map(|t| t["ttft_s"].as_f64()).sum::<f64>() / truth.len() as f64;
    eprintln!(
        "mean TTFT: vLLM {:.2} ms (from its arrival_time), inferscope {:.2} ms (from the first request byte), client {:.2} ms",
        vllm_mean * 1e3,
        our_mean * 1e3,
        client_mean * 1e3
    );
    // vLLM starts its clock after parsing and tokenising; inferscope at the first byte. So
    // inferscope's is longer by the HTTP path's overhead, which is small on loopback.
    assert!(our_mean >= vllm_mean - 0.001, "inferscope's TTFT below vLLM's own");
    assert!(our_mean - vllm_mean < 0.05, "HTTP overhead implausibly large: {our_mean} vs {vllm_mean}");
    assert!((our_mean - client_mean).abs() < 0.005, "inferscope {our_mean} vs client {client_mean}");
    check_phases(&recs, &before, &after);

    // Phase 3: a second inferscope attached to the running server, whose engine sockets were
    // opened long before: it picks the ZMTP stream up mid-way and still joins every request.
    // It also exports traces at tracing level 1: engine stage spans under each llm_request.
    let dir3 = scratch("vllm-late");
    let rx = receiver(&dir3);
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc);
    let mut late = Inferscope::attach(&dir3, api_pid, &["--otlp-endpoint", &endpoint, "--tracing-level", "1"]);
    let before = scrape(port, COUNTERS);
    let truth = load(&dir, &url, 20, 4, "chat_stream=1,cmpl_nostream=1", 16, 13);
    let recs = records_of(&late, &truth);
    let after = scrape(port, COUNTERS);
    check_phases(&recs, &before, &after);
    late.stop();
    let spans = read_jsonl(&rx.spans);
    for r in &recs {
        let id = r["request_id"].as_str().unwrap();
        let llm = spans
            .iter()
            .find(|s| s["name"] == "llm_request" && s["attributes"]["gen_ai.response.id"] == id)
            .unwrap_or_else(|| panic!("no llm_request span for {id}"));
        let queue = llm["attributes"]["gen_ai.latency.time_in_queue"].as_f64().expect("time_in_queue");
        assert!((queue - r["queue_s"].as_f64().unwrap()).abs() < 1e-6, "{llm}");
        let children: HashMap<&str, &Value> = spans
            .iter()
            .filter(|s| s["parent_span_id"] == llm["span_id"])
            .map(|s| (s["name"].as_str().unwrap(), s))
            .collect();
        for (name, field) in [("wait", "queue_s"), ("prefill", "prefill_s"), ("decode", "decode_s")] {
            let s = children.get(name).unwrap_or_else(|| panic!("no {name} span under {id}: {children:?}"));
            let ns = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
            let dur = (ns("end_time_unix_nano") - ns("start_time_unix_nano")) as f64 / 1e9;
            assert!((dur - r[field].as_f64().unwrap()).abs() < 2e-6, "{name}: span {dur} vs {field} {}", r[field]);
        }
    }
    eprintln!("tracing level 1: wait/prefill/decode spans under all {} llm_request spans", recs.len());

    // Phase 4: engine messages larger than one capture. Prompt logprobs of a 2000-token prompt
    // make an output message of ~160 KB that the API server reads in one recvfrom, past the
    // 128 KiB captured per syscall. vLLM sends the logprobs as tensor frames after the
    // msgpack frame, and ZMTP framing survives the gap: the outputs frame is whole, so every
    // phase of every request, the large one too, must still match vLLM's own histograms.
    // (A cut outputs frame itself withholds phases instead: unit-tested in engine::tests.)
    let before = scrape(port, COUNTERS);
    let big = std::thread::spawn(move || {
        let prompt: Vec<u32> = (0..2000).map(|i| 100 + (i * 7) % 1800).collect();
        let body = serde_json::json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": 4,
            "prompt_logprobs": 20, "ignore_eos": true});
        let (status, text) =
            http(port, "POST", "/v1/completions", &[("Content-Type", "application/json")], body.to_string().as_bytes())
                .expect("big request");
        assert_eq!(status, 200, "{}", &text[..text.len().min(500)]);
        let v: Value = serde_json::from_str(&text).unwrap();
        v["id"].as_str().unwrap().to_string()
    });
    let truth = load(&dir, &url, 12, 4, "chat_stream", 24, 14);
    let big_id = big.join().unwrap();
    let mut recs = records_of(&scope, &truth);
    let big_rec = wait_for("the large request's record", Duration::from_secs(30), || {
        scope.requests().into_iter().find(|r| r["request_id"] == big_id.as_str())
    });
    recs.push(big_rec.clone());
    let after = scrape(port, COUNTERS);
    assert_eq!(big_rec["prompt_tokens"], 2000, "{big_rec}");
    assert_eq!(big_rec["completion_tokens"], 4, "{big_rec}");
    let engine_health = wait_for("a health line counting an engine message with gaps", Duration::from_secs(25), || {
        let h = scope.lines("health").pop()?;
        (h["engine"]["messages_with_gaps"].as_u64()? > 0).then(|| h["engine"].clone())
    });
    eprintln!("large outputs: engine health {engine_health}");
    check_phases(&recs, &before, &after);
    assert!(big_rec["prefill_s"].is_f64() && big_rec["engine_outputs_lost"] == false, "{big_rec}");

    // Phase 5: function timers on the real engine. A third inferscope attaches with the default
    // timer set: hardware breakpoints on Scheduler.schedule and Scheduler.update_from_output in
    // EngineCore's main thread. Every engine iteration calls schedule() once, and with stats on
    // vLLM sends one outputs message per iteration: the two counts, from two unrelated
    // mechanisms (debug traps in EngineCore, IPC bytes read by the API server), must be equal.
    let core = engine_core_pid(api_pid).expect("vLLM's EngineCore process");
    let dir5 = scratch("vllm-timers");
    // It also reads the engine's live state from its objects every 50 ms, and keeps a rolling
    // profile of every process (1 s windows).
    let timers_prom = free_port();
    let timers_listen = format!("127.0.0.1:{timers_prom}");
    let mut timed = Inferscope::attach(
        &dir5,
        api_pid,
        &[
            "--prometheus-listen",
            &timers_listen,
            "--ms-service-metric-names",
            "--python-timers",
            "default",
            "--engine-state-interval",
            "0.05",
            "--python-profile-rate",
            "99",
            "--python-profile-window",
            "1",
        ],
    );
    wait_for("the scheduler's breakpoints", Duration::from_secs(30), || {
        let e = std::fs::read_to_string(&timed.stderr).ok()?;
        (e.contains("timing Scheduler.schedule") && e.contains("timing Scheduler.update_from_output")).then_some(())
    });
    let truth = load(&dir, &url, 24, 6, "chat_stream=2,cmpl_nostream=1", 16, 15);
    assert!(truth.iter().all(|t| t["status"] == 200));
    records_of(&timed, &truth);
    // The default timer file names its metrics as ms_service_metric does: one observation per
    // timed call under vllm_profiling_<name>, as inferscope's own family.
    let ms_named = wait_for("the timers under ms_service_metric's names", Duration::from_secs(15), || {
        let page = samples(timers_prom);
        let sum = |name: &str, filter: &str| -> f64 {
            page.iter().filter(|(n, _, l)| n == name && l.contains(filter)).map(|(_, v, _)| v).sum()
        };
        let ours = sum("inferscope_python_function_calls_total", "Scheduler.schedule\"");
        let theirs = sum("vllm_profiling_scheduler:duration_count", "");
        (ours > 0.0 && ours == theirs).then_some(theirs)
    });
    eprintln!("vllm_profiling_scheduler:duration: {ms_named} observations, one per timed schedule() call");
    let stderr = timed.stop();
    let calls = timed.lines("python_call");
    let schedule: Vec<&Value> = calls.iter().filter(|c| c["function"] == "Scheduler.schedule").collect();
    let update = calls.iter().filter(|c| c["function"] == "Scheduler.update_from_output").count();
    let health = timed.lines("health").pop().expect("a final health line");
    let iterations = health["engine"]["output_messages"].as_u64().unwrap();
    assert!(!schedule.is_empty(), "no Scheduler.schedule calls: {stderr}");
    assert_eq!(schedule.len() as u64, iterations, "schedule() calls vs engine iterations on the IPC");
    assert_eq!(update, schedule.len(), "update_from_output() calls vs schedule() calls");
    assert!(
        schedule.iter().all(|c| c["pid"] == core && c["tid"] == core && c["mode"] == "breakpoint"),
        "schedule() runs on EngineCore's main thread: {}",
        schedule[0]
    );
    // Each call is placed on its engine step: every iteration has one schedule() and one
    // update_from_output(), and they share the step.
    let steps_of = |f: &str| -> Vec<u64> {
        calls.iter().filter(|c| c["function"] == f).map(|c| c["step_ts_ns"].as_u64().unwrap_or(0)).collect()
    };
    let (sched_steps, update_steps) = (steps_of("Scheduler.schedule"), steps_of("Scheduler.update_from_output"));
    assert!(sched_steps.iter().all(|t| *t > 0), "a schedule() call without its step");
    let distinct: std::collections::BTreeSet<u64> = sched_steps.iter().copied().collect();
    assert_eq!(distinct.len(), sched_steps.len(), "two schedule() calls placed on one step");
    let update_set: std::collections::BTreeSet<u64> = update_steps.iter().copied().collect();
    assert_eq!(update_set, distinct, "update_from_output() and schedule() on the same steps");
    let mut ms: Vec<f64> = schedule.iter().map(|c| c["duration_ns"].as_u64().unwrap() as f64 / 1e6).collect();
    let (p50, max) = stats(&mut ms);
    assert_eq!(health["python_timers"]["unfinished_calls"], 0, "{health}");
    eprintln!(
        "function timers: {} schedule() calls = {iterations} engine iterations on the IPC; schedule() p50 {p50:.3} ms, max {max:.3} ms",
        schedule.len()
    );
    // Engine state: idle before and after the load, busy during it, the block pool's size as
    // vLLM's own cache_config_info says.
    let states: Vec<Value> = timed.lines("engine_state").into_iter().filter(|s| s["pid"] == core).collect();
    assert!(states.len() >= 5, "engine_state lines of EngineCore: {}", states.len());
    let total = samples(port)
        .into_iter()
        .find(|(n, _, _)| n == "vllm:cache_config_info")
        .and_then(|(_, _, line)| line.split("num_gpu_blocks=\"").nth(1)?.split('"').next()?.parse::<i64>().ok())
        .expect("vllm:cache_config_info num_gpu_blocks");
    let v = |s: &Value, k: &str| s[k].as_i64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert!(states.iter().all(|s| v(s, "kv_cache_total_blocks") == total), "total blocks vs vLLM's {total}");
    for idle in [&states[0], states.last().unwrap()] {
        assert_eq!((v(idle, "running_requests"), v(idle, "waiting_requests")), (0, 0), "idle engine: {idle}");
        // One block is vLLM's reserved null block.
        assert_eq!(v(idle, "kv_cache_free_blocks"), total - 1, "idle engine: {idle}");
    }
    let busiest = states.iter().map(|s| v(s, "running_requests") + v(s, "waiting_requests")).max().unwrap();
    let fewest_free = states.iter().map(|s| v(s, "kv_cache_free_blocks")).min().unwrap();
    assert!((2..=6).contains(&busiest), "6 concurrent requests: at most {busiest} seen in the queues");
    assert!(fewest_free < total - 1, "no KV block ever taken under load");
    eprintln!(
        "engine state: {} readings, up to {busiest} requests queued or running, KV free down to {fewest_free} of {total}",
        states.len()
    );
    // The rolling profile saw EngineCore's busy loop (whatever is on CPU, the loop is below).
    let profiles: Vec<Value> = timed.lines("python_profile").into_iter().filter(|p| p["pid"] == core).collect();
    assert!(!profiles.is_empty(), "no python_profile line for EngineCore");
    let samples: u64 = profiles.iter().map(|p| p["samples"].as_u64().unwrap()).sum();
    assert!(samples > 0, "{profiles:?}");
    eprintln!(
        "rolling profile of EngineCore: {} windows, {samples} samples, top: {}",
        profiles.len(),
        profiles[0]["top"][0]
    );

    // The Python layer's reader on the real engine: EngineCore's busy loop runs on the main
    // thread of its process, read from outside while it serves.
    let out = Command::new(inferscope_bin())
        .args(["python-info", "--pid", &core.to_string(), "--json"])
        .output()
        .expect("inferscope python-info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let main = info["threads"].as_array().unwrap().iter().find(|t| t["main"] == true).expect("a main thread");
    assert!(
        main["stack"].as_array().unwrap().iter().any(|f| f["name"].as_str().unwrap_or("").contains("EngineCore")),
        "EngineCore's main thread: {main}"
    );
    eprintln!(
        "python-info of EngineCore (pid {core}): CPython {}, {} threads",
        info["version"],
        info["threads"].as_array().unwrap().len()
    );

    assert!(vllm.stop_with(15, Duration::from_secs(30)), "vLLM did not stop");
    wait_for("inferscope to notice vLLM's exit", Duration::from_secs(15), || {
        std::fs::read_to_string(&scope.stderr).ok()?.contains(&format!("pid {api_pid} exited")).then_some(())
    });
    scope.stop();
}

/// Per data-parallel engine sums of the given families (label `engine`).
fn scrape_engines(port: u16, names: &[&str]) -> HashMap<(String, String), f64> {
    let mut out = HashMap::new();
    for (name, v, line) in samples(port) {
        if !names.contains(&name.as_str()) {
            continue;
        }
        let Some(engine) = line.split("engine=\"").nth(1).and_then(|s| s.split('"').next()) else { continue };
        *out.entry((name, engine.to_string())).or_insert(0.0) += v;
    }
    out
}

#[test]
#[ignore = "needs the real vLLM: run `cargo xtask test` (it installs vLLM with tests/vllm/setup.sh)"]
fn real_vllm_data_parallel_engines_are_told_apart() {
    let dir = scratch("vllm-dp");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut vllm = Proc::spawn(
        "vLLM (2 data-parallel engines)",
        Command::new(repo_root().join("tests/vllm/serve.sh"))
            .args([&port.to_string(), "--data-parallel-size", "2"])
            .stdout(std::fs::File::create(dir.join("vllm.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("vllm.err")).unwrap()),
    );
    wait_for("vLLM to answer /health", Duration::from_secs(400), || {
        assert!(vllm.alive(), "vLLM exited: {}", std::fs::read_to_string(dir.join("vllm.err")).unwrap_or_default());
        http_get(port, "/health").filter(|(s, _)| *s == 200)
    });
    // Attached after start: the API server talks to both engines over sockets opened long ago.
    let prom_addr = format!("127.0.0.1:{prom}");
    let mut scope = Inferscope::attach(&dir, vllm.pid(), &["--prometheus-listen", &prom_addr, "--vllm-metrics"]);
    let families = [
        "vllm:request_success_total",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_prefill_time_seconds_count",
        "vllm:request_decode_time_seconds_count",
        "vllm:request_decode_time_seconds_sum",
    ];
    let before = scrape_engines(port, &families);
    let url = format!("http://127.0.0.1:{port}");
    let truth = load(&dir, &url, 32, 8, "chat_stream=1,cmpl_nostream=1", 12, 21);
    assert!(truth.iter().all(|t| t["status"] == 200), "vLLM rejected requests");
    let recs = records_of(&scope, &truth);
    let after = scrape_engines(port, &families);
    let d = |family: &str, e: &str| {
        let k = (family.to_string(), e.to_string());
        after.get(&k).copied().unwrap_or(0.0) - before.get(&k).copied().unwrap_or(0.0)
    };
    for e in ["0", "1"] {
        let ours: Vec<&Value> =
            recs.iter().filter(|r| r["engine"].as_u64().map(|x| x.to_string()).as_deref() == Some(e)).collect();
        let served = d("vllm:request_success_total", e);
        eprintln!("engine {e}: vLLM {served} requests, inferscope {}", ours.len());
        assert!(served > 0.0, "engine {e} served nothing: the load was not spread");
        assert_eq!(ours.len() as f64, served, "engine {e}: requests");
        for (field, family) in [
            ("queue_s", "vllm:request_queue_time_seconds_count"),
            ("prefill_s", "vllm:request_prefill_time_seconds_count"),
            ("decode_s", "vllm:request_decode_time_seconds_count"),
        ] {
            let n = ours.iter().filter(|r| r[field].is_f64()).count();
            assert_eq!(n as f64, d(family, e), "engine {e}: {field} observations");
        }
        let sum: f64 = ours.iter().filter_map(|r| r["decode_s"].as_f64()).sum();
        let theirs = d("vllm:request_decode_time_seconds_sum", e);
        assert!((sum - theirs).abs() <= 0.02 * theirs + 1e-4, "engine {e}: decode sum {sum} vs vLLM {theirs}");
    }
    // inferscope's own exposition carries the engine label too, on its names and vLLM's.
    let (_, text) = http_get(prom, "/metrics").expect("inferscope /metrics");
    for e in ["0", "1"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("inferscope_engine_request_decode_time_seconds_count{")
                    && l.contains(&format!("engine=\"{e}\""))
            })
            .unwrap_or_else(|| panic!("no decode histogram for engine {e}"));
        assert!(line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0, "{line}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("vllm:request_decode_time_seconds_count{")
                    && l.contains(&format!("engine=\"{e}\""))),
            "no vllm: decode histogram for engine {e}"
        );
    }
    scope.stop();
    assert!(vllm.stop_with(15, Duration::from_secs(30)), "vLLM did not stop");
}

/// The EngineCore child of a vLLM API server (`VLLM::EngineCore` in its comm).
fn engine_core_pid(api: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == api && comm.starts_with("VLLM::EngineCor")).then_some(pid)
    })
}

/// The real NCCL that vLLM's install brings (no GPU: calls fail, arguments are real): every
/// collective is seen, with its bytes from count and data type, and its failure counted.
#[test]
#[ignore = "needs the real vLLM install (its NCCL wheel): run `cargo xtask test`"]
fn real_libnccl_collectives_are_seen() {
    let dir = scratch("nccl");
    let venv = std::env::var_os("INFERSCOPE_VLLM_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-vllm"));
    let ctl = dir.join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let mut child = Proc::spawn(
        "nccl_calls",
        Command::new(venv.join("bin/python")).arg(repo_root().join("tests/fixtures/nccl_calls.py")).arg(&ctl),
    );
    wait_for("libnccl loaded", Duration::from_secs(60), || {
        assert!(child.alive(), "nccl_calls.py exited early");
        ctl.join("loaded").exists().then_some(())
    });
    let mut scope = Inferscope::attach(&dir, child.pid(), &["--device-interval", "0.5"]);
    wait_for("probes on libnccl", Duration::from_secs(30), || {
        std::fs::read_to_string(&scope.stderr).ok()?.contains(" in libnccl.so.2").then_some(())
    });
    std::fs::write(ctl.join("go"), "").unwrap();
    assert!(child.wait_for_exit(Duration::from_secs(30)));
    assert!(scope.proc.wait_for_exit(Duration::from_secs(30)));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(ctl.join("report.json")).unwrap()).unwrap();
    assert!(report["rets"].as_array().unwrap().iter().all(|r| r != 0), "no communicator: every call fails");
    let lines = scope.lines("device");
    let total = |k: &str| lines.iter().map(|l| l[k].as_u64().unwrap_or(0)).sum::<u64>();
    let err = std::fs::read_to_string(&scope.stderr).unwrap();
    assert_eq!(total("collectives"), report["collectives"].as_u64().unwrap(), "NCCL {}:\n{err}", report["version"]);
    assert_eq!(total("collective_bytes"), report["bytes"].as_u64().unwrap());
    assert_eq!(total("errors"), report["collectives"].as_u64().unwrap());
}

/// `inferscope top` on a real vLLM, as an operator opens it on the host: in a terminal (tmux),
/// its own probes on the API server and its engine core. The screen must show the requests the
/// client sent, exactly, and the engine's steps from vLLM's own IPC.
#[test]
#[ignore = "needs the real vLLM: run `cargo xtask test` (it installs vLLM with tests/vllm/setup.sh)"]
fn real_vllm_in_top() {
    let dir = scratch("vllm-top");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut vllm = Proc::spawn(
        "vLLM",
        Command::new(repo_root().join("tests/vllm/serve.sh"))
            .args([&port.to_string(), "--max-model-len", "2048"])
            .stdout(std::fs::File::create(dir.join("vllm.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("vllm.err")).unwrap()),
    );
    let api = vllm.pid();
    wait_for("vLLM to answer /health", Duration::from_secs(400), || {
        assert!(vllm.alive(), "vLLM exited: {}", std::fs::read_to_string(dir.join("vllm.err")).unwrap_or_default());
        http_get(port, "/health").filter(|(s, _)| *s == 200)
    });
    let socket = format!("inferscope-vllm-top-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(["-L", &socket]).args(args).output().expect("tmux");
    let cmd = format!(
        "{} top --pid {api} --refresh 0.5 --log {}/top.log; echo TOP-EXIT=$?; sleep 60",
        inferscope_bin().display(),
        dir.display()
    );
    assert!(tmux(&["new-session", "-d", "-s", "t", "-x", "110", "-y", "30", &cmd]).status.success());
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned();
    let reqs = |s: &str| {
        s.lines().find_map(|l| {
            let t: Vec<&str> = l.trim_start_matches('>').split_whitespace().collect();
            (t.first() == Some(&api.to_string().as_str())).then(|| t.get(2)?.parse::<u64>().ok()).flatten()
        })
    };
    wait_for("top tracing the API server", Duration::from_secs(60), || reqs(&screen()).map(|_| ()));
    let truth = load(&dir, &format!("http://127.0.0.1:{port}"), 20, 4, "chat_stream=1,cmpl_nostream=1", 8, 5);
    assert!(truth.iter().all(|t| t["status"] == 200));
    let s = wait_for("20 requests on the screen", Duration::from_secs(30), || {
        let s = screen();
        (reqs(&s) == Some(truth.len() as u64)).then_some(s)
    });
    assert!(s.contains("vllm"), "{s}");
    let steps = s
        .lines()
        .find_map(|l| l.split("steps/s ").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no engine line:\n{s}"));
    assert!(steps > 0.0, "the engine's steps:\n{s}");
    tmux(&["send-keys", "-t", "t", "q"]);
    let s = wait_for("top to exit", Duration::from_secs(30), || {
        let s = screen();
        s.contains("TOP-EXIT=").then_some(s)
    });
    assert!(s.contains("TOP-EXIT=0") && s.contains("inferscope top: 20 requests seen"), "{s}");
    let _ = tmux(&["kill-server"]);
}

/// The sum of every `vllm_profiling_*` `_count` and `_sum` series on a /metrics page, by name.
fn profiling_totals(port: u16) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (name, v, _) in samples(port) {
        if name.starts_with("vllm_profiling_") && (name.ends_with("_count") || name.ends_with("_sum")) {
            *out.entry(name).or_insert(0.0) += v;
        }
    }
    out
}

/// Huawei's ms_service_metric (its real PyPI release, hooks inside vLLM) and inferscope (from
/// outside, `--ms-service-metric-names`) on the same vLLM under the same load: every family both
/// export has the same number of observations, and sums within 5% (the timestamps differ: the
/// hooks read time.time() in the API server, inferscope the kernel's clock at its socket reads).
#[test]
#[ignore = "needs the real vLLM and ms_service_metric: run `cargo xtask test`"]
fn ms_service_metric_side_by_side() {
    let dir = scratch("vllm-msm");
    let site = repo_root().join(".cache/ms-service-metric/site");
    assert!(site.join("ms_service_metric").is_dir(), "{} missing: run `cargo xtask setup --vllm`", site.display());
    let multiproc = dir.join("prom-multiproc");
    std::fs::create_dir_all(&multiproc).unwrap();
    // Its switch lives in POSIX shared memory under this name: one of our own, so that no other
    // run's state is read, removed at the end.
    let shm = format!("/inferscope_test_msm_{}", std::process::id());
    let env = |c: &mut Command| {
        c.env("PYTHONPATH", &site)
            .env("PROMETHEUS_MULTIPROC_DIR", &multiproc)
            .env("MS_SERVICE_METRIC_SHM_PREFIX", &shm);
    };
    let port = free_port();
    let mut serve = Command::new(repo_root().join("tests/vllm/serve.sh"));
    serve
        .arg(port.to_string())
        .stdout(std::fs::File::create(dir.join("vllm.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("vllm.err")).unwrap());
    env(&mut serve);
    let mut vllm = Proc::spawn("vLLM with ms_service_metric", &mut serve);
    // inferscope attached while vLLM starts, as a DaemonSet's would be: it sees the engine's
    // ready message (its KV-cache size).
    let prom = free_port();
    let listen = format!("127.0.0.1:{prom}");
    let scope = Inferscope::attach(&dir, vllm.pid(), &["--prometheus-listen", &listen, "--ms-service-metric-names"]);
    wait_for("vLLM to answer /health", Duration::from_secs(400), || {
        assert!(vllm.alive(), "vLLM exited: {}", std::fs::read_to_string(dir.join("vllm.err")).unwrap_or_default());
        http_get(port, "/health").filter(|(s, _)| *s == 200)
    });
    // `ms-service-metric on`, as its README says, in the server's environment.
    let python = std::fs::canonicalize(repo_root().join(".venv-vllm/bin/python")).unwrap();
    let mut on = Command::new(&python);
    on.args(["-c", "import sys; from ms_service_metric.control.cli import main; sys.argv = ['ms-service-metric', 'on']; sys.exit(main())"]);
    env(&mut on);
    let out = on.output().expect("ms-service-metric on");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("processes affected"), "ms-service-metric on: {said}");
    // The hooks go in when each process takes its signal: give them a moment, then warm up so
    // that every family exists on both sides before counting.
    std::thread::sleep(Duration::from_secs(3));
    let url = format!("http://127.0.0.1:{port}");
    load(&dir, &url, 4, 2, "chat_stream", 8, 20);
    std::thread::sleep(Duration::from_secs(1));

    let theirs_before = profiling_totals(port);
    let ours_before = profiling_totals(prom);
    let truth = load(&dir, &url, 40, 8, "chat_stream=3,cmpl_nostream=1", 16, 21);
    assert!(truth.iter().all(|t| t["status"] == 200));
    let theirs = |now: &HashMap<String, f64>, n: &str| {
        now.get(n).copied().unwrap_or(0.0) - theirs_before.get(n).copied().unwrap_or(0.0)
    };
    let ours = |now: &HashMap<String, f64>, n: &str| {
        now.get(n).copied().unwrap_or(0.0) - ours_before.get(n).copied().unwrap_or(0.0)
    };
    // inferscope's figures lag the server's by its event loop: wait until the counts agree.
    let names: Vec<String> = ours_before
        .keys()
        .chain(profiling_totals(prom).keys())
        .filter(|n| n.ends_with("_count"))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(names.len() >= 12, "inferscope's vllm_profiling_ families (KV-cache blocks included): {names:?}");
    let start = std::time::Instant::now();
    let (mut t_now, mut o_now);
    loop {
        t_now = profiling_totals(port);
        o_now = profiling_totals(prom);
        let agree = names.iter().all(|n| theirs(&t_now, n) == ours(&o_now, n));
        if agree || start.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut report = Vec::new();
    for n in &names {
        let (tc, oc) = (theirs(&t_now, n), ours(&o_now, n));
        let s = n.trim_end_matches("_count").to_string() + "_sum";
        let (ts, os) = (theirs(&t_now, &s), ours(&o_now, &s));
        report.push(format!("{n}: {oc} vs {tc}; sum {os:.6} vs {ts:.6}"));
        assert!(tc > 0.0 || n.contains("spec_tokens"), "ms_service_metric observed nothing for {n}: {report:?}");
        assert_eq!(oc, tc, "observations of {n} (inferscope vs ms_service_metric): {report:?}");
        let tolerance = 0.05 * ts.abs().max(1e-9);
        assert!((os - ts).abs() <= tolerance, "sum of {s}: {os} vs {ts}: {report:?}");
    }
    for r in &report {
        eprintln!("side by side: {r}");
    }
    drop(scope);
    drop(vllm);
    for e in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().contains(shm.trim_start_matches('/')) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
