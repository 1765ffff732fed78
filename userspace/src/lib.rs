//! inferscope: request, engine and device timings of LLM inference servers, from eBPF.
//!
//! Data flows one way: [`bpf`] (kernel) -> [`events`] (decode) -> [`stream`] (gaps) ->
//! [`protocol`] (HTTP, SSE, OpenAI, ZMTP) -> [`tracker`] / [`request`] (records), [`engine`],
//! [`device`], [`python`] and the [`layers`] -> [`correlate`] (joins) -> [`export`] (sinks).
//! [`daemon`] runs the loop; [`target`] knows the processes (/proc, maps, ELF, remote memory,
//! versions); [`cmd`] has the CLI verbs.
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod control;
pub mod correlate;
pub mod daemon;
pub mod device;
pub mod engine;
pub mod events;
pub mod export;
pub mod layers;
pub mod logging;
pub mod output;
pub mod privileges;
pub mod process;
pub mod protocol;
pub mod python;
pub mod request;
pub mod resources;
pub mod stream;
pub mod top;
pub mod tracker;
pub mod uprobe_multi;

/// A file of the checkout, for unit tests: from CARGO_MANIFEST_DIR as cargo sets it when it runs
/// the test (a build reused from another checkout was compiled with that checkout's path).
#[cfg(test)]
pub(crate) fn checkout_file(rel: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..")
        .join(rel)
}

#[cfg(test)]
pub(crate) use alloc_probe::largest_allocation;

/// The unit tests' allocator: the system's, noting the largest single allocation each thread
/// asks for, so that a test can assert that untrusted input never makes the daemon allocate
/// what the input merely claims ([`largest_allocation`]).
#[cfg(test)]
mod alloc_probe {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    thread_local! {
        pub(crate) static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    }

    pub struct Probe;

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            note(l.size());
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            note(l.size());
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            note(new);
            unsafe { System.realloc(p, l, new) }
        }
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Runs `f` and returns its result with the largest single allocation made on this thread
    /// while it ran.
    pub(crate) fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|c| c.set(0));
        let out = f();
        (out, LARGEST.with(|c| c.get()))
    }
}
