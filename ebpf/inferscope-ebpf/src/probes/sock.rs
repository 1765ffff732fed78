//! Socket capture from syscall tracepoints (kprobes and fentry are not required).
//!
//! Relies on the stable `syscalls:sys_enter_*` / `sys_exit_*` formats: arguments are 8-byte
//! slots from offset 16, the return value is at offset 16 of the exit record.
//!
//! - `accept`/`accept4`/`connect` exits put the new socket of a traced process into `SOCKETS`
//!   and announce it; `close` announces and forgets it. Sockets that existed before attaching
//!   are put into `SOCKETS` by user space from /proc.
//! - read-like and write-like enters remember the buffer (or iovec array) of a call on a
//!   tracked socket in `PENDING_IO`; the exit copies what the call really moved: the first
//!   `CAPTURE_HEAD` bytes of every segment and the last `CAPTURE_TAIL` bytes of a longer one.
//!   Every byte advances the socket's stream position, so user space can see each gap.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use inferscope_common::{
    ConnEvent, DATA_FLAG_EOF, DATA_FLAG_TLS, DATA_FLAG_TLS_START, DATA_FLAG_TRUNCATED, DATA_HEADER_LEN, DIR_EGRESS,
    DIR_INGRESS, EventKind, MAX_CAPTURE, MAX_FULL_CHUNKS, MAX_IOV, ProcEvent, ROLE_CLIENT, ROLE_SERVER, SOCK_FLAG_FULL,
    SOCK_FLAG_SHARED, SOCK_FLAG_TLS, SYS_READ, SYS_READV, SYS_RECVFROM, SYS_RECVMSG, SYS_SENDMSG, SYS_SENDTO,
    SYS_WRITE, SYS_WRITEV, SockInfo, sock_key, stat,
};

use super::tls::note_io;
use crate::{
    ARRIVALS, CAPTURE_HEAD, CAPTURE_TAIL, CONN_SEQ, EVENTS, SCRATCH, SOCKETS, Scratch, TRACKED, WATCHED_PORTS, count,
    read_global,
};

const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;
const ECONNRESET: i64 = 104;
const EPIPE: i64 = 32;

/// How a syscall passes its buffer.
const SHAPE_BUF: u8 = 0;
const SHAPE_IOV: u8 = 1;
const SHAPE_MSG: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoArgs {
    /// Buffer, or iovec array (for SHAPE_IOV and, once resolved, SHAPE_MSG).
    buf: u64,
    /// iovec count for vectored calls.
    iovcnt: u64,
    /// Arrival time of the bytes being read, set by `sock_recv_length` during the call.
    arrival_ns: u64,
    fd: u32,
    syscall: u8,
    dir: u8,
    shape: u8,
    _pad: u8,
}

#[map]
static PENDING_IO: HashMap<u64, IoArgs> = HashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnArgs {
    addr: u64,
    fd: u32,
    role: u8,
    _pad: [u8; 3],
}

#[map]
static PENDING_CONN: HashMap<u64, ConnArgs> = HashMap::with_max_entries(16384, 0);

/// A connection reachable through several fds of a process (`dup`): one open file, one byte
/// stream, so one set of positions. Its fds' `SockInfo`s carry `SOCK_FLAG_SHARED` and the same
/// `conn_id`, the key here.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SharedConn {
    pos: [u64; 2],
    /// fds in `SOCKETS` that point here. Updated without atomics: two threads closing two
    /// copies at the same instant may end the connection one close early (user space then
    /// sees its later bytes as a connection captured mid-stream).
    refs: u64,
    flags: u8,
    _pad: [u8; 7],
}

#[map]
static SHARED_CONNS: HashMap<u64, SharedConn> = HashMap::with_max_entries(16384, 0);

/// The fd being duplicated, by thread, between a `dup`-family enter and its exit.
#[map]
static PENDING_DUP: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn tracked(tgid: u32) -> bool {
    unsafe { TRACKED.get(&tgid) }.is_some()
}

#[inline(always)]
fn enter_io(ctx: &TracePointContext, syscall: u8, dir: u8, shape: u8) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !tracked(tgid) {
        return 0;
    }
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else {
        return 0;
    };
    let fd = fd as u32;
    if SOCKETS.get_ptr(&sock_key(tgid, fd)).is_none() {
        return 0;
    }
    let Ok(mut buf) = (unsafe { ctx.read_at::<u64>(ARG1) }) else {
        return 0;
    };
    let mut iovcnt = 0u64;
    let mut shape = shape;
    match shape {
        SHAPE_IOV => {
            iovcnt = unsafe { ctx.read_at::<u64>(ARG2) }.unwrap_or(0);
        }
        SHAPE_MSG => {
            // struct msghdr: msg_iov at 16, msg_iovlen at 24.
            let iov = unsafe { bpf_probe_read_user((buf + 16) as *const u64) };
            let len = unsafe { bpf_probe_read_user((buf + 24) as *const u64) };
            match (iov, len) {
                (Ok(iov), Ok(len)) => {
                    buf = iov;
                    iovcnt = len;
                    shape = SHAPE_IOV;
                }
                _ => {
                    count(stat::READ_USER_FAILED, 1);
                    // Keep going: the exit still advances the stream position (a gap).
                    iovcnt = 0;
                    shape = SHAPE_IOV;
                }
            }
        }
        _ => {}
    }
    let args = IoArgs { buf, iovcnt, arrival_ns: 0, fd, syscall, dir, shape, _pad: 0 };
    if PENDING_IO.insert(&pid_tgid, &args, 0).is_err() {
        count(stat::TRACKING_MAP_FULL, 1);
    }
    0
}

/// Copies `len` bytes at user address `src` (offset `offset` within the syscall's bytes) into a
/// ring-buffer record whose header is already in `scratch`.
#[inline(never)]
pub(crate) fn emit(scratch: *mut Scratch, src: u64, offset: u64, len: u64, flags: u8) {
    let n: u32 = if len > MAX_CAPTURE as u64 { MAX_CAPTURE as u32 } else { len as u32 };
    let s = unsafe { &mut *scratch };
    s.hdr.offset = offset as u32;
    s.hdr.flags = flags;
    let r = unsafe { probe_read_user_raw(s.data.as_mut_ptr().cast(), n, src as *const core::ffi::c_void) };
    if r != 0 {
        count(stat::READ_USER_FAILED, 1);
        s.hdr.len = 0;
        s.hdr.flags = flags | DATA_FLAG_TRUNCATED;
    } else {
        s.hdr.len = n;
    }
    let total = DATA_HEADER_LEN + s.hdr.len as usize;
    let total = if total > DATA_HEADER_LEN + MAX_CAPTURE { DATA_HEADER_LEN + MAX_CAPTURE } else { total };
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, total) };
    match EVENTS.output::<[u8]>(bytes, crate::wakeup_flags()) {
        Ok(()) => {
            count(stat::DATA_EVENTS, 1);
            count(stat::CAPTURED_BYTES, s.hdr.len as u64);
        }
        Err(_) => count(stat::RINGBUF_DROPS, 1),
    }
}

/// Emits the head of a segment, and its tail when the segment is longer than the head.
#[inline(always)]
pub(crate) fn emit_segment(scratch: *mut Scratch, src: u64, seg_off: u64, seg_len: u64, extra: u8) {
    let mut head_cap = read_global(&CAPTURE_HEAD) as u64;
    if head_cap > MAX_CAPTURE as u64 {
        head_cap = MAX_CAPTURE as u64;
    }
    let head = if seg_len < head_cap { seg_len } else { head_cap };
    if seg_len <= head {
        emit(scratch, src, seg_off, head, extra);
        return;
    }
    count(stat::TRUNCATED_SYSCALLS, 1);
    emit(scratch, src, seg_off, head, DATA_FLAG_TRUNCATED | extra);
    let mut tail_cap = read_global(&CAPTURE_TAIL) as u64;
    if tail_cap > MAX_CAPTURE as u64 {
        tail_cap = MAX_CAPTURE as u64;
    }
    let rest = seg_len - head;
    let tail = if rest < tail_cap { rest } else { tail_cap };
    if tail > 0 {
        let at = seg_len - tail;
        emit(scratch, src + at, seg_off + at, tail, DATA_FLAG_TRUNCATED | extra);
    }
}

/// Emits every byte of a plain buffer in `MAX_CAPTURE`-sized records, up to `MAX_FULL_CHUNKS`
/// of them; a longer buffer loses its middle (counted) and keeps its last `CAPTURE_TAIL` bytes.
#[inline(always)]
fn emit_full(scratch: *mut Scratch, src: u64, len: u64) {
    let limit = (MAX_CAPTURE * MAX_FULL_CHUNKS) as u64;
    let flags = if len > limit { DATA_FLAG_TRUNCATED } else { 0 };
    let mut off: u64 = 0;
    for _ in 0..MAX_FULL_CHUNKS {
        if off >= len {
            return;
        }
        let left = len - off;
        let n = if left < MAX_CAPTURE as u64 { left } else { MAX_CAPTURE as u64 };
        emit(scratch, src + off, off, n, flags);
        off += n;
    }
    if off >= len {
        return;
    }
    count(stat::TRUNCATED_SYSCALLS, 1);
    let mut tail_cap = read_global(&CAPTURE_TAIL) as u64;
    if tail_cap > MAX_CAPTURE as u64 {
        tail_cap = MAX_CAPTURE as u64;
    }
    let rest = len - off;
    let tail = if rest < tail_cap { rest } else { tail_cap };
    if tail > 0 {
        let at = len - tail;
        emit(scratch, src + at, at, tail, DATA_FLAG_TRUNCATED);
    }
}

/// The per-CPU scratch record with its data header filled in (no payload yet): what `emit`
/// and `emit_segment` send. None if the scratch map is unreadable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn data_header(
    pid_tgid: u64,
    fd: u32,
    conn_id: u64,
    ts_ns: u64,
    syscall_pos: u64,
    syscall_len: u64,
    arrival_ns: u64,
    direction: u8,
    syscall: u8,
) -> Option<*mut Scratch> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let hdr = unsafe { &mut (*scratch).hdr };
    hdr.kind = EventKind::Data as u32;
    hdr.tgid = (pid_tgid >> 32) as u32;
    hdr.tid = pid_tgid as u32;
    hdr.fd = fd as i32;
    hdr.conn_id = conn_id;
    hdr.ts_ns = ts_ns;
    hdr.syscall_pos = syscall_pos;
    hdr.syscall_len = syscall_len;
    hdr.offset = 0;
    hdr.len = 0;
    hdr.arrival_ns = arrival_ns;
    hdr.direction = direction;
    hdr.syscall = syscall;
    hdr.flags = 0;
    hdr._pad = [0; 5];
    Some(scratch)
}

/// A socket's positions and flags: its own, or for a dup'd socket the connection's, shared by
/// its fds.
#[inline(always)]
pub(crate) fn conn_state(info: &mut SockInfo) -> (&mut [u64; 2], &mut u8) {
    if info.flags & SOCK_FLAG_SHARED != 0 {
        if let Some(s) = SHARED_CONNS.get_ptr_mut(&info.conn_id) {
            let s = unsafe { &mut *s };
            return (&mut s.pos, &mut s.flags);
        }
    }
    (&mut info.pos, &mut info.flags)
}

#[inline(always)]
fn exit_io(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = (unsafe { PENDING_IO.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = PENDING_IO.remove(&pid_tgid);
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 0;
    };
    // A peer that reset the connection (a client that closed with unread data sends RST, not
    // FIN), or a write after the peer went away, ends the stream like a 0-byte read: it is how
    // a server usually learns of a client abort.
    let mut dir_byte = args.dir;
    let ret: u64 = if ret >= 0 {
        ret as u64
    } else if ret == -ECONNRESET || ret == -EPIPE {
        dir_byte = DIR_INGRESS;
        0
    } else {
        return 0;
    };
    let tgid = (pid_tgid >> 32) as u32;
    let Some(info) = SOCKETS.get_ptr_mut(&sock_key(tgid, args.fd)) else {
        return 0;
    };
    let dir = if dir_byte == DIR_EGRESS { 1usize } else { 0usize };
    let info = unsafe { &mut *info };
    let conn_id = info.conn_id;
    let (positions, flags) = conn_state(info);
    let pos = positions[dir];
    // TLS: the ciphertext is not captured and does not move the positions (they count the
    // plaintext the `SSL_*` probes see). Which socket this thread last used is noted, to tie
    // the `SSL` object of its next (or current) `SSL_read`/`SSL_write` to it.
    let mut tls_flags = 0u8;
    let mut announce = false;
    if *flags & SOCK_FLAG_TLS != 0 {
        tls_flags = DATA_FLAG_TLS;
    } else if pos == 0 && ret >= 5 && args.shape == SHAPE_BUF && *flags & SOCK_FLAG_FULL == 0 {
        // The first bytes of a direction are a TLS record header: content type 20-23, version
        // 3.x. Plain HTTP starts with a letter, ZMTP with 0xFF. A handshake record is the
        // connection's start; another type means it was already running when we attached.
        if let Ok(h) = unsafe { bpf_probe_read_user(args.buf as *const [u8; 3]) } {
            if (0x14..=0x17).contains(&h[0]) && h[1] == 3 && h[2] <= 4 {
                *flags |= SOCK_FLAG_TLS;
                positions[0] = 0;
                positions[1] = 0;
                count(stat::TLS_CONNECTIONS, 1);
                announce = true;
                tls_flags = DATA_FLAG_TLS | if h[0] == 0x16 { DATA_FLAG_TLS_START } else { 0 };
            }
        }
    }
    if tls_flags != 0 {
        let now = unsafe { bpf_ktime_get_ns() };
        note_io(pid_tgid, args.fd, dir_byte == DIR_EGRESS, now, args.arrival_ns);
        // Only the announcement (no bytes) and the peer's EOF (at the plaintext position) go
        // out from here.
        let eof = ret == 0 && dir_byte == DIR_INGRESS;
        if !announce && !eof {
            return 0;
        }
        let Some(scratch) = data_header(pid_tgid, args.fd, conn_id, now, positions[dir], 0, 0, dir_byte, args.syscall)
        else {
            return 0;
        };
        emit(scratch, 0, 0, 0, tls_flags | if eof { DATA_FLAG_EOF } else { 0 });
        return 0;
    }
    positions[dir] = pos + ret;
    // A ZeroMQ connection (engine IPC) opens with its greeting: 0xFF, 8 bytes, 0x7F. Seen at
    // the very start of a direction, the socket is captured whole from then on.
    if pos == 0 && ret >= 10 && args.shape == SHAPE_BUF && *flags & SOCK_FLAG_FULL == 0 {
        if let Ok(sig) = unsafe { bpf_probe_read_user(args.buf as *const [u8; 10]) } {
            if sig[0] == 0xff && sig[9] == 0x7f {
                *flags |= SOCK_FLAG_FULL;
            }
        }
    }
    let full = *flags & SOCK_FLAG_FULL != 0;
    let arrival_ns = args.arrival_ns;

    let Some(scratch) = data_header(
        pid_tgid,
        args.fd,
        conn_id,
        unsafe { bpf_ktime_get_ns() },
        pos,
        ret,
        arrival_ns,
        dir_byte,
        args.syscall,
    ) else {
        return 0;
    };
    count(stat::SYSCALL_BYTES, ret);

    if ret == 0 {
        if dir_byte == DIR_INGRESS {
            emit(scratch, 0, 0, 0, DATA_FLAG_EOF);
        }
        return 0;
    }
    if args.shape == SHAPE_BUF {
        if full {
            emit_full(scratch, args.buf, ret);
        } else {
            emit_segment(scratch, args.buf, 0, ret, 0);
        }
        return 0;
    }
    let mut off: u64 = 0;
    for i in 0..MAX_IOV as u64 {
        if i >= args.iovcnt || off >= ret {
            break;
        }
        let at = args.buf + i * 16;
        let base = unsafe { bpf_probe_read_user(at as *const u64) };
        let ilen = unsafe { bpf_probe_read_user((at + 8) as *const u64) };
        let (Ok(base), Ok(ilen)) = (base, ilen) else {
            count(stat::READ_USER_FAILED, 1);
            break;
        };
        let left = ret - off;
        let seg = if ilen < left { ilen } else { left };
        if seg > 0 {
            emit_segment(scratch, base, off, seg, 0);
        }
        off += ilen;
    }
    if off < ret {
        count(stat::IOV_OVERFLOW, 1);
    }
    0
}

macro_rules! io_probes {
    ($($enter:ident, $exit:ident, $sys:expr, $dir:expr, $shape:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_io(&ctx, $sys, $dir, $shape)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_io(&ctx)
        }
    )*};
}

io_probes! {
    sys_enter_read, sys_exit_read, SYS_READ, DIR_INGRESS, SHAPE_BUF;
    sys_enter_readv, sys_exit_readv, SYS_READV, DIR_INGRESS, SHAPE_IOV;
    sys_enter_recvfrom, sys_exit_recvfrom, SYS_RECVFROM, DIR_INGRESS, SHAPE_BUF;
    sys_enter_recvmsg, sys_exit_recvmsg, SYS_RECVMSG, DIR_INGRESS, SHAPE_MSG;
    sys_enter_write, sys_exit_write, SYS_WRITE, DIR_EGRESS, SHAPE_BUF;
    sys_enter_writev, sys_exit_writev, SYS_WRITEV, DIR_EGRESS, SHAPE_IOV;
    sys_enter_sendto, sys_exit_sendto, SYS_SENDTO, DIR_EGRESS, SHAPE_BUF;
    sys_enter_sendmsg, sys_exit_sendmsg, SYS_SENDMSG, DIR_EGRESS, SHAPE_MSG;
}

#[inline(always)]
fn enter_conn(ctx: &TracePointContext, role: u8) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }.unwrap_or(0) as u32;
    let addr = unsafe { ctx.read_at::<u64>(ARG1) }.unwrap_or(0);
    let args = ConnArgs { addr, fd, role, _pad: [0; 3] };
    if PENDING_CONN.insert(&pid_tgid, &args, 0).is_err() {
        count(stat::TRACKING_MAP_FULL, 1);
    }
    0
}

/// Reads a `struct sockaddr` from user memory into the event (family, port, address).
#[inline(always)]
fn read_sockaddr(addr: u64, ev: &mut ConnEvent) {
    if addr == 0 {
        return;
    }
    let Ok(family) = (unsafe { bpf_probe_read_user(addr as *const u16) }) else {
        return;
    };
    ev.family = family;
    if family == AF_INET || family == AF_INET6 {
        if let Ok(port) = unsafe { bpf_probe_read_user((addr + 2) as *const u16) } {
            ev.port = u16::from_be(port);
        }
    }
    if family == AF_INET {
        if let Ok(a) = unsafe { bpf_probe_read_user((addr + 4) as *const [u8; 4]) } {
            ev.addr[..4].copy_from_slice(&a);
        }
    } else if family == AF_INET6 {
        if let Ok(a) = unsafe { bpf_probe_read_user((addr + 8) as *const [u8; 16]) } {
            ev.addr = a;
        }
    }
}

/// The exit of `accept`/`accept4` (`role` server) or `connect` (client). The enter normally
/// stashed the arguments; a thread that was already blocked in `accept()` when we attached
/// returns with no enter seen, and the exit alone is enough for an accept: the new socket is
/// its return value (the peer's address stays unknown). A `connect`'s exit does not say which
/// fd it was: such a socket is learned by user space from /proc when its traffic shows up
/// unclassified (`sock_io_length`).
#[inline(always)]
fn exit_conn(ctx: &TracePointContext, role: u8) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = (unsafe { PENDING_CONN.get(&pid_tgid) }).copied();
    if pending.is_some() {
        let _ = PENDING_CONN.remove(&pid_tgid);
    }
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 0;
    };
    let args = match pending {
        // An entry from another syscall is stale (its exit ran before the exit program was
        // attached): not this call's arguments.
        Some(a) if a.role == role => a,
        _ => {
            if role != ROLE_SERVER || ret < 0 || !tracked((pid_tgid >> 32) as u32) {
                return 0;
            }
            count(stat::ACCEPTS_WITHOUT_ENTER, 1);
            ConnArgs { addr: 0, fd: 0, role, _pad: [0; 3] }
        }
    };
    let fd = if args.role == ROLE_SERVER {
        if ret < 0 {
            return 0;
        }
        ret as u32
    } else {
        if ret != 0 && ret != -EINPROGRESS {
            return 0;
        }
        args.fd
    };
    let tgid = (pid_tgid >> 32) as u32;
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let Some(seq) = CONN_SEQ.get_ptr_mut(0) else {
        return 0;
    };
    let conn_id = unsafe {
        *seq += 1;
        // 16 bits of CPU: unique on hosts with up to 65,536 CPUs (the sequence is per CPU).
        ((*seq) << 16) | (cpu & 0xffff)
    } & !inferscope_common::USER_CONN_ID_BIT;
    let mut ev = ConnEvent {
        kind: EventKind::ConnOpen as u32,
        tgid,
        tid: pid_tgid as u32,
        fd: fd as i32,
        conn_id,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        role: args.role,
        ..ConnEvent::default()
    };
    read_sockaddr(args.addr, &mut ev);
    let info = SockInfo { conn_id, pos: [0, 0], role: args.role, flags: 0, _pad: [0; 6] };
    if SOCKETS.insert(&sock_key(tgid, fd), &info, 0).is_err() {
        count(stat::SOCKET_MAP_FULL, 1);
        return 0;
    }
    output_conn(&ev);
    0
}

#[inline(always)]
fn output_conn(ev: &ConnEvent) {
    match EVENTS.output::<ConnEvent>(ev, crate::wakeup_flags()) {
        Ok(()) => count(stat::CONN_EVENTS, 1),
        Err(_) => count(stat::RINGBUF_DROPS, 1),
    }
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_conn(&ctx, ROLE_SERVER)
}
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_conn(&ctx, ROLE_SERVER)
}
#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_conn(&ctx, ROLE_SERVER)
}
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_conn(&ctx, ROLE_SERVER)
}
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_conn(&ctx, ROLE_CLIENT)
}
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_conn(&ctx, ROLE_CLIENT)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !tracked(tgid) {
        return 0;
    }
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }.unwrap_or(u64::MAX) as u32;
    forget_socket(pid_tgid, tgid, fd);
    0
}

/// `fd` of `tgid` is closed: it leaves `SOCKETS`, and its connection ends (announced) unless
/// another fd of the process still holds it (a `dup`).
#[inline(always)]
fn forget_socket(pid_tgid: u64, tgid: u32, fd: u32) {
    let key = sock_key(tgid, fd);
    let Some(info) = (unsafe { SOCKETS.get(&key) }).copied() else {
        return;
    };
    let _ = SOCKETS.remove(&key);
    if info.flags & SOCK_FLAG_SHARED != 0 {
        if let Some(s) = SHARED_CONNS.get_ptr_mut(&info.conn_id) {
            let s = unsafe { &mut *s };
            if s.refs > 1 {
                s.refs -= 1;
                return;
            }
            let _ = SHARED_CONNS.remove(&info.conn_id);
        }
    }
    let ev = ConnEvent {
        kind: EventKind::ConnClose as u32,
        tgid,
        tid: pid_tgid as u32,
        fd: fd as i32,
        conn_id: info.conn_id,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        role: info.role,
        ..ConnEvent::default()
    };
    output_conn(&ev);
}

// `dup`, `dup2`, `dup3` and `fcntl(F_DUPFD, F_DUPFD_CLOEXEC)` of a tracked socket: the new fd
// is the same open file (one byte stream), so it joins the connection: same `conn_id`, shared
// positions (`SHARED_CONNS`). `dup2`/`dup3` onto a tracked socket close that one first.

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

#[inline(always)]
fn enter_dup(ctx: &TracePointContext, with_target: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !tracked(tgid) {
        return 0;
    }
    let Ok(old) = (unsafe { ctx.read_at::<u64>(ARG0) }) else {
        return 0;
    };
    let old = old as u32;
    let mut interesting = SOCKETS.get_ptr(&sock_key(tgid, old)).is_some();
    if !interesting && with_target {
        let new = unsafe { ctx.read_at::<u64>(ARG1) }.unwrap_or(u64::MAX) as u32;
        interesting = SOCKETS.get_ptr(&sock_key(tgid, new)).is_some();
    }
    if interesting {
        let _ = PENDING_DUP.insert(&pid_tgid, &old, 0);
    }
    0
}

#[inline(always)]
fn exit_dup(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(old) = (unsafe { PENDING_DUP.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = PENDING_DUP.remove(&pid_tgid);
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 0;
    };
    if ret < 0 || ret as u64 == old as u64 {
        return 0;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let new = ret as u32;
    forget_socket(pid_tgid, tgid, new);
    let Some(info) = SOCKETS.get_ptr_mut(&sock_key(tgid, old)) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    if info.flags & SOCK_FLAG_SHARED == 0 {
        let s = SharedConn { pos: info.pos, refs: 1, flags: info.flags, _pad: [0; 7] };
        if SHARED_CONNS.insert(&info.conn_id, &s, 0).is_err() {
            count(stat::SOCKET_MAP_FULL, 1);
            return 0;
        }
        info.flags |= SOCK_FLAG_SHARED;
    }
    let Some(s) = SHARED_CONNS.get_ptr_mut(&info.conn_id) else {
        return 0;
    };
    let copy = *info;
    if SOCKETS.insert(&sock_key(tgid, new), &copy, 0).is_err() {
        count(stat::SOCKET_MAP_FULL, 1);
        return 0;
    }
    unsafe { (*s).refs += 1 };
    count(stat::DUPS_FOLLOWED, 1);
    0
}

#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    enter_dup(&ctx, false)
}
#[tracepoint]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    exit_dup(&ctx)
}
#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    enter_dup(&ctx, true)
}
#[tracepoint]
pub fn sys_exit_dup2(ctx: TracePointContext) -> u32 {
    exit_dup(&ctx)
}
#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    enter_dup(&ctx, true)
}
#[tracepoint]
pub fn sys_exit_dup3(ctx: TracePointContext) -> u32 {
    exit_dup(&ctx)
}
#[tracepoint]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = unsafe { ctx.read_at::<u64>(ARG1) }.unwrap_or(u64::MAX) & 0xffff_ffff;
    if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
        return 0;
    }
    enter_dup(&ctx, false)
}
#[tracepoint]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    exit_dup(&ctx)
}

// Request arrival times. A busy server reads a request some time after its bytes arrived;
// that queueing is latency the client sees. `tcp:tcp_probe` runs (in softirq context) for every
// segment an ESTABLISHED TCP socket receives, with the socket's address `skaddr` (offset 128),
// its local port `sport` (u16, host order, offset 64) and the payload size `data_len` (u16,
// offset 76). `sock:sock_recv_length` runs inside the reading syscall (process context) with
// the same socket address `sk` (offset 8), so the read can take the arrival time of the oldest
// unread segment. `tcp:tcp_destroy_sock` (`skaddr` at 8, `sport` at 16) forgets a socket so a
// reused address never inherits a stale time.

const BPF_NOEXIST: u64 = 1;

#[tracepoint]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let Ok(len) = (unsafe { ctx.read_at::<u16>(76) }) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    let Ok(sport) = (unsafe { ctx.read_at::<u16>(64) }) else {
        return 0;
    };
    if unsafe { WATCHED_PORTS.get(&sport) }.is_none() {
        return 0;
    }
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(128) }) else {
        return 0;
    };
    // Only the oldest unread segment counts: keep an existing entry.
    if ARRIVALS.insert(&sk, &unsafe { bpf_ktime_get_ns() }, BPF_NOEXIST).is_ok() {
        count(stat::ARRIVALS_RECORDED, 1);
    }
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = PENDING_IO.get_ptr_mut(&pid_tgid) else {
        return sock_io_length(&ctx, pid_tgid, true);
    };
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(8) }) else {
        return 0;
    };
    if let Some(t) = unsafe { ARRIVALS.get(&sk) } {
        let t = *t;
        unsafe { (*args).arrival_ns = t };
        let _ = ARRIVALS.remove(&sk);
        count(stat::ARRIVALS_USED, 1);
    }
    0
}

/// `sock:sock_send_length`: like `sock_recv_length`, for every socket send.
#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if PENDING_IO.get_ptr(&pid_tgid).is_some() {
        return 0;
    }
    sock_io_length(&ctx, pid_tgid, false)
}

// Unclassified socket I/O. `sock:sock_{recv,send}_length` run inside every socket read and
// write (`sk` at 8, `family` u16 at 16, `protocol` u16 at 18, `ret` i32 at 20, `flags` i32 at
// 24), whatever the syscall: the kernel itself says the fd is a socket. A traced syscall on a
// tracked socket has its `PENDING_IO` entry by then; bytes moved without one were not
// captured. They are counted, and the process is announced (at most once a second) so user
// space looks in /proc for sockets it does not know.

const AF_UNIX: u16 = 1;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_MPTCP: u16 = 262;
const MSG_PEEK: i32 = 2;

/// When each process was last announced.
#[map]
static UNKNOWN_IO_SEEN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
fn sock_io_length(ctx: &TracePointContext, pid_tgid: u64, recv: bool) -> u32 {
    let Ok(ret) = (unsafe { ctx.read_at::<i32>(20) }) else {
        return 0;
    };
    if ret <= 0 {
        return 0;
    }
    if recv && unsafe { ctx.read_at::<i32>(24) }.unwrap_or(0) & MSG_PEEK != 0 {
        return 0;
    }
    let family = unsafe { ctx.read_at::<u16>(16) }.unwrap_or(0);
    let protocol = unsafe { ctx.read_at::<u16>(18) }.unwrap_or(0);
    let inet = (family == AF_INET || family == AF_INET6) && (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP);
    if !inet && family != AF_UNIX {
        return 0;
    }
    let tgid = (pid_tgid >> 32) as u32;
    if !tracked(tgid) {
        return 0;
    }
    count(stat::UNCLASSIFIED_SOCKET_IO, 1);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = unsafe { UNKNOWN_IO_SEEN.get(&tgid) } {
        if now.wrapping_sub(*last) < 1_000_000_000 {
            return 0;
        }
    }
    let _ = UNKNOWN_IO_SEEN.insert(&tgid, &now, 0);
    let ev = ProcEvent { kind: EventKind::SocketUnknown as u32, tgid, child: family as u32, _pad: 0, ts_ns: now };
    match EVENTS.output::<ProcEvent>(&ev, crate::wakeup_flags()) {
        Ok(()) => {}
        Err(_) => count(stat::RINGBUF_DROPS, 1),
    }
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let Ok(sport) = (unsafe { ctx.read_at::<u16>(16) }) else {
        return 0;
    };
    if unsafe { WATCHED_PORTS.get(&sport) }.is_none() {
        return 0;
    }
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(8) } {
        let _ = ARRIVALS.remove(&sk);
    }
    0
}
