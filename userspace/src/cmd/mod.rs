//! The command-line verbs, one module each. main.rs parses the command line and hands a verb
//! its arguments; the verb does its work and ends the process's way: its exit code, and a
//! summary or an error in one line on standard error.

pub mod ctl;
pub mod daemon;
pub mod doctor;
pub mod profile;
pub mod python_info;
pub mod timers;
pub mod top;

use std::process::ExitCode;

/// A one-shot command's end: its summary on standard error, or its error in one line.
pub fn summary(r: anyhow::Result<String>) -> ExitCode {
    match r {
        Ok(summary) => {
            eprint!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

/// A command's error, in one line on standard error.
pub fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("inferscope: error: {e:#}");
    ExitCode::FAILURE
}
