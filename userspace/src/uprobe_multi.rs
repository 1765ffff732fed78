//! `uprobe_multi` links (Linux 6.6+): one link attaches a program at many offsets of one file,
//! each with its own cookie, for one process; detaching it waits for one RCU grace period.
//!
//! Why not aya's `UProbe::attach`: it makes one perf event per offset, and the kernel tears each
//! one down under a global mutex with a grace period (~0.1 s on our VMs): 44 functions with
//! their return probes took 9 s to detach, one after another, whatever the threads. A process
//! with the CUDA runtime, driver and NCCL mapped has ~40 probed functions; an 8-GPU host, 8 such
//! processes.
//!
//! The kernel links a program this way only if it was loaded with the `BPF_TRACE_UPROBE_MULTI`
//! attach type, which aya 0.14 cannot ask for. So the two device programs are loaded a second
//! time here: the same object parsed with aya-obj, relocated against the maps aya created (one
//! set of maps for both), loaded and linked with raw `bpf(2)` calls. When that fails (an older
//! kernel), the caller falls back to aya's perf-event uprobes.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`, zero-padded.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 10],
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with its `uprobe_multi` member, zero-padded.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
    _rest: [u64; 10],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix of the size passed; pointers in it
    // stay valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: BPF_PROG_LOAD and BPF_LINK_CREATE return a new file descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn map_fd(m: &Map) -> Option<RawFd> {
    let d = match m {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(d.fd().as_fd().as_raw_fd())
}

/// The device programs, loaded for multi links.
pub struct MultiProgs {
    enter: OwnedFd,
    exit: OwnedFd,
}

/// Loads `device_enter` and `device_exit` from `object` against the maps of `ebpf` (every map
/// must still be in it: call before taking any).
pub fn load(ebpf: &Ebpf, object: &[u8]) -> Result<MultiProgs> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| anyhow!("parsing the BPF object: {e}"))?;
    let fds: HashMap<&str, RawFd> = ebpf.maps().filter_map(|(n, m)| Some((n, map_fd(m)?))).collect();
    let maps = obj.maps.clone();
    let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(maps.iter().filter_map(|(n, m)| Some((n.as_str(), *fds.get(n.as_str())?, m))), &text)
        .map_err(|e| anyhow!("relocating maps: {e}"))?;
    obj.relocate_calls(&text).map_err(|e| anyhow!("relocating calls: {e}"))?;
    let one = |name: &str| -> Result<OwnedFd> {
        let p = obj.programs.get(name).with_context(|| format!("{name} missing from the object"))?;
        let f = obj.functions.get(&p.function_key()).with_context(|| format!("{name}: no code"))?;
        let license = CString::new("GPL").expect("no NUL");
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_KPROBE,
            insn_cnt: f.instructions.len() as u32,
            insns: f.instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type: BPF_TRACE_UPROBE_MULTI,
            _rest: [0; 10],
        };
        match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => Ok(fd),
            Err(e) => {
                // Again with the verifier's log, for the error message.
                let mut log = vec![0u8; 1 << 16];
                attr.log_level = 1;
                attr.log_size = log.len() as u32;
                attr.log_buf = log.as_mut_ptr() as u64;
                let _ = bpf(BPF_PROG_LOAD, &mut attr);
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                bail!("loading {name} for uprobe_multi: {e} ({tail})")
            }
        }
    };
    Ok(MultiProgs { enter: one("device_enter")?, exit: one("device_exit")? })
}

impl MultiProgs {
    /// Attaches at `offsets` of the file at `path` (cookies: the probe ids), for process `pid`
    /// only; `ret` for the return probes. One link: dropping it detaches every offset.
    pub fn attach(&self, path: &Path, offsets: &[u64], cookies: &[u64], pid: u32, ret: bool) -> Result<OwnedFd> {
        if offsets.is_empty() || offsets.len() != cookies.len() {
            bail!("uprobe_multi: {} offsets, {} cookies", offsets.len(), cookies.len());
        }
        use std::os::unix::ffi::OsStrExt as _;
        let cpath = CString::new(path.as_os_str().as_bytes()).context("path with a NUL byte")?;
        let prog = if ret { &self.exit } else { &self.enter };
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_UPROBE_MULTI,
            flags: 0,
            path: cpath.as_ptr() as u64,
            offsets: offsets.as_ptr() as u64,
            ref_ctr_offsets: 0,
            cookies: cookies.as_ptr() as u64,
            cnt: offsets.len() as u32,
            multi_flags: if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 },
            pid,
            _pad: 0,
            _rest: [0; 10],
        };
        bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| anyhow!("uprobe_multi link on {}: {e}", path.display()))
    }
}
