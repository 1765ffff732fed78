//! The Python family's part of a loaded BPF object (`probes/python.rs`): the CPython layout of
//! each process and the thread state of each thread that its programs read, and the programs
//! themselves (`py_sample`, `py_call`, `py_eval_enter`/`py_eval_exit`), loaded on first use.
//!
//! Three users share them: launch call sites, function timers and the sampler. Each registers
//! the processes and threads it needs ([`PyUser`]); an entry leaves the kernel's maps when its
//! last user lets go, so switching one layer off (`inferscope ctl disable`) leaves the others'
//! entries in place. The daemon has one object for every layer (`bpf::Probes` implements
//! [`PyBpf`]; the programs' records arrive on its ring buffer like every other record); the
//! `profile` and `timers` verbs load one of their own ([`OwnBpf`]) and drain its ring.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{PerfEvent, UProbe},
};
use inferscope_common::{PyEvalWatch, PyLayout};

use crate::{
    bpf::{self, LoadOptions},
    events::{self, Event},
};

/// What a Python tool needs of a loaded object: the object itself (to load and attach its
/// programs) and the Python maps.
pub trait PyBpf {
    fn py_parts(&mut self) -> (&mut Ebpf, &mut PyMaps);
}

/// Who registered a process or a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PyUser {
    Sites = 1,
    Timers = 2,
    Sampler = 4,
}

#[derive(Default)]
struct Users {
    /// [`PyUser`] bits.
    users: u8,
    /// Each registered thread and its users.
    tids: HashMap<u32, u8>,
}

/// The Python maps of one loaded object, with who uses each entry.
pub struct PyMaps {
    layouts: BpfHashMap<MapData, u32, PyLayout>,
    tstates: BpfHashMap<MapData, u32, u64>,
    /// Code objects the eval-frame uprobes time (taken with those programs).
    eval_watch: Option<BpfHashMap<MapData, u64, PyEvalWatch>>,
    procs: HashMap<u32, Users>,
    loaded: HashSet<&'static str>,
    /// Failed writes, by map (the first of each map is said once).
    write_errors: BTreeMap<&'static str, u64>,
}

impl PyMaps {
    /// Takes the layout and thread-state maps out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            layouts: BpfHashMap::try_from(ebpf.take_map("PY_LAYOUTS").context("map PY_LAYOUTS")?)?,
            tstates: BpfHashMap::try_from(ebpf.take_map("PY_TSTATES").context("map PY_TSTATES")?)?,
            eval_watch: None,
            procs: HashMap::new(),
            loaded: HashSet::new(),
            write_errors: BTreeMap::new(),
        })
    }

    fn failed(&mut self, map: &'static str, what: &str, e: &dyn std::fmt::Display) {
        let n = self.write_errors.entry(map).or_default();
        *n += 1;
        if *n == 1 {
            eprintln!(
                "inferscope: warning: could not write {what} into the BPF map {map} ({e}); that process's Python \
                 frames are not read there (launch sites, timers, samples); counted in \
                 inferscope_bpf_map_write_errors_total{{map=\"{map}\"}}"
            );
        }
    }

    /// Failed writes, by map name.
    pub fn write_errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.write_errors.iter().map(|(k, v)| (*k, *v))
    }

    /// `user` reads `pid`'s CPython (its layout, the same for every user, goes in once).
    pub fn add_process(&mut self, user: PyUser, pid: u32, layout: PyLayout) -> Result<()> {
        if !self.procs.contains_key(&pid)
            && let Err(e) = self.layouts.insert(pid, layout, 0)
        {
            self.failed("PY_LAYOUTS", &format!("the CPython layout of pid {pid}"), &e);
            return Err(e).with_context(|| format!("the CPython layout of pid {pid} into PY_LAYOUTS"));
        }
        self.procs.entry(pid).or_default().users |= user as u8;
        Ok(())
    }

    /// `user` reads thread `tid` of `pid` (a process it added) from its thread state.
    pub fn add_thread(&mut self, user: PyUser, pid: u32, tid: u32, tstate: u64) -> Result<()> {
        if let Err(e) = self.tstates.insert(tid, tstate, 0) {
            self.failed("PY_TSTATES", &format!("the thread state of thread {tid}"), &e);
            return Err(e).with_context(|| format!("the thread state of thread {tid} into PY_TSTATES"));
        }
        *self.procs.entry(pid).or_default().tids.entry(tid).or_default() |= user as u8;
        Ok(())
    }

    /// `user` no longer reads thread `tid`.
    pub fn remove_thread(&mut self, user: PyUser, pid: u32, tid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        if let Some(u) = p.tids.get_mut(&tid) {
            *u &= !(user as u8);
            if *u == 0 {
                p.tids.remove(&tid);
                let _ = self.tstates.remove(&tid);
            }
        }
    }

    /// `user` no longer reads `pid`: its threads go too; the entries go with the last user.
    pub fn remove_process(&mut self, user: PyUser, pid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        p.users &= !(user as u8);
        p.tids.retain(|tid, u| {
            *u &= !(user as u8);
            if *u == 0 {
                let _ = self.tstates.remove(tid);
            }
            *u != 0
        });
        if p.users == 0 {
            for tid in p.tids.keys() {
                let _ = self.tstates.remove(tid);
            }
            self.procs.remove(&pid);
            let _ = self.layouts.remove(&pid);
        }
    }

    /// Processes registered (by any user).
    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// Loads a perf-event program of the object (the first time only).
    pub fn load_perf_event(&mut self, ebpf: &mut Ebpf, name: &'static str, what: &str) -> Result<()> {
        if self.loaded.contains(name) {
            return Ok(());
        }
        let p: &mut PerfEvent = ebpf.program_mut(name).with_context(|| format!("{name} missing"))?.try_into()?;
        p.load().map_err(|e| anyhow!("the kernel rejected the {what}: {e:#}"))?;
        self.loaded.insert(name);
        Ok(())
    }

    /// Loads the eval-frame uprobe programs (the first time only) and gives their map of
    /// watched code objects.
    pub fn eval_watch(&mut self, ebpf: &mut Ebpf) -> Result<&mut BpfHashMap<MapData, u64, PyEvalWatch>> {
        if self.eval_watch.is_none() {
            for name in ["py_eval_enter", "py_eval_exit"] {
                let p: &mut UProbe = ebpf.program_mut(name).context(name)?.try_into()?;
                p.load().map_err(|e| anyhow!("the kernel rejected {name}: {e:#}"))?;
            }
            self.eval_watch = Some(BpfHashMap::try_from(ebpf.take_map("PY_EVAL_WATCH").context("PY_EVAL_WATCH")?)?);
        }
        Ok(self.eval_watch.as_mut().expect("set above"))
    }

    /// The watch map, if the eval-frame programs were loaded.
    pub fn eval_watch_loaded(&mut self) -> Option<&mut BpfHashMap<MapData, u64, PyEvalWatch>> {
        self.eval_watch.as_mut()
    }
}

/// A copy of the BPF object of its own, for a verb that runs one Python tool without the
/// daemon (`inferscope profile`, `inferscope timers`): its Python maps and its ring buffer.
pub struct OwnBpf {
    ebpf: Ebpf,
    maps: PyMaps,
    ring: RingBuf<MapData>,
    /// Records that did not decode.
    pub undecodable: u64,
}

impl OwnBpf {
    /// Loads the object with a ring buffer of `ring_bytes`.
    pub fn open(ring_bytes: u32) -> Result<Self> {
        crate::privileges::require_bpf()?;
        crate::privileges::raise_memlock();
        let mut ebpf = bpf::open(&LoadOptions { ring_buffer_bytes: ring_bytes, ..Default::default() })?;
        let maps = PyMaps::take(&mut ebpf)?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS")?)?;
        Ok(Self { ebpf, maps, ring, undecodable: 0 })
    }

    /// Hands every record waiting in the ring to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(&Event)) {
        while let Some(item) = self.ring.next() {
            match events::decode(&item) {
                Ok(ev) => f(&ev),
                Err(_) => self.undecodable += 1,
            }
        }
    }
}

impl PyBpf for OwnBpf {
    fn py_parts(&mut self) -> (&mut Ebpf, &mut PyMaps) {
        (&mut self.ebpf, &mut self.maps)
    }
}
