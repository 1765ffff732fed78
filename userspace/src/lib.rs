//! inferscope: request, engine and device timings of LLM inference servers, from eBPF.
//!
//! Data flows one way: [`bpf`] (kernel) -> [`events`] (decode) -> [`stream`] (gaps) ->
//! [`protocol`] (HTTP, SSE, OpenAI) -> [`tracker`] / [`request`] (records) -> [`export`].
//! [`daemon`] wires them together; [`procfs`] finds processes and their sockets.
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod daemon;
pub mod device;
pub mod engine;
pub mod events;
pub mod export;
pub mod privileges;
pub mod procfs;
pub mod protocol;
pub mod python;
pub mod request;
pub mod stream;
pub mod tracker;
pub mod uprobe_multi;
