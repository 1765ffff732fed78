//! Sums of device activity over a span of time: an interval line, an engine step.

use std::collections::HashMap;

use super::catalog::{CopyDir, SyncKind};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CopyAgg {
    pub count: u64,
    pub bytes: u64,
    /// Host time inside the copy calls (enqueueing, for async copies).
    pub ns: u64,
}

/// Kernel and graph launches, over a process or one of its streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchStats {
    pub launches: u64,
    pub graph_launches: u64,
    /// Host time inside launch calls (kernel and graph launches that had a return probe).
    pub launch_ns: u64,
    /// Gaps between consecutive launches on a stream: count, sum, largest.
    pub gaps: u64,
    pub gap_ns: u64,
    pub max_gap_ns: u64,
}

impl LaunchStats {
    pub fn add(&mut self, graph: bool, host_ns: Option<u64>, gap_ns: Option<u64>) {
        if graph {
            self.graph_launches = self.graph_launches.saturating_add(1);
        } else {
            self.launches = self.launches.saturating_add(1);
        }
        self.launch_ns = self.launch_ns.saturating_add(host_ns.unwrap_or(0));
        if let Some(g) = gap_ns {
            self.gaps = self.gaps.saturating_add(1);
            self.gap_ns = self.gap_ns.saturating_add(g);
            self.max_gap_ns = self.max_gap_ns.max(g);
        }
    }

    pub fn merge(&mut self, o: &LaunchStats) {
        self.launches = self.launches.saturating_add(o.launches);
        self.graph_launches = self.graph_launches.saturating_add(o.graph_launches);
        self.launch_ns = self.launch_ns.saturating_add(o.launch_ns);
        self.gaps = self.gaps.saturating_add(o.gaps);
        self.gap_ns = self.gap_ns.saturating_add(o.gap_ns);
        self.max_gap_ns = self.max_gap_ns.max(o.max_gap_ns);
    }
}

/// What one process asked of its accelerator over some time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceSummary {
    pub launch: LaunchStats,
    pub copies: [CopyAgg; 5],
    pub syncs: u64,
    pub sync_ns: u64,
    pub max_sync_ns: u64,
    /// Wait time by what was waited for (stream, device, event).
    pub sync_ns_by_kind: [u64; 3],
    pub allocs: u64,
    pub alloc_bytes: u64,
    pub collectives: u64,
    pub collective_bytes: u64,
    pub collective_ns: u64,
    /// Calls the runtime refused (non-zero return).
    pub errors: u64,
    /// First call's start and last call's end (CLOCK_MONOTONIC ns; 0 when empty).
    pub first_ns: u64,
    pub last_ns: u64,
    /// The first kernel or graph launch's start, and the latest end of a synchronisation
    /// (stream, device, event): the host-observed span of device work (0 when none).
    pub first_launch_ns: u64,
    pub last_wait_end_ns: u64,
}

/// One call, reduced to what summaries need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub start_ns: u64,
    pub end_ns: u64,
    pub what: What,
    pub error: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum What {
    Launch { graph: bool, host_ns: Option<u64>, gap_ns: Option<u64> },
    Copy { dir: CopyDir, bytes: u64, ns: u64 },
    Sync { kind: SyncKind, ns: u64 },
    Alloc { bytes: u64 },
    Collective { bytes: u64, ns: u64 },
}

impl DeviceSummary {
    pub fn is_empty(&self) -> bool {
        self.first_ns == 0
    }

    pub fn add(&mut self, s: &Sample) {
        if self.first_ns == 0 || s.start_ns < self.first_ns {
            self.first_ns = s.start_ns;
        }
        self.last_ns = self.last_ns.max(s.end_ns.max(s.start_ns));
        if s.error {
            self.errors = self.errors.saturating_add(1);
        }
        match s.what {
            What::Launch { graph, host_ns, gap_ns } => {
                if self.first_launch_ns == 0 || s.start_ns < self.first_launch_ns {
                    self.first_launch_ns = s.start_ns;
                }
                self.launch.add(graph, host_ns, gap_ns)
            }
            What::Copy { dir, bytes, ns } => {
                let c = &mut self.copies[dir.index()];
                c.count = c.count.saturating_add(1);
                c.bytes = c.bytes.saturating_add(bytes);
                c.ns = c.ns.saturating_add(ns);
            }
            What::Sync { kind, ns } => {
                self.last_wait_end_ns = self.last_wait_end_ns.max(s.end_ns);
                self.syncs = self.syncs.saturating_add(1);
                self.sync_ns = self.sync_ns.saturating_add(ns);
                self.max_sync_ns = self.max_sync_ns.max(ns);
                self.sync_ns_by_kind[kind as usize] = self.sync_ns_by_kind[kind as usize].saturating_add(ns);
            }
            What::Alloc { bytes } => {
                self.allocs = self.allocs.saturating_add(1);
                self.alloc_bytes = self.alloc_bytes.saturating_add(bytes);
            }
            What::Collective { bytes, ns } => {
                self.collectives = self.collectives.saturating_add(1);
                self.collective_bytes = self.collective_bytes.saturating_add(bytes);
                self.collective_ns = self.collective_ns.saturating_add(ns);
            }
        }
    }

    pub fn merge(&mut self, o: &DeviceSummary) {
        if o.is_empty() {
            return;
        }
        if self.first_ns == 0 || o.first_ns < self.first_ns {
            self.first_ns = o.first_ns;
        }
        self.last_ns = self.last_ns.max(o.last_ns);
        if o.first_launch_ns != 0 && (self.first_launch_ns == 0 || o.first_launch_ns < self.first_launch_ns) {
            self.first_launch_ns = o.first_launch_ns;
        }
        self.last_wait_end_ns = self.last_wait_end_ns.max(o.last_wait_end_ns);
        self.launch.merge(&o.launch);
        for (a, b) in self.copies.iter_mut().zip(o.copies.iter()) {
            a.count = a.count.saturating_add(b.count);
            a.bytes = a.bytes.saturating_add(b.bytes);
            a.ns = a.ns.saturating_add(b.ns);
        }
        self.syncs = self.syncs.saturating_add(o.syncs);
        self.sync_ns = self.sync_ns.saturating_add(o.sync_ns);
        self.max_sync_ns = self.max_sync_ns.max(o.max_sync_ns);
        for (a, b) in self.sync_ns_by_kind.iter_mut().zip(o.sync_ns_by_kind.iter()) {
            *a = a.saturating_add(*b);
        }
        self.allocs = self.allocs.saturating_add(o.allocs);
        self.alloc_bytes = self.alloc_bytes.saturating_add(o.alloc_bytes);
        self.collectives = self.collectives.saturating_add(o.collectives);
        self.collective_bytes = self.collective_bytes.saturating_add(o.collective_bytes);
        self.collective_ns = self.collective_ns.saturating_add(o.collective_ns);
        self.errors = self.errors.saturating_add(o.errors);
    }

    /// Device time as the host observes it, without instrumenting the device: from the first
    /// launch to the end of the last synchronisation after it (the host waited for the work to
    /// finish then). None without a launch followed by a wait.
    pub fn host_observed_ns(&self) -> Option<u64> {
        (self.first_launch_ns != 0 && self.last_wait_end_ns > self.first_launch_ns)
            .then(|| self.last_wait_end_ns - self.first_launch_ns)
    }

    pub fn copy_bytes(&self) -> u64 {
        self.copies.iter().map(|c| c.bytes).sum()
    }
}

/// Launch count and host time per kernel name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelStats {
    pub by_name: HashMap<String, (u64, u64)>,
    /// Launches whose name was not kept (more distinct names than the bound).
    pub overflow: (u64, u64),
}

impl KernelStats {
    /// Most distinct names kept per interval.
    pub const MAX_NAMES: usize = 4096;

    pub fn add(&mut self, name: &str, host_ns: u64) {
        if let Some(v) = self.by_name.get_mut(name) {
            v.0 = v.0.saturating_add(1);
            v.1 = v.1.saturating_add(host_ns);
        } else if self.by_name.len() < Self::MAX_NAMES {
            self.by_name.insert(name.to_string(), (1, host_ns));
        } else {
            self.overflow.0 = self.overflow.0.saturating_add(1);
            self.overflow.1 = self.overflow.1.saturating_add(host_ns);
        }
    }

    /// The `n` names launched most, then by host time, then by name (a stable order).
    pub fn top(&self, n: usize) -> Vec<(&str, u64, u64)> {
        let mut v: Vec<(&str, u64, u64)> = self.by_name.iter().map(|(k, (c, ns))| (k.as_str(), *c, *ns)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_merges() {
        let mut a = DeviceSummary::default();
        a.add(&Sample {
            start_ns: 100,
            end_ns: 110,
            what: What::Launch { graph: false, host_ns: Some(10), gap_ns: Some(5) },
            error: false,
        });
        a.add(&Sample {
            start_ns: 120,
            end_ns: 150,
            what: What::Copy { dir: CopyDir::HostToDevice, bytes: 4096, ns: 30 },
            error: false,
        });
        let mut b = DeviceSummary::default();
        b.add(&Sample { start_ns: 90, end_ns: 400, what: What::Sync { kind: SyncKind::Stream, ns: 310 }, error: true });
        a.merge(&b);
        assert_eq!((a.launch.launches, a.launch.launch_ns, a.launch.gaps, a.launch.gap_ns), (1, 10, 1, 5));
        assert_eq!(a.copies[CopyDir::HostToDevice.index()], CopyAgg { count: 1, bytes: 4096, ns: 30 });
        assert_eq!((a.syncs, a.sync_ns, a.errors), (1, 310, 1));
        assert_eq!((a.first_ns, a.last_ns), (90, 400));
        // From the launch (100) to the end of the wait (400).
        assert_eq!(a.host_observed_ns(), Some(300));
        assert_eq!(b.host_observed_ns(), None, "a wait with no launch");
        let mut c = DeviceSummary::default();
        c.add(&Sample { start_ns: 10, end_ns: 20, what: What::Sync { kind: SyncKind::Device, ns: 10 }, error: false });
        c.add(&Sample {
            start_ns: 50,
            end_ns: 55,
            what: What::Launch { graph: true, host_ns: Some(5), gap_ns: None },
            error: false,
        });
        assert_eq!(c.host_observed_ns(), None, "the wait came before the launch: nothing waited for it");
        let j = crate::export::jsonl::summary_json(&a);
        assert_eq!(j["copies"]["h2d"]["bytes"], 4096);
        assert!(j["copies"].get("d2h").is_none());
    }

    #[test]
    fn kernel_names_are_bounded() {
        let mut k = KernelStats::default();
        for i in 0..KernelStats::MAX_NAMES + 10 {
            k.add(&format!("k{i}"), 1);
        }
        k.add("k0", 5);
        assert_eq!(k.by_name.len(), KernelStats::MAX_NAMES);
        assert_eq!(k.overflow, (10, 10));
        assert_eq!(k.top(1), vec![("k0", 2, 6)]);
    }
}
