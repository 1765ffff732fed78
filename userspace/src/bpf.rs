//! The thin layer that touches the kernel: loads the embedded BPF object, attaches the
//! tracepoints, and gives typed handles to the maps. Everything above it works on decoded
//! events and is testable without root.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use inferscope_common::{MAX_CAPTURE, MAX_DEVICE_PROBES, ProbeSpec, SockInfo, sock_key, stat};

use crate::python::bpf::{PyBpf, PyMaps};

/// The BPF object, compiled from ebpf/inferscope-ebpf by build.rs.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inferscope"));

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Bytes captured from the start of each syscall's data.
    pub capture_head: u32,
    /// Bytes captured from the end of a longer one.
    pub capture_tail: u32,
    /// Ring buffer size in bytes (rounded up to a power of two of pages).
    pub ring_buffer_bytes: u32,
    /// Stamp request arrival times from `tcp:tcp_probe` (runs for every TCP segment the host
    /// receives; one hash lookup each) and `sock:sock_recv_length`.
    pub arrival_times: bool,
    /// Load the device-runtime uprobe programs and follow `dlopen` (the `mmap` tracepoints).
    pub device: bool,
    /// Attach device probes with one `uprobe_multi` link per library where the kernel can.
    pub uprobe_multi: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            capture_head: 4096,
            capture_tail: 1024,
            ring_buffer_bytes: 16 << 20,
            arrival_times: true,
            device: true,
            uprobe_multi: true,
        }
    }
}

/// (category, name) of every tracepoint program; the program is named after the event.
pub const SOCKET_TRACEPOINTS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_accept",
    "sys_exit_accept",
    "sys_enter_accept4",
    "sys_exit_accept4",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_close",
    "sys_enter_dup",
    "sys_exit_dup",
    "sys_enter_dup2",
    "sys_exit_dup2",
    "sys_enter_dup3",
    "sys_exit_dup3",
    "sys_enter_fcntl",
    "sys_exit_fcntl",
];
/// `bpf_map_update_elem` flag: only if the key is not there yet.
const BPF_NOEXIST: u64 = 1;

/// Every socket read and write, whatever the syscall (kernel 6.3+): unclassified socket I/O,
/// and the read half of request arrival times.
pub const SOCKET_LENGTH_TRACEPOINTS: &[(&str, &str)] = &[("sock", "sock_recv_length"), ("sock", "sock_send_length")];
/// Request arrival times (optional: they need `SOCKET_LENGTH_TRACEPOINTS` too).
pub const ARRIVAL_TRACEPOINTS: &[(&str, &str)] = &[("tcp", "tcp_probe"), ("tcp", "tcp_destroy_sock")];
pub const SCHED_TRACEPOINTS: &[&str] = &["sched_process_fork", "sched_process_exit"];
/// Executable mappings of traced processes (libraries loaded with `dlopen`), for the device layer.
pub const MMAP_TRACEPOINTS: &[&str] = &["sys_enter_mmap", "sys_exit_mmap"];

/// Tracepoint groups a layer needs and `inferscope ctl` detaches with it: request capture's
/// socket syscalls (with socket lengths and arrival times), the device layer's `mmap` follow.
/// The process tracepoints (fork, exit) stay attached while the daemon runs.
pub const TP_SOCKETS: &str = "sockets";
pub const TP_MMAP: &str = "mmap";
pub const TP_SCHED: &str = "sched";

/// The group of a tracepoint program, by its name.
pub fn tracepoint_group(name: &str) -> &'static str {
    if MMAP_TRACEPOINTS.contains(&name) {
        TP_MMAP
    } else if SCHED_TRACEPOINTS.contains(&name) {
        TP_SCHED
    } else {
        TP_SOCKETS
    }
}

/// One tracepoint program's attachment: its link while attached.
struct Attachment {
    category: &'static str,
    name: &'static str,
    link: Option<TracePointLinkId>,
}

/// What a loaded program has run (`kernel.bpf_stats_enabled`; zero while it is off).
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// The device layer's programs and maps (see `probes/device.rs`).
struct DeviceProgs {
    specs: Array<MapData, ProbeSpec>,
    hits: PerCpuArray<MapData, u64>,
    /// Attachments per probe id (aya's perf-event uprobes): the entry probe, and the return
    /// probe if any.
    links: std::collections::HashMap<u32, (UProbeLinkId, Option<UProbeLinkId>)>,
    /// The same programs loaded for `uprobe_multi` links, when the kernel has them.
    multi: Option<crate::uprobe_multi::MultiProgs>,
    /// Groups of probes attached together (one library of one process).
    groups: std::collections::HashMap<u64, Group>,
    next_group: u64,
}

/// Probes attached together: by one or two `uprobe_multi` links, or one perf event each.
struct Group {
    ids: Vec<u32>,
    multi: Vec<std::os::fd::OwnedFd>,
}

/// One function to probe in a library.
#[derive(Clone, Copy, Debug)]
pub struct DeviceProbe {
    /// Probe id: the attach cookie, an index into `DEVICE_SPECS`.
    pub id: u32,
    pub spec: ProbeSpec,
    /// File offset of the function's first instruction.
    pub offset: u64,
}

/// The spec of a probe being detached: its links go on a thread of their own (an RCU grace
/// period each), and until then its hits match no process (no tgid is `u32::MAX`), so none is
/// sent after the switch.
const NO_ARG: inferscope_common::ArgSpec =
    inferscope_common::ArgSpec { src: inferscope_common::ARG_NONE, index: 0, width: 0, _pad: 0, offset: 0 };
const DETACHED_SPEC: ProbeSpec =
    ProbeSpec { args: [NO_ARG; 4], name: NO_ARG, flags: 0, max_per_sec: 0, tgid: u32::MAX, _pad: 0 };

/// A loaded and attached set of probes. Dropping it detaches everything: no probe is left
/// behind in the kernel.
pub struct Probes {
    ebpf: Ebpf,
    /// Every tracepoint attachment (detached together on drop; by group with
    /// [`Self::set_tracepoints`]).
    links: Vec<Attachment>,
    tracked: BpfHashMap<MapData, u32, u32>,
    sockets: BpfHashMap<MapData, u64, SockInfo>,
    watched_ports: BpfHashMap<MapData, u16, u8>,
    stats: PerCpuArray<MapData, u64>,
    /// The Python family's maps (CPython layouts, thread states), shared by the launch sites,
    /// the timers and the sampler: one object serves every layer.
    python: PyMaps,
    /// Whether request arrival times are stamped (tcp:tcp_probe attached).
    pub arrival_times: bool,
    device: Option<DeviceProgs>,
    /// Failed writes to the maps user space fills, by map (said once per map, on stderr).
    map_write_errors: std::collections::BTreeMap<&'static str, u64>,
    /// The TLS programs (`probes/tls.rs`) are loaded.
    tls_loaded: bool,
}

/// The uprobes of one OpenSSL function in one process: dropping them detaches them.
pub struct TlsLinks(Vec<aya::programs::uprobe::UProbeLink>);

impl TlsLinks {
    /// Detaches on a thread of its own (each detach waits for an RCU grace period).
    pub fn detach(self) {
        let links = self.0;
        let _ = std::thread::Builder::new().name("uprobe-detach".into()).spawn(move || drop(links));
    }
}

/// Makes sure tracefs is reachable where aya looks for it (mounting it if needed).
pub fn ensure_tracefs() -> Result<()> {
    for p in ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"] {
        if Path::new(p).is_dir() {
            return Ok(());
        }
    }
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    let r = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({err}); \
             mount it (`mount -t tracefs nodev /sys/kernel/tracing`) or, in Kubernetes, \
             mount the host's /sys/kernel/tracing into the pod"
        );
    }
    Ok(())
}

/// Loads the BPF object into the kernel (maps created, no program loaded yet).
pub fn open(opts: &LoadOptions) -> Result<Ebpf> {
    let head = opts.capture_head.min(MAX_CAPTURE as u32);
    let tail = opts.capture_tail.min(MAX_CAPTURE as u32);
    let ring = opts.ring_buffer_bytes.max(1 << 16).next_power_of_two();
    EbpfLoader::new()
        .override_global("CAPTURE_HEAD", &head, true)
        .override_global("CAPTURE_TAIL", &tail, true)
        .map_max_entries("EVENTS", ring)
        .load(BPF_OBJECT)
        .map_err(|e| anyhow!("loading the BPF object into the kernel failed: {e:#}"))
}

/// Loads the BPF object and attaches every socket and process tracepoint.
pub fn load(opts: &LoadOptions) -> Result<Probes> {
    crate::privileges::require_bpf()?;
    crate::privileges::raise_memlock();
    ensure_tracefs()?;
    let mut ebpf = open(opts)?;

    let mut links: Vec<Attachment> = Vec::new();
    for (category, names) in [("syscalls", SOCKET_TRACEPOINTS), ("sched", SCHED_TRACEPOINTS)] {
        for name in names {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
                .try_into()?;
            prog.load().map_err(|e| anyhow!("the kernel rejected BPF program {name}: {e:#}"))?;
            let link =
                prog.attach(category, name).with_context(|| format!("attaching to tracepoint {category}:{name}"))?;
            links.push(Attachment { category, name, link: Some(link) });
        }
    }
    let mut attach_optional = |list: &[(&'static str, &'static str)]| -> Result<()> {
        for (category, name) in list {
            let prog: &mut TracePoint = ebpf.program_mut(name).context(*name)?.try_into()?;
            prog.load()?;
            let link = prog.attach(category, name).with_context(|| format!("{category}:{name}"))?;
            links.push(Attachment { category, name, link: Some(link) });
        }
        Ok(())
    };
    let socket_lengths = match attach_optional(SOCKET_LENGTH_TRACEPOINTS) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "inferscope: warning: socket I/O that capture misses cannot be detected ({e:#}); sockets that \
                 appear other than by accept, connect or dup are not learned"
            );
            false
        }
    };
    let mut arrival_times = false;
    if opts.arrival_times {
        let r = if socket_lengths {
            attach_optional(ARRIVAL_TRACEPOINTS)
        } else {
            Err(anyhow!("sock:sock_recv_length is not available"))
        };
        match r {
            Ok(()) => arrival_times = true,
            Err(e) => eprintln!(
                "inferscope: warning: request arrival times unavailable ({e:#}); a request starts when the server reads it"
            ),
        }
    }
    let device = if opts.device {
        match load_device(&mut ebpf, &mut links, opts.uprobe_multi) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("inferscope: warning: device layer unavailable ({e:#}); no accelerator-runtime probes");
                None
            }
        }
    } else {
        None
    };
    let tracked = BpfHashMap::try_from(ebpf.take_map("TRACKED").context("map TRACKED")?)?;
    let sockets = BpfHashMap::try_from(ebpf.take_map("SOCKETS").context("map SOCKETS")?)?;
    let watched_ports = BpfHashMap::try_from(ebpf.take_map("WATCHED_PORTS").context("map WATCHED_PORTS")?)?;
    let stats = PerCpuArray::try_from(ebpf.take_map("STATS").context("map STATS")?)?;
    let python = PyMaps::take(&mut ebpf)?;
    Ok(Probes {
        ebpf,
        links,
        tracked,
        sockets,
        watched_ports,
        stats,
        python,
        arrival_times,
        device,
        map_write_errors: Default::default(),
        tls_loaded: false,
    })
}

/// Loads the two device programs and attaches the `mmap` tracepoints that announce new libraries.
fn load_device(ebpf: &mut Ebpf, links: &mut Vec<Attachment>, uprobe_multi: bool) -> Result<DeviceProgs> {
    // Before any map is taken: the second load is relocated against all of them.
    let multi = match uprobe_multi.then(|| crate::uprobe_multi::load(ebpf, BPF_OBJECT)) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            log::info!("uprobe_multi unavailable ({e:#}); device probes attach one by one");
            None
        }
        None => None,
    };
    for name in ["device_enter", "device_exit"] {
        let prog: &mut UProbe = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().map_err(|e| anyhow!("the kernel rejected BPF program {name}: {e:#}"))?;
    }
    for name in MMAP_TRACEPOINTS {
        let prog: &mut TracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().map_err(|e| anyhow!("the kernel rejected BPF program {name}: {e:#}"))?;
        let link = prog.attach("syscalls", name).with_context(|| format!("attaching to tracepoint syscalls:{name}"))?;
        links.push(Attachment { category: "syscalls", name, link: Some(link) });
    }
    let specs = Array::try_from(ebpf.take_map("DEVICE_SPECS").context("map DEVICE_SPECS")?)?;
    let hits = PerCpuArray::try_from(ebpf.take_map("DEVICE_HITS").context("map DEVICE_HITS")?)?;
    Ok(DeviceProgs {
        specs,
        hits,
        links: std::collections::HashMap::new(),
        multi,
        groups: std::collections::HashMap::new(),
        next_group: 1,
    })
}

impl Drop for Probes {
    /// Detaches every tracepoint at once. Each detach waits for an RCU grace period (~90 ms
    /// on an idle VM, seconds under load); one after another, 28 of them made stopping take
    /// from 2 s to over 20 s. Dropped on parallel threads, the grace periods overlap.
    fn drop(&mut self) {
        let multi: Vec<std::os::fd::OwnedFd> =
            self.device.as_mut().map(|d| d.groups.drain().flat_map(|(_, g)| g.multi).collect()).unwrap_or_default();
        let ids: Vec<u32> = self.device.as_ref().map(|d| d.links.keys().copied().collect()).unwrap_or_default();
        let mut uprobes = Vec::new();
        for id in ids {
            uprobes.extend(self.take_device_links(id));
        }
        // Grace periods overlap when links are dropped on parallel threads (at most 64).
        let per = uprobes.len().div_ceil(64).max(1);
        std::thread::scope(|s| {
            let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(multi));
            while !uprobes.is_empty() {
                let batch: Vec<_> = uprobes.drain(..per.min(uprobes.len())).collect();
                let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(batch));
            }
        });
        let all: Vec<usize> = (0..self.links.len()).collect();
        self.detach_tracepoints(&all);
    }
}

/// The Python layers' programs and maps are the daemon's object's own.
impl PyBpf for Probes {
    fn py_parts(&mut self) -> (&mut Ebpf, &mut PyMaps) {
        (&mut self.ebpf, &mut self.python)
    }
}

impl Probes {
    /// Detaches the tracepoints at these indices of `links`, on parallel threads (each
    /// detach waits for an RCU grace period). Their programs stay loaded.
    fn detach_tracepoints(&mut self, which: &[usize]) -> usize {
        let mut owned = Vec::new();
        for &i in which {
            let Some(a) = self.links.get_mut(i) else { continue };
            let Some(id) = a.link.take() else { continue };
            let prog: Option<&mut TracePoint> = self.ebpf.program_mut(a.name).and_then(|p| p.try_into().ok());
            if let Some(link) = prog.and_then(|p| p.take_link(id).ok()) {
                owned.push(link);
            }
        }
        let n = owned.len();
        std::thread::scope(|s| {
            for link in owned {
                s.spawn(move || drop(link));
            }
        });
        n
    }

    /// Attaches (`on`) or detaches a tracepoint group ([`TP_SOCKETS`], [`TP_MMAP`]); only the
    /// tracepoints attached at load belong to it. Returns how many changed.
    pub fn set_tracepoints(&mut self, group: &str, on: bool) -> Result<usize> {
        let which: Vec<usize> = (0..self.links.len())
            .filter(|&i| tracepoint_group(self.links[i].name) == group && self.links[i].link.is_some() != on)
            .collect();
        if !on {
            return Ok(self.detach_tracepoints(&which));
        }
        let mut n = 0;
        for i in which {
            let (category, name) = (self.links[i].category, self.links[i].name);
            let prog: &mut TracePoint = self.ebpf.program_mut(name).context(name)?.try_into()?;
            let link =
                prog.attach(category, name).with_context(|| format!("attaching to tracepoint {category}:{name}"))?;
            self.links[i].link = Some(link);
            n += 1;
        }
        Ok(n)
    }

    /// Tracepoints of a group: (attached now, attached at load).
    pub fn tracepoints(&self, group: &str) -> (usize, usize) {
        let of = self.links.iter().filter(|a| tracepoint_group(a.name) == group);
        (of.clone().filter(|a| a.link.is_some()).count(), of.count())
    }

    /// What every loaded program of the object has run so far.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStats {
                    name: name.to_string(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    /// Forgets the sockets of a process (request capture switched off: closes are not seen).
    pub fn forget_sockets(&mut self, tgid: u32) {
        let keys: Vec<u64> = self.sockets.keys().filter_map(|k| k.ok()).filter(|k| (k >> 32) as u32 == tgid).collect();
        for k in keys {
            let _ = self.sockets.remove(&k);
        }
    }

    /// The ring buffer of events; taken once by the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("ring buffer already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Counts a failed write to `map` (the first of each map is said: what it costs).
    fn map_write_failed(&mut self, map: &'static str, what: &str, e: &dyn std::fmt::Display) {
        let n = self.map_write_errors.entry(map).or_default();
        *n += 1;
        if *n == 1 {
            eprintln!(
                "inferscope: warning: could not write {what} into the BPF map {map} ({e}); {}; counted in \
                 inferscope_bpf_map_write_errors_total{{map=\"{map}\"}}",
                match map {
                    "TRACKED" => "that process is not traced",
                    "SOCKETS" => "that connection is not captured",
                    "WATCHED_PORTS" => "requests to that port carry their read time, not their arrival time",
                    _ => "launches of that process carry no Python call site",
                }
            );
        }
    }

    /// Failed writes to the maps user space fills, by map name.
    pub fn map_write_errors(&self) -> Vec<(&'static str, u64)> {
        self.map_write_errors.iter().map(|(k, v)| (*k, *v)).chain(self.python.write_errors()).collect()
    }

    /// Starts tracing a process (its existing sockets must be added with [`Self::add_socket`]).
    pub fn track(&mut self, tgid: u32) -> Result<()> {
        if let Err(e) = self.tracked.insert(tgid, 0, 0) {
            self.map_write_failed("TRACKED", &format!("pid {tgid}"), &e);
            return Err(e).with_context(|| format!("tracking pid {tgid}"));
        }
        Ok(())
    }

    /// Stops tracing a process and forgets its sockets.
    pub fn untrack(&mut self, tgid: u32) {
        let _ = self.tracked.remove(&tgid);
        self.forget_sockets(tgid);
    }

    /// Stamps arrival times on segments to this local TCP port (a traced server listens on it).
    pub fn watch_port(&mut self, port: u16) {
        if let Err(e) = self.watched_ports.insert(port, 1, 0) {
            self.map_write_failed("WATCHED_PORTS", &format!("port {port}"), &e);
        }
    }

    /// Registers a socket that existed before attaching. Returns false if it was already known
    /// (the kernel side saw it being opened).
    pub fn add_socket(&mut self, tgid: u32, fd: u32, info: SockInfo) -> Result<bool> {
        let key = sock_key(tgid, fd);
        // BPF_NOEXIST: a socket the BPF side knows (it may have learned it a moment ago from an
        // accept) keeps its connection id and positions.
        match self.sockets.insert(key, info, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => {
                self.map_write_failed("SOCKETS", &format!("socket {tgid}/{fd}"), &e);
                Err(e).with_context(|| format!("adding socket {tgid}/{fd}"))
            }
        }
    }

    /// Sums the per-CPU statistics.
    pub fn stats(&self) -> Result<[u64; stat::COUNT as usize]> {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self.stats.get(&(i as u32), 0)?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// Loads the TLS programs (the first time only).
    pub fn load_tls(&mut self) -> Result<()> {
        if self.tls_loaded {
            return Ok(());
        }
        for name in ["ssl_enter", "ssl_exit"] {
            let prog: &mut UProbe = self.ebpf.program_mut(name).context(name)?.try_into()?;
            prog.load().map_err(|e| anyhow!("the kernel rejected BPF program {name}: {e:#}"))?;
        }
        self.tls_loaded = true;
        Ok(())
    }

    /// Attaches the TLS entry and return probes at `file_offset` of `path` (an OpenSSL
    /// function, `func` one of `SSL_FN_*`: the cookie), for process `pid` only; `SSL_free`
    /// gets an entry probe only.
    pub fn attach_tls(&mut self, path: &Path, file_offset: u64, func: u64, pid: u32) -> Result<TlsLinks> {
        self.load_tls()?;
        let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).context("pid 0")?);
        let mut links = Vec::new();
        let progs: &[&str] =
            if func == inferscope_common::SSL_FN_FREE { &["ssl_enter"] } else { &["ssl_enter", "ssl_exit"] };
        for &name in progs {
            let prog: &mut UProbe = self.ebpf.program_mut(name).context(name)?.try_into()?;
            let point =
                UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(file_offset), cookie: Some(func) };
            let id = prog.attach(point, path, scope).map_err(|e| anyhow!("{name}: {e:#}"))?;
            links.push(prog.take_link(id).map_err(|e| anyhow!("{name}: {e:#}"))?);
        }
        Ok(TlsLinks(links))
    }

    /// Whether the device programs are loaded.
    pub fn has_device(&self) -> bool {
        self.device.is_some()
    }

    /// Attaches device probe `id` (the attach cookie, an index into `DEVICE_SPECS`) at
    /// `file_offset` of the library at `path`, for process `pid` only; with a return probe when
    /// the spec asks for one.
    pub fn attach_device(&mut self, id: u32, spec: &ProbeSpec, path: &Path, file_offset: u64, pid: u32) -> Result<()> {
        if id >= MAX_DEVICE_PROBES {
            bail!("device probe id {id} out of range");
        }
        let Some(dev) = self.device.as_mut() else { bail!("device programs not loaded") };
        dev.specs.set(id, spec, 0).with_context(|| format!("writing the spec of device probe {id}"))?;
        let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).context("pid 0")?);
        let point = || UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(file_offset),
            cookie: Some(id as u64),
        };
        let enter: &mut UProbe = self.ebpf.program_mut("device_enter").context("device_enter")?.try_into()?;
        let entry = enter.attach(point(), path, scope).map_err(|e| anyhow!("{e:#}"))?;
        let mut ret = None;
        if spec.flags & inferscope_common::SPEC_RETURN != 0 {
            let exit: &mut UProbe = self.ebpf.program_mut("device_exit").context("device_exit")?.try_into()?;
            match exit.attach(point(), path, scope) {
                Ok(l) => ret = Some(l),
                Err(e) => {
                    let enter: &mut UProbe =
                        self.ebpf.program_mut("device_enter").context("device_enter")?.try_into()?;
                    let _ = enter.detach(entry);
                    bail!("return probe: {e:#}");
                }
            }
        }
        let dev = self.device.as_mut().expect("checked above");
        dev.links.insert(id, (entry, ret));
        Ok(())
    }

    /// Detaches device probe `id` (nothing if it is not attached).
    ///
    /// Detaching a uprobe waits for an RCU grace period (~0.1 s here; 44 probes one after
    /// another took 9 s): the links are dropped on a thread of their own, so neither the event
    /// loop nor other detaches wait.
    pub fn detach_device(&mut self, id: u32) {
        let links = self.take_device_links(id);
        if links.is_empty() {
            return;
        }
        // No thread to be had: the closure, and the links with it, are dropped here (slow, but
        // never leaves a probe behind).
        let _ = std::thread::Builder::new().name("uprobe-detach".into()).spawn(move || drop(links));
    }

    /// Takes the links of device probe `id` out of the programs (dropping them detaches) and
    /// clears its spec.
    fn take_device_links(&mut self, id: u32) -> Vec<aya::programs::uprobe::UProbeLink> {
        let mut out = Vec::new();
        let Some((entry, ret)) = self.device.as_mut().and_then(|d| d.links.remove(&id)) else { return out };
        if let Some(p) = self.ebpf.program_mut("device_enter").and_then(|p| <&mut UProbe>::try_from(p).ok())
            && let Ok(l) = p.take_link(entry)
        {
            out.push(l);
        }
        if let (Some(r), Some(p)) =
            (ret, self.ebpf.program_mut("device_exit").and_then(|p| <&mut UProbe>::try_from(p).ok()))
            && let Ok(l) = p.take_link(r)
        {
            out.push(l);
        }
        if let Some(d) = self.device.as_mut() {
            let _ = d.specs.set(id, DETACHED_SPEC, 0);
        }
        out
    }

    /// Attaches the probes of one library of process `pid` together: two `uprobe_multi` links
    /// (entries, returns) where the kernel has them, else one perf-event uprobe (pair) each.
    /// Returns the group, for [`Self::detach_device_group`].
    pub fn attach_device_group(&mut self, probes: &[DeviceProbe], path: &Path, pid: u32) -> Result<u64> {
        let Some(dev) = self.device.as_mut() else { bail!("device programs not loaded") };
        for p in probes {
            if p.id >= MAX_DEVICE_PROBES {
                bail!("device probe id {} out of range", p.id);
            }
            dev.specs.set(p.id, p.spec, 0).with_context(|| format!("writing the spec of device probe {}", p.id))?;
        }
        let group = dev.next_group;
        dev.next_group += 1;
        if let Some(m) = &dev.multi {
            let offsets: Vec<u64> = probes.iter().map(|p| p.offset).collect();
            let cookies: Vec<u64> = probes.iter().map(|p| u64::from(p.id)).collect();
            let rets: Vec<&DeviceProbe> =
                probes.iter().filter(|p| p.spec.flags & inferscope_common::SPEC_RETURN != 0).collect();
            let linked = m.attach(path, &offsets, &cookies, pid, false).and_then(|enter| {
                let mut fds = vec![enter];
                if !rets.is_empty() {
                    let o: Vec<u64> = rets.iter().map(|p| p.offset).collect();
                    let c: Vec<u64> = rets.iter().map(|p| u64::from(p.id)).collect();
                    fds.push(m.attach(path, &o, &c, pid, true)?);
                }
                Ok(fds)
            });
            match linked {
                Ok(fds) => {
                    dev.groups.insert(group, Group { ids: probes.iter().map(|p| p.id).collect(), multi: fds });
                    return Ok(group);
                }
                Err(e) => log::debug!("pid {pid}: {e:#}; attaching one by one"),
            }
        }
        let mut ids = Vec::new();
        let mut first_err = None;
        for p in probes {
            match self.attach_device(p.id, &p.spec, path, p.offset, pid) {
                Ok(()) => ids.push(p.id),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if ids.is_empty()
            && let Some(e) = first_err
        {
            return Err(e);
        }
        if let Some(d) = self.device.as_mut() {
            d.groups.insert(group, Group { ids, multi: Vec::new() });
        }
        Ok(group)
    }

    /// Detaches a group of probes (links dropped on a thread of their own).
    pub fn detach_device_group(&mut self, group: u64) {
        let Some(g) = self.device.as_mut().and_then(|d| d.groups.remove(&group)) else { return };
        for id in &g.ids {
            if g.multi.is_empty() {
                self.detach_device(*id);
            } else if let Some(d) = self.device.as_mut() {
                let _ = d.specs.set(*id, DETACHED_SPEC, 0);
            }
        }
        if !g.multi.is_empty() {
            let fds = g.multi;
            let _ = std::thread::Builder::new().name("uprobe-detach".into()).spawn(move || drop(fds));
        }
    }

    /// Whether device probes attach with `uprobe_multi` links.
    pub fn device_multi(&self) -> bool {
        self.device.as_ref().is_some_and(|d| d.multi.is_some())
    }

    /// Hits of device probe `id` since it was attached (all CPUs).
    pub fn device_hits(&self, id: u32) -> u64 {
        self.device.as_ref().and_then(|d| d.hits.get(&id, 0).ok()).map_or(0, |v| v.iter().sum())
    }

    /// Zeroes the hit counter of a probe id before it is reused.
    pub fn reset_device_hits(&mut self, id: u32) {
        if let Some(d) = self.device.as_mut() {
            let n = aya::util::nr_cpus().unwrap_or(1);
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; n]);
            if let Ok(z) = zeros {
                let _ = d.hits.set(id, z, 0);
            }
        }
    }
}
