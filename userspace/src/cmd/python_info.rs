//! `inferscope python-info`: the CPython a process runs, read from outside without stopping
//! it (python/): version, where its layout came from, its threads and their stacks, and the
//! engine's live state where it is an engine, as text or JSON on standard output.

use std::process::ExitCode;

use anyhow::Result;

use crate::python::{PyThread, find, state::StateReader};

/// `inferscope python-info`: the report on standard output (at most `max_frames` frames a
/// thread), or the error.
pub fn run(pid: u32, json: bool, max_frames: usize) -> ExitCode {
    match info(pid, json, max_frames) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => super::failure(&e),
    }
}

/// `inferscope python-info`: the interpreter, its threads and their stacks, as text or JSON.
pub fn info(pid: u32, json: bool, max_frames: usize) -> Result<String> {
    let i = find(pid)?;
    let threads = i.threads()?;
    let mut rows = Vec::new();
    for t in &threads {
        // A thread can change under the reader: report what could not be read, go on.
        let (stack, error) = match i.stack(t, max_frames) {
            Ok(s) => (s, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        rows.push((t, stack, error));
    }
    let main = |t: &PyThread| t.native_thread_id == Some(u64::from(pid));
    // The engine's live state, when this is an engine process.
    let state = match StateReader::new(pid).and_then(|r| r.read()) {
        Ok(Some(s)) => Some(s),
        Ok(None) => None,
        Err(e) => {
            log::debug!("pid {pid}: engine state: {e:#}");
            None
        }
    };
    if json {
        return Ok(format!("{}\n", crate::export::jsonl::python_info_json(pid, &i, &rows, main, state.as_ref())));
    }
    let mut out = format!(
        "pid {pid}: CPython {} in {} (layout from {}), {} thread(s)\n",
        i.version_string(),
        i.file,
        i.layout_source,
        rows.len()
    );
    if let Some(s) = &state {
        let vals: Vec<String> =
            s.values.iter().map(|(k, v)| format!("{k}={}", v.map_or("?".into(), |v| v.to_string()))).collect();
        out += &format!("{} engine state: {}\n", s.engine, vals.join(" "));
        if let Some(p) = &s.problem {
            out += &format!("    (not understood: {p})\n");
        }
    }
    for (t, s, e) in &rows {
        let id = t.native_thread_id.map_or(format!("{:#x}", t.thread_id), |n| n.to_string());
        out += &format!("\nthread {id}{}\n", if main(t) { " (main)" } else { "" });
        for f in s {
            out += &format!("    {} ({}:{})\n", f.name, f.filename, f.first_line);
        }
        if let Some(e) = e {
            out += &format!("    (stack not readable: {e})\n");
        }
    }
    Ok(out)
}
