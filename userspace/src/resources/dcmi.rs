//! Huawei's DCMI (`libdcmi.so`, the Ascend driver's management library), loaded at run time:
//! per NPU the AI core, AI CPU and vector core utilisation, HBM used/total and bandwidth
//! utilisation, temperature, power and health, and the device memory of each process. Declared
//! from the driver's public header (dcmi_interface_api.h): cards, then devices in a card, each
//! also named by its logical id (what `ASCEND_RT_VISIBLE_DEVICES` and npu-smi call the NPU).

use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint, c_ulong, c_ulonglong, c_void},
    path::Path,
};

use anyhow::{Result, bail};
use serde::Serialize;

use super::nvml::{dlerror, need, sym};

/// One NPU at one moment; figures the library did not give are `None`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NpuSample {
    /// The logical id (else the physical position: card * 64 + device).
    pub npu: u32,
    pub card: i32,
    pub device: i32,
    /// Chip type and name, e.g. "Ascend910B3".
    pub name: Option<String>,
    pub aicore_util: Option<f64>,
    pub aicpu_util: Option<f64>,
    pub vectorcore_util: Option<f64>,
    pub hbm_total_bytes: Option<u64>,
    pub hbm_used_bytes: Option<u64>,
    pub hbm_bandwidth_util: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub power_watts: Option<f64>,
    /// 0 healthy, 1 minor, 2 major, 3 critical alarm.
    pub health: Option<u32>,
    /// (host pid, device memory bytes).
    pub processes: Vec<(u32, u64)>,
}

#[repr(C)]
struct ChipInfo {
    chip_type: [u8; 32],
    chip_name: [u8; 32],
    chip_ver: [u8; 32],
    aicore_cnt: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct HbmInfo {
    /// MB.
    memory_size: c_ulonglong,
    freq: c_uint,
    /// MB.
    memory_usage: c_ulonglong,
    temp: c_int,
    bandwith_util_rate: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcMem {
    proc_id: c_int,
    /// Bytes.
    proc_mem_usage: c_ulong,
}

// Utilisation kinds (dcmi_get_device_utilization_rate's input_type).
const UTIL_AICORE: c_int = 2;
const UTIL_AICPU: c_int = 3;
const UTIL_VECTORCORE: c_int = 12;

type Int2 = unsafe extern "C" fn(c_int, c_int, *mut c_int) -> c_int;

struct Fns {
    init: unsafe extern "C" fn() -> c_int,
    card_list: unsafe extern "C" fn(*mut c_int, *mut c_int, c_int) -> c_int,
    device_num: unsafe extern "C" fn(c_int, *mut c_int) -> c_int,
    logic_id: Option<unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int>,
    chip_info: Option<unsafe extern "C" fn(c_int, c_int, *mut ChipInfo) -> c_int>,
    utilization: Option<unsafe extern "C" fn(c_int, c_int, c_int, *mut c_uint) -> c_int>,
    hbm: Option<unsafe extern "C" fn(c_int, c_int, *mut HbmInfo) -> c_int>,
    temperature: Option<Int2>,
    power: Option<Int2>,
    health: Option<unsafe extern "C" fn(c_int, c_int, *mut c_uint) -> c_int>,
    processes: Option<unsafe extern "C" fn(c_int, c_int, *mut ProcMem, *mut c_int) -> c_int>,
}

/// The loaded library, initialised.
pub struct Dcmi {
    lib: *mut c_void,
    f: Fns,
}

// SAFETY: only the sampling thread that owns it calls into the library.
unsafe impl Send for Dcmi {}

impl Drop for Dcmi {
    fn drop(&mut self) {
        unsafe { libc::dlclose(self.lib) };
    }
}

/// Most processes asked for per NPU.
const MAX_PROCS: usize = 1024;

impl Dcmi {
    pub fn open(path: &Path) -> Result<Dcmi> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())?;
        let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            bail!("{}", dlerror());
        }
        // SAFETY: each symbol is looked up with its C signature from the header.
        let d = unsafe {
            Dcmi {
                lib,
                f: Fns {
                    init: need(lib, path, "dcmi_init")?,
                    card_list: need(lib, path, "dcmi_get_card_list")?,
                    device_num: need(lib, path, "dcmi_get_device_num_in_card")?,
                    logic_id: sym(lib, "dcmi_get_device_logic_id"),
                    chip_info: sym(lib, "dcmi_get_device_chip_info"),
                    utilization: sym(lib, "dcmi_get_device_utilization_rate"),
                    hbm: sym(lib, "dcmi_get_device_hbm_info"),
                    temperature: sym(lib, "dcmi_get_device_temperature"),
                    power: sym(lib, "dcmi_get_device_power_info"),
                    health: sym(lib, "dcmi_get_device_health"),
                    processes: sym(lib, "dcmi_get_device_resource_info"),
                },
            }
        };
        let r = unsafe { (d.f.init)() };
        if r != 0 {
            bail!("dcmi_init of {}: error {r}", path.display());
        }
        Ok(d)
    }

    /// Every NPU now; an error only when the cards cannot be listed.
    pub fn sample(&mut self) -> Result<Vec<NpuSample>> {
        let mut cards = [0 as c_int; 64];
        let mut n: c_int = 0;
        let r = unsafe { (self.f.card_list)(&mut n, cards.as_mut_ptr(), cards.len() as c_int) };
        if r != 0 {
            bail!("dcmi_get_card_list: error {r}");
        }
        let mut out = Vec::new();
        for &card in &cards[..(n.clamp(0, 64) as usize)] {
            let mut devs: c_int = 0;
            if unsafe { (self.f.device_num)(card, &mut devs) } != 0 {
                continue;
            }
            for dev in 0..devs.clamp(0, 16) {
                out.push(self.device(card, dev));
            }
        }
        Ok(out)
    }

    fn device(&self, card: c_int, dev: c_int) -> NpuSample {
        let f = &self.f;
        let mut s =
            NpuSample { card, device: dev, npu: (card.max(0) * 64 + dev.max(0)) as u32, ..NpuSample::default() };
        if let Some(g) = f.logic_id {
            let mut id: c_int = -1;
            if unsafe { g(&mut id, card, dev) } == 0 && id >= 0 {
                s.npu = id as u32;
            }
        }
        if let Some(g) = f.chip_info {
            let mut ci = ChipInfo { chip_type: [0; 32], chip_name: [0; 32], chip_ver: [0; 32], aicore_cnt: 0 };
            if unsafe { g(card, dev, &mut ci) } == 0 {
                let text = |b: &[u8; 32]| {
                    let mut b = *b;
                    b[31] = 0;
                    unsafe { CStr::from_ptr(b.as_ptr() as *const c_char) }.to_string_lossy().into_owned()
                };
                s.name = Some(format!("{}{}", text(&ci.chip_type), text(&ci.chip_name)));
            }
        }
        let util = |kind: c_int| {
            let mut v: c_uint = 0;
            (unsafe { f.utilization?(card, dev, kind, &mut v) } == 0).then(|| v.min(100) as f64 / 100.0)
        };
        s.aicore_util = util(UTIL_AICORE);
        s.aicpu_util = util(UTIL_AICPU);
        s.vectorcore_util = util(UTIL_VECTORCORE);
        if let Some(g) = f.hbm {
            let mut h = HbmInfo::default();
            if unsafe { g(card, dev, &mut h) } == 0 {
                s.hbm_total_bytes = Some(h.memory_size.saturating_mul(1 << 20));
                s.hbm_used_bytes = Some(h.memory_usage.min(h.memory_size).saturating_mul(1 << 20));
                s.hbm_bandwidth_util = Some(h.bandwith_util_rate.min(100) as f64 / 100.0);
            }
        }
        let int = |g: Option<Int2>| {
            let mut v: c_int = 0;
            (unsafe { g?(card, dev, &mut v) } == 0).then_some(v)
        };
        s.temperature_celsius = int(f.temperature).map(f64::from);
        // In tenths of a watt.
        s.power_watts = int(f.power).map(|p| p as f64 / 10.0);
        if let Some(g) = f.health {
            let mut h: c_uint = 0;
            if unsafe { g(card, dev, &mut h) } == 0 && h <= 3 {
                s.health = Some(h);
            }
        }
        if let Some(g) = f.processes {
            let mut buf = vec![ProcMem::default(); MAX_PROCS];
            let mut n: c_int = 0;
            if unsafe { g(card, dev, buf.as_mut_ptr(), &mut n) } == 0 {
                // c_ulong is 32 bits on some targets.
                #[allow(clippy::unnecessary_cast)]
                let procs = buf[..(n.clamp(0, MAX_PROCS as c_int) as usize)]
                    .iter()
                    .filter(|p| p.proc_id > 0)
                    .map(|p| (p.proc_id as u32, p.proc_mem_usage as u64))
                    .collect();
                s.processes = procs;
            }
        }
        s
    }
}
