//! Ring-buffer records straight from the kernel: decoding must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = inferscope::events::decode(data);
});
