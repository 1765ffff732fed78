//! inferscope: request, engine and device timings of LLM inference servers, from eBPF.
pub mod bpf;
pub mod privileges;
