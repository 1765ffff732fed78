//! Exporters against real receivers: a real Prometheus server (Debian's) scraping inferscope
//! and answering PromQL, and a real OTLP receiver (the official OpenTelemetry protobufs on
//! grpcio) getting spans and metrics over gRPC and HTTP. Needs root.

use std::{collections::HashMap, time::Duration};

use inferscope_tests::*;
use serde_json::Value;

/// Prometheus scrapes inferscope; PromQL counts what the client sent, under the GenAI names
/// and (with --vllm-metrics) the names vLLM's dashboards query.
#[test]
fn prometheus_scrapes_and_promql_counts() {
    let dir = scratch("prom");
    let server = Fixture::start(&dir, &[]);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &["--prometheus-listen", &listen, "--vllm-metrics"]);
    let (_prom, prom_port) = prometheus(&dir, &listen);
    let truth = loadgen(
        &dir,
        &server.url(),
        &["--requests", "60", "--concurrency", "4", "--mix", "chat_stream=5,chat_nostream=1", "--seed", "5"],
    );
    let streams = truth.iter().filter(|t| t["stream"] == true).count() as f64;
    let tokens: u64 = truth.iter().filter_map(|t| t["completion_tokens"].as_u64()).sum();
    scope.wait_requests(truth.len(), Duration::from_secs(20));
    let want = [
        (
            "sum(inferscope_requests_total{http_route=\"/v1/chat/completions\",http_response_status_code=\"200\"})",
            truth.len() as f64,
        ),
        ("sum(gen_ai_server_time_to_first_token_seconds_count)", streams),
        ("sum(gen_ai_server_request_duration_seconds_count{gen_ai_operation_name=\"chat\"})", truth.len() as f64),
        ("sum(gen_ai_server_token_usage_sum{gen_ai_token_type=\"output\"})", tokens as f64),
        ("sum(vllm:time_to_first_token_seconds_count{model_name=\"tiny-llama\"})", streams),
        ("sum(vllm:generation_tokens_total)", tokens as f64),
        ("sum(vllm:request_success_total{finished_reason=\"length\"})", truth.len() as f64),
    ];
    for (q, v) in want {
        let got = wait_for(&format!("Prometheus to answer {q} = {v}"), Duration::from_secs(30), || {
            promql(prom_port, q).filter(|g| (g - v).abs() < 1e-9)
        });
        assert_eq!(got, v, "{q}");
    }
    // The median TTFT as PromQL computes it from the buckets is near the client's.
    let q = "histogram_quantile(0.5, sum by (le) (gen_ai_server_time_to_first_token_seconds_bucket))";
    let p50 = promql(prom_port, q).expect("quantile");
    assert!(p50 > 0.005 && p50 < 0.06, "p50 TTFT {p50}");
    scope.stop();
}

/// Sends requests through inferscope to a receiver and checks every request's trace.
fn otlp_round_trip(protocol: &str) {
    let dir = scratch(&format!("otlp-{protocol}"));
    let rx = receiver(&dir);
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", rx.grpc),
        _ => format!("http://127.0.0.1:{}", rx.http),
    };
    let server = Fixture::start(&dir, &[]);
    let mut scope = Inferscope::attach(
        &dir,
        server.proc.pid(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            protocol,
            "--otlp-metrics-interval",
            "1",
            "--tracing-level",
            "2",
        ],
    );
    let truth = loadgen(
        &dir,
        &server.url(),
        &["--requests", "20", "--concurrency", "2", "--mix", "chat_stream=3,chat_nostream=1", "--seed", "9"],
    );
    // One request continuing a caller's trace.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = br#"{"model":"tiny-llama","messages":[{"role":"user","content":"traced"}],"max_tokens":4}"#;
    let (status, _) = http(
        server.port,
        "POST",
        "/v1/chat/completions",
        &[("traceparent", traceparent), ("content-type", "application/json"), ("x-request-id", "traced-1")],
        body,
    )
    .expect("traced request");
    assert_eq!(status, 200);
    scope.wait_requests(truth.len() + 1, Duration::from_secs(20));
    let spans = wait_for("all spans at the receiver", Duration::from_secs(30), || {
        let s = read_jsonl(&rx.spans);
        (s.len() >= 2 * (truth.len() + 1)).then_some(s)
    });
    assert!(spans.iter().all(|s| s["transport"] == protocol));
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (s["span_id"].as_str().unwrap(), s)).collect();
    let llm: Vec<&Value> = spans.iter().filter(|s| s["name"] == "llm_request").collect();
    assert_eq!(llm.len(), truth.len() + 1);
    for t in &truth {
        let span = llm
            .iter()
            .find(|s| s["attributes"]["gen_ai.response.id"] == t["request_id"])
            .unwrap_or_else(|| panic!("no llm_request span for {t}"));
        let a = &span["attributes"];
        assert_eq!(a["gen_ai.operation.name"], "chat");
        assert_eq!(a["gen_ai.request.model"], "tiny-llama");
        assert_eq!(a["gen_ai.usage.output_tokens"], t["completion_tokens"]);
        assert_eq!(a["gen_ai.usage.input_tokens"], t["prompt_tokens"]);
        assert_eq!(a["gen_ai.response.finish_reasons"], serde_json::json!([t["finish_reason"]]));
        assert!(a.get("gen_ai.prompt").is_none(), "content exported without --capture-content");
        let parent = by_id[span["parent_span_id"].as_str().expect("llm_request has a parent")];
        assert_eq!(parent["name"], "POST /v1/chat/completions");
        assert_eq!(parent["kind"], "SPAN_KIND_SERVER");
        assert_eq!(parent["trace_id"], span["trace_id"]);
        assert_eq!(parent["attributes"]["http.response.status_code"], 200);
        if t["stream"] == true {
            let ttft = a["gen_ai.latency.time_to_first_token"].as_f64().expect("ttft attribute");
            assert!((ttft - t["ttft_s"].as_f64().unwrap()).abs() < 0.01, "ttft {ttft} vs {t}");
            // Tracing level 2: one event per streamed output chunk.
            assert_eq!(span["events"].as_array().unwrap().len() as u64, t["output_events"].as_u64().unwrap());
        }
    }
    let traced =
        llm.iter().find(|s| s["attributes"]["gen_ai.request.id"] == "chatcmpl-traced-1").expect("traced request");
    let http_span = by_id[traced["parent_span_id"].as_str().unwrap()];
    assert_eq!(http_span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(http_span["parent_span_id"], "00f067aa0ba902b7");
    // The same metrics as Prometheus, under OpenTelemetry names.
    let streams = truth.iter().filter(|t| t["stream"] == true).count() as u64;
    wait_for("the TTFT histogram at the receiver", Duration::from_secs(20), || {
        let m = read_jsonl(&rx.metrics);
        let last = m.iter().rev().find(|p| p["name"] == "gen_ai.server.time_to_first_token")?;
        (last["count"].as_u64()? == streams && last["unit"] == "s").then_some(())
    });
    scope.stop();
}

#[test]
fn otlp_grpc_spans_and_metrics() {
    otlp_round_trip("grpc");
}

#[test]
fn otlp_http_spans_and_metrics() {
    otlp_round_trip("http");
}

/// A collector that is not there: inferscope keeps working, counts the failures, and says so
/// in one line.
#[test]
fn unreachable_collector_is_counted_not_fatal() {
    let dir = scratch("nocollector");
    let server = Fixture::start(&dir, &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut scope = Inferscope::attach(
        &dir,
        server.proc.pid(),
        &["--otlp-endpoint", "http://127.0.0.1:9", "--prometheus-listen", &listen, "--otlp-metrics-interval", "1"],
    );
    let truth = loadgen(&dir, &server.url(), &["--requests", "10", "--concurrency", "2"]);
    assert_eq!(scope.wait_requests(truth.len(), Duration::from_secs(20)).len(), truth.len());
    let failures = wait_for("export failures to be counted", Duration::from_secs(40), || {
        let (_, body) = http_get(port, "/metrics")?;
        let n: f64 = body
            .lines()
            .filter(|l| l.starts_with("inferscope_export_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (n > 0.0).then_some(n)
    });
    assert!(failures > 0.0);
    wait_for("a warning line", Duration::from_secs(20), || {
        std::fs::read_to_string(&scope.stderr)
            .ok()?
            .contains("export failures (is the OTLP collector reachable?)")
            .then_some(())
    });
    assert!(scope.proc.alive());
    scope.stop();
}

/// Prompt and completion text leave the process only with --capture-content, bounded.
#[test]
fn content_is_exported_only_when_asked() {
    let dir = scratch("content");
    let server = Fixture::start(&dir, &[]);
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &["--capture-content", "--max-content-bytes", "64"]);
    let truth = loadgen(
        &dir,
        &server.url(),
        &["--requests", "6", "--concurrency", "1", "--mix", "chat_stream=1,chat_nostream=1", "--max-tokens", "40"],
    );
    let recs = scope.wait_requests(truth.len(), Duration::from_secs(20));
    scope.stop();
    for r in &recs {
        let p = r["prompt"].as_str().expect("prompt captured");
        let c = r["completion"].as_str().expect("completion captured");
        assert!(p.starts_with("user: ") && p.len() <= 64, "{p:?}");
        assert!(!c.is_empty() && c.len() <= 64, "{c:?}");
    }
}

/// `--jsonl -` into a pipe nobody reads for 10 s under load: capture does not wait for it (no
/// ring-buffer drop), Prometheus counts every request, the JSONL sink drops whole lines past
/// its buffer and counts them, and once the pipe is read again the lines that come are whole.
#[test]
fn a_stalled_jsonl_reader_holds_up_nothing_else() {
    use std::io::BufRead as _;
    let dir = scratch("stalled-jsonl");
    let server = Fixture::start(&dir, &[]);
    let port = free_port();
    let stderr = dir.join("inferscope.stderr");
    let mut cmd = std::process::Command::new(inferscope_bin());
    cmd.args(["attach", "--pid", &server.proc.pid().to_string(), "--quiet", "--jsonl", "-"])
        .args(["--export-buffer-mib", "1", "--prometheus-listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr"));
    let mut scope = Proc::spawn("inferscope", &mut cmd);
    wait_for("inferscope to attach", Duration::from_secs(60), || {
        assert!(scope.alive(), "inferscope exited: {}", std::fs::read_to_string(&stderr).unwrap_or_default());
        std::fs::read_to_string(&stderr).ok()?.contains("tracing pid").then_some(())
    });
    // Nobody reads its standard output while the load runs.
    let truth = rust_load(
        &dir,
        &server.url(),
        &[
            "--requests",
            "0",
            "--duration",
            "10",
            "--concurrency",
            "16",
            "--max-tokens",
            "8",
            "--ttft-ms",
            "0",
            "--itl-ms",
            "0",
        ],
    );
    assert!(truth.len() > 2000, "too little load to fill the buffer: {} requests", truth.len());
    let sent = truth.len() as f64;
    let m = wait_for("Prometheus to count every request", Duration::from_secs(20), || {
        let m = scrape(
            port,
            &["inferscope_requests_total", "inferscope_export_dropped_total", "inferscope_dropped_events_total"],
        );
        (m["inferscope_requests_total"] >= sent).then_some(m)
    });
    eprintln!(
        "stalled JSONL reader: {sent} requests, Prometheus {}, JSONL lines dropped {}, BPF records dropped {}",
        m["inferscope_requests_total"], m["inferscope_export_dropped_total"], m["inferscope_dropped_events_total"]
    );
    assert_eq!(m["inferscope_requests_total"], sent);
    assert_eq!(m["inferscope_dropped_events_total"], 0.0, "capture waited for the JSONL reader");
    let dropped = m["inferscope_export_dropped_total"];
    assert!(dropped > 0.0, "a 1 MiB buffer held 10 s of lines: the test did not stall anything");
    // Read again, stop, and look at what came out.
    let out = scope.child.stdout.take().expect("stdout");
    let reader =
        std::thread::spawn(move || std::io::BufReader::new(out).lines().map_while(Result::ok).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(2));
    scope.signal(2);
    assert!(scope.wait_for_exit(Duration::from_secs(30)), "inferscope did not stop");
    let lines = reader.join().expect("reader");
    let mut requests = 0;
    let mut last_health = Value::Null;
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("a broken line ({e}): {l}"));
        if v["type"] == "request" && v["path"] == "/v1/chat/completions" {
            requests += 1;
        }
        if v["type"] == "health" {
            last_health = v;
        }
    }
    // Lines still waiting at the scrape were dropped after it: the stop's count is final.
    let dropped = last_health["export_dropped"]["jsonl"].as_f64().expect("the stop's health line");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(err.contains("is not being read fast enough"), "the operator was not told:\n{err}");
    assert!(requests > 0 && (requests as f64) < sent, "{requests} request lines of {sent}");
    assert!(requests as f64 + dropped >= sent, "lines neither written nor counted: {requests} + {dropped} < {sent}");
}

/// What ms_service_metric's documentation alerts on, from the wire: a stream whose first token
/// took over 5 s and that stalled over 1 s between two chunks, and a health probe answered 404.
#[test]
fn slow_streams_and_failed_health_checks_are_counted() {
    use std::io::{Read, Write};
    let dir = scratch("slow");
    let server = Fixture::start(&dir, &[]);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut scope = Inferscope::attach(&dir, server.proc.pid(), &["--prometheus-listen", &listen]);
    // First token at 5.2 s, then gaps of 10 ms, 1.2 s, 10 ms.
    let body = r#"{"model":"tiny-llama","stream":true,"messages":[{"role":"user","content":"hi"}],"fixture":{"ttft_ms":5200,"itl_ms":[10,1200,10],"tokens":4}}"#;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("[DONE]"), "{answer}");
    assert_eq!(http_get(server.port, "/health").map(|(s, _)| s), Some(200));
    assert_eq!(http_get(server.port, "/healthz").map(|(s, _)| s), Some(404));
    scope.wait_requests(3, Duration::from_secs(20));
    let value = |name: &str, label: &str| -> f64 {
        samples(metrics_port).iter().filter(|(n, _, line)| n == name && line.contains(label)).map(|(_, v, _)| v).sum()
    };
    assert_eq!(value("inferscope_slow_first_tokens_total", "over_seconds=\"5\""), 1.0);
    assert_eq!(value("inferscope_slow_first_tokens_total", "over_seconds=\"10\""), 0.0);
    assert_eq!(value("inferscope_slow_token_gaps_total", ""), 1.0, "one gap of 1.2 s");
    assert_eq!(value("inferscope_health_check_failures_total", "http_route=\"/healthz\""), 1.0);
    assert_eq!(value("inferscope_health_check_failures_total", "http_route=\"/health\""), 0.0);
    scope.stop();
}
