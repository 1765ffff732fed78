//! Records shared by the BPF programs and user space: ring-buffer event layouts, map keys and
//! values, and the indices of the statistics array. Nothing else lives here.
//!
//! Every record starts with an [`EventKind`] `u32` so user space can dispatch on the first four
//! bytes. All records are `#[repr(C)]`, 8-byte aligned, and contain no implicit padding (padding
//! is spelled out), so both sides agree on their layout and the verifier sees initialised bytes.
#![no_std]

/// The first field of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`DataEvent`] followed by `len` captured bytes.
    Data = 1,
    /// [`ConnEvent`]: a socket was accepted or connected.
    ConnOpen = 2,
    /// [`ConnEvent`]: a tracked socket was closed.
    ConnClose = 3,
    /// [`ProcEvent`]: a tracked process forked (child may be a thread: user space checks).
    ProcFork = 4,
    /// [`ProcEvent`]: a tracked process exited (its whole thread group is gone).
    ProcExit = 5,
    /// [`DeviceEvent`]: a probed accelerator-runtime call (launch, copy, wait, ...).
    Device = 6,
    /// [`DeviceName`]: a runtime call that names a kernel handle (module lookups, registration).
    DeviceName = 7,
    /// [`ProcEvent`]: a tracked process mapped an executable file (`dlopen`): its libraries
    /// are looked at again for runtime symbols.
    ProcMmap = 8,
    /// [`PySample`]: a Python stack sampled by the profiler.
    PySample = 9,
    /// [`PyCall`]: a watched Python function's first or return instruction was fetched (a
    /// hardware breakpoint fired).
    PyCall = 10,
    /// [`PySite`]: the Python frames of a thread entering a probed launch.
    PySite = 11,
    /// [`PyEval`]: a watched Python function's call returned (eval-frame uprobes, 3.9/3.10).
    PyEval = 12,
    /// [`ProcEvent`] (`child` holds the address family): a traced process moved bytes on a
    /// socket that capture did not see (an fd not in `SOCKETS`, or a syscall not traced). At
    /// most one a second per process; every such syscall is counted in
    /// [`stat::UNCLASSIFIED_SOCKET_IO`].
    SocketUnknown = 13,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::ConnOpen,
            3 => Self::ConnClose,
            4 => Self::ProcFork,
            5 => Self::ProcExit,
            6 => Self::Device,
            7 => Self::DeviceName,
            8 => Self::ProcMmap,
            9 => Self::PySample,
            10 => Self::PyCall,
            11 => Self::PySite,
            12 => Self::PyEval,
            13 => Self::SocketUnknown,
            _ => return None,
        })
    }
}

/// Direction of bytes on a socket, seen from the traced process.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Which syscall produced a [`DataEvent`] (for diagnostics and tests).
pub const SYS_READ: u8 = 0;
pub const SYS_READV: u8 = 1;
pub const SYS_RECVFROM: u8 = 2;
pub const SYS_RECVMSG: u8 = 3;
pub const SYS_WRITE: u8 = 4;
pub const SYS_WRITEV: u8 = 5;
pub const SYS_SENDTO: u8 = 6;
pub const SYS_SENDMSG: u8 = 7;

/// `DataEvent::flags`: the syscall moved more bytes than were captured (a gap follows or precedes).
pub const DATA_FLAG_TRUNCATED: u8 = 1;
/// `DataEvent::flags`: a read returned 0: the peer closed its side (EOF).
pub const DATA_FLAG_EOF: u8 = 2;
/// `DataEvent::flags`: the connection carries TLS. Its bytes (and stream positions) are the
/// plaintext read by `SSL_read*` and written by `SSL_write*`, not what crossed the socket;
/// positions restart at 0 once the connection is known to be TLS. A record with this flag and
/// no bytes announces that (TLS records seen on the wire).
pub const DATA_FLAG_TLS: u8 = 4;
/// With [`DATA_FLAG_TLS`]: the connection's TLS handshake was seen from its start, so its
/// plaintext is captured from its first byte (not mid-stream).
pub const DATA_FLAG_TLS_START: u8 = 8;

/// Largest number of payload bytes one [`DataEvent`] carries. A power of two, so BPF code can
/// mask lengths into a range the verifier accepts.
pub const MAX_CAPTURE: usize = 8192;
/// Largest number of iovec segments walked for one vectored syscall; the rest is a counted gap.
pub const MAX_IOV: usize = 12;

/// Bytes moved by one read-like or write-like syscall on a tracked socket (or a part of them).
///
/// `stream_pos` is the position of the first captured byte in this direction's byte stream of
/// the connection, counted by the BPF side over every syscall it saw; user space finds gaps
/// (truncation, ring-buffer loss) by comparing positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    /// CLOCK_MONOTONIC nanoseconds at syscall exit.
    pub ts_ns: u64,
    /// Stream position of the first byte of this syscall.
    pub syscall_pos: u64,
    /// Bytes the syscall moved in total (its return value).
    pub syscall_len: u64,
    /// Offset of the captured bytes within the syscall's bytes.
    pub offset: u32,
    /// Captured bytes following this header.
    pub len: u32,
    /// For reads: CLOCK_MONOTONIC ns when the first unread segment of these bytes arrived on
    /// the socket (from `tcp:tcp_probe`); 0 if unknown. Reads of a busy server lag arrivals.
    pub arrival_ns: u64,
    pub direction: u8,
    pub syscall: u8,
    pub flags: u8,
    pub _pad: [u8; 5],
}

/// Size of the [`DataEvent`] header that precedes the payload.
pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataEvent>();

/// `ConnEvent::role`.
pub const ROLE_UNKNOWN: u8 = 0;
/// The process accepted the connection: it is the server.
pub const ROLE_SERVER: u8 = 1;
/// The process connected: it is the client.
pub const ROLE_CLIENT: u8 = 2;

/// A socket entered or left tracking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub ts_ns: u64,
    /// Address family of the peer (AF_INET, AF_INET6, AF_UNIX) when known, else 0.
    pub family: u16,
    /// Peer port, host byte order.
    pub port: u16,
    pub role: u8,
    pub _pad: [u8; 3],
    /// Peer address: 4 bytes for IPv4, 16 for IPv6.
    pub addr: [u8; 16],
}

/// A tracked process forked or exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    /// For [`EventKind::ProcFork`]: the new task's id (a process, or a thread of `tgid`).
    pub child: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}

/// Value of the `SOCKETS` map, keyed by [`sock_key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub conn_id: u64,
    /// Bytes seen so far in each direction ([`DIR_INGRESS`], [`DIR_EGRESS`]).
    pub pos: [u64; 2],
    pub role: u8,
    /// `SOCK_FLAG_*`.
    pub flags: u8,
    pub _pad: [u8; 6],
}

/// `SockInfo::flags`: capture every byte of plain-buffer syscalls (up to
/// [`MAX_FULL_CHUNKS`] records of [`MAX_CAPTURE`] bytes), not only head and tail. Set for
/// engine IPC sockets (unix sockets, ZMTP), where one message packs a whole batch.
pub const SOCK_FLAG_FULL: u8 = 1;
/// `SockInfo::flags`: the fd shares its connection with other fds of the process (`dup`): the
/// byte positions and the other flags live in the BPF side's shared state for `conn_id`.
pub const SOCK_FLAG_SHARED: u8 = 2;
/// `SockInfo::flags`: the socket carries TLS records. Its ciphertext is not captured; its
/// positions count plaintext, advanced by the `SSL_*` probes (see [`DATA_FLAG_TLS`]).
pub const SOCK_FLAG_TLS: u8 = 4;
/// Records one syscall on a full-capture socket may produce; bytes past them are a counted gap
/// (the last `CAPTURE_TAIL` bytes are still captured).
pub const MAX_FULL_CHUNKS: usize = 16;

/// Key of the `SOCKETS` map: thread group id and file descriptor.
#[inline(always)]
pub const fn sock_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Connection ids chosen by user space (sockets that existed before attaching) have this bit
/// set; ids chosen in BPF never do.
pub const USER_CONN_ID_BIT: u64 = 1 << 63;

/// Indices of the per-CPU `STATS` array. User space sums over CPUs.
pub mod stat {
    /// Data events written to the ring buffer.
    pub const DATA_EVENTS: u32 = 0;
    /// Records the ring buffer had no room for (all kinds).
    pub const RINGBUF_DROPS: u32 = 1;
    /// Syscalls on tracked sockets that moved more bytes than were captured.
    pub const TRUNCATED_SYSCALLS: u32 = 2;
    /// Vectored syscalls with more iovec segments than are walked.
    pub const IOV_OVERFLOW: u32 = 3;
    /// Failed reads of user memory (argument structs or payloads).
    pub const READ_USER_FAILED: u32 = 4;
    /// Sockets that could not be added to the `SOCKETS` map (full).
    pub const SOCKET_MAP_FULL: u32 = 5;
    /// Payload bytes captured.
    pub const CAPTURED_BYTES: u32 = 6;
    /// Bytes moved by tracked syscalls (captured or not).
    pub const SYSCALL_BYTES: u32 = 7;
    /// Connection open/close events written.
    pub const CONN_EVENTS: u32 = 8;
    /// Segments to watched ports whose arrival time was recorded.
    pub const ARRIVALS_RECORDED: u32 = 9;
    /// Traced reads that took an arrival time.
    pub const ARRIVALS_USED: u32 = 10;
    /// Device-runtime probe hits (all probes; per-probe hits are in `DEVICE_HITS`).
    pub const DEVICE_HITS: u32 = 11;
    /// Device calls not reported because their probe was over its rate limit.
    pub const DEVICE_RATE_LIMITED: u32 = 12;
    /// Executable mappings (`dlopen`) announced to user space.
    pub const MMAP_EVENTS: u32 = 13;
    /// `accept` exits whose enter was not seen (the thread was blocked in `accept()` when
    /// tracing began): the socket is learned from the exit alone.
    pub const ACCEPTS_WITHOUT_ENTER: u32 = 14;
    /// Tracked sockets `dup`'d (`dup`, `dup2`, `dup3`, `fcntl(F_DUPFD*)`): the new fd is
    /// followed as the same connection.
    pub const DUPS_FOLLOWED: u32 = 15;
    /// Reads and writes of a traced process that moved bytes on a TCP or unix socket without
    /// being captured: the fd was not known (a socket passed over a unix socket, made by
    /// `socketpair`, or connected before the attach), or the syscall is not traced (`sendfile`,
    /// `splice`, `recvmmsg`, io_uring), or a read was already blocked when tracing began.
    pub const UNCLASSIFIED_SOCKET_IO: u32 = 16;
    /// Syscalls, connections or child processes not followed because an insert into
    /// `PENDING_IO`, `PENDING_CONN` or `TRACKED` failed (the map was full).
    pub const TRACKING_MAP_FULL: u32 = 17;
    /// Connections whose bytes on the wire were TLS records (from then on their ciphertext
    /// is not captured).
    pub const TLS_CONNECTIONS: u32 = 18;
    /// TLS connections tied to an `SSL` object of the process (plaintext captured from there).
    pub const TLS_TIED: u32 = 19;
    /// `SSL_read*`/`SSL_write*` calls that moved plaintext on an `SSL` object not tied to a
    /// tracked socket (its plaintext was not captured).
    pub const TLS_UNTIED_CALLS: u32 = 20;
    /// Plaintext bytes read or written through the `SSL_*` probes.
    pub const TLS_PLAINTEXT_BYTES: u32 = 21;
    /// Number of slots.
    pub const COUNT: u32 = 22;
}

/// Most device probes (one per process, library and symbol) attached at once; probe ids index
/// `DEVICE_SPECS`, `DEVICE_HITS` and `DEVICE_RATE`.
pub const MAX_DEVICE_PROBES: u32 = 4096;

/// Where a device probe finds one value at function entry. `ARG_*` says how; the values are
/// chosen by user space per symbol and architecture, so BPF code knows no runtime signature.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgSpec {
    /// `ARG_NONE`, `ARG_REG`, `ARG_STACK` or `ARG_DEREF`.
    pub src: u8,
    /// Register argument number (`ARG_REG`, `ARG_DEREF`) or stack slot (`ARG_STACK`: slot 0 is
    /// the first argument passed on the stack).
    pub index: u8,
    /// Bytes of the value: 8, or 4 (the low half of a register, or a `u32` in memory).
    pub width: u8,
    pub _pad: u8,
    /// For `ARG_DEREF`: byte offset from the pointer held in register argument `index`.
    pub offset: u32,
}

/// No value (reads as 0).
pub const ARG_NONE: u8 = 0;
/// A register argument.
pub const ARG_REG: u8 = 1;
/// An argument passed on the stack (x86-64: from the 7th on; aarch64: from the 9th on).
pub const ARG_STACK: u8 = 2;
/// A field of a struct that a register argument points to (`cuLaunchKernelEx`'s config).
pub const ARG_DEREF: u8 = 3;

/// What a device probe reads at entry: four values (their meaning depends on the call's
/// class: handle, stream, size, extra) and, optionally, a string (a kernel or op name).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSpec {
    pub args: [ArgSpec; 4],
    /// Pointer to a NUL-terminated name, read into a [`DeviceName`] record.
    pub name: ArgSpec,
    /// `SPEC_*`.
    pub flags: u32,
    /// Most records per second this probe sends (0: unlimited). Calls over it are counted,
    /// not reported.
    pub max_per_sec: u32,
    /// The process the probe was attached for: hits from any other are ignored (a library
    /// file shared by several processes is one set of breakpoints in the kernel).
    pub tgid: u32,
    pub _pad: u32,
}

/// A return probe is attached too: the entry stashes its values and the return reports the
/// call with its duration and return value.
pub const SPEC_RETURN: u32 = 1;
/// Send a [`DeviceName`] for the call (the name from `ProbeSpec::name`).
pub const SPEC_NAME: u32 = 2;
/// At return, `args[0]` is a pointer to the handle the call wrote (`CUfunction* hfunc`): read
/// it. Only with `SPEC_RETURN`.
pub const SPEC_OUT_HANDLE: u32 = 4;
/// Count hits only; send nothing (overhead calibration).
pub const SPEC_COUNT_ONLY: u32 = 8;
/// Also send the calling thread's innermost Python frames ([`PySite`]) when its process runs a
/// CPython inferscope knows (launches: which Python function launched which kernels).
pub const SPEC_PY_SITE: u32 = 16;

/// A code object watched by the eval-frame uprobes (3.9/3.10): whose it is, and which timer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyEvalWatch {
    pub tgid: u32,
    pub spec: u32,
}

/// A watched call in progress (between the eval function's entry and return).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyEvalOpen {
    pub start_ns: u64,
    pub frame: u64,
    pub spec: u32,
    pub _pad: u32,
}

/// One finished call of a watched function, from uprobes on `_PyEval_EvalFrameDefault`:
/// `ret` 0 means it raised.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyEval {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub spec: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub frame: u64,
    pub ret: u64,
}

/// Python frames a [`PySite`] carries.
pub const PY_SITE_FRAMES: usize = 4;

/// The innermost Python frames (code-object pointers, innermost first; 0 for a C-stack shim or
/// past the outermost frame) of a thread as it entered a probed launch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PySite {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub probe: u32,
    /// The call's start (the same value as its [`DeviceEvent::start_ns`]).
    pub ts_ns: u64,
    /// The launch's first argument (a kernel handle or host stub, a graph).
    pub handle: u64,
    pub codes: [u64; PY_SITE_FRAMES],
}

/// One call of a probed accelerator-runtime function.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Probe id (index into user space's table of attached probes).
    pub probe: u32,
    /// CLOCK_MONOTONIC ns at entry.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns at return; 0 when no return probe is attached.
    pub end_ns: u64,
    /// The values named by `ProbeSpec::args`.
    pub args: [u64; 4],
    /// The call's return value (0 without a return probe).
    pub ret: i64,
}

/// Longest name carried by a [`DeviceName`], including the NUL.
pub const MAX_DEVICE_NAME: usize = 256;

/// A handle and the name a runtime gave it (`cuModuleGetFunction`, `__cudaRegisterFunction`,
/// `aclrtBinaryGetFunction`, ...).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeviceName {
    pub kind: u32,
    pub tgid: u32,
    pub probe: u32,
    /// Bytes of `name` before its NUL (0 if unreadable).
    pub len: u32,
    pub handle: u64,
    pub name: [u8; MAX_DEVICE_NAME],
}

/// A call in flight between a device probe's entry and return, keyed by
/// `(tid << 32) | probe id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceInflight {
    pub start_ns: u64,
    pub args: [u64; 4],
    pub name_ptr: u64,
}

/// Rate-limit state of one device probe: the current one-second window and its count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceRate {
    pub window_start_ns: u64,
    pub count: u64,
}

/// Most Python frames one sample carries (innermost first).
pub const MAX_PY_FRAMES: usize = 64;

/// Where the profiler finds a thread's frames in one process's CPython (bytes; see
/// userspace's `python::Layout`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyLayout {
    /// Offset in the thread state of the current frame pointer, or of the `_PyCFrame` pointer.
    pub tstate_frame: u32,
    /// With a `_PyCFrame` (3.11, 3.12): offset of the frame pointer in it; `u32::MAX` otherwise.
    pub cframe_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    /// Offset of the frame's owner byte (3.12+; a value of 3 marks a C-stack shim), or
    /// `u32::MAX`.
    pub frame_owner: u32,
    /// Offset of the frame's instruction pointer (`prev_instr` 3.11-3.12, `instr_ptr` 3.13),
    /// or `u32::MAX`.
    pub frame_instr: u32,
}

/// One sampled Python stack: code-object pointers, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PySample {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Frames in `codes`.
    pub depth: u32,
    pub ts_ns: u64,
    pub codes: [u64; MAX_PY_FRAMES],
}

/// A hardware breakpoint on a watched code unit fired: the thread fetched a timed function's
/// RESUME (entry) or one of its returns. `addr` is the watched address; `frame` the thread's
/// current interpreter frame then (tells nested and recursive calls apart); `unit` the code
/// unit found there after the access (a changed one means the interpreter wrote it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyCall {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub unit: u32,
    pub ts_ns: u64,
    pub addr: u64,
    pub frame: u64,
    /// `frame`'s caller frame and its instruction pointer (0 when unreadable): which frame
    /// `frame` is (the new callee's, or still its caller's) is told from these.
    pub frame_prev: u64,
    pub frame_instr: u64,
    /// The user instruction pointer after the access (data breakpoints trap after it).
    pub ip: u64,
}

/// Key of the `SSL_CONNS` map: an `SSL *` of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// Value of the `SSL_CONNS` map: the socket an `SSL *` reads and writes through, and that
/// socket's connection id when it was tied (a closed and reused fd has another).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslConn {
    pub conn_id: u64,
    pub fd: u32,
    pub _pad: u32,
}

/// `SslProbe` cookies: which OpenSSL function a TLS probe sits on.
pub const SSL_FN_READ: u64 = 0;
pub const SSL_FN_READ_EX: u64 = 1;
pub const SSL_FN_WRITE: u64 = 2;
pub const SSL_FN_WRITE_EX: u64 = 3;
/// `SSL_free` (entry only): the object's tie is forgotten (its address may be reused by the
/// next connection's while the old socket is still open).
pub const SSL_FN_FREE: u64 = 4;
/// `SSL_do_handshake` (also what `SSL_accept` and `SSL_connect` run): at its return the
/// object is tied to the socket the thread last read, replacing any earlier tie. A server's
/// handshake steps each follow a read of their own socket, while its first `SSL_read` may
/// come later (uvloop schedules it after other connections' reads).
pub const SSL_FN_HANDSHAKE: u64 = 5;

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for ProbeSpec {}
    unsafe impl aya::Pod for PyLayout {}
    unsafe impl aya::Pod for PyEvalWatch {}
    unsafe impl aya::Pod for SslKey {}
    unsafe impl aya::Pod for SslConn {}
}
