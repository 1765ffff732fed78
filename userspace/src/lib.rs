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
pub mod stream;
pub mod target;
pub mod top;
pub mod tracker;
pub mod uprobe_multi;
