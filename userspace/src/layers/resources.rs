//! The resources layer: what the accelerators have (NVML's per-GPU and per-process figures),
//! sampled on a thread of its own ([`crate::resources`]) and handed to the sinks as
//! [`Output::Accelerators`] as each sample comes in. A host without the library gets one line
//! at start; a library that fails mid-run one line, and one when it answers again.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::{Cx, Layer};
use crate::{
    cli::RunOptions,
    export::{
        prom::{PromMetrics, resources::ResourceMetrics},
        sink::Output,
    },
    resources::{self, Message, Sampler},
};

pub struct ResourcesLayer {
    sampler: Sampler,
    samples: u64,
    failures: u64,
    failing: bool,
}

impl ResourcesLayer {
    /// None with `--gpu-interval 0`, or when the library cannot be loaded (said in one line).
    pub fn new(o: &RunOptions, prom: Option<&mut PromMetrics>) -> Result<Option<Self>> {
        if o.gpu_interval <= 0.0 {
            return Ok(None);
        }
        let path = PathBuf::from(&o.nvml_library);
        let every = Duration::from_secs_f64(o.gpu_interval.max(0.1));
        let sampler = match resources::start(path, every) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "inferscope: no GPU resources ({e:#}); a host without an NVIDIA driver has none \
                     (--nvml-library PATH names another library, --gpu-interval 0 stops this line)"
                );
                return Ok(None);
            }
        };
        let (n, name) = &sampler.found;
        eprintln!(
            "inferscope: GPU resources from {}: {n} GPU(s){}, every {} s",
            o.nvml_library,
            name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(),
            o.gpu_interval
        );
        if let Some(p) = prom {
            p.resources = Some(ResourceMetrics::new(&p.registry)?);
        }
        Ok(Some(Self { sampler, samples: 0, failures: 0, failing: false }))
    }
}

impl Layer for ResourcesLayer {
    fn name(&self) -> &'static str {
        "resources"
    }

    fn drain(&mut self, cx: &mut Cx) {
        while let Ok(m) = self.sampler.rx.try_recv() {
            match m {
                Message::Sample { devices, .. } => {
                    if self.failing {
                        self.failing = false;
                        eprintln!("inferscope: GPU resources: the library answers again");
                    }
                    self.samples += 1;
                    cx.emit(Output::Accelerators(&devices));
                }
                Message::Failed { error, first } => {
                    self.failures += 1;
                    self.failing = true;
                    if first {
                        eprintln!("inferscope: GPU resources: {error}; trying again every interval");
                    }
                }
            }
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("samples", self.samples), ("failures", self.failures)]
    }
}
