//! One HTTP exchange on its way to becoming a [`RequestRecord`]: the request head and body,
//! the response head, and what the response body says, chunk by chunk for SSE streams.
//! Timestamps are CLOCK_MONOTONIC nanoseconds from the BPF side.

use std::net::SocketAddr;

use crate::protocol::{
    http::{Head, StartLine},
    openai::{self, Operation, RequestInfo, ResponseInfo, Usage},
    sse::{SseEvent, SseParser},
};

/// Caps that bound memory per in-flight request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Body bytes kept contiguously for parsing.
    pub body_bytes: usize,
    /// Bytes of a body's end kept once the contiguous part is full or broken.
    pub tail_bytes: usize,
    /// Inter-token gaps kept per request.
    pub itl_samples: usize,
    /// Output-chunk timestamps kept per request (span events at tracing level 2).
    pub chunk_times: usize,
    /// Prompt/completion text kept per request when content capture is on (0: off).
    pub content_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { body_bytes: 256 * 1024, tail_bytes: 16 * 1024, itl_samples: 65536, chunk_times: 4096, content_bytes: 0 }
    }
}

/// Where token counts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokensFrom {
    /// The server's `usage` object.
    Usage,
    /// Counted output events (one per streamed chunk with output).
    Events,
}

impl TokensFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            TokensFrom::Usage => "usage",
            TokensFrom::Events => "events",
        }
    }
}

/// A finished request, as every exporter sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub pid: u32,
    pub conn_id: u64,
    pub peer: Option<SocketAddr>,
    pub server_port: Option<u16>,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub operation: Operation,
    pub status: Option<u16>,
    /// Model named in the request.
    pub model: Option<String>,
    /// Model named in the response.
    pub response_model: Option<String>,
    pub stream: bool,
    /// The response's id (`chatcmpl-...`), else the `x-request-id` header.
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub user_agent: Option<String>,
    /// First request byte in.
    pub start_ns: u64,
    /// Last request byte in.
    pub request_end_ns: Option<u64>,
    /// Response head out.
    pub response_start_ns: Option<u64>,
    /// First output event out (streaming only).
    pub first_token_ns: Option<u64>,
    /// Last output event out.
    pub last_token_ns: Option<u64>,
    /// Last response byte out, or when the client went away.
    pub end_ns: u64,
    pub output_events: u64,
    /// Gaps between consecutive output events of the same choice, ns.
    pub itl_ns: Vec<u64>,
    /// (timestamp, choice index) of output events, capped (span events).
    pub chunk_times: Vec<(u64, u32)>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub tokens_from: Option<TokensFrom>,
    /// One per choice, in index order.
    pub finish_reasons: Vec<String>,
    pub n: u32,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// The client closed the connection before the response ended.
    pub aborted: bool,
    /// The response's end was seen.
    pub complete: bool,
    /// Some bytes of this exchange were not captured.
    pub capture_gaps: bool,
    /// The request's head was longer than what was captured of it (a large cookie or token):
    /// method and path are from its first bytes, the headers from either side of the gap.
    pub head_truncated: bool,
    /// It came over TLS (plaintext read from the server's TLS library).
    pub tls: bool,
    /// `error.type`: the HTTP status class, or the error the body reported.
    pub error_type: Option<String>,
    /// Only with content capture.
    pub prompt: Option<String>,
    pub completion: Option<String>,
    /// What the engine's own messages said about this request (engine layer), when seen.
    pub engine: Option<crate::engine::EnginePhases>,
}

impl RequestRecord {
    fn secs(ns: u64) -> f64 {
        ns as f64 / 1e9
    }
    pub fn e2e_s(&self) -> f64 {
        Self::secs(self.end_ns.saturating_sub(self.start_ns))
    }
    pub fn ttft_s(&self) -> Option<f64> {
        self.first_token_ns.map(|t| Self::secs(t.saturating_sub(self.start_ns)))
    }
    /// Time per output token after the first: (last - first) / (tokens per choice - 1).
    pub fn tpot_s(&self) -> Option<f64> {
        let (first, last) = (self.first_token_ns?, self.last_token_ns?);
        let per_choice = self.completion_tokens? / u64::from(self.n.max(1));
        (per_choice > 1).then(|| Self::secs(last.saturating_sub(first)) / (per_choice - 1) as f64)
    }
    /// The finish reason of the first choice; "abort" for aborted requests.
    pub fn finish_reason(&self) -> Option<&str> {
        if self.aborted {
            return Some("abort");
        }
        self.finish_reasons.first().map(String::as_str)
    }
    /// Model label: the response's, else the request's.
    pub fn model_label(&self) -> Option<&str> {
        self.response_model.as_deref().or(self.model.as_deref())
    }
}

/// Keeps a bounded copy of a body: a contiguous prefix and, past it or after a gap, the end.
#[derive(Debug, Default)]
struct BodyCapture {
    head: Vec<u8>,
    tail: Vec<u8>,
    broken: bool,
}

impl BodyCapture {
    fn push(&mut self, bytes: &[u8], lim: &Limits) {
        if !self.broken && self.head.len() + bytes.len() <= lim.body_bytes {
            self.head.extend_from_slice(bytes);
            return;
        }
        if !self.broken {
            let room = lim.body_bytes.saturating_sub(self.head.len());
            self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
            self.broken = true;
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > lim.tail_bytes * 2 {
            let cut = self.tail.len() - lim.tail_bytes;
            self.tail.drain(..cut);
        }
    }
    fn gap(&mut self) {
        self.broken = true;
        // Bytes after a gap are not adjacent to what the tail holds; keep only what follows.
        self.tail.clear();
    }
}

/// Accumulates a streamed response, chunk by chunk.
#[derive(Debug, Default)]
struct StreamAcc {
    sse: SseParser,
    events: Vec<SseEvent>,
    first_output: Option<u64>,
    last_output: Option<u64>,
    output_events: u64,
    last_by_choice: Vec<(u32, u64)>,
    itl: Vec<u64>,
    chunk_times: Vec<(u64, u32)>,
    finish: Vec<(u32, String)>,
    usage: Option<Usage>,
    id: Option<String>,
    model: Option<String>,
    error: Option<String>,
    done: bool,
    bad_chunks: u64,
    text: String,
}

impl StreamAcc {
    fn on_event(&mut self, ev: &SseEvent, lim: &Limits) {
        if ev.data == b"[DONE]" {
            self.done = true;
            return;
        }
        let ids = self.id.is_none() || self.model.is_none();
        let Some(info) = openai::parse_chunk(&ev.data, lim.content_bytes > 0, ids) else {
            self.bad_chunks += 1;
            return;
        };
        self.absorb(info, ev.ts_ns, lim);
    }

    fn absorb(&mut self, info: ResponseInfo, ts: u64, lim: &Limits) {
        if self.id.is_none() {
            self.id = info.id;
        }
        if self.model.is_none() {
            self.model = info.model;
        }
        if info.usage.is_some() {
            self.usage = info.usage;
        }
        if info.error.is_some() {
            self.error = info.error;
        }
        let mut counted = false;
        for c in info.choices {
            if c.has_output {
                self.first_output.get_or_insert(ts);
                self.last_output = Some(ts);
                if !counted {
                    self.output_events += 1;
                    counted = true;
                }
                match self.last_by_choice.iter_mut().find(|(i, _)| *i == c.index) {
                    Some((_, last)) => {
                        if self.itl.len() < lim.itl_samples {
                            self.itl.push(ts.saturating_sub(*last));
                        }
                        *last = ts;
                    }
                    None => {
                        if self.last_by_choice.len() < 128 {
                            self.last_by_choice.push((c.index, ts));
                        }
                    }
                }
                if self.chunk_times.len() < lim.chunk_times {
                    self.chunk_times.push((ts, c.index));
                }
            }
            if let Some(t) = c.text
                && self.text.len() < lim.content_bytes
            {
                let room = lim.content_bytes - self.text.len();
                let cut = floor_char_boundary(&t, room);
                self.text.push_str(&t[..cut]);
            }
            if let Some(f) = c.finish_reason
                && !self.finish.iter().any(|(i, _)| *i == c.index)
                && self.finish.len() < 128
            {
                self.finish.push((c.index, f));
            }
        }
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An exchange in flight.
#[derive(Debug)]
pub struct Exchange {
    pub req: Box<Head>,
    pub request_end_ns: Option<u64>,
    req_body: BodyCapture,
    resp: Option<Box<Head>>,
    resp_body: BodyCapture,
    stream: Option<StreamAcc>,
    pub response_complete: bool,
    pub capture_gaps: bool,
    pub aborted: bool,
    pub end_ns: Option<u64>,
}

impl Exchange {
    pub fn new(req: Box<Head>) -> Self {
        Self {
            req,
            request_end_ns: None,
            req_body: BodyCapture::default(),
            resp: None,
            resp_body: BodyCapture::default(),
            stream: None,
            response_complete: false,
            capture_gaps: false,
            aborted: false,
            end_ns: None,
        }
    }

    pub fn has_response(&self) -> bool {
        self.resp.is_some()
    }

    pub fn request_body(&mut self, bytes: &[u8], lim: &Limits) {
        self.req_body.push(bytes, lim);
    }

    pub fn request_gap(&mut self) {
        self.req_body.gap();
        self.capture_gaps = true;
    }

    pub fn response_head(&mut self, head: Box<Head>) {
        let sse = head.header("content-type").is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
        if sse {
            self.stream = Some(StreamAcc::default());
        }
        self.resp = Some(head);
    }

    pub fn response_body(&mut self, ts: u64, bytes: &[u8], lim: &Limits) {
        match &mut self.stream {
            Some(acc) => {
                let mut events = std::mem::take(&mut acc.events);
                acc.sse.feed(ts, bytes, &mut events);
                for ev in events.drain(..) {
                    acc.on_event(&ev, lim);
                }
                acc.events = events;
            }
            None => self.resp_body.push(bytes, lim),
        }
    }

    pub fn response_gap(&mut self) {
        self.capture_gaps = true;
        match &mut self.stream {
            Some(acc) => acc.sse.gap(),
            None => self.resp_body.gap(),
        }
    }

    /// Chunks that failed to parse as JSON (counted by the caller).
    pub fn bad_chunks(&self) -> u64 {
        self.stream.as_ref().map_or(0, |s| s.bad_chunks + s.sse.dropped)
    }

    /// Builds the record. `pid`, `conn_id`, `peer` and `server_port` describe the connection.
    pub fn finish(
        self,
        pid: u32,
        conn_id: u64,
        peer: Option<SocketAddr>,
        server_port: Option<u16>,
        lim: &Limits,
    ) -> RequestRecord {
        let (method, target) = match &self.req.start {
            StartLine::Request { method, target } => (method.clone(), target.clone()),
            StartLine::Response { .. } => (String::new(), String::new()),
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        let operation = Operation::from_path(&path);
        let keep = lim.content_bytes > 0;

        let req_info: RequestInfo = if operation.is_llm() {
            if !self.req_body.broken {
                openai::parse_request(&self.req_body.head, keep).unwrap_or_default()
            } else {
                openai::scan_request(&[&self.req_body.head, &self.req_body.tail])
            }
        } else {
            RequestInfo::default()
        };
        let status = self.resp.as_ref().and_then(|h| match h.start {
            StartLine::Response { status, .. } => Some(status),
            _ => None,
        });
        let header = |name: &str| self.req.header(name).map(str::to_string);
        let resp_header = |name: &str| self.resp.as_ref().and_then(|h| h.header(name)).map(str::to_string);

        let mut rec = RequestRecord {
            pid,
            conn_id,
            peer,
            server_port,
            method,
            path,
            operation,
            status,
            model: req_info.model,
            response_model: None,
            stream: self.stream.is_some() || req_info.stream == Some(true),
            request_id: None,
            traceparent: header("traceparent"),
            user_agent: header("user-agent"),
            start_ns: self.req.first_ts_ns,
            request_end_ns: self.request_end_ns,
            response_start_ns: self.resp.as_ref().map(|h| h.first_ts_ns),
            first_token_ns: None,
            last_token_ns: None,
            end_ns: self.end_ns.unwrap_or(self.req.first_ts_ns),
            output_events: 0,
            itl_ns: Vec::new(),
            chunk_times: Vec::new(),
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            tokens_from: None,
            finish_reasons: Vec::new(),
            n: req_info.n.unwrap_or(1).max(1),
            max_tokens: req_info.max_tokens,
            temperature: req_info.temperature,
            top_p: req_info.top_p,
            aborted: self.aborted,
            complete: self.response_complete,
            capture_gaps: self.capture_gaps
                || self.req.truncated
                || self.req_body.broken && self.req_body.head.len() < lim.body_bytes,
            head_truncated: self.req.truncated,
            tls: false,
            error_type: None,
            prompt: req_info.prompt.map(|mut p| {
                p.truncate(floor_char_boundary(&p, lim.content_bytes));
                p
            }),
            completion: None,
            engine: None,
        };

        let info: Option<ResponseInfo> = match self.stream {
            Some(acc) => {
                rec.first_token_ns = acc.first_output;
                rec.last_token_ns = acc.last_output;
                rec.output_events = acc.output_events;
                rec.itl_ns = acc.itl;
                rec.chunk_times = acc.chunk_times;
                let mut finish = acc.finish;
                finish.sort_by_key(|(i, _)| *i);
                rec.finish_reasons = finish.into_iter().map(|(_, f)| f).collect();
                if keep && !acc.text.is_empty() {
                    rec.completion = Some(acc.text);
                }
                Some(ResponseInfo {
                    id: acc.id,
                    model: acc.model,
                    choices: Vec::new(),
                    usage: acc.usage,
                    error: acc.error,
                })
            }
            None if operation.is_llm() && status.is_some() => {
                let parsed = if !self.resp_body.broken {
                    openai::parse_response(&self.resp_body.head, keep)
                } else {
                    Some(openai::scan_response(&[&self.resp_body.head, &self.resp_body.tail]))
                };
                if let Some(p) = &parsed {
                    let mut choices = p.choices.clone();
                    choices.sort_by_key(|c| c.index);
                    rec.finish_reasons = choices.iter().filter_map(|c| c.finish_reason.clone()).collect();
                    if keep {
                        let text: String = choices.iter().filter_map(|c| c.text.clone()).collect();
                        if !text.is_empty() {
                            let mut t = text;
                            t.truncate(floor_char_boundary(&t, lim.content_bytes));
                            rec.completion = Some(t);
                        }
                    }
                }
                parsed
            }
            None => None,
        };
        if let Some(info) = info {
            rec.request_id = info.id;
            rec.response_model = info.model;
            if let Some(u) = info.usage {
                rec.prompt_tokens = u.prompt_tokens;
                rec.completion_tokens = u.completion_tokens;
                rec.cached_tokens = u.prompt_tokens_details.and_then(|d| d.cached_tokens);
                rec.tokens_from = Some(TokensFrom::Usage);
            }
            if let Some(e) = info.error {
                rec.error_type = Some(e);
            }
        }
        if rec.tokens_from.is_none() && operation.generates() && rec.stream && rec.output_events > 0 {
            rec.completion_tokens = Some(rec.output_events);
            rec.tokens_from = Some(TokensFrom::Events);
        }
        if rec.request_id.is_none() {
            rec.request_id = header("x-request-id").or_else(|| resp_header("x-request-id"));
        }
        if rec.error_type.is_none() {
            rec.error_type = match status {
                Some(s) if s >= 400 => Some(s.to_string()),
                None if !rec.aborted => Some("no_response".to_string()),
                _ if !rec.complete && !rec.aborted => Some("incomplete_response".to_string()),
                _ => None,
            };
        }
        rec
    }
}
