//! The `inferscope` command: parses the command line and hands each verb to its module in
//! `inferscope::cmd`. Errors reach the operator as one line (no backtrace); RUST_LOG controls
//! the rest.

use std::process::ExitCode;

use clap::Parser;
use inferscope::{
    cli::{Cli, Command},
    cmd,
};

fn main() -> ExitCode {
    inferscope::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor => cmd::doctor::run(),
        Command::Profile { pid, duration, rate, output, format } => {
            cmd::profile::run(pid, duration, rate, output, format)
        }
        Command::Timers { pid, config, duration, output, eval_uprobes } => {
            cmd::timers::run(pid, &config, duration, output.as_deref(), eval_uprobes)
        }
        Command::PythonInfo { pid, json, max_frames } => cmd::python_info::run(pid, json, max_frames),
        Command::Ctl { socket, url, token_file, json, action } => {
            let to = match (url, token_file) {
                (Some(url), Some(token)) => cmd::ctl::Endpoint::Http { url, token },
                _ => cmd::ctl::Endpoint::Socket(socket),
            };
            cmd::ctl::run(&to, json, action)
        }
        Command::Top { pid, matches, connect, refresh, log, opts } => {
            cmd::top::run(cmd::top::Args { pid, matches, connect, refresh, log, opts })
        }
        Command::Attach { pid, no_children, opts } => cmd::daemon::attach(pid, no_children, opts),
        Command::Run { matches, discover_interval, opts } => cmd::daemon::run(matches, discover_interval, opts),
    }
}
