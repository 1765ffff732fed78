//! The `inferscope` command. Errors reach the operator as one line (no backtrace); RUST_LOG
//! controls the rest.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use inferscope::{
    cli::{Cli, Command},
    cmd::{self, summary},
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor => cmd::doctor::run(),
        Command::Profile { pid, duration, rate, output, format } => {
            let format = format.unwrap_or_else(|| inferscope::python::profile::Format::from_path(output.as_deref()));
            let o = inferscope::python::profile::ProfileOptions {
                pid,
                duration: Duration::from_secs_f64(duration.max(0.1)),
                rate: rate.clamp(1, 10_000),
                output,
                format,
            };
            summary(inferscope::python::profile::run(&o))
        }
        Command::Timers { pid, config, duration, output, eval_uprobes } => {
            let r = inferscope::python::timers::load_config(&config).and_then(|specs| {
                inferscope::python::timers::run_cli(
                    pid,
                    specs,
                    Duration::from_secs_f64(duration.max(0.1)),
                    output.as_deref(),
                    eval_uprobes,
                )
            });
            summary(r)
        }
        Command::PythonInfo { pid, json, max_frames } => match inferscope::python::info(pid, json, max_frames) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("inferscope: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Attach { pid, no_children, opts } => cmd::daemon::attach(pid, no_children, opts),
        Command::Run { matches, discover_interval, opts } => cmd::daemon::run(matches, discover_interval, opts),
    }
}
