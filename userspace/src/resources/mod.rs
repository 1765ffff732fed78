//! What the accelerators have, beside what the host asks of them: per GPU utilisation, memory,
//! power, temperature, clocks, throttle reasons, PCIe throughput and ECC errors, per NPU AI
//! core/CPU utilisation, HBM, temperature, power and health, and per process the device memory
//! (and utilisation) the device reports, read from the vendor's management library on a thread
//! of its own every `--gpu-interval` (NVIDIA: [`nvml`]; Huawei Ascend: [`dcmi`]). The resources
//! layer hands each sample to the sinks.

pub mod dcmi;
pub mod nvml;

pub use dcmi::NpuSample;
pub use nvml::DeviceEvent;

use std::{
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde::Serialize;

/// One GPU at one moment. Figures the library did not give are `None` or left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceSample {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// Share of the last sample period a kernel ran, 0..1.
    pub gpu_util: Option<f64>,
    /// Share of the period device memory was read or written, 0..1.
    pub memory_util: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub power_watts: Option<f64>,
    pub temperature_celsius: Option<f64>,
    /// ("graphics" | "sm" | "memory", Hz).
    pub clocks_hz: Vec<(&'static str, f64)>,
    /// NVML's clock event (throttle) reasons bitmask.
    pub throttle_reasons: Option<u64>,
    /// ("tx" | "rx", bytes per second).
    pub pcie_bytes_per_second: Vec<(&'static str, f64)>,
    /// ("corrected" | "uncorrected", the GPU's lifetime count: NVML's aggregate counter).
    pub ecc_errors: Vec<(&'static str, u64)>,
    pub processes: Vec<ProcessSample>,
}

/// What one process uses of one GPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProcessSample {
    /// As the host sees it (NVML reports host PIDs).
    pub pid: u32,
    pub memory_used_bytes: Option<u64>,
    /// Its share of the SM and memory-controller time in the newest sample, 0..1.
    pub sm_util: Option<f64>,
    pub memory_util: Option<f64>,
}

/// One library's sample.
pub enum Reading {
    Gpus(Vec<DeviceSample>),
    Npus(Vec<NpuSample>),
}

impl Reading {
    /// (devices, the first one's name).
    fn found(&self) -> (usize, Option<String>) {
        match self {
            Reading::Gpus(d) => (d.len(), d.first().and_then(|d| d.name.clone())),
            Reading::Npus(d) => (d.len(), d.first().and_then(|d| d.name.clone())),
        }
    }
}

/// What the sampling thread says.
pub enum Message {
    /// Every device, at `at`.
    Sample { at: Instant, reading: Reading },
    /// The library failed (`first`: the first failure since it last worked).
    Failed { error: String, first: bool },
    /// Events the driver said (XID errors, double-bit ECC errors).
    Events(Vec<DeviceEvent>),
}

/// The sampling thread's end: samples arrive here; the thread stops when this is dropped.
pub struct Sampler {
    pub rx: mpsc::Receiver<Message>,
    /// The devices found at start: (count, the first one's name).
    pub found: (usize, Option<String>),
}

/// A management library, loaded and initialised.
trait Source: Send + 'static {
    fn read(&mut self) -> anyhow::Result<Reading>;
    /// Until the next sample: the library's events, or sleep.
    fn wait(&mut self, d: Duration) -> Vec<DeviceEvent> {
        std::thread::sleep(d);
        Vec::new()
    }
}

impl Source for nvml::Nvml {
    fn read(&mut self) -> anyhow::Result<Reading> {
        Ok(Reading::Gpus(self.sample()?))
    }

    fn wait(&mut self, d: Duration) -> Vec<DeviceEvent> {
        nvml::Nvml::wait(self, d)
    }
}

impl Source for dcmi::Dcmi {
    fn read(&mut self) -> anyhow::Result<Reading> {
        Ok(Reading::Npus(self.sample()?))
    }
}

/// Loads NVIDIA's library at `path` and starts sampling every `every`. An error (no driver, no
/// library) is for one line; nothing else stops.
pub fn start(path: PathBuf, every: Duration) -> anyhow::Result<Sampler> {
    run(nvml::Nvml::open(&path)?, every, "nvml")
}

/// The same for Huawei's DCMI.
pub fn start_dcmi(path: PathBuf, every: Duration) -> anyhow::Result<Sampler> {
    run(dcmi::Dcmi::open(&path)?, every, "dcmi")
}

fn run<S: Source>(mut lib: S, every: Duration, name: &str) -> anyhow::Result<Sampler> {
    let first = lib.read()?;
    let found = first.found();
    let (tx, rx) = mpsc::sync_channel(4);
    std::thread::Builder::new().name(format!("inferscope-{name}")).spawn(move || {
        let mut failing = false;
        let mut next = Some(first);
        loop {
            let msg = match next.take().map(Ok).unwrap_or_else(|| lib.read()) {
                Ok(reading) => {
                    failing = false;
                    Message::Sample { at: Instant::now(), reading }
                }
                Err(e) => {
                    let first = !failing;
                    failing = true;
                    Message::Failed { error: format!("{e:#}"), first }
                }
            };
            // A full channel (the loop is behind) drops this sample; a closed one ends the thread.
            if let Err(mpsc::TrySendError::Disconnected(_)) = tx.try_send(msg) {
                return;
            }
            let events = lib.wait(every);
            // Events are not dropped for a full channel: they wait for room.
            if !events.is_empty() && tx.send(Message::Events(events)).is_err() {
                return;
            }
        }
    })?;
    Ok(Sampler { rx, found })
}
