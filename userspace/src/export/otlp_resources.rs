//! OTLP metrics of what the accelerators have (the resources layer, NVML), under
//! OpenTelemetry's hardware semantic-convention names where they exist (`hw.gpu.utilization`,
//! `hw.gpu.memory.usage`, `hw.gpu.memory.limit`, `hw.gpu.memory.utilization`, `hw.power`,
//! `hw.temperature`, `hw.errors`; attributes `hw.id` = the GPU's UUID, `hw.name` = its model,
//! `hw.type` = `gpu`) and inferscope's own for the rest (clocks, PCIe throughput, per-process
//! memory and utilisation, with `process.pid` and the process's pod attributes).

use std::collections::HashMap;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Meter},
};

use crate::resources::{DeviceSample, NpuSample};

pub struct GpuInstruments {
    util: Gauge<f64>,
    mem_util: Gauge<f64>,
    mem_usage: Gauge<u64>,
    mem_limit: Gauge<u64>,
    power: Gauge<f64>,
    temp: Gauge<f64>,
    clock: Gauge<f64>,
    pcie: Gauge<f64>,
    errors: Counter<u64>,
    proc_mem: Gauge<u64>,
    proc_util: Gauge<f64>,
    /// ECC totals already added, by (uuid, type): NVML gives totals, the counter deltas.
    ecc_seen: HashMap<(String, &'static str), u64>,
    npu_util: Gauge<f64>,
    npu_hbm_usage: Gauge<u64>,
    npu_hbm_limit: Gauge<u64>,
    npu_health: Gauge<u64>,
    npu_proc_mem: Gauge<u64>,
}

impl GpuInstruments {
    pub fn new(m: &Meter) -> Self {
        let g = |name: &'static str, unit: &'static str, desc: &'static str| {
            m.f64_gauge(name).with_unit(unit).with_description(desc).build()
        };
        let gu = |name: &'static str, unit: &'static str, desc: &'static str| {
            m.u64_gauge(name).with_unit(unit).with_description(desc).build()
        };
        Self {
            util: g("hw.gpu.utilization", "1", "Share of the last sample period a kernel ran on the GPU."),
            mem_util: g("hw.gpu.memory.utilization", "1", "Share of the period device memory was read or written."),
            mem_usage: gu("hw.gpu.memory.usage", "By", "Device memory in use."),
            mem_limit: gu("hw.gpu.memory.limit", "By", "Device memory in all."),
            power: g("hw.power", "W", "Power draw."),
            temp: g("hw.temperature", "Cel", "GPU temperature."),
            clock: g("inferscope.gpu.clock.frequency", "Hz", "Current clock by domain (graphics, sm, memory)."),
            pcie: g("inferscope.gpu.pcie.throughput", "By/s", "PCIe throughput by direction (transmit, receive)."),
            errors: m
                .u64_counter("hw.errors")
                .with_unit("{error}")
                .with_description("Device memory ECC errors (error.type corrected or uncorrected).")
                .build(),
            proc_mem: gu("inferscope.gpu.process.memory.usage", "By", "Device memory a process uses on a GPU."),
            proc_util: g(
                "inferscope.gpu.process.utilization",
                "1",
                "A process's share of a GPU in the newest sample (inferscope.gpu.utilization.kind sm or memory).",
            ),
            ecc_seen: HashMap::new(),
            npu_util: g(
                "inferscope.npu.utilization",
                "1",
                "Share of time the NPU's cores were busy (inferscope.npu.core).",
            ),
            npu_hbm_usage: gu("inferscope.npu.hbm.usage", "By", "High-bandwidth memory in use."),
            npu_hbm_limit: gu("inferscope.npu.hbm.limit", "By", "High-bandwidth memory in all."),
            npu_health: gu("inferscope.npu.health", "1", "0 healthy, 1 minor, 2 major, 3 critical alarm."),
            npu_proc_mem: gu("inferscope.npu.process.memory.usage", "By", "Device memory a process uses on an NPU."),
        }
    }

    /// One sample of every NPU; `targets`: the pod attributes of traced processes, by pid.
    pub fn record_npus(&mut self, devices: &[NpuSample], targets: &HashMap<u32, Vec<KeyValue>>) {
        for d in devices {
            let hw = [
                KeyValue::new("hw.id", format!("npu{}", d.npu)),
                KeyValue::new("hw.name", d.name.clone().unwrap_or_default()),
                KeyValue::new("hw.type", "npu"),
                KeyValue::new("inferscope.npu.index", d.npu as i64),
            ];
            for (core, v) in [("aicore", d.aicore_util), ("aicpu", d.aicpu_util), ("vectorcore", d.vectorcore_util)] {
                if let Some(v) = v {
                    let a: Vec<KeyValue> =
                        hw.iter().cloned().chain([KeyValue::new("inferscope.npu.core", core)]).collect();
                    self.npu_util.record(v, &a);
                }
            }
            if let Some(v) = d.hbm_used_bytes {
                self.npu_hbm_usage.record(v, &hw);
            }
            if let Some(v) = d.hbm_total_bytes {
                self.npu_hbm_limit.record(v, &hw);
            }
            if let Some(v) = d.power_watts {
                self.power.record(v, &hw);
            }
            if let Some(v) = d.temperature_celsius {
                self.temp.record(v, &hw);
            }
            if let Some(v) = d.health {
                self.npu_health.record(v as u64, &hw);
            }
            for (pid, bytes) in &d.processes {
                let mut attrs: Vec<KeyValue> = hw.to_vec();
                attrs.push(KeyValue::new("process.pid", *pid as i64));
                if let Some(t) = targets.get(pid) {
                    attrs.extend(t.iter().cloned());
                }
                self.npu_proc_mem.record(*bytes, &attrs);
            }
        }
    }

    /// One sample of every GPU; `targets`: the pod attributes of traced processes, by pid.
    pub fn record(&mut self, devices: &[DeviceSample], targets: &HashMap<u32, Vec<KeyValue>>) {
        for d in devices {
            let uuid = d.uuid.clone().unwrap_or_else(|| format!("gpu{}", d.index));
            let hw = [
                KeyValue::new("hw.id", uuid.clone()),
                KeyValue::new("hw.name", d.name.clone().unwrap_or_default()),
                KeyValue::new("hw.type", "gpu"),
                KeyValue::new("inferscope.gpu.index", d.index as i64),
            ];
            let with = |extra: KeyValue| -> Vec<KeyValue> { hw.iter().cloned().chain([extra]).collect() };
            if let Some(v) = d.gpu_util {
                self.util.record(v, &with(KeyValue::new("hw.gpu.task", "general")));
            }
            if let Some(v) = d.memory_util {
                self.mem_util.record(v, &hw);
            }
            if let Some(v) = d.memory_used_bytes {
                self.mem_usage.record(v, &hw);
            }
            if let Some(v) = d.memory_total_bytes {
                self.mem_limit.record(v, &hw);
            }
            if let Some(v) = d.power_watts {
                self.power.record(v, &hw);
            }
            if let Some(v) = d.temperature_celsius {
                self.temp.record(v, &hw);
            }
            for (clock, hz) in &d.clocks_hz {
                self.clock.record(*hz, &with(KeyValue::new("inferscope.gpu.clock", *clock)));
            }
            for (dir, bps) in &d.pcie_bytes_per_second {
                let dir = if *dir == "tx" { "transmit" } else { "receive" };
                self.pcie.record(*bps, &with(KeyValue::new("network.io.direction", dir)));
            }
            for (kind, total) in &d.ecc_errors {
                let seen = self.ecc_seen.entry((uuid.clone(), kind)).or_insert(0);
                let delta = if *total >= *seen { *total - *seen } else { *total };
                *seen = *total;
                self.errors.add(delta, &with(KeyValue::new("error.type", *kind)));
            }
            for p in &d.processes {
                let mut attrs: Vec<KeyValue> = hw.to_vec();
                attrs.push(KeyValue::new("process.pid", p.pid as i64));
                if let Some(t) = targets.get(&p.pid) {
                    attrs.extend(t.iter().cloned());
                }
                if let Some(b) = p.memory_used_bytes {
                    self.proc_mem.record(b, &attrs);
                }
                for (kind, v) in [("sm", p.sm_util), ("memory", p.memory_util)] {
                    if let Some(v) = v {
                        let mut a = attrs.clone();
                        a.push(KeyValue::new("inferscope.gpu.utilization.kind", kind));
                        self.proc_util.record(v, &a);
                    }
                }
            }
        }
    }
}
