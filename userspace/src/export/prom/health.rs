//! Prometheus families of inferscope's own health: BPF records written and lost, capture
//! truncation and gaps, parse and decode errors, failed exports and map writes, and what is
//! traced now. Fed every second from [`Health`] snapshots (totals since start, turned into
//! counter increments).

use std::collections::HashMap;

use anyhow::Result;
use inferscope_common::stat;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::common::{counter, gauge};
use crate::output::Health;

/// inferscope's own health families.
pub(super) struct HealthMetrics {
    in_flight: IntGauge,
    bpf_events: IntCounterVec,
    dropped: IntCounterVec,
    arrivals: IntCounterVec,
    truncated: IntCounter,
    captured_bytes: IntCounter,
    syscall_bytes: IntCounter,
    unclassified: IntCounter,
    learned: IntCounterVec,
    tls: IntCounterVec,
    tls_bytes: IntCounter,
    lost_bytes: IntCounter,
    gaps: IntCounter,
    discarded: IntCounter,
    parse_errors: IntCounterVec,
    incomplete: IntCounter,
    attached: IntGauge,
    connections: IntGauge,
    ipc_connections: IntGauge,
    ipc_discarded: IntCounter,
    export_errors: IntCounterVec,
    export_dropped: IntCounterVec,
    map_write_errors: IntCounterVec,
    /// Last absolute values seen, to turn health snapshots into counter increments.
    prev: HashMap<String, u64>,
}

impl HealthMetrics {
    pub(super) fn new(reg: &Registry) -> Result<Self> {
        let m = Self {
            in_flight: gauge(
                reg,
                "inferscope_requests_in_flight",
                "Requests whose head was seen and whose response has not ended.",
            )?,
            bpf_events: counter(
                reg,
                "inferscope_bpf_events_total",
                "Records the BPF programs wrote to the ring buffer, by kind.",
                &["kind"],
            )?,
            dropped: counter(
                reg,
                "inferscope_dropped_events_total",
                "Records lost before user space saw them, by reason.",
                &["reason"],
            )?,
            arrivals: counter(
                reg,
                "inferscope_arrival_times_total",
                "Segment arrival times recorded on watched ports, and used by reads of traced servers.",
                &["result"],
            )?,
            truncated: IntCounter::new(
                "inferscope_capture_truncated_syscalls_total",
                "Syscalls that moved more bytes than the capture size (head and tail kept).",
            )?,
            captured_bytes: IntCounter::new(
                "inferscope_captured_bytes_total",
                "Payload bytes copied from traced sockets.",
            )?,
            syscall_bytes: IntCounter::new(
                "inferscope_socket_bytes_total",
                "Bytes moved by syscalls on traced sockets, captured or not.",
            )?,
            unclassified: IntCounter::new(
                "inferscope_unclassified_socket_io_total",
                "Reads and writes of traced processes that moved bytes on a TCP or unix socket without being captured (an fd inferscope did not know, or a syscall it does not trace: sendfile, splice, recvmmsg, io_uring).",
            )?,
            learned: counter(
                reg,
                "inferscope_sockets_followed_total",
                "Sockets followed that their syscalls alone did not announce, by how: an accept whose enter preceded the attach, a dup of a tracked socket.",
                &["how"],
            )?,
            tls: counter(
                reg,
                "inferscope_tls_connections_total",
                "Connections of traced processes that carry TLS, by state: seen (TLS records on the wire), tied (to an SSL object of the process: plaintext captured), unread (closed with no plaintext seen: no OpenSSL probed in that process).",
                &["state"],
            )?,
            tls_bytes: IntCounter::new(
                "inferscope_tls_plaintext_bytes_total",
                "Plaintext bytes read and written through the probed SSL_read/SSL_write functions of traced processes.",
            )?,
            lost_bytes: IntCounter::new(
                "inferscope_capture_lost_bytes_total",
                "Stream bytes known to be missing (truncation or ring-buffer loss).",
            )?,
            gaps: IntCounter::new("inferscope_capture_gaps_total", "Gaps found in captured byte streams.")?,
            discarded: IntCounter::new(
                "inferscope_unparsed_bytes_total",
                "Captured bytes skipped while a parser was out of sync (not HTTP, or after lost bytes).",
            )?,
            parse_errors: counter(
                reg,
                "inferscope_parse_errors_total",
                "Input that could not be parsed, by protocol and cause.",
                &["protocol", "cause"],
            )?,
            incomplete: IntCounter::new(
                "inferscope_incomplete_requests_total",
                "Requests reported without their response end (lost bytes, closed connection, exited process).",
            )?,
            attached: gauge(reg, "inferscope_attached_processes", "Processes traced now.")?,
            connections: gauge(reg, "inferscope_tracked_connections", "Connections with parser state now.")?,
            ipc_connections: gauge(reg, "inferscope_ipc_connections", "Engine IPC (ZeroMQ) connections tracked now.")?,
            ipc_discarded: IntCounter::new(
                "inferscope_ipc_unparsed_bytes_total",
                "Bytes on engine IPC sockets that could not be framed (out of sync after attaching mid-stream or after lost bytes, or not ZeroMQ).",
            )?,
            export_errors: counter(
                reg,
                "inferscope_export_errors_total",
                "Failed exports, by exporter.",
                &["exporter"],
            )?,
            export_dropped: counter(
                reg,
                "inferscope_export_dropped_total",
                "Lines a sink dropped because its consumer did not keep up (--export-buffer-mib waiting already), by sink: jsonl, console. Capture and the other sinks go on meanwhile.",
                &["sink"],
            )?,
            map_write_errors: counter(
                reg,
                "inferscope_bpf_map_write_errors_total",
                "Failed writes into the BPF maps inferscope fills (TRACKED, SOCKETS, WATCHED_PORTS, PY_LAYOUTS, PY_TSTATES): what they name is not traced.",
                &["map"],
            )?,
            prev: HashMap::new(),
        };
        for c in [
            &m.truncated,
            &m.captured_bytes,
            &m.syscall_bytes,
            &m.unclassified,
            &m.lost_bytes,
            &m.gaps,
            &m.discarded,
            &m.incomplete,
            &m.ipc_discarded,
            &m.tls_bytes,
        ] {
            reg.register(Box::new(c.clone()))?;
        }
        Ok(m)
    }

    fn advance(prev: &mut HashMap<String, u64>, key: &str, now: u64, c: &IntCounter) {
        let p = prev.entry(key.to_string()).or_insert(0);
        if now > *p {
            c.inc_by(now - *p);
        }
        *p = now.max(*p);
    }

    pub(super) fn health(&mut self, h: &Health) {
        let prev = &mut self.prev;
        Self::advance(prev, "data", h.bpf_stat(stat::DATA_EVENTS), &self.bpf_events.with_label_values(&["data"]));
        Self::advance(prev, "conn", h.bpf_stat(stat::CONN_EVENTS), &self.bpf_events.with_label_values(&["connection"]));
        Self::advance(
            prev,
            "ringbuf",
            h.bpf_stat(stat::RINGBUF_DROPS),
            &self.dropped.with_label_values(&["ring_buffer_full"]),
        );
        Self::advance(
            prev,
            "sockmap",
            h.bpf_stat(stat::SOCKET_MAP_FULL),
            &self.dropped.with_label_values(&["socket_map_full"]),
        );
        Self::advance(
            prev,
            "trackmap",
            h.bpf_stat(stat::TRACKING_MAP_FULL),
            &self.dropped.with_label_values(&["tracking_map_full"]),
        );
        Self::advance(
            prev,
            "device_rate",
            h.bpf_stat(stat::DEVICE_RATE_LIMITED),
            &self.dropped.with_label_values(&["device_rate_limited"]),
        );
        Self::advance(
            prev,
            "readfail",
            h.bpf_stat(stat::READ_USER_FAILED),
            &self.dropped.with_label_values(&["user_memory_unreadable"]),
        );
        Self::advance(
            prev,
            "iov",
            h.bpf_stat(stat::IOV_OVERFLOW),
            &self.dropped.with_label_values(&["too_many_iovecs"]),
        );
        Self::advance(prev, "trunc", h.bpf_stat(stat::TRUNCATED_SYSCALLS), &self.truncated);
        Self::advance(prev, "captured", h.bpf_stat(stat::CAPTURED_BYTES), &self.captured_bytes);
        Self::advance(prev, "sysbytes", h.bpf_stat(stat::SYSCALL_BYTES), &self.syscall_bytes);
        Self::advance(prev, "unclassified", h.bpf_stat(stat::UNCLASSIFIED_SOCKET_IO), &self.unclassified);
        Self::advance(
            prev,
            "accept_exit",
            h.bpf_stat(stat::ACCEPTS_WITHOUT_ENTER),
            &self.learned.with_label_values(&["accept_exit"]),
        );
        Self::advance(prev, "dup", h.bpf_stat(stat::DUPS_FOLLOWED), &self.learned.with_label_values(&["dup"]));
        Self::advance(prev, "tls_seen", h.bpf_stat(stat::TLS_CONNECTIONS), &self.tls.with_label_values(&["seen"]));
        Self::advance(prev, "tls_tied", h.bpf_stat(stat::TLS_TIED), &self.tls.with_label_values(&["tied"]));
        Self::advance(prev, "tls_unread", h.tracker.tls_unread, &self.tls.with_label_values(&["unread"]));
        Self::advance(prev, "tls_bytes", h.bpf_stat(stat::TLS_PLAINTEXT_BYTES), &self.tls_bytes);
        Self::advance(
            prev,
            "tls_untied",
            h.bpf_stat(stat::TLS_UNTIED_CALLS),
            &self.dropped.with_label_values(&["tls_call_without_socket"]),
        );
        Self::advance(
            prev,
            "arr_rec",
            h.bpf_stat(stat::ARRIVALS_RECORDED),
            &self.arrivals.with_label_values(&["recorded"]),
        );
        Self::advance(prev, "arr_used", h.bpf_stat(stat::ARRIVALS_USED), &self.arrivals.with_label_values(&["used"]));
        Self::advance(prev, "lost", h.tracker.lost_bytes, &self.lost_bytes);
        Self::advance(prev, "gaps", h.tracker.gaps, &self.gaps);
        Self::advance(prev, "discarded", h.tracker.discarded_bytes, &self.discarded);
        Self::advance(prev, "incomplete", h.tracker.incomplete, &self.incomplete);
        Self::advance(prev, "ipc_discarded", h.tracker.ipc_discarded_bytes, &self.ipc_discarded);
        Self::advance(
            prev,
            "zmtp/dropped_message",
            h.tracker.ipc_dropped_messages,
            &self.parse_errors.with_label_values(&["zmtp", "dropped_message"]),
        );
        for (cause, n) in &h.tracker.parse_errors {
            Self::advance(prev, &format!("http/{cause}"), *n, &self.parse_errors.with_label_values(&["http", cause]));
        }
        for (proto, cause, n) in [
            ("http", "orphan_response", h.tracker.orphan_responses),
            ("http", "head_truncated", h.tracker.head_truncated),
            ("openai", "bad_chunk", h.tracker.bad_chunks),
            ("http", "too_many_pipelined", h.tracker.pending_overflow),
        ] {
            Self::advance(prev, &format!("{proto}/{cause}"), n, &self.parse_errors.with_label_values(&[proto, cause]));
        }
        for (cause, n) in &h.decode_errors {
            Self::advance(prev, &format!("event/{cause}"), *n, &self.parse_errors.with_label_values(&["event", cause]));
        }
        for (map, n) in &h.map_write_errors {
            Self::advance(prev, &format!("map/{map}"), *n, &self.map_write_errors.with_label_values(&[map]));
        }
        for (sink, n) in &h.export_dropped {
            Self::advance(prev, &format!("dropped/{sink}"), *n, &self.export_dropped.with_label_values(&[sink]));
        }
        for (exp, n) in &h.export_errors {
            Self::advance(prev, &format!("export/{exp}"), *n, &self.export_errors.with_label_values(&[exp]));
        }
        self.attached.set(h.attached_processes as i64);
        self.connections.set(h.tracker.connections as i64);
        self.ipc_connections.set(h.tracker.ipc_connections as i64);
        self.in_flight.set(h.in_flight as i64);
    }
}
