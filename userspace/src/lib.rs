//! inferscope: request, engine and device timings of LLM inference servers, from eBPF.
//!
//! Data flows one way: [`bpf`] (kernel) -> [`events`] (decode) -> [`stream`] (gaps) ->
//! [`protocol`] (HTTP, SSE, OpenAI) -> [`tracker`] / [`request`] (records) -> [`export`].
pub mod bpf;
pub mod events;
pub mod privileges;
pub mod protocol;
pub mod request;
pub mod stream;
pub mod tracker;
