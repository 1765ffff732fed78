//! /proc text parsers (tables can be read while the kernel rewrites them).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = inferscope::process::procfs::parse_tcp_table(&s);
    let _ = inferscope::process::procfs::parse_stat_ppid(&s);
    let _ = inferscope::process::procfs::parse_status_ids(&s);
    let _ = inferscope::process::procfs::parse_cmdline(data);
    let _ = inferscope::privileges::parse_cap_eff(&s);
});
