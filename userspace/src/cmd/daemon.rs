//! `inferscope attach` and `inferscope run`: the daemon ([`crate::daemon`]) on one process tree
//! or on every server found on the host, on an async runtime of two worker threads.

use std::{process::ExitCode, time::Duration};

use crate::{
    cli::RunOptions,
    daemon::{self, Target},
};

/// `inferscope attach`: one process, and its children unless `no_children`.
pub fn attach(pid: u32, no_children: bool, opts: RunOptions) -> ExitCode {
    serve(Target::Pid { pid, children: !no_children }, opts)
}

/// `inferscope run`: every server found (and processes whose command line contains one of
/// `matches`), looked for every `discover_interval` seconds.
pub fn run(matches: Vec<String>, discover_interval: f64, opts: RunOptions) -> ExitCode {
    serve(Target::Discover { matches, interval: Duration::from_secs_f64(discover_interval.max(0.1)) }, opts)
}

/// Runs the daemon on `target` until it stops.
fn serve(target: Target, opts: RunOptions) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inferscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(target, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::failure(&e),
    }
}
