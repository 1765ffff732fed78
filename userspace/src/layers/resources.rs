//! The resources layer: what the accelerators have (NVML's per-GPU and per-process figures,
//! DCMI's per-NPU ones), sampled on threads of their own ([`crate::resources`]) and handed to
//! the sinks ([`Output::Accelerators`], [`Output::Npus`]) as each sample comes in. A host with
//! neither library gets one line at start; a library that fails mid-run one line, and one when
//! it answers again.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::{Cx, Layer};
use crate::{
    cli::RunOptions,
    output::{Family, Output},
    resources::{self, Message, Reading, Sampler},
};

/// Where Ascend's driver installs DCMI, when the dynamic loader does not know it.
const ASCEND_DCMI: &str = "/usr/local/Ascend/driver/lib64/driver/libdcmi.so";

struct Source {
    /// "NVML" or "DCMI".
    name: &'static str,
    sampler: Sampler,
    failing: bool,
}

pub struct ResourcesLayer {
    sources: Vec<Source>,
    samples: u64,
    failures: u64,
    events: u64,
}

impl ResourcesLayer {
    /// None with `--gpu-interval 0`, or when no library can be loaded (said in one line).
    pub fn new(o: &RunOptions) -> Result<Option<Self>> {
        if o.gpu_interval <= 0.0 {
            return Ok(None);
        }
        let every = Duration::from_secs_f64(o.gpu_interval.max(0.1));
        let mut sources = Vec::new();
        let mut missing = Vec::new();
        match resources::start(PathBuf::from(&o.nvml_library), every) {
            Ok(s) => sources.push(("NVML", &o.nvml_library, s)),
            Err(e) => missing.push(format!("no NVIDIA driver ({e:#})")),
        }
        let dcmi = resources::start_dcmi(PathBuf::from(&o.dcmi_library), every).or_else(|e| {
            if o.dcmi_library == "libdcmi.so" && std::path::Path::new(ASCEND_DCMI).exists() {
                resources::start_dcmi(PathBuf::from(ASCEND_DCMI), every)
            } else {
                Err(e)
            }
        });
        match dcmi {
            Ok(s) => sources.push(("DCMI", &o.dcmi_library, s)),
            Err(e) => missing.push(format!("no Ascend driver ({e:#})")),
        }
        if sources.is_empty() {
            eprintln!(
                "inferscope: no accelerator resources: {} (--nvml-library/--dcmi-library name other libraries, \
                 --gpu-interval 0 stops this line)",
                missing.join("; ")
            );
            return Ok(None);
        }
        for (name, lib, s) in &sources {
            let (n, model) = &s.found;
            let what = if *name == "NVML" { "GPU" } else { "NPU" };
            eprintln!(
                "inferscope: {what} resources from {lib}: {n} {what}(s){}, every {} s",
                model.as_ref().map(|m| format!(" ({m})")).unwrap_or_default(),
                o.gpu_interval
            );
        }
        let sources = sources.into_iter().map(|(name, _, sampler)| Source { name, sampler, failing: false }).collect();
        Ok(Some(Self { sources, samples: 0, failures: 0, events: 0 }))
    }
}

impl Layer for ResourcesLayer {
    fn name(&self) -> &'static str {
        "resources"
    }

    fn families(&self) -> Vec<Family> {
        vec![Family::Resources]
    }

    fn drain(&mut self, cx: &mut Cx) {
        for s in &mut self.sources {
            while let Ok(m) = s.sampler.rx.try_recv() {
                match m {
                    Message::Sample { reading, .. } => {
                        if s.failing {
                            s.failing = false;
                            eprintln!("inferscope: {} resources: the library answers again", s.name);
                        }
                        self.samples += 1;
                        match &reading {
                            Reading::Gpus(d) => cx.emit(Output::Accelerators(d)),
                            Reading::Npus(d) => cx.emit(Output::Npus(d)),
                        }
                    }
                    Message::Events(events) => {
                        for e in &events {
                            self.events += 1;
                            // XIDs are rare and each matters; a storm is cut short.
                            if self.events <= 100 {
                                let gpu = e.uuid.as_deref().unwrap_or("?");
                                match e.kind {
                                    "xid" => eprintln!("inferscope: GPU {} ({gpu}): XID {}", e.index, e.data),
                                    k => eprintln!("inferscope: GPU {} ({gpu}): {k}", e.index),
                                }
                            } else if self.events == 101 {
                                eprintln!("inferscope: more GPU events than 100: counted, no longer said");
                            }
                        }
                        cx.emit(Output::GpuEvents(&events));
                    }
                    Message::Failed { error, first } => {
                        self.failures += 1;
                        s.failing = true;
                        if first {
                            let what = if s.name == "NVML" { "GPU" } else { "NPU" };
                            eprintln!("inferscope: {what} resources: {error}; trying again every interval");
                        }
                    }
                }
            }
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("samples", self.samples), ("failures", self.failures), ("events", self.events)]
    }
}
