//! What `inferscope top` draws: a [`Snapshot`] and the keys pressed so far ([`Ui`]) become the
//! screen's lines ([`Ui::render`]), plain text that reads without colour, for any size from
//! 80x24 up. Pure: the terminal side (cmd/top.rs) only draws these lines and reads keys, so
//! what a person sees is unit-tested here line by line.
//!
//! Views: processes (one row per traced server, and the selected one's engine, device and
//! Python detail with a requests-per-second sparkline), the slowest recent requests with their
//! phases drawn as a bar, and help. Keys: `p` `r` `?` switch views, `s` sorts, `/` filters by
//! text (pid, engine, pod, model), up/down (or `j` `k`) select, space pauses, `q` quits.

use super::{ProcessRow, RequestRow, Snapshot, WINDOW_S};

/// A key, as the view understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    Enter,
    Esc,
    Backspace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Processes,
    Requests,
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    RequestRate,
    Requests,
    TtftP99,
    Errors,
    Pid,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::RequestRate => Sort::Requests,
            Sort::Requests => Sort::TtftP99,
            Sort::TtftP99 => Sort::Errors,
            Sort::Errors => Sort::Pid,
            Sort::Pid => Sort::RequestRate,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::RequestRate => "req/s",
            Sort::Requests => "requests",
            Sort::TtftP99 => "TTFT p99",
            Sort::Errors => "errors",
            Sort::Pid => "pid",
        }
    }
}

/// How a line is drawn (the terminal side maps these to bold / reversed; the text alone must
/// carry the meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emphasis {
    Normal,
    Title,
    Header,
    Selected,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub emphasis: Emphasis,
}

/// The view's state: what the keys chose.
#[derive(Clone, Debug)]
pub struct Ui {
    pub view: View,
    pub sort: Sort,
    pub filter: String,
    pub editing_filter: bool,
    pub paused: bool,
    pub selected: usize,
    /// Where the data comes from (`pid 4242`, `daemon at /run/...`), for the title.
    pub source: String,
}

impl Ui {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            view: View::Processes,
            sort: Sort::RequestRate,
            filter: String::new(),
            editing_filter: false,
            paused: false,
            selected: 0,
            source: source.into(),
        }
    }

    /// Takes a key; returns false when it asks to quit.
    pub fn key(&mut self, k: Key) -> bool {
        if self.editing_filter {
            match k {
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() && self.filter.len() < 64 => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return true;
        }
        match k {
            Key::Char('q') => return false,
            Key::Char('p') => self.view = View::Processes,
            Key::Char('r') => self.view = View::Requests,
            Key::Char('?') | Key::Char('h') => {
                self.view = if self.view == View::Help { View::Processes } else { View::Help };
            }
            Key::Esc => {
                if self.view == View::Help {
                    self.view = View::Processes;
                } else {
                    self.filter.clear();
                }
            }
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            Key::Char(' ') => self.paused = !self.paused,
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => self.selected = self.selected.saturating_add(1),
            _ => {}
        }
        true
    }

    fn matches_process(&self, p: &ProcessRow) -> bool {
        let f = self.filter.to_lowercase();
        f.is_empty()
            || p.pid.to_string().contains(&f)
            || p.engine.to_lowercase().contains(&f)
            || p.comm.to_lowercase().contains(&f)
            || p.pod.as_deref().is_some_and(|x| x.to_lowercase().contains(&f))
            || p.models.iter().any(|m| m.to_lowercase().contains(&f))
    }

    fn matches_request(&self, r: &RequestRow, procs: &[&ProcessRow]) -> bool {
        let f = self.filter.to_lowercase();
        f.is_empty() || r.model.to_lowercase().contains(&f) || procs.iter().any(|p| p.pid == r.pid)
    }

    /// The processes shown, in the chosen order.
    fn processes<'a>(&self, s: &'a Snapshot) -> Vec<&'a ProcessRow> {
        let mut v: Vec<&ProcessRow> = s.processes.iter().filter(|p| self.matches_process(p)).collect();
        let key = |p: &ProcessRow| -> f64 {
            match self.sort {
                Sort::RequestRate => p.req_per_s,
                Sort::Requests => p.requests as f64,
                Sort::TtftP99 => p.ttft_p99_s.unwrap_or(-1.0),
                Sort::Errors => (p.errors + p.aborts) as f64,
                Sort::Pid => -(p.pid as f64),
            }
        };
        v.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.pid.cmp(&b.pid)));
        v
    }

    /// The screen: exactly `height` lines of at most `width` characters. `note`: the last
    /// thing the daemon said, for the bottom line.
    pub fn render(&self, s: &Snapshot, width: usize, height: usize, note: &str) -> Vec<Line> {
        let width = width.max(20);
        let mut out = Vec::new();
        let procs = self.processes(s);
        let rate: f64 = procs.iter().map(|p| p.req_per_s).sum();
        let total: u64 = procs.iter().map(|p| p.requests).sum();
        out.push(line(
            format!(
                "inferscope top - {} - {} process{}, {total} requests, {:.1} req/s, {} in flight{}{}",
                self.source,
                procs.len(),
                if procs.len() == 1 { "" } else { "es" },
                rate,
                s.in_flight,
                if s.ring_buffer_drops > 0 {
                    format!(", {} ring-buffer drops", s.ring_buffer_drops)
                } else {
                    String::new()
                },
                if self.paused { " [PAUSED]" } else { "" },
            ),
            Emphasis::Title,
        ));
        let filter = if self.editing_filter {
            format!("filter: {}_", self.filter)
        } else if self.filter.is_empty() {
            "filter: - [/]".to_string()
        } else {
            format!("filter: {} [/ Esc]", self.filter)
        };
        out.push(line(
            format!("[p]rocesses [r]equests [?]help  sort: {} [s]  {filter}  [space] pause  [q]uit", self.sort.name()),
            Emphasis::Normal,
        ));
        match self.view {
            View::Processes => self.render_processes(&procs, width, height, &mut out),
            View::Requests => self.render_requests(s, &procs, width, height, &mut out),
            View::Help => render_help(&mut out),
        }
        // The bottom line: the daemon's last word, or how long it has been collecting.
        let bottom = if note.is_empty() {
            format!("collecting for {:.0} s; percentiles over the last {WINDOW_S} s", s.collecting_s)
        } else {
            note.to_string()
        };
        out.truncate(height.saturating_sub(1));
        while out.len() < height.saturating_sub(1) {
            out.push(line(String::new(), Emphasis::Normal));
        }
        out.push(line(bottom, Emphasis::Normal));
        for l in &mut out {
            l.text = clip(&l.text, width);
        }
        out
    }

    fn render_processes(&self, procs: &[&ProcessRow], width: usize, height: usize, out: &mut Vec<Line>) {
        out.push(line(
            format!(
                "{:>7} {:<12} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9} {:>3}",
                "PID", "ENGINE/POD", "REQS", "REQ/S", "TTFT50", "TTFT99", "TPOT", "ITL99", "TOK/S i/o", "ERR"
            ),
            Emphasis::Header,
        ));
        if procs.is_empty() {
            out.push(line(
                if self.filter.is_empty() {
                    "  (no server traced yet)".to_string()
                } else {
                    format!("  (nothing matches the filter `{}`)", self.filter)
                },
                Emphasis::Normal,
            ));
            return;
        }
        let selected = self.selected.min(procs.len() - 1);
        // Room for the detail block (7 lines) below the table when the screen has it.
        let detail_lines = 7;
        let room = height.saturating_sub(out.len() + 2 + detail_lines).max(1);
        let first = selected.saturating_sub(room.saturating_sub(1));
        for (i, p) in procs.iter().enumerate().skip(first).take(room) {
            let who = p.pod.as_deref().map(|x| x.rsplit('/').next().unwrap_or(x)).unwrap_or(&p.engine);
            out.push(line(
                format!(
                    "{}{:>6} {:<12} {:>6} {:>6.1} {:>7} {:>7} {:>7} {:>7} {:>9} {:>3}",
                    if i == selected { '>' } else { ' ' },
                    p.pid,
                    clip(who, 12),
                    p.requests,
                    p.req_per_s,
                    dur(p.ttft_p50_s),
                    dur(p.ttft_p99_s),
                    dur(p.tpot_p50_s),
                    dur(p.itl_p99_s),
                    format!("{}/{}", count(p.tokens_in_per_s), count(p.tokens_out_per_s)),
                    p.errors + p.aborts,
                ),
                if i == selected { Emphasis::Selected } else { Emphasis::Normal },
            ));
        }
        let p = procs[selected];
        out.push(line(String::new(), Emphasis::Normal));
        let mut title = format!("pid {} {} ({})", p.pid, p.engine, p.comm);
        if let Some(pod) = &p.pod {
            title += &format!(" pod {pod}");
        }
        if !p.models.is_empty() {
            title += &format!(" model {}", p.models.join(","));
        }
        out.push(line(title, Emphasis::Header));
        let spark_w = width.saturating_sub(26).min(WINDOW_S as usize);
        out.push(line(
            format!(
                "req/s, last {spark_w} s |{}| max {:.0}",
                sparkline(&p.history[p.history.len().saturating_sub(spark_w)..]),
                p.history.iter().copied().fold(0.0, f64::max)
            ),
            Emphasis::Normal,
        ));
        out.push(line(
            format!(
                "requests  e2e p50 {}  queue p50 {}  prefill p50 {}  decode p50 {}  errors {} aborts {}",
                dur(p.e2e_p50_s),
                dur(p.queue_p50_s),
                dur(p.prefill_p50_s),
                dur(p.decode_p50_s),
                p.errors,
                p.aborts
            ),
            Emphasis::Normal,
        ));
        out.push(line(
            match &p.engine_side {
                Some(e) => format!(
                    "engine    steps/s {:.1}  batch {:.1}  running {}  waiting {}  KV cache {}",
                    e.steps_per_s,
                    e.batch_avg,
                    opt(e.running),
                    opt(e.waiting),
                    e.kv_usage.map_or("-".into(), |k| format!("{:.0}%", k * 100.0))
                ),
                None => "engine    - (no engine IPC seen)".into(),
            },
            Emphasis::Normal,
        ));
        out.push(line(
            match &p.device {
                Some(d) => {
                    let top: Vec<String> = d.top_kernels.iter().take(3).map(|(k, n)| format!("{k} {n}")).collect();
                    format!(
                        "device    launches/s {}  graphs/s {}  sync {:.0}%  copies {}/s  collectives/s {}  top: {}",
                        count(d.launches_per_s),
                        count(d.graphs_per_s),
                        d.sync_share * 100.0,
                        bytes(d.copy_bytes_per_s),
                        count(d.collectives_per_s),
                        if top.is_empty() { "-".into() } else { top.join(", ") }
                    )
                }
                None => "device    - (no accelerator runtime calls seen)".into(),
            },
            Emphasis::Normal,
        ));
        let mut python: Vec<String> = p
            .timers
            .iter()
            .map(|(f, n, p50, p99)| format!("{f} p50 {} p99 {} ({n})", dur(Some(*p50)), dur(Some(*p99))))
            .collect();
        if !p.profile.is_empty() {
            let hot: Vec<String> = p.profile.iter().take(3).map(|(f, pct)| format!("{f} {pct:.0}%")).collect();
            python.push(format!("hottest: {}", hot.join(", ")));
        }
        out.push(line(
            format!(
                "python    {}",
                if python.is_empty() { "- (no timers or profile)".into() } else { python.join("; ") }
            ),
            Emphasis::Normal,
        ));
    }

    fn render_requests(&self, s: &Snapshot, procs: &[&ProcessRow], width: usize, height: usize, out: &mut Vec<Line>) {
        out.push(line(
            format!(
                "slowest of the last {WINDOW_S} s | q queue p prefill d decode h other | no engine: f to 1st token s stream r reply"
            ),
            Emphasis::Normal,
        ));
        let head = format!("{:>7} {:>7} {:>7} {:>9} {:>4} {:<12} ", "PID", "E2E", "TTFT", "TOKENS", "HTTP", "MODEL");
        let bar_w = width.saturating_sub(head.len() + 1).max(10);
        out.push(line(format!("{head}PHASES"), Emphasis::Header));
        let rows: Vec<&RequestRow> = s.slowest.iter().filter(|r| self.matches_request(r, procs)).collect();
        if rows.is_empty() {
            out.push(line("  (no finished request in the window)".into(), Emphasis::Normal));
            return;
        }
        let longest = rows.iter().map(|r| r.e2e_s).fold(0.0, f64::max).max(1e-9);
        let room = height.saturating_sub(out.len() + 1);
        for r in rows.into_iter().take(room) {
            let status = if r.aborted { "abrt".to_string() } else { r.status.to_string() };
            out.push(line(
                format!(
                    "{:>7} {:>7} {:>7} {:>9} {:>4} {:<12} {}",
                    r.pid,
                    dur(Some(r.e2e_s)),
                    dur(r.ttft_s),
                    format!("{}+{}", r.prompt_tokens, r.completion_tokens),
                    status,
                    clip(&r.model, 12),
                    bar(r, (bar_w as f64 * r.e2e_s / longest).round().max(1.0) as usize)
                ),
                Emphasis::Normal,
            ));
        }
    }
}

fn render_help(out: &mut Vec<Line>) {
    for l in [
        "Keys",
        "  p          processes: one row per traced server; the selected one's detail below",
        "  r          requests: the slowest of the last minute, phases drawn as a bar",
        "             (q queue, p prefill, d decode, h outside the engine; without the engine:",
        "             f until the first token, s the stream after it, r a whole unary reply)",
        "  ? h        this help (again, or Esc, to leave)",
        "  s          sort processes: req/s, requests, TTFT p99, errors, pid",
        "  /          filter by text (pid, engine, pod, model); Enter keeps it, Esc clears it",
        "  up down    select a process (also k j)",
        "  space      pause the screen (data is still collected)",
        "  q          quit",
        "",
        "Columns",
        "  REQS      requests finished since tracing began; REQ/S over the last 10 s",
        "  TTFT      time to first token; TPOT time per output token; ITL gap between tokens",
        "  TOK/S     prompt / completion tokens per second (usage, else counted events)",
        "  ERR       responses with an error status or body, and client aborts",
        "  engine    from the engine's own IPC (vLLM, SGLang); device from the CUDA/NCCL/CANN",
        "            runtime's calls; python from the function timers and the rolling profile",
    ] {
        out.push(line(l.to_string(), Emphasis::Normal));
    }
}

fn line(text: String, emphasis: Emphasis) -> Line {
    Line { text, emphasis }
}

/// At most `w` characters.
fn clip(s: &str, w: usize) -> String {
    s.chars().take(w).collect()
}

/// A duration for a column: `0.42ms`, `12.3ms`, `450ms`, `1.25s`, `12s`, `-`.
pub fn dur(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 0.001 => format!("{:.2}ms", s * 1e3),
        Some(s) if s < 0.1 => format!("{:.1}ms", s * 1e3),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1e3),
        Some(s) if s < 10.0 => format!("{s:.2}s"),
        Some(s) => format!("{s:.0}s"),
    }
}

/// A rate for a column: `0.5`, `12`, `1.2k`, `3.4M`.
fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 10.0 || x == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn bytes(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.1} GB", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} kB", x / 1e3)
    } else {
        format!("{x:.0} B")
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// Eight levels per column, scaled to the largest value.
pub fn sparkline(v: &[f64]) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = v.iter().copied().fold(0.0, f64::max);
    v.iter()
        .map(|x| if max <= 0.0 { BARS[0] } else { BARS[((x / max) * 8.0).round().clamp(0.0, 8.0) as usize] })
        .collect()
}

/// A request's phases as `w` letters: q queue, p prefill, d decode, h the rest (HTTP, tokenising,
/// the network); without engine phases, f until the first token and s for the stream after it,
/// or r for a whole unary reply.
pub fn bar(r: &RequestRow, w: usize) -> String {
    let total = r.e2e_s.max(1e-12);
    let parts: Vec<(char, f64)> = match (r.queue_s, r.prefill_s) {
        (Some(q), Some(p)) => {
            let d = r.decode_s.unwrap_or(0.0);
            vec![('q', q), ('p', p), ('d', d), ('h', r.overhead_s().unwrap_or(0.0))]
        }
        _ => match r.ttft_s {
            Some(t) => vec![('f', t), ('s', (r.e2e_s - t).max(0.0))],
            None => vec![('r', r.e2e_s)],
        },
    };
    // Each part gets its share of the width, rounded so that the letters add up to `w`.
    let mut out = String::new();
    let mut acc = 0.0;
    for (c, x) in parts {
        let from = (acc / total * w as f64).round() as usize;
        acc += x;
        let to = ((acc / total * w as f64).round() as usize).min(w);
        out.extend(std::iter::repeat_n(c, to.saturating_sub(from)));
    }
    while out.chars().count() < w {
        out.push(out.chars().last().unwrap_or('h'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::{DeviceRow, EngineRow};

    fn proc_row(pid: u32, reqs: u64, rate: f64) -> ProcessRow {
        ProcessRow {
            pid,
            engine: "vllm".into(),
            comm: "python3".into(),
            pod: Some("llm/vllm-a-7d9f".into()),
            models: vec!["tiny-llama".into()],
            requests: reqs,
            errors: 1,
            aborts: 1,
            req_per_s: rate,
            tokens_in_per_s: 410.0,
            tokens_out_per_s: 98.4,
            ttft_p50_s: Some(0.0123),
            ttft_p99_s: Some(0.045),
            tpot_p50_s: Some(0.0081),
            itl_p99_s: Some(0.012),
            e2e_p50_s: Some(0.2),
            queue_p50_s: Some(0.0012),
            prefill_p50_s: Some(0.008),
            decode_p50_s: Some(0.09),
            history: (0..60).map(|i| (i % 8) as f64).collect(),
            engine_side: Some(EngineRow {
                steps_per_s: 30.1,
                batch_avg: 3.2,
                running: Some(4),
                waiting: Some(0),
                kv_usage: Some(0.12),
            }),
            device: Some(DeviceRow {
                launches_per_s: 1200.0,
                graphs_per_s: 30.0,
                sync_share: 0.12,
                copy_bytes_per_s: 3.4e6,
                collectives_per_s: 0.0,
                top_kernels: vec![("add_kernel".into(), 800), ("matmul".into(), 200)],
            }),
            timers: vec![("Scheduler.schedule".into(), 73, 0.00016, 0.0004)],
            profile: vec![("acquire_read".into(), 40.0)],
        }
    }

    fn snap() -> Snapshot {
        let req = |pid, e2e, q: Option<f64>| RequestRow {
            pid,
            end_ns: 1,
            id: format!("chatcmpl-{e2e}"),
            path: "/v1/chat/completions".into(),
            model: "tiny-llama".into(),
            stream: true,
            status: 200,
            error: false,
            aborted: false,
            e2e_s: e2e,
            ttft_s: Some(e2e / 4.0),
            tpot_s: Some(0.008),
            prompt_tokens: 12,
            completion_tokens: 16,
            queue_s: q,
            prefill_s: q.map(|_| e2e / 4.0),
            decode_s: q.map(|_| e2e / 2.0),
        };
        Snapshot {
            collecting_s: 42.0,
            processes: vec![proc_row(4242, 120, 3.2), proc_row(77, 500, 9.5)],
            slowest: vec![req(4242, 1.2, Some(0.0)), req(77, 0.6, None)],
            in_flight: 4,
            ring_buffer_drops: 0,
            undecodable: 0,
        }
    }

    fn text(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn the_process_view_at_80x24() {
        let ui = Ui::new("pid 4242");
        let lines = ui.render(&snap(), 80, 24, "");
        assert_eq!(lines.len(), 24);
        assert!(lines.iter().all(|l| l.text.chars().count() <= 80));
        let t = text(&lines);
        assert_eq!(t[0], "inferscope top - pid 4242 - 2 processes, 620 requests, 12.7 req/s, 4 in flight");
        assert!(t[2].starts_with("    PID ENGINE/POD"), "{}", t[2]);
        // Sorted by req/s: pid 77 first, selected.
        assert_eq!(t[3], ">    77 vllm-a-7d9f     500    9.5  12.3ms  45.0ms   8.1ms  12.0ms    410/98   2");
        assert_eq!(lines[3].emphasis, Emphasis::Selected);
        assert!(t[4].starts_with("   4242 vllm-a-7d9f     120    3.2"), "{}", t[4]);
        let detail = t.join("\n");
        assert!(detail.contains("pid 77 vllm (python3) pod llm/vllm-a-7d9f model tiny-llama"), "{detail}");
        assert!(detail.contains("engine    steps/s 30.1  batch 3.2  running 4  waiting 0  KV cache 12%"), "{detail}");
        assert!(detail.contains("device    launches/s 1.2k  graphs/s 30  sync 12%  copies 3.4 MB/s"), "{detail}");
        assert!(detail.contains("python    Scheduler.schedule p50 0.16ms p99 0.40ms (73)"), "{detail}");
        assert!(detail.contains("req/s, last 54 s |"), "{detail}");
        assert_eq!(t[23], "collecting for 42 s; percentiles over the last 60 s");
    }

    #[test]
    fn keys_sort_select_filter_pause_and_quit() {
        let mut ui = Ui::new("pid 1");
        let s = snap();
        assert!(ui.key(Key::Char('s')));
        assert_eq!(ui.sort, Sort::Requests);
        ui.key(Key::Down);
        let t = text(&ui.render(&s, 100, 30, ""));
        assert!(t[4].starts_with(">  4242"), "{t:?}");
        ui.key(Key::Char('/'));
        for c in "4242".chars() {
            ui.key(Key::Char(c));
        }
        assert!(text(&ui.render(&s, 100, 30, ""))[1].contains("filter: 4242_"));
        ui.key(Key::Enter);
        let t = text(&ui.render(&s, 100, 30, ""));
        assert!(t[0].contains("1 process, 120 requests"), "{}", t[0]);
        ui.key(Key::Char('/'));
        ui.key(Key::Char('z'));
        ui.key(Key::Enter);
        assert!(text(&ui.render(&s, 100, 30, ""))[3].contains("nothing matches the filter `z`"));
        ui.key(Key::Esc);
        ui.key(Key::Char(' '));
        assert!(text(&ui.render(&s, 100, 30, ""))[0].ends_with("[PAUSED]"));
        ui.key(Key::Char('?'));
        assert!(text(&ui.render(&s, 100, 30, ""))[2].starts_with("Keys"));
        assert!(!ui.key(Key::Char('q')));
    }

    #[test]
    fn the_request_view_draws_phases() {
        let mut ui = Ui::new("daemon");
        ui.key(Key::Char('r'));
        let t = text(&ui.render(&snap(), 80, 24, "inferscope: tracing pid 77"));
        assert!(t[3].starts_with("    PID     E2E    TTFT    TOKENS HTTP MODEL"), "{}", t[3]);
        // 1.2 s with engine phases (no queue): prefill a quarter, decode a half, the rest outside.
        let row = &t[4];
        assert!(row.starts_with("   4242   1.20s   300ms     12+16  200 tiny-llama   "), "{row}");
        let b = row.rsplit(' ').next().unwrap();
        // The bar takes what the columns leave of 80: 27 letters, a quarter prefill (7), a half
        // decode (13 or 14), the rest outside the engine.
        assert_eq!(b, "pppppppdddddddddddddhhhhhhh");
        // 0.6 s without: first token a quarter, half the width of the slowest.
        let b2 = t[5].rsplit(' ').next().unwrap();
        assert_eq!(b2, "ffffssssssssss");
        assert_eq!(t[23], "inferscope: tracing pid 77");
    }

    #[test]
    fn formats() {
        assert_eq!(dur(None), "-");
        assert_eq!(dur(Some(0.00042)), "0.42ms");
        assert_eq!(dur(Some(0.0123)), "12.3ms");
        assert_eq!(dur(Some(0.45)), "450ms");
        assert_eq!(dur(Some(1.25)), "1.25s");
        assert_eq!(dur(Some(12.0)), "12s");
        assert_eq!(count(1234.0), "1.2k");
        assert_eq!(count(0.5), "0.5");
        assert_eq!(sparkline(&[0.0, 4.0, 8.0]), " ▄█");
        assert_eq!(sparkline(&[0.0, 0.0]), "  ");
    }
}
