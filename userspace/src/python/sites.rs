//! Launch call sites: which Python function launched which kernels. The device layer's launch
//! and graph-launch probes also send the launching thread's innermost Python frames
//! (`PySite`, read by the BPF program from the thread state this module registers); here they
//! are named (qualified name, file, first line; each code object read once per process) and
//! counted per process and site.

use std::collections::{HashMap, HashSet};

use inferscope_common::PY_SITE_FRAMES;

use super::{
    Interpreter, Memory,
    bpf::{PyBpf, PyUser},
};

/// One site's launches in an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteCount {
    /// The innermost Python frame: `qualname (file:line)`.
    pub site: String,
    /// The frame that called it, where the sample had one.
    pub caller: Option<String>,
    pub launches: u64,
}

struct SiteProc {
    interp: Interpreter,
    mem: Memory,
    names: HashMap<u64, String>,
    tids: HashSet<u32>,
    counts: HashMap<(String, Option<String>), u64>,
}

/// Call sites of every traced CPython process with device probes.
#[derive(Default)]
pub struct LaunchSites {
    procs: HashMap<u32, SiteProc>,
    /// Launch records from threads without Python frames (C++ threads, or a thread registered
    /// late): counted, not named.
    pub without_python: u64,
}

impl LaunchSites {
    /// Registers the process's layout so its launches carry Python frames.
    pub fn add(&mut self, interp: Interpreter, bpf: &mut dyn PyBpf) {
        let pid = interp.pid;
        // A failed write is counted and said by the maps: that process's launches carry no site.
        let _ = bpf.py_parts().1.add_process(PyUser::Sites, pid, super::profile::bpf_layout(&interp));
        self.procs.insert(
            pid,
            SiteProc {
                mem: Memory::new(pid),
                interp,
                names: HashMap::new(),
                tids: HashSet::new(),
                counts: HashMap::new(),
            },
        );
    }

    pub fn remove(&mut self, pid: u32, bpf: &mut dyn PyBpf) {
        if self.procs.remove(&pid).is_some() {
            bpf.py_parts().1.remove_process(PyUser::Sites, pid);
        }
    }

    /// Registers new Python threads (call every second or so).
    pub fn sync_threads(&mut self, bpf: &mut dyn PyBpf) {
        let maps = bpf.py_parts().1;
        for (pid, p) in &mut self.procs {
            let Ok(threads) = p.interp.threads() else { continue };
            for t in threads {
                let Some(tid) = t.native_thread_id.and_then(|n| u32::try_from(n).ok()).filter(|t| *t != 0) else {
                    continue;
                };
                if !p.tids.contains(&tid) && maps.add_thread(PyUser::Sites, *pid, tid, t.tstate).is_ok() {
                    p.tids.insert(tid);
                }
            }
        }
    }

    fn name(p: &mut SiteProc, code: u64) -> String {
        if let Some(n) = p.names.get(&code) {
            return n.clone();
        }
        let n = match p.interp.code_frame(&p.mem, code) {
            Ok(f) => format!("{} ({}:{})", f.name, f.filename, f.first_line),
            Err(_) => "<unreadable>".to_string(),
        };
        if p.names.len() > 100_000 {
            p.names.clear();
        }
        p.names.insert(code, n.clone());
        n
    }

    /// One launch's frames. Returns the site's name when the process is known.
    pub fn on_site(&mut self, tgid: u32, codes: &[u64; PY_SITE_FRAMES]) -> Option<String> {
        let p = self.procs.get_mut(&tgid)?;
        let mut named = codes.iter().filter(|c| **c != 0);
        let Some(&inner) = named.next() else {
            self.without_python += 1;
            return None;
        };
        let site = Self::name(p, inner);
        let caller = named.next().map(|c| Self::name(p, *c));
        *p.counts.entry((site.clone(), caller)).or_default() += 1;
        Some(site)
    }

    /// The sites of `pid` since the last call, most launches first.
    pub fn take(&mut self, pid: u32) -> Vec<SiteCount> {
        let Some(p) = self.procs.get_mut(&pid) else { return Vec::new() };
        let mut v: Vec<SiteCount> =
            p.counts.drain().map(|((site, caller), launches)| SiteCount { site, caller, launches }).collect();
        v.sort_by(|a, b| b.launches.cmp(&a.launches).then_with(|| a.site.cmp(&b.site)));
        v
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }
}
