//! `inferscope ctl`: one request to a running daemon's control socket ([`crate::control`]),
//! its answer on standard output (a table, or JSON with --json). Exit code 1 when the daemon
//! refused or could not be reached, with its reason in one line.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    cli::CtlAction,
    control::{self, Request, Status},
};

/// Where the daemon is reached.
pub enum Endpoint {
    /// Its control socket.
    Socket(PathBuf),
    /// Its HTTP server, with the token in this file.
    Http { url: String, token: PathBuf },
}

pub fn run(to: &Endpoint, json: bool, action: CtlAction) -> ExitCode {
    let req = match action {
        CtlAction::Status => Request::Status,
        CtlAction::Enable { name } => Request::Enable { name },
        CtlAction::Disable { name } => Request::Disable { name },
        CtlAction::Reload => Request::Reload,
        CtlAction::TracingLevel { level } => Request::TracingLevel { level },
        CtlAction::LogLevel { level } => Request::LogLevel { level },
    };
    // Switching a layer off waits for the kernel's grace periods of its detached probes.
    let timeout = Duration::from_secs(60);
    let r = match to {
        Endpoint::Socket(socket) => control::call(socket, &req, timeout),
        Endpoint::Http { url, token } => control::call_http(url, token, &req, timeout),
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => return super::failure(&e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else if let Some(s) = &r.status {
        print!("{}", table(s));
    } else if r.ok {
        println!("{}", r.message);
    }
    if r.ok {
        ExitCode::SUCCESS
    } else {
        if !json {
            eprintln!("inferscope: the daemon refused: {}", r.message);
        }
        ExitCode::FAILURE
    }
}

/// The status as a person reads it.
pub fn table(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "inferscope {} pid {}: up {:.0} s, {:.2} s CPU; tracing level {}, log level {}",
        s.version, s.pid, s.uptime_s, s.cpu_s, s.tracing_level, s.log_level
    );
    if !s.bpf_stats_enabled {
        let _ = writeln!(o, "BPF run time is not counted (sysctl kernel.bpf_stats_enabled=1 counts it)");
    }
    let _ = writeln!(o, "\n{:<13} {:<5} {:>9} {:>9}  COUNTERS", "LAYER", "STATE", "CPU (s)", "BPF (s)");
    for l in &s.layers {
        let counters: Vec<String> = l.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            o,
            "{:<13} {:<5} {:>9.3} {:>9.3}  {}",
            l.name,
            if l.on { "on" } else { "off" },
            l.cpu_s,
            l.bpf_s,
            counters.join(" ")
        );
        if !l.groups.is_empty() {
            let g: Vec<String> =
                l.groups.iter().map(|(g, on)| format!("{}.{g} {}", l.name, if *on { "on" } else { "off" })).collect();
            let _ = writeln!(o, "{:<13} groups: {}", "", g.join(", "));
        }
    }
    let tp: Vec<String> = s.tracepoints.iter().map(|t| format!("{} {}/{}", t.group, t.attached, t.total)).collect();
    let _ = writeln!(o, "\ntracepoints attached: {}", tp.join(", "));
    let _ = writeln!(o, "\n{:<8} {:<8} WHERE", "PID", "ENGINE");
    for p in &s.processes {
        let w: Vec<String> = p.identity.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "{:<8} {:<8} {}", p.pid, p.engine, if w.is_empty() { "host".into() } else { w.join(" ") });
    }
    if s.processes.is_empty() {
        let _ = writeln!(o, "(no process traced yet)");
    }
    o
}
