//! otlp-probe GRPC_PORT HTTP_PORT
//!
//! Sends, over each of grpc, grpc-gzip, http and http-gzip: one SERVER span
//! "rust-<route>" (2 attributes, 1 event, status ERROR "boom") and three
//! metrics: histogram "gen_ai.server.time_to_first_token" (bounds 0.1/0.5/1.0,
//! values 0.05 0.2 0.3 2.0), counter "requests" (+3) and a histogram with the
//! Prometheus-style name "vllm:time_to_first_token_seconds", which the Rust
//! SDK rejects (':' is not allowed in OpenTelemetry instrument names), so it
//! never reaches the receiver.
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{
    Compression, MetricExporter, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

fn send(route: &str, spans: SpanExporter, metrics: MetricExporter) {
    let res = Resource::builder()
        .with_service_name("rust-probe")
        .with_attribute(KeyValue::new("probe.route", route.to_string()))
        .build();
    let tp = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(res.clone())
        .build();
    let tracer = tp.tracer("inferscope.rust-probe");
    let mut span = tracer
        .span_builder(format!("rust-{route}"))
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("gen_ai.usage.output_tokens", 42i64),
            KeyValue::new("ttft_s", 0.125),
        ])
        .start(&tracer);
    span.add_event("first_token", vec![KeyValue::new("token.index", 0i64)]);
    span.set_status(Status::error("boom"));
    span.end();
    tp.shutdown().expect("trace provider shutdown (export failed?)");

    let mp = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(res)
        .build();
    let meter = mp.meter("inferscope.rust-probe");
    for name in ["gen_ai.server.time_to_first_token", "vllm:time_to_first_token_seconds"] {
        let h = meter
            .f64_histogram(name)
            .with_unit("s")
            .with_boundaries(vec![0.1, 0.5, 1.0])
            .build();
        for v in [0.05, 0.2, 0.3, 2.0] {
            h.record(v, &[KeyValue::new("model", "tiny")]);
        }
    }
    meter.u64_counter("requests").build().add(3, &[]);
    mp.shutdown().expect("meter provider shutdown (export failed?)");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() == 3, "usage: otlp-probe GRPC_PORT HTTP_PORT");
    let (g, h) = (&args[1], &args[2]);
    // tonic needs a tokio runtime to build its channel; the blocking reqwest
    // client must be built outside of one.
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    for gz in [false, true] {
        let route = if gz { "grpc-gzip" } else { "grpc" };
        let (s, m) = {
            let _guard = rt.enter();
            let ep = format!("http://127.0.0.1:{g}");
            let mut s = SpanExporter::builder().with_tonic().with_endpoint(ep.clone());
            let mut m = MetricExporter::builder().with_tonic().with_endpoint(ep);
            if gz {
                s = s.with_compression(Compression::Gzip);
                m = m.with_compression(Compression::Gzip);
            }
            (s.build().expect("tonic span exporter"), m.build().expect("tonic metric exporter"))
        };
        send(route, s, m);
    }
    for gz in [false, true] {
        let route = if gz { "http-gzip" } else { "http" };
        let mut s = SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://127.0.0.1:{h}/v1/traces"));
        let mut m = MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("http://127.0.0.1:{h}/v1/metrics"));
        if gz {
            s = s.with_compression(Compression::Gzip);
            m = m.with_compression(Compression::Gzip);
        }
        send(route, s.build().expect("http span exporter"), m.build().expect("http metric exporter"));
    }
    drop(rt);
    println!("otlp-probe: sent");
}
