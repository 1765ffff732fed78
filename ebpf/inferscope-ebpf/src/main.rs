//! inferscope's BPF programs. One module per probe family under `probes/`; the maps they share
//! are declared here. Programs filter by process early, copy bounded bytes, count every loss in
//! `STATS`, and leave all parsing to user space.
#![no_std]
#![no_main]

mod probes;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use inferscope_common::{DataEvent, MAX_CAPTURE, SockInfo, stat};

/// Every record for user space. User space resizes it at load time (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Thread group ids being traced (value unused). Filled by user space; children are added by the
/// fork tracepoint so a new worker is traced from its first syscall.
#[map]
pub static TRACKED: HashMap<u32, u32> = HashMap::with_max_entries(8192, 0);

/// Sockets of traced processes, keyed by `sock_key(tgid, fd)`.
#[map]
pub static SOCKETS: HashMap<u64, SockInfo> = HashMap::with_max_entries(65536, 0);

/// Local TCP ports the traced servers listen on (value unused). Filled by user space; only
/// segments to these ports get an arrival time.
#[map]
pub static WATCHED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Kernel socket address -> CLOCK_MONOTONIC ns of the oldest segment not yet read.
#[map]
pub static ARRIVALS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU counters, indexed by `inferscope_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-CPU counter for connection ids chosen in BPF.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A data record under construction: header and payload are contiguous so one
/// `bpf_ringbuf_output` sends both. Too large for the 512-byte stack, so it lives in a map.
#[repr(C)]
pub struct Scratch {
    pub hdr: DataEvent,
    pub data: [u8; MAX_CAPTURE],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Bytes captured from the start of each syscall's (or iovec segment's) data. Set by user space
/// at load time (`--capture-bytes`); clamped to `MAX_CAPTURE`.
#[unsafe(no_mangle)]
pub static CAPTURE_HEAD: u32 = 4096;
/// Bytes captured from the end of a segment longer than `CAPTURE_HEAD` (where a JSON body keeps
/// `usage` and, for OpenAI clients, `model` and `stream`). Clamped to `MAX_CAPTURE`.
#[unsafe(no_mangle)]
pub static CAPTURE_TAIL: u32 = 1024;

/// Unread bytes in `EVENTS` above which a record wakes the reader. Below it records are
/// written without a wakeup and user space drains on a short timer: a wakeup per record would
/// cost the traced process an irq_work and the reader an epoll round trip for every syscall.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u32 = 256 * 1024;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for a ring-buffer write: wake the reader only when enough data waits.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= read_global(&WAKEUP_BYTES) as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn count(index: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn read_global(v: &'static u32) -> u32 {
    // Globals are patched by the loader; a volatile read stops the compiler folding the default.
    unsafe { core::ptr::read_volatile(v) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
