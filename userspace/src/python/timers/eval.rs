//! The 3.9/3.10 eval-frame mode (`--eval-uprobes`): a uprobe and a uretprobe on
//! `_PyEval_EvalFrameDefault` time the calls whose frame runs a watched code object.

use anyhow::{Context as _, Result};

use super::{Proc, PyTimers, Watched};
use crate::python::bpf::PyBpf;

impl PyTimers {
    /// Eval-frame mode: the code object into the watch map, and the eval function's probes on
    /// the process (once).
    pub(super) fn watch_eval(&mut self, pid: u32, p: &mut Proc, w: &Watched, bpf: &mut dyn PyBpf) -> Result<()> {
        let (ebpf, maps) = bpf.py_parts();
        let watch = maps.eval_watch_loaded().context("eval-frame uprobes not loaded")?;
        watch.insert(w.code_start, inferscope_common::PyEvalWatch { tgid: pid, spec: w.spec as u32 }, 0)?;
        if p.eval.as_ref().is_some_and(|l| l.is_empty()) {
            let path = crate::process::maps::host_path(pid, &p.interp.file);
            let scope =
                aya::programs::uprobe::UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).context("pid 0")?);
            let mut links = Vec::new();
            for name in ["py_eval_enter", "py_eval_exit"] {
                let prog: &mut aya::programs::UProbe = ebpf.program_mut(name).context(name)?.try_into()?;
                links.push(
                    prog.attach("_PyEval_EvalFrameDefault", &path, scope)
                        .with_context(|| format!("uprobe on _PyEval_EvalFrameDefault in {}", path.display()))?,
                );
            }
            p.eval = Some(links);
        }
        Ok(())
    }

    /// Takes the eval-frame probes off the process and its code objects out of the watch map.
    pub(super) fn detach_eval(&mut self, p: &mut Proc, bpf: &mut dyn PyBpf) {
        let (ebpf, maps) = bpf.py_parts();
        if let Some(links) = p.eval.take() {
            // Attached in pairs: the entry program's link, then the return program's.
            for (i, l) in links.into_iter().enumerate() {
                let name = if i % 2 == 0 { "py_eval_enter" } else { "py_eval_exit" };
                if let Some(prog) = ebpf.program_mut(name).and_then(|p| <&mut aya::programs::UProbe>::try_from(p).ok())
                {
                    let _ = prog.detach(l);
                }
            }
            if let Some(w) = maps.eval_watch_loaded() {
                for watched in &p.watched {
                    let _ = w.remove(&watched.code_start);
                }
            }
        }
    }
}
