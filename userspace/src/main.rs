//! The `inferscope` command. Errors reach the operator as one line (no backtrace); RUST_LOG
//! controls the rest.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use inferscope::{
    cli::{Cli, Command},
    daemon::{self, Target},
    doctor,
};

/// A one-shot command's end: its summary on standard error, or its error in one line.
fn summary(r: anyhow::Result<String>) -> ExitCode {
    match r {
        Ok(summary) => {
            eprint!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inferscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let (target, opts) = match cli.command {
        Command::Doctor => return ExitCode::from(doctor::run() as u8),
        Command::Profile { pid, duration, rate, output, format } => {
            let format = format.unwrap_or_else(|| inferscope::python::profile::Format::from_path(output.as_deref()));
            let o = inferscope::python::profile::ProfileOptions {
                pid,
                duration: Duration::from_secs_f64(duration.max(0.1)),
                rate: rate.clamp(1, 10_000),
                output,
                format,
            };
            return summary(inferscope::python::profile::run(&o));
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
            return summary(r);
        }
        Command::PythonInfo { pid, json, max_frames } => {
            return match inferscope::python::info(pid, json, max_frames) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("inferscope: error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Attach { pid, no_children, opts } => (Target::Pid { pid, children: !no_children }, opts),
        Command::Run { matches, discover_interval, opts } => {
            (Target::Discover { matches, interval: Duration::from_secs_f64(discover_interval.max(0.1)) }, opts)
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inferscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(target, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inferscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
