//! Prometheus families of what the accelerators have (the resources layer; NPUs: DCMI, labelled
//! `npu`, `inferscope_npu_*`; GPUs: NVML): per GPU,
//! labelled `gpu` (its index) and `uuid`, and per process on a GPU, labelled `pid` too (so the
//! pod labels of a traced process are added at scrape time). Base units (bytes, watts,
//! hertz, ratios 0..1); the DCGM exporter's field each one matches is in the help text.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Registry};

use super::common::{counter, gauge_vec, gauge_vec_int};
use crate::resources::{DeviceEvent, DeviceSample, NpuSample};

pub struct ResourceMetrics {
    info: IntGaugeVec,
    util: GaugeVec,
    mem_util: GaugeVec,
    mem_used: GaugeVec,
    mem_total: GaugeVec,
    power: GaugeVec,
    temp: GaugeVec,
    clock: GaugeVec,
    throttle: GaugeVec,
    pcie: GaugeVec,
    ecc: IntCounterVec,
    proc_mem: GaugeVec,
    proc_util: GaugeVec,
    /// ECC counts already added, by (gpu, uuid, type): NVML gives totals, the counter deltas.
    ecc_seen: HashMap<(String, String, &'static str), u64>,
    /// Per-process series made at the last sample, by (pid, gpu, uuid).
    procs: HashSet<(String, String, String)>,
    /// Info series made, by (gpu, uuid, model).
    infos: HashSet<(String, String, String)>,
    npu: NpuMetrics,
    xid: IntCounterVec,
    dbe: IntCounterVec,
}

/// Ascend NPUs (DCMI), labelled `npu` (the logical id).
struct NpuMetrics {
    info: IntGaugeVec,
    util: GaugeVec,
    hbm_used: GaugeVec,
    hbm_total: GaugeVec,
    hbm_bw: GaugeVec,
    temp: GaugeVec,
    power: GaugeVec,
    health: GaugeVec,
    proc_mem: GaugeVec,
    /// Per-process series made at the last sample, by (pid, npu).
    procs: HashSet<(String, String)>,
    infos: HashSet<[String; 4]>,
}

impl NpuMetrics {
    fn new(reg: &Registry) -> Result<Self> {
        let n = &["npu"];
        Ok(Self {
            info: gauge_vec_int(
                reg,
                "inferscope_npu_info",
                "An Ascend NPU DCMI reports: card, device and chip; value 1",
                &["npu", "card", "device", "model"],
            )?,
            util: gauge_vec(
                reg,
                "inferscope_npu_utilization_ratio",
                "Share of time the NPU's cores were busy, by core: aicore, aicpu, vectorcore, 0..1",
                &["npu", "core"],
            )?,
            hbm_used: gauge_vec(reg, "inferscope_npu_hbm_used_bytes", "High-bandwidth memory in use", n)?,
            hbm_total: gauge_vec(reg, "inferscope_npu_hbm_total_bytes", "High-bandwidth memory in all", n)?,
            hbm_bw: gauge_vec(
                reg,
                "inferscope_npu_hbm_bandwidth_utilization_ratio",
                "Share of the HBM bandwidth in use, 0..1",
                n,
            )?,
            temp: gauge_vec(reg, "inferscope_npu_temperature_celsius", "NPU temperature", n)?,
            power: gauge_vec(reg, "inferscope_npu_power_watts", "NPU power draw", n)?,
            health: gauge_vec(
                reg,
                "inferscope_npu_health",
                "The NPU's health as DCMI says it: 0 healthy, 1 minor, 2 major, 3 critical alarm",
                n,
            )?,
            proc_mem: gauge_vec(
                reg,
                "inferscope_npu_process_memory_used_bytes",
                "Device memory a process uses on an NPU (host pid)",
                &["pid", "npu"],
            )?,
            procs: HashSet::new(),
            infos: HashSet::new(),
        })
    }

    fn record(&mut self, devices: &[NpuSample]) {
        let mut procs = HashSet::new();
        let mut infos = HashSet::new();
        for d in devices {
            let npu = d.npu.to_string();
            let info = [npu.clone(), d.card.to_string(), d.device.to_string(), d.name.clone().unwrap_or_default()];
            self.info.with_label_values(&[&info[0], &info[1], &info[2], &info[3]]).set(1);
            infos.insert(info);
            let set = |g: &GaugeVec, v: Option<f64>| {
                if let Some(v) = v {
                    g.with_label_values(&[npu.as_str()]).set(v);
                }
            };
            for (core, v) in [("aicore", d.aicore_util), ("aicpu", d.aicpu_util), ("vectorcore", d.vectorcore_util)] {
                if let Some(v) = v {
                    self.util.with_label_values(&[npu.as_str(), core]).set(v);
                }
            }
            set(&self.hbm_used, d.hbm_used_bytes.map(|b| b as f64));
            set(&self.hbm_total, d.hbm_total_bytes.map(|b| b as f64));
            set(&self.hbm_bw, d.hbm_bandwidth_util);
            set(&self.temp, d.temperature_celsius);
            set(&self.power, d.power_watts);
            set(&self.health, d.health.map(f64::from));
            for (pid, bytes) in &d.processes {
                let pid = pid.to_string();
                self.proc_mem.with_label_values(&[&pid, &npu]).set(*bytes as f64);
                procs.insert((pid, npu.clone()));
            }
        }
        for (pid, npu) in self.procs.difference(&procs) {
            let _ = self.proc_mem.remove_label_values(&[pid, npu]);
        }
        for i in self.infos.difference(&infos) {
            let _ = self.info.remove_label_values(&[&i[0], &i[1], &i[2], &i[3]]);
        }
        self.procs = procs;
        self.infos = infos;
    }
}

impl ResourceMetrics {
    pub fn new(reg: &Registry) -> Result<Self> {
        let d = &["gpu", "uuid"];
        Ok(Self {
            info: gauge_vec_int(
                reg,
                "inferscope_gpu_info",
                "A GPU the management library reports: its model; value 1",
                &["gpu", "uuid", "model"],
            )?,
            util: gauge_vec(
                reg,
                "inferscope_gpu_utilization_ratio",
                "Share of the last sample period in which a kernel ran on the GPU, 0..1 (DCGM_FI_DEV_GPU_UTIL / 100)",
                d,
            )?,
            mem_util: gauge_vec(
                reg,
                "inferscope_gpu_memory_utilization_ratio",
                "Share of the last sample period in which device memory was read or written, 0..1 \
                 (DCGM_FI_DEV_MEM_COPY_UTIL / 100)",
                d,
            )?,
            mem_used: gauge_vec(
                reg,
                "inferscope_gpu_memory_used_bytes",
                "Device memory in use (DCGM_FI_DEV_FB_USED, in bytes)",
                d,
            )?,
            mem_total: gauge_vec(
                reg,
                "inferscope_gpu_memory_total_bytes",
                "Device memory in all (DCGM_FI_DEV_FB_TOTAL, in bytes)",
                d,
            )?,
            power: gauge_vec(reg, "inferscope_gpu_power_watts", "Power draw (DCGM_FI_DEV_POWER_USAGE)", d)?,
            temp: gauge_vec(reg, "inferscope_gpu_temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP)", d)?,
            clock: gauge_vec(
                reg,
                "inferscope_gpu_clock_hertz",
                "Current clock by domain: graphics, sm, memory (DCGM_FI_DEV_SM_CLOCK, _MEM_CLOCK, in Hz)",
                &["gpu", "uuid", "clock"],
            )?,
            throttle: gauge_vec(
                reg,
                "inferscope_gpu_clock_throttle_reasons",
                "Why clocks are held down now: NVML's clock event reasons bitmask, 0 when none \
                 (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS)",
                d,
            )?,
            pcie: gauge_vec(
                reg,
                "inferscope_gpu_pcie_bytes_per_second",
                "PCIe throughput by direction, tx or rx, over NVML's last 20 ms window",
                &["gpu", "uuid", "direction"],
            )?,
            ecc: counter(
                reg,
                "inferscope_gpu_ecc_errors_total",
                "Device memory ECC errors by type, corrected or uncorrected (NVML's aggregate count; \
                 DCGM_FI_DEV_ECC_SBE_AGG_TOTAL, _DBE_AGG_TOTAL)",
                &["gpu", "uuid", "type"],
            )?,
            proc_mem: gauge_vec(
                reg,
                "inferscope_gpu_process_memory_used_bytes",
                "Device memory a process uses on a GPU (host pid)",
                &["pid", "gpu", "uuid"],
            )?,
            proc_util: gauge_vec(
                reg,
                "inferscope_gpu_process_utilization_ratio",
                "A process's share of a GPU in the newest sample, by kind: sm or memory, 0..1",
                &["pid", "gpu", "uuid", "kind"],
            )?,
            ecc_seen: HashMap::new(),
            procs: HashSet::new(),
            infos: HashSet::new(),
            npu: NpuMetrics::new(reg)?,
            xid: counter(
                reg,
                "inferscope_gpu_xid_errors_total",
                "XID errors the driver reported, by XID number (DCGM_FI_DEV_XID_ERRORS is the last one)",
                &["gpu", "uuid", "xid"],
            )?,
            dbe: counter(
                reg,
                "inferscope_gpu_double_bit_ecc_events_total",
                "Double-bit (uncorrectable) ECC error events the driver reported",
                &["gpu", "uuid"],
            )?,
        })
    }

    /// Events of GPUs: XID errors by number, double-bit ECC events.
    pub fn record_events(&self, events: &[DeviceEvent]) {
        for e in events {
            let gpu = e.index.to_string();
            let uuid = e.uuid.clone().unwrap_or_default();
            match e.kind {
                "xid" => self.xid.with_label_values(&[gpu.as_str(), uuid.as_str(), &e.data.to_string()]).inc(),
                _ => self.dbe.with_label_values(&[gpu.as_str(), uuid.as_str()]).inc(),
            }
        }
    }

    /// One sample of every NPU.
    pub fn record_npus(&mut self, devices: &[NpuSample]) {
        self.npu.record(devices);
    }

    /// One sample of every GPU: gauges set, counters moved, series of processes no longer on a
    /// GPU (or GPUs gone) removed.
    pub fn record(&mut self, devices: &[DeviceSample]) {
        let mut procs = HashSet::new();
        let mut infos = HashSet::new();
        for d in devices {
            let gpu = d.index.to_string();
            let uuid = d.uuid.clone().unwrap_or_default();
            let l = [gpu.as_str(), uuid.as_str()];
            let info = (gpu.clone(), uuid.clone(), d.name.clone().unwrap_or_default());
            self.info.with_label_values(&[&info.0, &info.1, &info.2]).set(1);
            infos.insert(info);
            let set = |g: &GaugeVec, v: Option<f64>| {
                if let Some(v) = v {
                    g.with_label_values(&l).set(v);
                }
            };
            set(&self.util, d.gpu_util);
            set(&self.mem_util, d.memory_util);
            set(&self.mem_used, d.memory_used_bytes.map(|b| b as f64));
            set(&self.mem_total, d.memory_total_bytes.map(|b| b as f64));
            set(&self.power, d.power_watts);
            set(&self.temp, d.temperature_celsius);
            set(&self.throttle, d.throttle_reasons.map(|r| r as f64));
            for (clock, hz) in &d.clocks_hz {
                self.clock.with_label_values(&[gpu.as_str(), uuid.as_str(), clock]).set(*hz);
            }
            for (dir, bps) in &d.pcie_bytes_per_second {
                self.pcie.with_label_values(&[gpu.as_str(), uuid.as_str(), dir]).set(*bps);
            }
            for (kind, total) in &d.ecc_errors {
                let seen = self.ecc_seen.entry((gpu.clone(), uuid.clone(), kind)).or_insert(0);
                // A total that went down (driver reloaded, counters cleared) starts over.
                let delta = if *total >= *seen { *total - *seen } else { *total };
                self.ecc.with_label_values(&[gpu.as_str(), uuid.as_str(), kind]).inc_by(delta);
                *seen = *total;
            }
            for p in &d.processes {
                let pid = p.pid.to_string();
                if let Some(b) = p.memory_used_bytes {
                    self.proc_mem.with_label_values(&[&pid, &gpu, &uuid]).set(b as f64);
                }
                for (kind, v) in [("sm", p.sm_util), ("memory", p.memory_util)] {
                    if let Some(v) = v {
                        self.proc_util.with_label_values(&[&pid, &gpu, &uuid, kind]).set(v);
                    }
                }
                procs.insert((pid, gpu.clone(), uuid.clone()));
            }
        }
        for (pid, gpu, uuid) in self.procs.difference(&procs) {
            let _ = self.proc_mem.remove_label_values(&[pid, gpu, uuid]);
            for kind in ["sm", "memory"] {
                let _ = self.proc_util.remove_label_values(&[pid, gpu, uuid, kind]);
            }
        }
        for (gpu, uuid, model) in self.infos.difference(&infos) {
            let _ = self.info.remove_label_values(&[gpu, uuid, model]);
        }
        self.procs = procs;
        self.infos = infos;
    }
}
