//! The device layer: what a process asks of its accelerator (kernel launches, graph replays,
//! copies, collectives, allocations) and how long its host threads wait for it, from uprobes on
//! the runtime libraries it has mapped (CUDA driver and runtime, NCCL, Ascend ACL/CANN, HCCL).
//!
//! - [`catalog`]: every probed function, what its call means and where its values are.
//! - [`libs`]: /proc/PID/maps, the ELF symbols of mapped files, kernel names of host stubs.
//! - [`manager`]: which probes are attached where; rate limit and overhead budget.
//! - [`DeviceTracker`] (here): turns reported calls into [`summary::Sample`]s, per process and
//!   stream: interval summaries, per-kernel counts, and the calls inside each engine step.
//!
//! Nothing here touches the kernel; the tracker is fed decoded events and is tested as such.

pub mod catalog;
pub mod libs;
pub mod manager;
pub mod summary;

use std::collections::{BTreeMap, HashMap};

use catalog::{Api, Class, Entry, Group};
use summary::{DeviceSummary, KernelStats, Sample, What};

use crate::events::DeviceCall;

/// A gap longer than this between two launches on a stream is the engine being idle (no
/// requests), not the host keeping the device waiting: not counted.
pub const MAX_GAP_NS: u64 = 1_000_000_000;
/// Most streams labelled per process; further streams are reported as `other`.
pub const MAX_STREAMS: usize = 16;
/// Most handle names remembered per process (kernel handles from module lookups).
pub const MAX_NAMES: usize = 65536;

/// An attached probe: the process, the function and the library it is in.
#[derive(Clone, Debug)]
pub struct ProbeInfo {
    pub pid: u32,
    pub entry: &'static Entry,
    /// The exported name (an `aclnn*` operator's own name).
    pub symbol: String,
    /// File name of the library (`libcuda.so.1`).
    pub library: String,
}

/// One call as the exporters see it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRecord {
    pub pid: u32,
    pub api: Api,
    /// The stream's label (`0x7f00...`, `default`, `other`, or empty for calls without one).
    pub stream: String,
    pub sample: Sample,
    /// Collective operation name, for collectives.
    pub op: Option<&'static str>,
}

/// Per-stream sums over an interval.
pub type StreamStats = summary::LaunchStats;

/// What one process did over an interval.
#[derive(Clone, Debug, Default)]
pub struct IntervalReport {
    pub pid: u32,
    pub summary: DeviceSummary,
    pub streams: BTreeMap<String, StreamStats>,
    pub kernels: KernelStats,
}

/// A driver-level call that may turn out to be the inside of a runtime call on the same thread
/// (`cudaLaunchKernel` calls `cuLaunchKernel`): held until the next call on that thread.
#[derive(Clone, Debug)]
struct Held {
    rec: DeviceRecord,
    group: Group,
    kernel: Option<String>,
    stream: u64,
}

#[derive(Default)]
struct Proc {
    names: HashMap<u64, String>,
    /// Stream handle -> end of its last launch (ns).
    last_launch_end: HashMap<u64, u64>,
    stream_labels: HashMap<u64, String>,
    held: HashMap<u32, Held>,
    interval: IntervalReport,
}

/// Counters of what the tracker could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Calls from a probe id no longer (or never) attached.
    pub unknown_probe: u64,
    /// Driver calls folded into the runtime call that made them.
    pub nested: u64,
    pub calls: u64,
    pub names: u64,
}

/// Names a code address of a process (pid, address), for host stubs no registration named.
pub type Resolver = Box<dyn FnMut(u32, u64) -> Option<String> + Send>;

/// Turns reported calls into summaries, per process.
#[derive(Default)]
pub struct DeviceTracker {
    probes: HashMap<u32, ProbeInfo>,
    procs: HashMap<u32, Proc>,
    pub stats: DeviceStats,
    /// Host-stub addresses to kernel names, by process (runtime launches); filled by the caller
    /// from ELF symbols when no registration was seen.
    resolver: Option<Resolver>,
}

impl DeviceTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names host-stub addresses no registration named (ELF symbols of the owning library).
    pub fn set_resolver(&mut self, f: impl FnMut(u32, u64) -> Option<String> + Send + 'static) {
        self.resolver = Some(Box::new(f));
    }

    pub fn add_probe(&mut self, id: u32, info: ProbeInfo) {
        self.procs.entry(info.pid).or_default();
        self.probes.insert(id, info);
    }

    pub fn remove_probe(&mut self, id: u32) -> Option<ProbeInfo> {
        self.probes.remove(&id)
    }

    pub fn probe(&self, id: u32) -> Option<&ProbeInfo> {
        self.probes.get(&id)
    }

    /// A runtime named a handle.
    pub fn on_name(&mut self, tgid: u32, probe: u32, handle: u64, name: String) {
        if !self.probes.contains_key(&probe) || name.is_empty() {
            return;
        }
        self.stats.names = self.stats.names.saturating_add(1);
        let p = self.procs.entry(tgid).or_default();
        if p.names.len() >= MAX_NAMES && !p.names.contains_key(&handle) {
            return;
        }
        p.names.insert(handle, crate::process::elf::demangle(&name));
    }

    /// One reported call; what is final goes to `out`.
    pub fn on_call(&mut self, c: &DeviceCall, out: &mut Vec<DeviceRecord>) {
        let Some(info) = self.probes.get(&c.probe) else {
            self.stats.unknown_probe = self.stats.unknown_probe.saturating_add(1);
            return;
        };
        self.stats.calls = self.stats.calls.saturating_add(1);
        let entry = info.entry;
        let symbol_name = (entry.api == Api::AclOp && entry.symbol == "aclnn*").then(|| info.symbol.clone());
        if entry.class == Class::Name {
            return;
        }
        let p = self.procs.entry(c.tgid).or_default();
        let end = c.end_ns.unwrap_or(c.start_ns);
        let dur = c.end_ns.map(|e| e.saturating_sub(c.start_ns));
        let error = c.end_ns.is_some() && c.ret != 0;
        let (handle, stream_h, a2, a3) = (c.args[0], c.args[1], c.args[2], c.args[3]);
        let (what, op, stream, kernel) = match entry.class {
            Class::Launch | Class::Graph => {
                let graph = entry.class == Class::Graph;
                let kernel = if graph {
                    None
                } else if let Some(s) = symbol_name {
                    Some(s)
                } else if let Some(n) = p.names.get(&handle) {
                    Some(n.clone())
                } else if entry.api == Api::CudaRuntime {
                    // Looked up once per stub: an unnamed one stays `unknown` (until a
                    // registration names it).
                    let name = self.resolver.as_mut().and_then(|r| r(c.tgid, handle));
                    if p.names.len() < MAX_NAMES {
                        p.names.insert(handle, name.clone().unwrap_or_else(|| "unknown".into()));
                    }
                    name
                } else {
                    None
                };
                let kernel = kernel.or_else(|| (!graph).then(|| "unknown".to_string()));
                let (what, op) = (What::Launch { graph, host_ns: dur, gap_ns: None }, None);
                (what, op, Some(stream_h), kernel)
            }
            Class::Copy(src) => {
                (What::Copy { dir: src.dir(a3), bytes: a2, ns: dur.unwrap_or(0) }, None, Some(stream_h), None)
            }
            Class::Sync(kind) => {
                let stream = (kind == catalog::SyncKind::Stream).then_some(stream_h);
                (What::Sync { kind, ns: dur.unwrap_or(0) }, None, stream, None)
            }
            Class::Alloc => (What::Alloc { bytes: a2 }, None, None, None),
            Class::Collective(op, table) => {
                let bytes = table.size(a3).map_or(0, |s| s.saturating_mul(a2));
                (What::Collective { bytes, ns: dur.unwrap_or(0) }, Some(op.name()), Some(stream_h), None)
            }
            Class::Name => unreachable!("returned above"),
        };
        let stream_label = stream.map(|s| stream_label(p, s)).unwrap_or_default();
        let rec = DeviceRecord {
            pid: c.tgid,
            api: entry.api,
            stream: stream_label,
            sample: Sample { start_ns: c.start_ns, end_ns: end, what, error },
            op,
        };
        let held = Held { rec, group: entry.group, kernel, stream: stream.unwrap_or(0) };
        // A runtime call containing the driver call held for this thread: the driver call was
        // its inside, reported once (as the runtime call, which knows the kernel's name).
        let prev = p.held.remove(&c.tid);
        if let Some(prev) = prev {
            let inside = prev.group == held.group
                && is_driver(prev.rec.api)
                && !is_driver(held.rec.api)
                && prev.rec.sample.start_ns >= c.start_ns
                && prev.rec.sample.end_ns <= end;
            if inside {
                self.stats.nested = self.stats.nested.saturating_add(1);
            } else {
                commit(p, prev, out);
            }
        }
        if is_driver(entry.api) {
            p.held.insert(c.tid, held);
        } else {
            commit(p, held, out);
        }
    }

    /// Commits calls held longer than `max_age_ns` before `now` (no runtime call came to claim
    /// them: the driver was called directly).
    pub fn flush_held(&mut self, now: u64, max_age_ns: u64, out: &mut Vec<DeviceRecord>) {
        for p in self.procs.values_mut() {
            let tids: Vec<u32> = p
                .held
                .iter()
                .filter(|(_, h)| h.rec.sample.end_ns.saturating_add(max_age_ns) <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in tids {
                if let Some(h) = p.held.remove(&t) {
                    commit(p, h, out);
                }
            }
        }
    }

    /// The interval so far of every process with activity, reset.
    pub fn take_intervals(&mut self) -> Vec<IntervalReport> {
        let mut v = Vec::new();
        for (pid, p) in &mut self.procs {
            if p.interval.summary.is_empty() {
                continue;
            }
            let mut r = std::mem::take(&mut p.interval);
            r.pid = *pid;
            v.push(r);
        }
        v.sort_by_key(|r| r.pid);
        v
    }

    /// A process is gone: everything held is committed and its state dropped. Returns its last
    /// interval, if it had activity.
    pub fn process_gone(&mut self, pid: u32, out: &mut Vec<DeviceRecord>) -> Option<IntervalReport> {
        let mut p = self.procs.remove(&pid)?;
        for (_, h) in std::mem::take(&mut p.held) {
            commit(&mut p, h, out);
        }
        self.probes.retain(|_, i| i.pid != pid);
        let mut r = p.interval;
        r.pid = pid;
        (!r.summary.is_empty()).then_some(r)
    }
}

/// Lower-level APIs that higher ones call.
fn is_driver(api: Api) -> bool {
    matches!(api, Api::CudaDriver | Api::AscendRt)
}

fn stream_label(p: &mut Proc, s: u64) -> String {
    if s == 0 {
        return "default".into();
    }
    if let Some(l) = p.stream_labels.get(&s) {
        return l.clone();
    }
    if p.stream_labels.len() >= MAX_STREAMS {
        return "other".into();
    }
    let l = format!("{s:#x}");
    p.stream_labels.insert(s, l.clone());
    l
}

fn commit(p: &mut Proc, mut h: Held, out: &mut Vec<DeviceRecord>) {
    if let What::Launch { graph, host_ns, gap_ns: _ } = h.rec.sample.what {
        // A process that makes streams without end (one per request) forgets their gaps' start.
        if p.last_launch_end.len() >= 4096 && !p.last_launch_end.contains_key(&h.stream) {
            p.last_launch_end.clear();
        }
        let prev = p.last_launch_end.insert(h.stream, h.rec.sample.end_ns);
        let gap = prev.and_then(|e| h.rec.sample.start_ns.checked_sub(e)).filter(|g| *g <= MAX_GAP_NS);
        h.rec.sample.what = What::Launch { graph, host_ns, gap_ns: gap };
        p.interval.streams.entry(h.rec.stream.clone()).or_default().add(graph, host_ns, gap);
        if let Some(k) = &h.kernel {
            p.interval.kernels.add(k, host_ns.unwrap_or(0));
        }
    }
    p.interval.summary.add(&h.rec.sample);
    out.push(h.rec);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::catalog::lookup_symbol;

    fn tracker() -> DeviceTracker {
        let mut t = DeviceTracker::new();
        for (id, sym, pid) in [
            (1, "cuLaunchKernel", 10),
            (2, "cudaLaunchKernel", 10),
            (3, "cuModuleGetFunction", 10),
            (4, "cuStreamSynchronize", 10),
            (5, "ncclAllReduce", 11),
            (6, "cuGraphLaunch", 11),
            (7, "aclnnMatmul", 12),
        ] {
            let entry = lookup_symbol(sym).unwrap();
            let info = ProbeInfo { pid, entry, symbol: sym.into(), library: "lib".into() };
            t.add_probe(id, info);
        }
        t
    }

    fn call(probe: u32, tgid: u32, tid: u32, start: u64, end: u64, args: [u64; 4]) -> DeviceCall {
        DeviceCall { tgid, tid, probe, start_ns: start, end_ns: Some(end), args, ret: 0 }
    }

    #[test]
    fn launches_get_names_streams_and_gaps() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.on_name(10, 3, 0xf00, "_Z10add_kernelPfS_i".into());
        t.on_call(&call(1, 10, 100, 1_000, 1_500, [0xf00, 0x50, 4, 128]), &mut out);
        t.on_call(&call(1, 10, 100, 3_500, 4_000, [0xf00, 0x50, 4, 128]), &mut out);
        t.flush_held(u64::MAX, 0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].stream, "0x50");
        assert_eq!(out[1].sample.what, What::Launch { graph: false, host_ns: Some(500), gap_ns: Some(2_000) });
        let r = t.take_intervals();
        assert_eq!(r[0].kernels.top(1), vec![("add_kernel", 2, 1000)]);
        assert_eq!(r[0].streams["0x50"].gaps, 1);
        assert!(t.take_intervals().is_empty());
    }

    #[test]
    fn a_runtime_launch_absorbs_the_driver_launch_inside_it() {
        let mut t = tracker();
        t.set_resolver(|_, addr| (addr == 0xabc).then(|| "my_kernel".to_string()));
        let mut out = Vec::new();
        // cudaLaunchKernel [1000, 2000] calls cuLaunchKernel [1200, 1800]: the driver's return
        // is reported first.
        t.on_call(&call(1, 10, 100, 1_200, 1_800, [0x1, 0x50, 4, 128]), &mut out);
        assert!(out.is_empty(), "held until the runtime call is seen");
        t.on_call(&call(2, 10, 100, 1_000, 2_000, [0xabc, 0x50, 4, 128]), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].api, Api::CudaRuntime);
        assert_eq!(t.stats.nested, 1);
        // A driver call on another thread is its own launch.
        t.on_call(&call(1, 10, 101, 1_300, 1_400, [0x1, 0x50, 4, 128]), &mut out);
        t.flush_held(u64::MAX, 0, &mut out);
        assert_eq!(out.len(), 2);
        let r = t.take_intervals();
        assert_eq!(r[0].summary.launch.launches, 2);
        assert_eq!(r[0].kernels.top(2), vec![("my_kernel", 1, 1000), ("unknown", 1, 100)]);
    }

    /// The correlation stage that claims the tracker's calls for engine steps: 11 and 12 are
    /// children of the API server 10.
    fn steps() -> crate::correlate::Correlator {
        let mut c = crate::correlate::Correlator::default();
        c.process_added(10, vec![1]);
        c.process_added(11, vec![10, 1]);
        c.process_added(12, vec![10, 1]);
        c.process_added(99, vec![1]);
        c
    }

    #[test]
    fn collectives_count_bytes_and_steps_claim_their_descendants() {
        let mut t = tracker();
        let mut c = steps();
        let mut out = Vec::new();
        // ncclAllReduce of 1024 float32 (dtype 7) in pid 11, a child of the API server 10.
        t.on_call(&call(5, 11, 110, 5_000, 9_000, [0xc0, 0x60, 1024, 7]), &mut out);
        t.on_call(&call(6, 11, 110, 9_500, 9_600, [0x9, 0x60, 0, 0]), &mut out);
        t.flush_held(u64::MAX, 0, &mut out);
        assert_eq!(out[0].op, Some("all_reduce"));
        assert_eq!(out[0].sample.what, What::Collective { bytes: 4096, ns: 4_000 });
        c.device_calls(&std::mem::take(&mut out));
        let s = c.device_step(10, 9_000).unwrap();
        assert_eq!((s.collectives, s.collective_bytes, s.launch.graph_launches), (1, 4096, 0));
        let s = c.device_step(10, 20_000).unwrap();
        assert_eq!(s.launch.graph_launches, 1);
        assert!(c.device_step(10, 30_000).is_none());
        // A step of an unrelated process claims nothing.
        t.on_call(&call(6, 11, 110, 40_000, 40_100, [0x9, 0x60, 0, 0]), &mut out);
        t.flush_held(u64::MAX, 0, &mut out);
        c.device_calls(&std::mem::take(&mut out));
        assert!(c.device_step(99, 50_000).is_none());
        assert!(c.device_step(11, 50_000).is_some());
    }

    #[test]
    fn operators_are_named_by_their_symbol_and_streams_are_bounded() {
        let mut t = tracker();
        let mut out = Vec::new();
        for i in 0..(MAX_STREAMS as u64 + 4) {
            t.on_call(&call(7, 12, 120, 1_000 * i, 1_000 * i + 10, [0, 0x100 + i, 0, 0]), &mut out);
        }
        let streams: std::collections::HashSet<_> = out.iter().map(|r| r.stream.clone()).collect();
        assert_eq!(streams.len(), MAX_STREAMS + 1);
        assert!(streams.contains("other"));
        let r = t.take_intervals();
        assert_eq!(r[0].kernels.top(1)[0].0, "aclnnMatmul");
    }

    #[test]
    fn unclaimed_calls_are_kept_for_30_s_at_most() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.on_call(&call(6, 11, 110, 1_000, 2_000, [0x9, 0x60, 0, 0]), &mut out);
        t.on_call(&call(6, 11, 110, 40_000_000_000, 40_000_001_000, [0x9, 0x60, 0, 0]), &mut out);
        t.flush_held(u64::MAX, 0, &mut out);
        let mut c = steps();
        c.device_calls(&out);
        // The first call was dropped when the second came, 40 s later.
        let s = c.device_step(11, u64::MAX).unwrap();
        assert_eq!(s.launch.graph_launches, 1);
    }

    #[test]
    fn unknown_probes_and_gone_processes() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.on_call(&call(999, 10, 100, 1, 2, [0; 4]), &mut out);
        assert_eq!(t.stats.unknown_probe, 1);
        t.on_call(&call(4, 10, 100, 10, 5_010, [0x50, 0x50, 0, 0]), &mut out);
        let last = t.process_gone(10, &mut out).unwrap();
        assert_eq!((last.summary.syncs, last.summary.sync_ns), (1, 5_000));
        assert!(t.probe(1).is_none());
        assert!(t.probe(5).is_some());
    }
}
