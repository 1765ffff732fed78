//! The 3.9/3.10 eval-frame mode (`--eval-uprobes`): a uprobe and a uretprobe on
//! `_PyEval_EvalFrameDefault` time the calls whose frame runs a watched code object.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use inferscope_common::PyEvalWatch;

use super::{Proc, PyTimers, Watched};

/// Loads the eval-frame programs of `ebpf` and takes their map of watched code objects.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<BpfHashMap<MapData, u64, PyEvalWatch>> {
    for name in ["py_eval_enter", "py_eval_exit"] {
        let p: &mut aya::programs::UProbe = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load().map_err(|e| anyhow!("the kernel rejected {name}: {e:#}"))?;
    }
    Ok(BpfHashMap::try_from(ebpf.take_map("PY_EVAL_WATCH").context("PY_EVAL_WATCH")?)?)
}

impl PyTimers {
    /// Eval-frame mode: the code object into the watch map, and the eval function's probes on
    /// the process (once).
    pub(super) fn watch_eval(&mut self, pid: u32, p: &mut Proc, w: &Watched) -> Result<()> {
        let watch = self.eval_watch.as_mut().context("eval-frame uprobes not loaded")?;
        watch.insert(w.code_start, inferscope_common::PyEvalWatch { tgid: pid, spec: w.spec as u32 }, 0)?;
        if p.eval.as_ref().is_some_and(|l| l.is_empty()) {
            let path = crate::process::maps::host_path(pid, &p.interp.file);
            let scope =
                aya::programs::uprobe::UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).context("pid 0")?);
            let mut links = Vec::new();
            for name in ["py_eval_enter", "py_eval_exit"] {
                let prog: &mut aya::programs::UProbe = self.ebpf.program_mut(name).context(name)?.try_into()?;
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
    pub(super) fn detach_eval(&mut self, p: &mut Proc) {
        if let Some(links) = p.eval.take() {
            // Attached in pairs: the entry program's link, then the return program's.
            for (i, l) in links.into_iter().enumerate() {
                let name = if i % 2 == 0 { "py_eval_enter" } else { "py_eval_exit" };
                if let Some(prog) =
                    self.ebpf.program_mut(name).and_then(|p| <&mut aya::programs::UProbe>::try_from(p).ok())
                {
                    let _ = prog.detach(l);
                }
            }
            if let Some(w) = &mut self.eval_watch {
                for watched in &p.watched {
                    let _ = w.remove(&watched.code_start);
                }
            }
        }
    }
}
