//! Which device probes are attached where. Per traced process: the runtime functions its
//! mapped libraries export (looked for again when it maps new code), each attached once with its
//! own probe id; probes switched off by the operator never attached; probes that cost more than
//! the overhead budget detached, with one line saying so.

use std::collections::{BTreeSet, HashMap, HashSet};

use inferscope_common::{MAX_DEVICE_PROBES, ProbeSpec, SPEC_NAME, SPEC_OUT_HANDLE, SPEC_RETURN};
use log::debug;

use super::{
    DeviceTracker, ProbeInfo,
    catalog::{self, Entry, Group},
    libs::{self, LibCache},
};
use crate::{
    bpf::{DeviceProbe, Probes},
    process::maps::{self, FileKey, Mapping},
};

/// What the operator asked of the device layer.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Groups probed (`--device-probes`).
    pub groups: BTreeSet<Group>,
    /// Single functions probed in addition (`--device-probes cuLaunchKernel`).
    pub symbols: BTreeSet<String>,
    /// Functions and groups never probed (`--no-device-probe`).
    pub off: BTreeSet<String>,
    /// Most reported calls per second per probe (0: unlimited).
    pub rate_limit: u32,
    /// Largest share of one CPU the probes of one process may cost before some are detached.
    pub overhead_budget: f64,
    /// Kernels labelled by name in metrics (the rest read `other`).
    pub top_kernels: usize,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            groups: Group::ALL.into_iter().filter(|g| g.default_on()).collect(),
            symbols: BTreeSet::new(),
            off: BTreeSet::new(),
            rate_limit: 20_000,
            overhead_budget: 0.01,
            top_kernels: 20,
        }
    }
}

impl DeviceOptions {
    /// Parses `--device-probes`: `default`, `all`, `none`, group names and function names,
    /// comma-separated.
    pub fn parse_probes(list: &str) -> Result<(BTreeSet<Group>, BTreeSet<String>), String> {
        let mut groups = BTreeSet::new();
        let mut symbols = BTreeSet::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "default" => groups.extend(Group::ALL.into_iter().filter(|g| g.default_on())),
                "all" => groups.extend(Group::ALL),
                "none" => {}
                s => {
                    if let Some(g) = Group::parse(s) {
                        groups.insert(g);
                    } else if catalog::lookup_symbol(s).is_some() {
                        symbols.insert(s.to_string());
                    } else {
                        return Err(format!(
                            "unknown device probe `{s}`: use default, all, none, a group ({}) or a function name such as cuLaunchKernel",
                            Group::ALL.map(Group::name).join(", ")
                        ));
                    }
                }
            }
        }
        Ok((groups, symbols))
    }

    /// The probed set in words, for the start-up line.
    pub fn describe(&self) -> String {
        let mut v: Vec<String> = self.groups.iter().map(|g| g.name().to_string()).collect();
        v.extend(self.symbols.iter().cloned());
        if v.is_empty() {
            v.push("none".into());
        }
        let mut s = v.join(",");
        if !self.off.is_empty() {
            s += &format!(" except {}", self.off.iter().cloned().collect::<Vec<_>>().join(","));
        }
        if self.rate_limit > 0 {
            s += &format!("; at most {} calls/s reported per probe", self.rate_limit);
        }
        if self.overhead_budget > 0.0 {
            s += &format!("; budget {:.1}% of a CPU per process", self.overhead_budget * 100.0);
        }
        s
    }

    /// Whether a function is probed.
    pub fn wants(&self, entry: &Entry, symbol: &str) -> bool {
        if self.off.contains(symbol) || self.off.contains(entry.group.name()) || self.off.contains(entry.symbol) {
            return false;
        }
        self.groups.contains(&entry.group) || self.symbols.contains(symbol) || self.symbols.contains(entry.symbol)
    }

    /// What the BPF side reads for a function.
    pub fn spec(&self, entry: &Entry, pid: u32) -> ProbeSpec {
        let mut flags = 0;
        if entry.ret {
            flags |= SPEC_RETURN;
        }
        if entry.name != catalog::Arg::None {
            flags |= SPEC_NAME;
        }
        if entry.out_handle {
            flags |= SPEC_OUT_HANDLE;
        }
        // Launches carry the launching thread's Python frames (where the process's CPython is
        // known to inferscope).
        if matches!(entry.group, Group::Launch | Group::Graph) {
            flags |= inferscope_common::SPEC_PY_SITE;
        }
        // Names are rare and each one matters: never rate limited.
        let max_per_sec = if entry.group == Group::Names { 0 } else { self.rate_limit };
        ProbeSpec {
            args: entry.args.map(catalog::Arg::spec),
            name: entry.name.spec(),
            flags,
            max_per_sec,
            tgid: pid,
            _pad: 0,
        }
    }
}

/// Cost of one probe hit, in ns: measured at start-up (see [`calibrate`]) or the figures of
/// ../shared/notes/machine.md.
#[derive(Clone, Copy, Debug)]
pub struct ProbeCost {
    pub entry_ns: f64,
    pub pair_ns: f64,
}

impl Default for ProbeCost {
    fn default() -> Self {
        Self { entry_ns: 5_000.0, pair_ns: 7_000.0 }
    }
}

/// How long a detached probe's id stays unused.
const ID_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Executable files of one process to look at for runtime symbols, off the event loop: a vLLM
/// process maps about 200 of them, and the dynamic symbols of a large library (libtorch_cpu.so:
/// 75,000 exports, 5 MB of names) take milliseconds to read.
pub struct ScanJob {
    pid: u32,
    files: Vec<Mapping>,
    libs: std::sync::Arc<std::sync::Mutex<LibCache>>,
}

/// What a [`ScanJob`] found: the files that export catalogued functions.
pub struct ScanResult {
    pid: u32,
    found: Vec<(Mapping, std::sync::Arc<Vec<libs::Found>>)>,
}

impl ScanResult {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl ScanJob {
    /// Blocking: reads ELF files (each file once per daemon run, shared by every process).
    pub fn run(self) -> ScanResult {
        let mut found = Vec::new();
        for m in self.files {
            let f = LibCache::runtime_symbols_shared(&self.libs, self.pid, &m);
            if !f.is_empty() {
                found.push((m, f));
            }
        }
        ScanResult { pid: self.pid, found }
    }
}

type MapsCache = std::sync::Arc<std::sync::Mutex<HashMap<u32, Vec<Mapping>>>>;

struct Attached {
    id: u32,
    symbol: String,
    ret: bool,
    last_hits: u64,
    /// The attachment group (one library of the process) it belongs to.
    group: u64,
    /// The switch it belongs to (`--device-probes`, `inferscope ctl disable device.GROUP`).
    switch: Group,
}

#[derive(Default)]
struct ProcProbes {
    /// (file, offset) -> the probe there.
    at: HashMap<(FileKey, u64), Attached>,
    /// Executable files already looked at.
    seen: HashSet<FileKey>,
    /// Functions detached by the budget: not attached again.
    disabled: BTreeSet<String>,
    /// Libraries with probes, by file name.
    libraries: BTreeSet<String>,
    /// An `mmap` of code was seen: look at the maps again.
    dirty: bool,
}

/// A probe switched off by the overhead budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub pid: u32,
    pub symbol: String,
    pub calls_per_sec: f64,
    pub share: f64,
}

pub struct DeviceManager {
    pub opts: DeviceOptions,
    pub cost: ProbeCost,
    pub tracker: DeviceTracker,
    libs: std::sync::Arc<std::sync::Mutex<LibCache>>,
    maps_cache: MapsCache,
    procs: HashMap<u32, ProcProbes>,
    /// Ids of detached probes and when: reused only after [`ID_QUARANTINE`], once the old
    /// link (dropped on another thread) can no longer fire with it.
    free_ids: std::collections::VecDeque<(u32, std::time::Instant)>,
    next_id: u32,
    /// Attach failures (counted; the first few are logged).
    pub attach_errors: u64,
    /// Probes switched off by the budget so far.
    pub disabled_total: u64,
}

impl DeviceManager {
    pub fn new(opts: DeviceOptions, cost: ProbeCost) -> Self {
        let libs = std::sync::Arc::new(std::sync::Mutex::new(LibCache::default()));
        let mut tracker = DeviceTracker::new();
        let resolver_libs = libs.clone();
        let maps_cache: MapsCache = Default::default();
        let resolver_maps = maps_cache.clone();
        // Host stubs of runtime launches are named from the ELF symbols of the library that
        // holds them (PyTorch's libtorch_cuda.so, a custom op's .so). The maps of the last scan
        // first: the process may be gone by the time its last calls are read.
        tracker.set_resolver(move |pid, addr| {
            let cached = resolver_maps.lock().ok()?.get(&pid).cloned();
            let maps = match cached {
                Some(m) if m.iter().any(|m| addr >= m.start && addr < m.end) => m,
                _ => maps::read_maps(pid),
            };
            resolver_libs.lock().ok()?.symbolize(pid, &maps, addr)
        });
        Self {
            opts,
            cost,
            tracker,
            libs,
            maps_cache,
            procs: HashMap::new(),
            free_ids: Default::default(),
            next_id: 0,
            attach_errors: 0,
            disabled_total: 0,
        }
    }

    /// The process mapped new code: look at it on the next [`Self::rescan_dirty`].
    pub fn mark_dirty(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.dirty = true;
        }
    }

    /// Starts watching a process: the files it has mapped now, to be looked at for runtime
    /// symbols ([`ScanJob::run`], on a blocking thread) and attached to ([`Self::apply`]).
    pub fn add_process(&mut self, pid: u32) -> Option<ScanJob> {
        self.procs.entry(pid).or_default();
        self.plan(pid)
    }

    /// Jobs for processes that mapped new code since they were last looked at.
    pub fn dirty_jobs(&mut self) -> Vec<ScanJob> {
        let dirty: Vec<u32> = self.procs.iter().filter(|(_, p)| p.dirty).map(|(k, _)| *k).collect();
        dirty.into_iter().filter_map(|pid| self.plan(pid)).collect()
    }

    /// Reads the process's maps (cheap) and picks the executable files not looked at yet.
    fn plan(&mut self, pid: u32) -> Option<ScanJob> {
        let maps = maps::read_maps(pid);
        let p = self.procs.get_mut(&pid)?;
        p.dirty = false;
        let mut files: Vec<Mapping> = Vec::new();
        for m in maps.iter().filter(|m| m.exec) {
            if p.seen.insert(m.file.clone()) {
                files.push(m.clone());
            }
        }
        if let Ok(mut c) = self.maps_cache.lock() {
            c.insert(pid, maps);
        }
        (!files.is_empty()).then(|| ScanJob { pid, files, libs: self.libs.clone() })
    }

    fn free_id(&mut self, id: u32) {
        self.free_ids.push_back((id, std::time::Instant::now()));
    }

    fn alloc_id(&mut self) -> Option<u32> {
        if self.free_ids.front().is_some_and(|(_, t)| t.elapsed() >= ID_QUARANTINE) {
            return self.free_ids.pop_front().map(|(id, _)| id);
        }
        // The last id is the calibration probe's.
        (self.next_id < MAX_DEVICE_PROBES - 1).then(|| {
            self.next_id += 1;
            self.next_id - 1
        })
    }

    /// Attaches to what a [`ScanJob`] found (nothing if the process is gone meanwhile).
    pub fn apply(&mut self, probes: &mut Probes, r: ScanResult) {
        let pid = r.pid;
        if !self.procs.contains_key(&pid) {
            return;
        }
        let mut attached = Vec::new();
        for (m, found) in r.found {
            let path = maps::host_path(pid, &m.path);
            let library = m.path.rsplit('/').next().unwrap_or(&m.path).to_string();
            // Every wanted function of the library, attached together (one link pair).
            let mut batch: Vec<(DeviceProbe, &super::libs::Found)> = Vec::new();
            for f in found.iter() {
                let p = self.procs.get(&pid).expect("present");
                if !self.opts.wants(f.entry, &f.symbol)
                    || p.disabled.contains(&f.symbol)
                    || p.at.contains_key(&(m.file.clone(), f.file_offset))
                {
                    continue;
                }
                let Some(id) = self.alloc_id() else {
                    self.attach_errors += 1;
                    continue;
                };
                probes.reset_device_hits(id);
                batch.push((DeviceProbe { id, spec: self.opts.spec(f.entry, pid), offset: f.file_offset }, f));
            }
            if batch.is_empty() {
                continue;
            }
            let list: Vec<DeviceProbe> = batch.iter().map(|(d, _)| *d).collect();
            let n = match probes.attach_device_group(&list, &path, pid) {
                Ok(group) => {
                    for (d, f) in &batch {
                        let info =
                            ProbeInfo { pid, entry: f.entry, symbol: f.symbol.clone(), library: library.clone() };
                        self.tracker.add_probe(d.id, info);
                        let p = self.procs.get_mut(&pid).expect("present");
                        p.at.insert(
                            (m.file.clone(), f.file_offset),
                            Attached {
                                id: d.id,
                                symbol: f.symbol.clone(),
                                ret: f.entry.ret,
                                last_hits: 0,
                                group,
                                switch: f.entry.group,
                            },
                        );
                    }
                    batch.len()
                }
                Err(e) => {
                    for (d, _) in &batch {
                        self.free_id(d.id);
                    }
                    self.attach_errors += 1;
                    if self.attach_errors <= 5 {
                        eprintln!("inferscope: pid {pid}: cannot probe {}: {e:#}", m.path);
                    }
                    0
                }
            };
            if n > 0 {
                self.procs.get_mut(&pid).expect("present").libraries.insert(library.clone());
                attached.push(format!("{n} in {library}"));
            }
        }
        if !attached.is_empty() {
            eprintln!("inferscope: pid {pid}: device probes attached: {}", attached.join(", "));
        }
    }

    /// Detaches everything attached for a process that is gone.
    pub fn remove_process(&mut self, probes: &mut Probes, pid: u32) {
        if let Ok(mut c) = self.maps_cache.lock() {
            c.remove(&pid);
        }
        let Some(p) = self.procs.remove(&pid) else { return };
        let groups: BTreeSet<u64> = p.at.values().map(|a| a.group).collect();
        for g in groups {
            probes.detach_device_group(g);
        }
        for (_, a) in p.at {
            self.tracker.remove_probe(a.id);
            self.free_id(a.id);
        }
    }

    /// Probes attached to a process, and libraries they are in.
    pub fn attached(&self, pid: u32) -> (usize, Vec<String>) {
        self.procs.get(&pid).map_or((0, Vec::new()), |p| (p.at.len(), p.libraries.iter().cloned().collect()))
    }

    /// Functions the budget switched off in a process.
    pub fn disabled(&self, pid: u32) -> Vec<String> {
        self.procs.get(&pid).map(|p| p.disabled.iter().cloned().collect()).unwrap_or_default()
    }

    /// Per-function hits since the last call, per process: (pid, symbol, hits). Also checks
    /// the overhead budget over `elapsed_s` and detaches the costliest probes of a process over
    /// it; each one switched off is returned (and logged).
    pub fn account(&mut self, probes: &mut Probes, elapsed_s: f64) -> (Vec<(u32, String, u64)>, Vec<Backoff>) {
        let mut hits_out = Vec::new();
        let mut off = Vec::new();
        let elapsed_s = elapsed_s.max(1e-3);
        for (pid, p) in &mut self.procs {
            let mut costs: Vec<((FileKey, u64), String, f64, f64)> = Vec::new();
            let mut total = 0.0;
            for (key, a) in &mut p.at {
                let h = probes.device_hits(a.id);
                let d = h.saturating_sub(a.last_hits);
                a.last_hits = h;
                if d == 0 {
                    continue;
                }
                hits_out.push((*pid, a.symbol.clone(), d));
                let per = if a.ret { self.cost.pair_ns } else { self.cost.entry_ns };
                let share = d as f64 * per / 1e9 / elapsed_s;
                total += share;
                costs.push((key.clone(), a.symbol.clone(), d as f64 / elapsed_s, share));
            }
            if self.opts.overhead_budget <= 0.0 || total <= self.opts.overhead_budget {
                continue;
            }
            costs.sort_by(|a, b| b.3.total_cmp(&a.3));
            let mut groups = BTreeSet::new();
            for (key, symbol, rate, share) in costs {
                if total <= self.opts.overhead_budget {
                    break;
                }
                if let Some(a) = p.at.get(&key) {
                    groups.insert((a.group, key.0.clone()));
                }
                total -= share;
                p.disabled.insert(symbol.clone());
                let b = Backoff { pid: *pid, symbol, calls_per_sec: rate, share };
                eprintln!(
                    "inferscope: pid {pid}: device probe {} switched off: {:.0} calls/s cost about {:.1}% of a CPU, over the budget of {:.1}% (--device-overhead-budget; --no-device-probe {} silences this)",
                    b.symbol,
                    b.calls_per_sec,
                    b.share * 100.0,
                    self.opts.overhead_budget * 100.0,
                    b.symbol
                );
                off.push(b);
            }
            drop_groups(probes, &mut self.tracker, &mut self.free_ids, p, groups);
        }
        self.disabled_total += off.len() as u64;
        (hits_out, off)
    }

    /// Switches a probe group in every traced process: on, their files are looked at again
    /// (what is attached stays; the rest of the group attaches on the next drain); off, the
    /// libraries with probes of the group are detached and attached again without them.
    /// Returns the probes detached.
    pub fn set_group(&mut self, probes: &mut Probes, g: Group, on: bool) -> usize {
        let mut detached = 0;
        if on {
            self.opts.groups.insert(g);
            self.opts.off.remove(g.name());
        } else {
            self.opts.groups.remove(&g);
        }
        for p in self.procs.values_mut() {
            if on {
                p.seen.clear();
                p.dirty = true;
                continue;
            }
            let groups: BTreeSet<(u64, FileKey)> =
                p.at.iter().filter(|(_, a)| a.switch == g).map(|(k, a)| (a.group, k.0.clone())).collect();
            detached += p.at.values().filter(|a| a.switch == g).count();
            drop_groups(probes, &mut self.tracker, &mut self.free_ids, p, groups);
        }
        detached
    }

    /// Probes attached now, by group, over every process.
    pub fn attached_by_group(&self) -> std::collections::BTreeMap<Group, usize> {
        let mut out = std::collections::BTreeMap::new();
        for a in self.procs.values().flat_map(|p| p.at.values()) {
            *out.entry(a.switch).or_default() += 1;
        }
        out
    }

    /// Counters for the health line (`unclaimed` is the correlation stage's).
    pub fn health(&self) -> crate::output::DeviceHealth {
        crate::output::DeviceHealth {
            probes_attached: self.procs.values().map(|p| p.at.len() as u64).sum(),
            attach_errors: self.attach_errors,
            unreadable_files: self.libs.lock().map(|l| l.unreadable).unwrap_or(0),
            unknown_probe: self.tracker.stats.unknown_probe,
            nested: self.tracker.stats.nested,
            disabled: self.disabled_total,
            unclaimed: 0,
        }
    }
}

/// Probes of a library are attached together: detaches each group, and lets what is still
/// wanted of that library attach again on the next scan (fresh ids).
fn drop_groups(
    probes: &mut Probes,
    tracker: &mut DeviceTracker,
    free_ids: &mut std::collections::VecDeque<(u32, std::time::Instant)>,
    p: &mut ProcProbes,
    groups: BTreeSet<(u64, FileKey)>,
) {
    for (group, file) in groups {
        probes.detach_device_group(group);
        let keys: Vec<(FileKey, u64)> = p.at.iter().filter(|(_, a)| a.group == group).map(|(k, _)| k.clone()).collect();
        for k in keys {
            if let Some(a) = p.at.remove(&k) {
                tracker.remove_probe(a.id);
                free_ids.push_back((a.id, std::time::Instant::now()));
            }
        }
        p.seen.remove(&file);
        p.dirty = true;
    }
}

/// Measures what one probe hit costs here: a probe that only counts, on `getppid` in libc, in
/// this process; the time per call with it minus without. Falls back to the defaults.
pub fn calibrate(probes: &mut Probes, id: u32) -> ProbeCost {
    let measure = |n: u32| {
        let t = std::time::Instant::now();
        for _ in 0..n {
            unsafe { libc::getppid() };
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let me = std::process::id();
    let maps = maps::read_maps(me);
    let addr = libc::getppid as *const () as u64;
    let Some(m) = maps.iter().find(|m| addr >= m.start && addr < m.end) else {
        return ProbeCost::default();
    };
    let off = addr - m.start + m.offset;
    let path = std::path::PathBuf::from(&m.path);
    let n = 4000;
    let base = measure(n);
    let mut one = |flags: u32| -> Option<f64> {
        let spec = ProbeSpec { flags: flags | inferscope_common::SPEC_COUNT_ONLY, tgid: me, ..Default::default() };
        probes.attach_device(id, &spec, &path, off, me).ok()?;
        measure(100);
        let t = measure(n);
        probes.detach_device(id);
        Some((t - base).max(0.0))
    };
    match (one(0), one(SPEC_RETURN)) {
        (Some(e), Some(p)) if e > 0.0 && p > 0.0 => {
            debug!("device probe cost: entry {e:.0} ns, entry+return {p:.0} ns");
            ProbeCost { entry_ns: e, pair_ns: p.max(e) }
        }
        _ => ProbeCost::default(),
    }
}
