//! A human-readable line per finished request, and a health line when something was lost.

use crate::{output::Health, request::RequestRecord};

fn ms(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{:.1}ms", s * 1e3))
}

pub fn request_line(r: &RequestRecord) -> String {
    let status = r.status.map_or_else(|| "---".to_string(), |s| s.to_string());
    let tokens = match (r.prompt_tokens, r.completion_tokens) {
        (None, None) => "-".to_string(),
        (p, c) => format!(
            "{}+{}{}",
            p.map_or("?".to_string(), |v| v.to_string()),
            c.map_or("?".to_string(), |v| v.to_string()),
            r.tokens_from.map_or(String::new(), |t| format!("({})", t.as_str()))
        ),
    };
    let mut line = format!(
        "pid={} {} {} {} model={} {} ttft={} tpot={} e2e={} tokens={} finish={}",
        r.pid,
        r.method,
        r.path,
        status,
        r.model_label().unwrap_or("-"),
        if r.stream { "stream" } else { "unary" },
        ms(r.ttft_s()),
        ms(r.tpot_s()),
        ms(Some(r.e2e_s())),
        tokens,
        r.finish_reason().unwrap_or("-"),
    );
    if let Some(id) = &r.request_id {
        line.push_str(&format!(" id={id}"));
    }
    if let Some(e) = &r.error_type {
        line.push_str(&format!(" error={e}"));
    }
    if r.head_truncated {
        line.push_str(" head=truncated");
    }
    if r.capture_gaps {
        line.push_str(" capture=partial");
    }
    line
}

/// The last line at the stop: what was seen and lost over the whole run.
pub fn stop_line(h: &Health) -> String {
    use inferscope_common::stat;
    format!(
        "stopped; {} data events, {} ring-buffer drops, {} stream bytes missing",
        h.bpf_stat(stat::DATA_EVENTS),
        h.bpf_stat(stat::RINGBUF_DROPS),
        h.tracker.lost_bytes
    )
}

/// One line describing what was lost since the previous health, or None if nothing was.
pub fn loss_line(prev: &Health, now: &Health) -> Option<String> {
    use inferscope_common::stat;
    let d = |i| now.bpf_stat(i).saturating_sub(prev.bpf_stat(i));
    let ring = d(stat::RINGBUF_DROPS);
    let map = d(stat::SOCKET_MAP_FULL);
    let lost = now.tracker.lost_bytes.saturating_sub(prev.tracker.lost_bytes);
    let mut parts = Vec::new();
    if ring > 0 {
        parts.push(format!("{ring} events dropped because the ring buffer was full (raise --ring-buffer-size)"));
    }
    if map > 0 {
        parts.push(format!("{map} sockets not traced because the socket map was full"));
    }
    let tracking = d(stat::TRACKING_MAP_FULL);
    if tracking > 0 {
        parts.push(format!(
            "{tracking} syscalls, connections or child processes not followed because a tracking map was full"
        ));
    }
    let unclassified = d(stat::UNCLASSIFIED_SOCKET_IO);
    if unclassified > 0 {
        parts.push(format!(
            "{unclassified} socket reads/writes not captured (an fd inferscope did not know yet, or sendfile, splice, recvmmsg, io_uring)"
        ));
    }
    let unread = now.tracker.tls_unread.saturating_sub(prev.tracker.tls_unread);
    if unread > 0 {
        parts.push(format!(
            "{unread} TLS connections closed with no plaintext seen (the process's TLS library is not one inferscope probes: OpenSSL's SSL_read/SSL_write were not found, or --no-tls)"
        ));
    }
    let untied = d(stat::TLS_UNTIED_CALLS);
    if untied > 0 {
        parts.push(format!(
            "{untied} SSL_read/SSL_write calls not tied to a traced socket (their plaintext is not captured)"
        ));
    }
    let limited = d(stat::DEVICE_RATE_LIMITED);
    if limited > 0 {
        parts.push(format!(
            "{limited} device calls counted but not reported: over --device-rate-limit (raise it, or switch the busiest probe off)"
        ));
    }
    let export: u64 = now
        .export_errors
        .iter()
        .map(|(_, n)| n)
        .sum::<u64>()
        .saturating_sub(prev.export_errors.iter().map(|(_, n)| n).sum::<u64>());
    if export > 0 {
        parts.push(format!("{export} export failures (is the OTLP collector reachable?)"));
    }
    let writes = |h: &Health| h.map_write_errors.iter().map(|(_, n)| n).sum::<u64>();
    let writes = writes(now).saturating_sub(writes(prev));
    if writes > 0 {
        parts.push(format!("{writes} writes into BPF maps failed (processes, sockets or ports not traced)"));
    }
    if parts.is_empty() {
        return None;
    }
    if lost > 0 {
        parts.push(format!("{lost} stream bytes missing"));
    }
    Some(format!("warning: {}", parts.join("; ")))
}
