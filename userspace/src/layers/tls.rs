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
    process::{
        elf,
        maps::{self, FileKey},
    },
    python::Interpreter,
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

/// Where to attach for an `SSL_read_ex`/`SSL_write_ex` at file offset `off` of `path`: the
/// function itself, or (x86-64) the internal function it wraps, when cheaper to probe and the
/// same call. OpenSSL 3's `SSL_read_ex` is `sub $8,%rsp; call ssl_read_internal; ...`, and
/// `ssl_read_internal(s, buf, num, readbytes)` takes the same arguments and returns 1 on
/// success, as `SSL_read_ex` does. A breakpoint on a `sub` must be single-stepped out of line
/// (~17 us on our VMs), one on the internal function's `push` is emulated (~5 us); its return
/// probe is the same. Also returns the wrapped function, so a classic `SSL_read` that calls it
/// directly is not probed twice.
fn wrapped_entry(path: &std::path::Path, off: u64) -> Option<u64> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 9];
    f.read_exact_at(&mut head, off).ok()?;
    // sub $imm8,%rsp; call rel32
    if head[..3] != [0x48, 0x83, 0xec] || head[4] != 0xe8 {
        return None;
    }
    let rel = i32::from_le_bytes(head[5..9].try_into().ok()?);
    let target = (off + 9).checked_add_signed(i64::from(rel))?;
    let mut first = [0u8; 2];
    f.read_exact_at(&mut first, target).ok()?;
    // push %reg or push %r8-r15: emulated by the kernel's uprobes.
    let push = (0x50..=0x57).contains(&first[0]) || (first[0] == 0x41 && (0x50..=0x57).contains(&first[1]));
    push.then_some(target)
}

/// Whether the function at `off` calls `target` (`call rel32`) in its first 64 bytes: a
/// classic `SSL_read` whose work `ssl_read_internal` does.
fn calls(path: &std::path::Path, off: u64, target: u64) -> bool {
    use std::os::unix::fs::FileExt as _;
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut code = [0u8; 64];
    if f.read_exact_at(&mut code, off).is_err() {
        return false;
    }
    (0..code.len() - 4).any(|i| {
        code[i] == 0xe8
            && (off + i as u64 + 5)
                .checked_add_signed(i64::from(i32::from_le_bytes(code[i + 1..i + 5].try_into().unwrap_or_default())))
                == Some(target)
    })
}

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
    /// Where to probe in each file looked at (empty for most).
    files: HashMap<FileKey, std::sync::Arc<Vec<(String, u64)>>>,
    attach_errors: u64,
}

/// The functions to probe in a file and where: the OpenSSL functions it defines, the `_ex` forms
/// at the internal functions they wrap where that is cheaper, the classic forms then only where
/// they do not call those.
fn probe_points(path: &std::path::Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut found = elf::find_functions(path, &FUNCTIONS.map(|f| f.0))?;
    let mut internal = Vec::new();
    for (name, off) in found.iter_mut() {
        if (name == "SSL_read_ex" || name == "SSL_write_ex")
            && let Some(t) = wrapped_entry(path, *off)
        {
            *off = t;
            internal.push((if name == "SSL_read_ex" { "SSL_read" } else { "SSL_write" }, t));
        }
    }
    found.retain(|(name, off)| !internal.iter().any(|(classic, t)| name == classic && calls(path, *off, *t)));
    Ok(found)
}

impl TlsLayer {
    pub fn new(o: &RunOptions) -> Option<Self> {
        (!o.no_tls).then(|| Self { procs: HashMap::new(), files: HashMap::new(), attach_errors: 0 })
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
            // Each file is read once per daemon run, whatever the processes that map it.
            let found = match self.files.get(&m.file) {
                Some(f) => f.clone(),
                None => {
                    let f = std::sync::Arc::new(probe_points(&path).unwrap_or_else(|e| {
                        log::debug!("pid {pid}: cannot read {}: {e:#}", m.path);
                        Vec::new()
                    }));
                    self.files.insert(m.file.clone(), f.clone());
                    f
                }
            };
            let library = m.path.rsplit('/').next().unwrap_or(&m.path).to_string();
            let Some(p) = self.procs.get_mut(&pid) else { return };
            let mut n = 0;
            for (name, offset) in found.iter() {
                let Some(&(func, cookie)) = FUNCTIONS.iter().find(|f| f.0 == name) else { continue };
                match cx.probes.attach_tls(&path, *offset, cookie, pid) {
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
        if let Some(p) = self.procs.get_mut(&pid)
            && p.attached.is_empty()
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Code laid out as OpenSSL 3's: `SSL_read_ex` at 0 (`sub $8,%rsp; call 0x40`), the
    /// internal function at 0x40 (`push %r13`), a classic `SSL_read` at 0x80 calling it after
    /// its stack protector, and at 0xc0 a wrapper whose target starts with a `mov`.
    fn code() -> tempfile_path::Path {
        let mut b = vec![0x90u8; 0x100];
        let call = |b: &mut Vec<u8>, at: usize, target: usize| {
            b[at] = 0xe8;
            let rel = target as i64 - (at as i64 + 5);
            b[at + 1..at + 5].copy_from_slice(&(rel as i32).to_le_bytes());
        };
        b[0..4].copy_from_slice(&[0x48, 0x83, 0xec, 0x08]);
        call(&mut b, 4, 0x40);
        b[0x40..0x42].copy_from_slice(&[0x41, 0x55]);
        b[0x80..0x84].copy_from_slice(&[0x48, 0x83, 0xec, 0x18]);
        call(&mut b, 0x90, 0x40);
        b[0xc0..0xc4].copy_from_slice(&[0x48, 0x83, 0xec, 0x08]);
        call(&mut b, 0xc4, 0xe0);
        b[0xe0..0xe3].copy_from_slice(&[0x48, 0x89, 0xe5]);
        tempfile_path::Path::with(&b)
    }

    /// A scratch file removed on drop.
    mod tempfile_path {
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn with(bytes: &[u8]) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("inferscope-tls-code-{}-{n}", std::process::id()));
                std::fs::write(&p, bytes).expect("scratch file");
                Self(p)
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn wrappers_are_probed_at_the_function_they_call() {
        let f = code();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(wrapped_entry(&f.0, 0), Some(0x40));
        } else {
            assert_eq!(wrapped_entry(&f.0, 0), None);
        }
        // Not the wrapper shape, or a target whose first instruction is not a push.
        assert_eq!(wrapped_entry(&f.0, 0x40), None);
        assert_eq!(wrapped_entry(&f.0, 0xc0), None);
        // Past the end of the file.
        assert_eq!(wrapped_entry(&f.0, 0xfc), None);
        assert!(calls(&f.0, 0x80, 0x40));
        assert!(!calls(&f.0, 0x80, 0xe0));
        assert!(!calls(&f.0, 0xf0, 0x40));
    }
}
