//! NVIDIA's management library, loaded at run time (`libnvidia-ml.so.1`, the driver's): what
//! each GPU has (utilisation, memory, power, temperature, clocks, throttle reasons, PCIe
//! throughput, ECC errors) and what each process on it uses (memory, SM and memory
//! utilisation samples). Declared from NVML's public header (nvml.h): the `_v2`/`_v3` entry
//! points of current drivers, the structs as laid out there. A call the library does not have
//! or that fails leaves its figure out; nothing here panics on what the library returns.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint, c_ulonglong, c_void},
    path::Path,
};

use anyhow::{Result, bail};

use super::{DeviceSample, ProcessSample};

type Ret = c_int;
type Device = *mut c_void;

const SUCCESS: Ret = 0;
const ERROR_INSUFFICIENT_SIZE: Ret = 7;
const ERROR_NOT_FOUND: Ret = 6;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlProcessInfo_t` (v2, also what `_v3` fills).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessUtilization {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

/// `nvmlEventData_t`.
#[repr(C)]
struct EventData {
    device: Device,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

const ERROR_TIMEOUT: Ret = 10;
/// `nvmlEventTypeDoubleBitEccError`, `nvmlEventTypeXidCriticalError`.
const EVENT_DOUBLE_BIT_ECC: c_ulonglong = 0x2;
const EVENT_XID: c_ulonglong = 0x8;

/// Something the driver said about a GPU between two samples.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeviceEvent {
    pub index: u32,
    pub uuid: Option<String>,
    /// `xid` or `double_bit_ecc`.
    pub kind: &'static str,
    /// The XID number for `xid`.
    pub data: u64,
}

/// NVML's "not available" for a process's memory (`NVML_VALUE_NOT_AVAILABLE`).
const VALUE_NOT_AVAILABLE: c_ulonglong = u64::MAX;

struct Fns {
    init: unsafe extern "C" fn() -> Ret,
    shutdown: unsafe extern "C" fn() -> Ret,
    error_string: Option<unsafe extern "C" fn(Ret) -> *const c_char>,
    count: unsafe extern "C" fn(*mut c_uint) -> Ret,
    handle: unsafe extern "C" fn(c_uint, *mut Device) -> Ret,
    name: Option<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret>,
    uuid: Option<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret>,
    utilization: Option<unsafe extern "C" fn(Device, *mut Utilization) -> Ret>,
    memory: Option<unsafe extern "C" fn(Device, *mut Memory) -> Ret>,
    power: Option<unsafe extern "C" fn(Device, *mut c_uint) -> Ret>,
    temperature: Option<unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Ret>,
    clock: Option<unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Ret>,
    throttle: Option<unsafe extern "C" fn(Device, *mut c_ulonglong) -> Ret>,
    pcie: Option<unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Ret>,
    ecc: Option<unsafe extern "C" fn(Device, c_int, c_int, *mut c_ulonglong) -> Ret>,
    processes: Option<unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> Ret>,
    process_util: Option<unsafe extern "C" fn(Device, *mut ProcessUtilization, *mut c_uint, c_ulonglong) -> Ret>,
    event_set_create: Option<unsafe extern "C" fn(*mut *mut c_void) -> Ret>,
    event_set_free: Option<unsafe extern "C" fn(*mut c_void) -> Ret>,
    register_events: Option<unsafe extern "C" fn(Device, c_ulonglong, *mut c_void) -> Ret>,
    supported_events: Option<unsafe extern "C" fn(Device, *mut c_ulonglong) -> Ret>,
    event_wait: Option<unsafe extern "C" fn(*mut c_void, *mut EventData, c_uint) -> Ret>,
}

/// The loaded library, initialised.
pub struct Nvml {
    lib: *mut c_void,
    f: Fns,
    /// Per GPU, the newest process-utilisation sample seen (NVML returns samples after it).
    last_seen: Vec<u64>,
    /// The event set the GPUs' XID and ECC events are registered in, once made.
    events: Option<*mut c_void>,
    /// (handle, index, uuid) of each GPU registered for events.
    registered: Vec<(usize, u32, Option<String>)>,
}

// SAFETY: NVML is thread-safe (nvml.h: "NVML is thread-safe"); the handle is only used by the
// thread that owns this value.
unsafe impl Send for Nvml {}

impl Drop for Nvml {
    fn drop(&mut self) {
        unsafe {
            if let (Some(set), Some(free)) = (self.events, self.f.event_set_free) {
                free(set);
            }
            (self.f.shutdown)();
            libc::dlclose(self.lib);
        }
    }
}

/// Looks `name` up in `lib`.
pub(super) unsafe fn sym<T: Copy>(lib: *mut c_void, name: &str) -> Option<T> {
    let c = CString::new(name).ok()?;
    let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
    // SAFETY: T is a function pointer type of the symbol's C signature (nvml.h).
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// [`sym`], or an error naming what the library lacks.
pub(super) unsafe fn need<T: Copy>(lib: *mut c_void, path: &Path, name: &str) -> Result<T> {
    unsafe { sym(lib, name) }.ok_or_else(|| anyhow::anyhow!("{} has no {name}", path.display()))
}

pub(super) fn dlerror() -> String {
    let e = unsafe { libc::dlerror() };
    if e.is_null() { "unknown error".into() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned() }
}

impl Nvml {
    /// Loads `path` (a file, or a name the dynamic loader looks up) and initialises it.
    pub fn open(path: &Path) -> Result<Nvml> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())?;
        let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            bail!("{}", dlerror());
        }
        unsafe {
            let f = Fns {
                init: match sym(lib, "nvmlInit_v2") {
                    Some(f) => f,
                    None => need(lib, path, "nvmlInit")?,
                },
                shutdown: need(lib, path, "nvmlShutdown")?,
                error_string: sym(lib, "nvmlErrorString"),
                count: match sym(lib, "nvmlDeviceGetCount_v2") {
                    Some(f) => f,
                    None => need(lib, path, "nvmlDeviceGetCount")?,
                },
                handle: match sym(lib, "nvmlDeviceGetHandleByIndex_v2") {
                    Some(f) => f,
                    None => need(lib, path, "nvmlDeviceGetHandleByIndex")?,
                },
                name: sym(lib, "nvmlDeviceGetName"),
                uuid: sym(lib, "nvmlDeviceGetUUID"),
                utilization: sym(lib, "nvmlDeviceGetUtilizationRates"),
                memory: sym(lib, "nvmlDeviceGetMemoryInfo"),
                power: sym(lib, "nvmlDeviceGetPowerUsage"),
                temperature: sym(lib, "nvmlDeviceGetTemperature"),
                clock: sym(lib, "nvmlDeviceGetClockInfo"),
                throttle: sym(lib, "nvmlDeviceGetCurrentClocksEventReasons")
                    .or_else(|| sym(lib, "nvmlDeviceGetCurrentClocksThrottleReasons")),
                pcie: sym(lib, "nvmlDeviceGetPcieThroughput"),
                ecc: sym(lib, "nvmlDeviceGetTotalEccErrors"),
                processes: sym(lib, "nvmlDeviceGetComputeRunningProcesses_v3")
                    .or_else(|| sym(lib, "nvmlDeviceGetComputeRunningProcesses_v2")),
                process_util: sym(lib, "nvmlDeviceGetProcessUtilization"),
                event_set_create: sym(lib, "nvmlEventSetCreate"),
                event_set_free: sym(lib, "nvmlEventSetFree"),
                register_events: sym(lib, "nvmlDeviceRegisterEvents"),
                supported_events: sym(lib, "nvmlDeviceGetSupportedEventTypes"),
                event_wait: sym(lib, "nvmlEventSetWait_v2").or_else(|| sym(lib, "nvmlEventSetWait")),
            };
            let r = (f.init)();
            let n = Nvml { lib, f, last_seen: Vec::new(), events: None, registered: Vec::new() };
            if r != SUCCESS {
                let e = n.error(r);
                // Not initialised: no shutdown.
                let lib = n.lib;
                std::mem::forget(n);
                libc::dlclose(lib);
                bail!("nvmlInit of {}: {e}", path.display());
            }
            Ok(n)
        }
    }

    /// Registers every GPU for its XID and double-bit ECC events (those it supports), once.
    fn register(&mut self, n: u32) {
        let (Some(create), Some(register)) = (self.f.event_set_create, self.f.register_events) else { return };
        if self.events.is_none() {
            let mut set: *mut c_void = std::ptr::null_mut();
            if unsafe { create(&mut set) } != SUCCESS || set.is_null() {
                return;
            }
            self.events = Some(set);
        }
        let Some(set) = self.events else { return };
        for i in 0..n {
            let mut dev: Device = std::ptr::null_mut();
            if unsafe { (self.f.handle)(i, &mut dev) } != SUCCESS || self.registered.iter().any(|r| r.0 == dev as usize)
            {
                continue;
            }
            let mut types = EVENT_XID | EVENT_DOUBLE_BIT_ECC;
            if let Some(sup) = self.f.supported_events {
                let mut s: c_ulonglong = 0;
                if unsafe { sup(dev, &mut s) } == SUCCESS {
                    types &= s;
                }
            }
            if types != 0 && unsafe { register(dev, types, set) } == SUCCESS {
                let uuid = self.uuid_of(dev);
                self.registered.push((dev as usize, i, uuid));
            }
        }
    }

    fn uuid_of(&self, dev: Device) -> Option<String> {
        let g = self.f.uuid?;
        let mut buf = [0 as c_char; 96];
        (unsafe { g(dev, buf.as_mut_ptr(), buf.len() as c_uint) } == SUCCESS).then(|| {
            buf[buf.len() - 1] = 0;
            unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
        })
    }

    /// Waits up to `d` for the GPUs' events (sleeps when the library has no events), returning
    /// those that came.
    pub fn wait(&mut self, d: std::time::Duration) -> Vec<DeviceEvent> {
        let (Some(set), Some(wait)) = (self.events, self.f.event_wait) else {
            std::thread::sleep(d);
            return Vec::new();
        };
        let end = std::time::Instant::now() + d;
        let mut out = Vec::new();
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || out.len() >= 1024 {
                return out;
            }
            let mut e = EventData {
                device: std::ptr::null_mut(),
                event_type: 0,
                event_data: 0,
                gpu_instance_id: 0,
                compute_instance_id: 0,
            };
            match unsafe { wait(set, &mut e, left.as_millis().clamp(1, u32::MAX as u128) as c_uint) } {
                SUCCESS => {
                    let (index, uuid) = self
                        .registered
                        .iter()
                        .find(|r| r.0 == e.device as usize)
                        .map(|r| (r.1, r.2.clone()))
                        .unwrap_or((u32::MAX, None));
                    let kind = if e.event_type & EVENT_XID != 0 { "xid" } else { "double_bit_ecc" };
                    out.push(DeviceEvent { index, uuid, kind, data: e.event_data });
                }
                ERROR_TIMEOUT => return out,
                _ => {
                    // A failing wait must not spin: the rest of the interval asleep.
                    std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
                    return out;
                }
            }
        }
    }

    fn error(&self, r: Ret) -> String {
        let s = self.f.error_string.map(|f| unsafe { f(r) }).filter(|p| !p.is_null());
        match s {
            Some(p) => format!("{} (NVML error {r})", unsafe { CStr::from_ptr(p) }.to_string_lossy()),
            None => format!("NVML error {r}"),
        }
    }

    /// Every GPU now; an error only when the GPUs cannot be counted (a lost driver).
    pub fn sample(&mut self) -> Result<Vec<DeviceSample>> {
        let mut n: c_uint = 0;
        let r = unsafe { (self.f.count)(&mut n) };
        if r != SUCCESS {
            bail!("nvmlDeviceGetCount: {}", self.error(r));
        }
        let n = n.min(64);
        if self.registered.len() < n as usize {
            self.register(n);
        }
        self.last_seen.resize(n as usize, 0);
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let mut dev: Device = std::ptr::null_mut();
            if unsafe { (self.f.handle)(i, &mut dev) } != SUCCESS {
                continue;
            }
            out.push(self.device(i, dev));
        }
        Ok(out)
    }

    fn device(&mut self, index: u32, dev: Device) -> DeviceSample {
        let f = &self.f;
        let text = |g: Option<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret>| {
            let g = g?;
            let mut buf = [0 as c_char; 96];
            (unsafe { g(dev, buf.as_mut_ptr(), buf.len() as c_uint) } == SUCCESS).then(|| {
                buf[buf.len() - 1] = 0;
                unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
            })
        };
        let uint = |g: Option<unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Ret>, arg: c_int| {
            let mut v: c_uint = 0;
            (unsafe { g?(dev, arg, &mut v) } == SUCCESS).then_some(v)
        };
        let mut s = DeviceSample { index, name: text(f.name), uuid: text(f.uuid), ..DeviceSample::default() };
        if let Some(g) = f.utilization {
            let mut u = Utilization::default();
            if unsafe { g(dev, &mut u) } == SUCCESS {
                s.gpu_util = Some(u.gpu.min(100) as f64 / 100.0);
                s.memory_util = Some(u.memory.min(100) as f64 / 100.0);
            }
        }
        if let Some(g) = f.memory {
            let mut m = Memory::default();
            if unsafe { g(dev, &mut m) } == SUCCESS {
                s.memory_total_bytes = Some(m.total);
                s.memory_used_bytes = Some(m.used.min(m.total));
            }
        }
        if let Some(g) = f.power {
            let mut mw: c_uint = 0;
            if unsafe { g(dev, &mut mw) } == SUCCESS {
                s.power_watts = Some(mw as f64 / 1000.0);
            }
        }
        // NVML_TEMPERATURE_GPU = 0; clocks: NVML_CLOCK_GRAPHICS 0, SM 1, MEM 2.
        s.temperature_celsius = uint(f.temperature, 0).map(f64::from);
        s.clocks_hz = [(0, "graphics"), (1, "sm"), (2, "memory")]
            .into_iter()
            .filter_map(|(t, name)| uint(f.clock, t).map(|mhz| (name, mhz as f64 * 1e6)))
            .collect();
        if let Some(g) = f.throttle {
            let mut r: c_ulonglong = 0;
            if unsafe { g(dev, &mut r) } == SUCCESS {
                s.throttle_reasons = Some(r);
            }
        }
        // NVML_PCIE_UTIL_TX_BYTES 0, RX 1; KB/s.
        s.pcie_bytes_per_second = [(0, "tx"), (1, "rx")]
            .into_iter()
            .filter_map(|(c, dir)| uint(f.pcie, c).map(|kbs| (dir, kbs as f64 * 1024.0)))
            .collect();
        if let Some(g) = f.ecc {
            // NVML_MEMORY_ERROR_TYPE_CORRECTED 0, UNCORRECTED 1; NVML_AGGREGATE_ECC 1.
            for (t, kind) in [(0, "corrected"), (1, "uncorrected")] {
                let mut v: c_ulonglong = 0;
                if unsafe { g(dev, t, 1, &mut v) } == SUCCESS {
                    s.ecc_errors.push((kind, v));
                }
            }
        }
        s.processes = self.processes(dev);
        let last = self.last_seen.get(index as usize).copied().unwrap_or(0);
        let (util, newest) = self.process_utilization(dev, last);
        if let Some(slot) = self.last_seen.get_mut(index as usize) {
            *slot = newest.max(last);
        }
        for (pid, sm, mem) in util {
            match s.processes.iter_mut().find(|p| p.pid == pid) {
                Some(p) => {
                    p.sm_util = Some(sm);
                    p.memory_util = Some(mem);
                }
                None => s.processes.push(ProcessSample {
                    pid,
                    memory_used_bytes: None,
                    sm_util: Some(sm),
                    memory_util: Some(mem),
                }),
            }
        }
        s
    }

    fn processes(&self, dev: Device) -> Vec<ProcessSample> {
        let Some(g) = self.f.processes else { return Vec::new() };
        let mut infos = vec![ProcessInfo::default(); 64];
        loop {
            let mut n = infos.len() as c_uint;
            let r = unsafe { g(dev, &mut n, infos.as_mut_ptr()) };
            if r == ERROR_INSUFFICIENT_SIZE && infos.len() < 4096 {
                infos.resize((n as usize).max(infos.len() * 2).min(4096), ProcessInfo::default());
                continue;
            }
            if r != SUCCESS {
                return Vec::new();
            }
            return infos[..(n as usize).min(infos.len())]
                .iter()
                .map(|p| ProcessSample {
                    pid: p.pid,
                    memory_used_bytes: (p.used_gpu_memory != VALUE_NOT_AVAILABLE).then_some(p.used_gpu_memory),
                    sm_util: None,
                    memory_util: None,
                })
                .collect();
        }
    }

    /// Per process, the newest sample after `since` (µs): (pid, SM, memory) as ratios; and the
    /// newest timestamp seen.
    fn process_utilization(&self, dev: Device, since: u64) -> (Vec<(u32, f64, f64)>, u64) {
        let Some(g) = self.f.process_util else { return (Vec::new(), since) };
        let mut n: c_uint = 0;
        // First the count (NULL buffer), then the samples.
        let r = unsafe { g(dev, std::ptr::null_mut(), &mut n, since) };
        if (r != SUCCESS && r != ERROR_INSUFFICIENT_SIZE) || n == 0 {
            if r != SUCCESS && r != ERROR_NOT_FOUND && r != ERROR_INSUFFICIENT_SIZE {
                log::debug!("nvmlDeviceGetProcessUtilization: {}", self.error(r));
            }
            return (Vec::new(), since);
        }
        let mut buf = vec![ProcessUtilization::default(); (n as usize).min(4096)];
        let mut n = buf.len() as c_uint;
        if unsafe { g(dev, buf.as_mut_ptr(), &mut n, since) } != SUCCESS {
            return (Vec::new(), since);
        }
        let mut newest: std::collections::HashMap<u32, ProcessUtilization> = std::collections::HashMap::new();
        let mut top = since;
        for s in &buf[..(n as usize).min(buf.len())] {
            top = top.max(s.time_stamp);
            let e = newest.entry(s.pid).or_insert(*s);
            if s.time_stamp >= e.time_stamp {
                *e = *s;
            }
        }
        let ratio = |v: c_uint| v.min(100) as f64 / 100.0;
        let mut v: Vec<_> = newest.values().map(|s| (s.pid, ratio(s.sm_util), ratio(s.mem_util))).collect();
        v.sort_by_key(|s| s.0);
        (v, top)
    }
}
