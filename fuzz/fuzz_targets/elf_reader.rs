//! The ELF reader on untrusted files (libraries inside containers): any bytes give a symbol
//! table or an error, never a panic and never an allocation of what the headers merely claim
//! (libFuzzer's -rss_limit_mb / -malloc_limit_mb catch those).
#![no_main]
use std::io::Write as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The reader takes a path (it reads libraries piecewise, never whole): one file per process.
    let path = std::env::temp_dir().join(format!("inferscope-fuzz-elf-{}", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    if let Ok(t) = inferscope::process::elf::SymbolTable::load(&path) {
        for off in [0u64, 64, 4096, data.len() as u64 / 2] {
            let _ = t.name_at_offset(off);
        }
    }
});
