//! TLS plaintext from uprobes on OpenSSL's `SSL_read`, `SSL_read_ex`, `SSL_write` and
//! `SSL_write_ex` (in the libssl a process maps, or a copy linked into its binary or Python's
//! `_ssl` module), with `SSL_do_handshake` and `SSL_free` to tie and untie objects. One
//! program pair serves them all: the attach cookie says which (`SSL_FN_*`).
//!
//! An `SSL` object is tied to the socket it reads and writes through by the thread's socket
//! syscalls around the call, whatever its BIO: `sock.rs` notes in `LAST_IO` the last TLS
//! socket each thread read and wrote. A socket BIO (blocking servers) makes its syscalls inside
//! the call; a memory BIO (asyncio and uvloop's `SSLProtocol`) just before it: the bytes just
//! received on the socket are fed to the BIO, then the handshake is stepped. So at each return
//! of `SSL_do_handshake` the thread's last read is the object's socket (the latest step wins;
//! a server's last step always follows a read of its own socket). A connection whose handshake
//! came before the attach is tied at its first `SSL_read*` the same way (right unless the event
//! loop deferred that read past another connection's), or by a socket write made during an
//! `SSL_write*` (socket BIO).
//!
//! The plaintext goes out as `Data` records flagged `DATA_FLAG_TLS`, with the socket's fd and
//! connection id and positions in its plaintext stream (kept in the socket's `SockInfo`), so
//! user space reassembles them as if they had crossed the socket. Reads carry the socket's
//! arrival time.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use inferscope_common::{
    DATA_FLAG_TLS, DIR_EGRESS, DIR_INGRESS, SOCK_FLAG_TLS, SSL_FN_FREE, SSL_FN_HANDSHAKE, SSL_FN_READ_EX, SSL_FN_WRITE,
    SSL_FN_WRITE_EX, SslConn, SslKey, sock_key, stat,
};

use super::sock::{conn_state, data_header, emit_segment};
use crate::{SOCKETS, TRACKED, count};

/// The last read and the last write of a thread on a TLS socket. Apart: between the read that
/// brings a connection's first request and its `SSL_read`, the handshake's end may write (TLS
/// 1.3 session tickets).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct LastIo {
    pub read_ts_ns: u64,
    /// When the last read's bytes arrived (0: unknown, or already handed to a plaintext read).
    pub arrival_ns: u64,
    pub write_ts_ns: u64,
    pub read_fd: u32,
    pub write_fd: u32,
}

/// Notes a thread's syscall on a TLS socket.
#[inline(always)]
pub fn note_io(pid_tgid: u64, fd: u32, write: bool, ts_ns: u64, arrival_ns: u64) {
    let mut l = match unsafe { LAST_IO.get(&pid_tgid) } {
        Some(l) => *l,
        None => LastIo { read_fd: u32::MAX, write_fd: u32::MAX, ..LastIo::default() },
    };
    if write {
        l.write_fd = fd;
        l.write_ts_ns = ts_ns;
    } else {
        l.read_fd = fd;
        l.read_ts_ns = ts_ns;
        l.arrival_ns = arrival_ns;
    }
    let _ = LAST_IO.insert(&pid_tgid, &l, 0);
}

/// By thread (`pid_tgid`). LRU: threads come and go.
#[map]
pub static LAST_IO: LruHashMap<u64, LastIo> = LruHashMap::with_max_entries(16384, 0);

/// An `SSL_*` call between entry and return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    ssl: u64,
    buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the call writes the bytes it moved.
    moved: u64,
    start_ns: u64,
    func: u64,
}

#[map]
static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// `SSL *` of a process -> its socket. Forgotten at `SSL_free`; a stale entry (freed before
/// the attach, or an entry evicted) is also told by its connection id, which a reused fd
/// does not have.
#[map]
pub static SSL_CONNS: LruHashMap<SslKey, SslConn> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if unsafe { TRACKED.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return 0;
    }
    let func = cookie(&ctx);
    if func == SSL_FN_FREE {
        if let Some(ssl) = ctx.arg::<u64>(0) {
            let _ = SSL_CONNS.remove(&SslKey { tgid: (pid_tgid >> 32) as u32, _pad: 0, ssl });
        }
        return 0;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let moved = if func == SSL_FN_READ_EX || func == SSL_FN_WRITE_EX { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    let call = SslCall { ssl, buf, moved, start_ns: unsafe { bpf_ktime_get_ns() }, func };
    if SSL_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count(stat::TRACKING_MAP_FULL, 1);
    }
    0
}

#[uretprobe]
pub fn ssl_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { SSL_CALLS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = SSL_CALLS.remove(&pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey { tgid, _pad: 0, ssl: call.ssl };
    if call.func == SSL_FN_HANDSHAKE {
        if let Some(l) = unsafe { LAST_IO.get(&pid_tgid) } {
            if let Some(info) = unsafe { SOCKETS.get(&sock_key(tgid, l.read_fd)) } {
                if info.flags & SOCK_FLAG_TLS != 0 {
                    let c = SslConn { conn_id: info.conn_id, fd: l.read_fd, _pad: 0 };
                    let known = unsafe { SSL_CONNS.get(&key) }.is_some_and(|old| *old == c);
                    if !known && SSL_CONNS.insert(&key, &c, 0).is_ok() {
                        count(stat::TLS_TIED, 1);
                    }
                }
            }
        }
        return 0;
    }
    let ret: i64 = ctx.ret::<i64>();
    let ex = call.func == SSL_FN_READ_EX || call.func == SSL_FN_WRITE_EX;
    let n: u64 = if ex {
        if ret != 1 || call.moved == 0 {
            return 0;
        }
        unsafe { bpf_probe_read_user(call.moved as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    if n == 0 {
        return 0;
    }
    let write = call.func == SSL_FN_WRITE || call.func == SSL_FN_WRITE_EX;
    let dir_byte = if write { DIR_EGRESS } else { DIR_INGRESS };
    let last = LAST_IO.get_ptr_mut(&pid_tgid);

    // The socket: the one tied before, if it is still that connection; else the thread's last.
    let mut fd = u32::MAX;
    if let Some(c) = unsafe { SSL_CONNS.get(&key) } {
        let c = *c;
        match unsafe { SOCKETS.get(&sock_key(tgid, c.fd)) } {
            Some(info) if info.conn_id == c.conn_id && info.flags & SOCK_FLAG_TLS != 0 => fd = c.fd,
            _ => {
                let _ = SSL_CONNS.remove(&key);
            }
        }
    }
    if fd == u32::MAX {
        if let Some(l) = last {
            let l = unsafe { &*l };
            let cand =
                if write { if l.write_ts_ns >= call.start_ns { l.write_fd } else { u32::MAX } } else { l.read_fd };
            if cand != u32::MAX {
                if let Some(info) = unsafe { SOCKETS.get(&sock_key(tgid, cand)) } {
                    if info.flags & SOCK_FLAG_TLS != 0 {
                        let c = SslConn { conn_id: info.conn_id, fd: cand, _pad: 0 };
                        if SSL_CONNS.insert(&key, &c, 0).is_ok() {
                            count(stat::TLS_TIED, 1);
                        }
                        fd = cand;
                    }
                }
            }
        }
    }
    if fd == u32::MAX {
        count(stat::TLS_UNTIED_CALLS, 1);
        return 0;
    }
    let Some(info) = SOCKETS.get_ptr_mut(&sock_key(tgid, fd)) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    let conn_id = info.conn_id;
    let (positions, _) = conn_state(info);
    let dir = if write { 1usize } else { 0usize };
    let pos = positions[dir];
    positions[dir] = pos + n;
    count(stat::TLS_PLAINTEXT_BYTES, n);

    // A read's bytes arrived when the socket read that brought them did (handed out once).
    let mut arrival_ns = 0;
    if !write {
        if let Some(l) = last {
            let l = unsafe { &mut *l };
            if l.read_fd == fd {
                arrival_ns = l.arrival_ns;
                l.arrival_ns = 0;
            }
        }
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    let Some(scratch) = data_header(pid_tgid, fd, conn_id, ts, pos, n, arrival_ns, dir_byte, 0) else {
        return 0;
    };
    emit_segment(scratch, call.buf, 0, n, DATA_FLAG_TLS);
    0
}
