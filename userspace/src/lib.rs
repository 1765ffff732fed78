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
pub mod privileges;
pub mod protocol;
pub mod python;
pub mod request;
pub mod resources;
pub mod stream;
pub mod target;
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
