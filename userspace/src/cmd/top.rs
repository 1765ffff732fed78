//! `inferscope top`: the live view in the terminal. Either it runs the daemon itself (its own
//! probes on `--pid`, else on every server found) with one more sink, the view's model
//! ([`crate::top::TopSink`]), or it asks a running daemon for the same model over the control
//! socket (`--connect`). The screen is ratatui's (crossterm), redrawn every `--refresh`
//! seconds and at each key; what it shows is [`crate::top::view`]'s lines. While the screen is
//! in use the daemon's own messages go to a log file, whose last line is the bottom line.

use std::{
    io::{Read as _, Seek as _, SeekFrom},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    style::{Modifier, Style},
    text::{Line, Text},
    widgets::Paragraph,
};

use crate::{
    cli::RunOptions,
    control::{self, Request},
    daemon::{self, Target},
    top::{
        self, Snapshot, TopSink,
        view::{Emphasis, Key, Ui},
    },
};

/// What `inferscope top` was asked.
pub struct Args {
    pub pid: Option<u32>,
    pub matches: Vec<String>,
    pub connect: Option<PathBuf>,
    pub refresh: f64,
    pub log: Option<PathBuf>,
    pub opts: RunOptions,
}

pub fn run(a: Args) -> ExitCode {
    match a.connect.clone() {
        Some(socket) => connected(&socket, &a),
        None => own(a),
    }
}

/// Shows what the daemon at `socket` sees.
fn connected(socket: &Path, a: &Args) -> ExitCode {
    // One request first: an unreachable daemon is said before the screen is taken.
    if let Err(e) = control::call(socket, &Request::Top, Duration::from_secs(5)) {
        return super::failure(&e);
    }
    let source = format!("daemon at {}", socket.display());
    let mut last_error = String::new();
    let fetch = |_: &mut Ui| -> (Option<Snapshot>, String) {
        match control::call(socket, &Request::Top, Duration::from_secs(5)) {
            Ok(r) if r.ok => (r.top, String::new()),
            Ok(r) => (None, format!("the daemon refused: {}", r.message)),
            Err(e) => (None, format!("{e:#}")),
        }
    };
    match screen(&source, a.refresh, fetch, || None, &mut last_error) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::failure(&e),
    }
}

/// Runs the daemon with the view's sink, and shows it.
fn own(a: Args) -> ExitCode {
    let Args { pid, matches, refresh, log, mut opts, .. } = a;
    let target = match pid {
        Some(pid) => Target::Pid { pid, children: true },
        None => Target::Discover { matches, interval: Duration::from_secs(2) },
    };
    // The screen is the output; the daemon runs without a console or a control socket of its
    // own (a daemon already running keeps its socket).
    opts.quiet = true;
    opts.control_socket = "off".into();
    let log = log.unwrap_or_else(|| std::env::temp_dir().join(format!("inferscope-top-{}.log", std::process::id())));
    let model = top::shared();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return super::failure(&anyhow!("cannot start the async runtime: {e}")),
    };
    let saved = match redirect_stderr(&log) {
        Ok(s) => s,
        Err(e) => return super::failure(&e),
    };
    let sink_model = model.clone();
    let t = target.clone();
    let daemon = std::thread::spawn(move || -> Result<()> {
        rt.block_on(async move {
            let mut parts = match super::daemon::parts(&t, &opts).await {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    return Err(anyhow!(msg));
                }
            };
            parts.sinks.add(TopSink(sink_model));
            let signals = std::mem::replace(&mut parts.stop, Box::pin(std::future::pending()));
            parts.stop = Box::pin(async move {
                tokio::select! {
                    _ = signals => {}
                    _ = stop_rx => {}
                }
            });
            let _ = ready_tx.send(Ok(()));
            daemon::run(t, parts).await
        })
    });
    let started = ready_rx.recv().unwrap_or_else(|_| Err(anyhow!("the daemon stopped before it started")));
    if let Err(e) = started {
        restore_stderr(saved);
        let _ = daemon.join();
        return super::failure(&e);
    }
    let source = match target {
        Target::Pid { pid, .. } => format!("pid {pid}"),
        Target::Discover { .. } => "every server on this host".to_string(),
    };
    let mut note = String::new();
    let fetch = |_: &mut Ui| -> (Option<Snapshot>, String) {
        let snap = model.lock().map(|mut m| m.snapshot(crate::clock::monotonic_ns())).ok();
        (snap, last_line(&log))
    };
    let stopped = || daemon.is_finished().then(|| "the daemon stopped (see the log)".to_string());
    let shown = screen(&source, refresh, fetch, stopped, &mut note);
    let _ = stop_tx.send(());
    let finished = daemon.join();
    restore_stderr(saved);
    let requests: u64 = model
        .lock()
        .map(|mut m| m.snapshot(crate::clock::monotonic_ns()).processes.iter().map(|p| p.requests).sum())
        .unwrap_or(0);
    eprintln!("inferscope top: {requests} requests seen; the daemon's messages are in {}", log.display());
    match (shown, finished) {
        (Err(e), _) => super::failure(&e),
        (Ok(()), Ok(Err(e))) => super::failure(&e),
        (Ok(()), Err(_)) => super::failure(&anyhow!("the daemon's thread panicked (see {})", log.display())),
        (Ok(()), Ok(Ok(()))) => ExitCode::SUCCESS,
    }
}

/// The terminal loop: a fresh snapshot every `refresh` seconds (unless paused), a redraw at
/// each snapshot and key, until `q` (or Ctrl-C) or `stopped` says why it ends.
fn screen(
    source: &str,
    refresh: f64,
    mut fetch: impl FnMut(&mut Ui) -> (Option<Snapshot>, String),
    stopped: impl Fn() -> Option<String>,
    note: &mut String,
) -> Result<()> {
    let refresh = Duration::from_secs_f64(refresh.clamp(0.1, 60.0));
    let mut terminal = ratatui::try_init().context("the terminal (inferscope top needs one: run it in a terminal)")?;
    let mut ui = Ui::new(source);
    let mut snap = Snapshot::default();
    let mut next = Instant::now();
    let mut why_stopped = None;
    let result = (|| -> Result<()> {
        loop {
            if Instant::now() >= next {
                if !ui.paused {
                    let (s, n) = fetch(&mut ui);
                    if let Some(s) = s {
                        snap = s;
                    }
                    *note = n;
                }
                next = Instant::now() + refresh;
                if let Some(why) = stopped() {
                    why_stopped = Some(why);
                    return Ok(());
                }
            }
            terminal.draw(|f| {
                let area = f.area();
                let lines = ui.render(&snap, area.width as usize, area.height as usize, note);
                let text: Vec<Line> = lines
                    .into_iter()
                    .map(|l| {
                        let style = match l.emphasis {
                            Emphasis::Normal => Style::default(),
                            Emphasis::Title => Style::default().add_modifier(Modifier::BOLD),
                            Emphasis::Header => Style::default().add_modifier(Modifier::UNDERLINED),
                            Emphasis::Selected => Style::default().add_modifier(Modifier::REVERSED),
                        };
                        Line::styled(l.text, style)
                    })
                    .collect();
                f.render_widget(Paragraph::new(Text::from(text)), area);
            })?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)?
                && let Event::Key(k) = event::read()?
            {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
                    return Ok(());
                }
                let key = match k.code {
                    KeyCode::Char(c) => Key::Char(c),
                    KeyCode::Up => Key::Up,
                    KeyCode::Down => Key::Down,
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Backspace => Key::Backspace,
                    _ => continue,
                };
                if !ui.key(key) {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    if let Some(why) = why_stopped {
        eprintln!("inferscope top: {why}");
    }
    result
}

/// Points standard error at `path`; returns the descriptor to restore it with.
fn redirect_stderr(path: &Path) -> Result<i32> {
    let f = std::fs::File::create(path).with_context(|| format!("creating the log {}", path.display()))?;
    let saved = unsafe { libc::dup(2) };
    if saved < 0 || unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
        return Err(anyhow!("cannot redirect standard error to {}", path.display()));
    }
    Ok(saved)
}

fn restore_stderr(saved: i32) {
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
}

/// The last `inferscope:` line of the log (its last 8 KiB).
fn last_line(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.lines().rev().find(|l| l.starts_with("inferscope:")).unwrap_or_default().to_string()
}
