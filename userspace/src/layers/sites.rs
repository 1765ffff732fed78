//! The launch-sites layer: with the device layer on, each traced CPython's layout and thread
//! states go into the BPF maps the launch probes read, so every kernel or graph launch carries
//! the launching thread's innermost Python frames (python/sites.rs names them). Out: one
//! [`Output::LaunchSite`] per launch (a bounded label value) and, every `--device-interval`,
//! [`Output::LaunchSites`] per process.

use std::time::Duration;

use anyhow::Result;

use super::{Cx, Layer};
use crate::{
    cli::RunOptions,
    events::Event,
    output::{BoundedLabel, Family, Output},
    python::{Interpreter, sites::LaunchSites},
};

/// Most distinct site label values; past them, `other`.
const MAX_SITE_LABELS: usize = 200;

pub struct SitesLayer {
    sites: LaunchSites,
    labels: BoundedLabel,
    every: Duration,
    last: std::time::Instant,
}

impl SitesLayer {
    /// Only with the device layer (its launch probes read the frames).
    pub fn new(o: &RunOptions, has_device: bool) -> Result<Option<Self>> {
        if !has_device {
            return Ok(None);
        }
        Ok(Some(Self {
            sites: LaunchSites::default(),
            labels: BoundedLabel::new(MAX_SITE_LABELS),
            every: Duration::from_secs_f64(o.device_interval.max(0.1)),
            last: std::time::Instant::now(),
        }))
    }

    /// A `python_launch_sites` output per process with launches since the last (or for `only`).
    fn intervals(&mut self, cx: &mut Cx, only: Option<u32>) {
        let seconds = self.last.elapsed().as_secs_f64();
        if only.is_none() {
            self.last = std::time::Instant::now();
        }
        for pid in self.sites.pids() {
            if only.is_some_and(|o| o != pid) {
                continue;
            }
            let sites = self.sites.take(pid);
            if !sites.is_empty() {
                cx.emit(Output::LaunchSites { pid, sites: &sites, seconds });
            }
        }
    }
}

impl Layer for SitesLayer {
    fn name(&self) -> &'static str {
        "sites"
    }

    fn families(&self) -> Vec<Family> {
        vec![Family::LaunchSites]
    }

    fn wants_python(&self) -> bool {
        true
    }

    fn process_added(&mut self, cx: &mut Cx, _pid: u32, interp: Option<&Interpreter>) {
        if let Some(i) = interp {
            self.sites.add(i.clone(), cx.probes);
            self.sites.sync_threads(cx.probes);
        }
    }

    fn process_gone(&mut self, cx: &mut Cx, pid: u32, _ts_ns: u64) {
        // Its last launch sites, then its maps.
        self.intervals(cx, Some(pid));
        self.sites.remove(pid, cx.probes);
    }

    fn on_event(&mut self, cx: &mut Cx, ev: &Event) {
        if let Event::PySite { tgid, codes, .. } = ev
            && let Some(site) = self.sites.on_site(*tgid, codes)
        {
            let label = self.labels.get(Some(&site));
            cx.emit(Output::LaunchSite { pid: *tgid, site: &label });
        }
    }

    fn tick(&mut self, cx: &mut Cx) {
        self.sites.sync_threads(cx.probes);
        if self.last.elapsed() >= self.every {
            self.intervals(cx, None);
        }
    }

    fn finish(&mut self, cx: &mut Cx) {
        self.intervals(cx, None);
    }
}
