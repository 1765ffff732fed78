//! The TLS layer: for each traced process, uprobes on the OpenSSL it runs (`SSL_read`,
//! `SSL_read_ex`, `SSL_write`, `SSL_write_ex`; the BPF side is `probes/tls.rs`), so the
//! plaintext of its HTTPS connections reaches request capture as if it had crossed the socket.
//! Where OpenSSL lives: a shared libssl (1.1 or 3), or a copy linked into a module or binary
//! (Python's `_ssl` built against a static OpenSSL, a C++ server): mapped files whose name says
//! `ssl`, and the program itself, are read for those function symbols. A process that maps
//! libssl later (`import ssl` after the attach) is looked at again on its next code mapping and
//! every few seconds until one is found.
//!
//! Emits nothing of its own: the plaintext records are socket records flagged TLS, which the
//! requests layer reassembles.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use inferscope_common::{SSL_FN_FREE, SSL_FN_HANDSHAKE, SSL_FN_READ, SSL_FN_READ_EX, SSL_FN_WRITE, SSL_FN_WRITE_EX};

use super::{Cx, Layer};
use crate::{
    bpf::TlsLinks,
    cli::RunOptions,
    events::Event,
    python::Interpreter,
    target::{
        elf,
        maps::{self, FileKey},
    },
};

/// The functions probed, and their cookies.
const FUNCTIONS: [(&str, u64); 6] = [
    ("SSL_read", SSL_FN_READ),
    ("SSL_read_ex", SSL_FN_READ_EX),
    ("SSL_write", SSL_FN_WRITE),
    ("SSL_write_ex", SSL_FN_WRITE_EX),
    ("SSL_free", SSL_FN_FREE),
    ("SSL_do_handshake", SSL_FN_HANDSHAKE),
];

/// How often a process with no OpenSSL found yet is looked at again (it may `import ssl` late;
/// code mappings also trigger a look when the device layer follows them).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Proc {
    /// Files looked at already.
    seen: HashSet<FileKey>,
    /// Probes attached: library file name, function, links.
    attached: Vec<(String, &'static str, TlsLinks)>,
    next_scan: Option<Instant>,
}

pub struct TlsLayer {
    procs: HashMap<u32, Proc>,
    attach_errors: u64,
}

impl TlsLayer {
    pub fn new(o: &RunOptions) -> Option<Self> {
        (!o.no_tls).then(|| Self { procs: HashMap::new(), attach_errors: 0 })
    }

    /// Whether a mapped file may hold OpenSSL: its name says so, or it is the program.
    fn candidate(path: &str, exe: Option<&str>) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        name.contains("ssl") || exe == Some(path)
    }

    /// Looks at the files `pid` maps that were not looked at yet, and attaches to the OpenSSL
    /// functions they define.
    fn scan(&mut self, cx: &mut Cx, pid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        p.next_scan = None;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|e| e.to_string_lossy().into_owned());
        let mut files = Vec::new();
        for m in maps::read_maps(pid).into_iter().filter(|m| m.exec) {
            if p.seen.insert(m.file.clone()) && Self::candidate(&m.path, exe.as_deref()) {
                files.push(m);
            }
        }
        let mut said = Vec::new();
        for m in files {
            let path = maps::host_path(pid, &m.path);
            let found = match elf::find_functions(&path, &FUNCTIONS.map(|f| f.0)) {
                Ok(f) => f,
                Err(e) => {
                    log::debug!("pid {pid}: cannot read {}: {e:#}", m.path);
                    continue;
                }
            };
            let library = m.path.rsplit('/').next().unwrap_or(&m.path).to_string();
            let mut n = 0;
            for (name, offset) in found {
                let Some(&(func, cookie)) = FUNCTIONS.iter().find(|f| f.0 == name) else { continue };
                match cx.probes.attach_tls(&path, offset, cookie, pid) {
                    Ok(links) => {
                        p.attached.push((library.clone(), func, links));
                        n += 1;
                    }
                    Err(e) => {
                        self.attach_errors += 1;
                        if self.attach_errors <= 5 {
                            eprintln!("inferscope: pid {pid}: cannot probe {func} in {}: {e:#}", m.path);
                        }
                    }
                }
            }
            if n > 0 {
                said.push(format!("{n} functions in {library}"));
            }
        }
        if !said.is_empty() {
            eprintln!("inferscope: pid {pid}: TLS plaintext read from OpenSSL: {}", said.join(", "));
        }
        if p.attached.is_empty() {
            p.next_scan = Some(Instant::now() + RESCAN_EVERY);
        }
    }
}

impl Layer for TlsLayer {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn process_added(&mut self, cx: &mut Cx, pid: u32, _interp: Option<&Interpreter>) {
        self.procs.entry(pid).or_default();
        self.scan(cx, pid);
    }

    fn describe(&self, pid: u32) -> String {
        match self.procs.get(&pid) {
            Some(p) if !p.attached.is_empty() => {
                let mut libs: Vec<&str> = p.attached.iter().map(|a| a.0.as_str()).collect();
                libs.dedup();
                format!(", TLS from {}", libs.join(","))
            }
            _ => String::new(),
        }
    }

    fn process_gone(&mut self, _cx: &mut Cx, pid: u32, _ts_ns: u64) {
        if let Some(p) = self.procs.remove(&pid) {
            for (_, _, links) in p.attached {
                links.detach();
            }
        }
    }

    fn on_event(&mut self, _cx: &mut Cx, ev: &Event) {
        // New code mapped: look again at the next tick.
        if let Event::ProcMmap { tgid, .. } = ev
            && let Some(p) = self.procs.get_mut(tgid)
        {
            p.next_scan = Some(Instant::now());
        }
    }

    fn tick(&mut self, cx: &mut Cx) {
        let now = Instant::now();
        let due: Vec<u32> =
            self.procs.iter().filter(|(_, p)| p.next_scan.is_some_and(|t| t <= now)).map(|(k, _)| *k).collect();
        for pid in due {
            self.scan(cx, pid);
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("tls_probes", self.procs.values().map(|p| p.attached.len() as u64 * 2).sum()),
            ("tls_attach_errors", self.attach_errors),
        ]
    }
}
