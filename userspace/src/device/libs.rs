//! The libraries a process has mapped, the runtime symbols they export, and the names of code
//! addresses (a CUDA host stub names its kernel). Reads /proc/PID/maps and the ELF files
//! through /proc/PID/root, so it works for processes in containers. Files are read lazily
//! (section by section), and each file is looked at once per daemon run.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache, SymbolKind};

use super::catalog::{self, Entry};

/// One line of /proc/PID/maps that maps a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub exec: bool,
    pub file: FileKey,
    /// The path inside the process's mount namespace.
    pub path: String,
}

/// A file's identity: device and inode (paths differ between containers and the host).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: String,
    pub inode: u64,
}

/// Parses /proc/PID/maps; lines that map no file are skipped, malformed ones too.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("").trim_start();
        let Ok(inode) = inode.parse::<u64>() else { continue };
        if inode == 0 || !path.starts_with('/') {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) =
            (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16), u64::from_str_radix(off, 16))
        else {
            continue;
        };
        out.push(Mapping {
            start,
            end,
            offset,
            exec: perms.as_bytes().get(2) == Some(&b'x'),
            file: FileKey { dev: dev.to_string(), inode },
            path: path.strip_suffix(" (deleted)").unwrap_or(path).to_string(),
        });
    }
    out
}

pub fn read_maps(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|t| parse_maps(&t)).unwrap_or_default()
}

/// The path through which inferscope opens a file a process maps (its root may be a
/// container's).
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    let inside = PathBuf::from(format!("/proc/{pid}/root{path}"));
    // A process in a chroot (same mount namespace, another root) has its files listed in
    // /proc/PID/maps by their path from our root already.
    if !inside.exists() && Path::new(path).exists() { PathBuf::from(path) } else { inside }
}

/// A catalogued runtime function a library exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub entry: &'static Entry,
    /// The exported name (differs from `entry.symbol` for `aclnn*` operators).
    pub symbol: String,
    /// File offset of the function's first instruction (what a uprobe attaches to).
    pub file_offset: u64,
}

/// The catalogued functions `path` exports (its dynamic symbols: runtimes are shared
/// libraries, and what they export is what other libraries call).
pub fn scan_runtime_symbols(path: &Path) -> anyhow::Result<Vec<Found>> {
    let file = std::fs::File::open(path)?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache)?;
    let mut out = Vec::new();
    for sym in elf.dynamic_symbols() {
        if !sym.is_definition() || sym.kind() != SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(entry) = catalog::lookup_symbol(name) else { continue };
        let Some(idx) = sym.section_index() else { continue };
        let Ok(section) = elf.section_by_index(idx) else { continue };
        let Some((sec_off, _)) = section.file_range() else { continue };
        let Some(rel) = sym.address().checked_sub(section.address()) else { continue };
        out.push(Found { entry, symbol: name.to_string(), file_offset: sec_off + rel });
    }
    // Aliases (the same code under two names) would fire twice: keep the first name.
    out.sort_by(|a, b| a.file_offset.cmp(&b.file_offset).then(a.symbol.cmp(&b.symbol)));
    out.dedup_by_key(|f| f.file_offset);
    Ok(out)
}

/// Function symbols of one file, for naming code addresses.
#[derive(Debug, Default)]
pub struct SymbolTable {
    /// (start vaddr, size, name), sorted by start.
    syms: Vec<(u64, u64, String)>,
    /// PT_LOAD segments: (file offset, file size, vaddr).
    loads: Vec<(u64, u64, u64)>,
}

impl SymbolTable {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)?;
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache)?;
        let mut syms: Vec<(u64, u64, String)> = Vec::new();
        for s in elf.symbols().chain(elf.dynamic_symbols()) {
            if s.kind() != SymbolKind::Text || !s.is_definition() || s.address() == 0 {
                continue;
            }
            if let Ok(n) = s.name()
                && !n.is_empty()
            {
                syms.push((s.address(), s.size(), n.to_string()));
            }
        }
        syms.sort();
        syms.dedup_by_key(|s| s.0);
        let loads = elf
            .segments()
            .map(|seg| {
                let (off, size) = seg.file_range();
                (off, size, seg.address())
            })
            .collect();
        Ok(Self { syms, loads })
    }

    /// The function containing the code at `file_offset`.
    pub fn name_at_offset(&self, file_offset: u64) -> Option<&str> {
        let (off, _, vaddr) = self.loads.iter().find(|(o, s, _)| file_offset >= *o && file_offset < o + s)?;
        let va = file_offset - off + vaddr;
        let i = self.syms.partition_point(|s| s.0 <= va).checked_sub(1)?;
        let (start, size, name) = &self.syms[i];
        // Symbols without a size (hand-written assembly) match only their first byte.
        (va < start + (*size).max(1)).then_some(name.as_str())
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }
}

/// Readable form of a symbol: C++ names demangled without parameter lists or return types
/// (kernel template arguments are kept), others as they are.
pub fn demangle(name: &str) -> String {
    if name.starts_with("_Z") {
        let opts = cpp_demangle::DemangleOptions::new().no_params().no_return_type();
        if let Ok(s) = cpp_demangle::Symbol::new(name)
            && let Ok(d) = s.demangle_with_options(&opts)
        {
            return d;
        }
    }
    name.to_string()
}

/// Files looked at so far, shared by every process: each is parsed once.
#[derive(Default)]
pub struct LibCache {
    runtime: HashMap<FileKey, Arc<Vec<Found>>>,
    tables: HashMap<FileKey, Arc<SymbolTable>>,
    /// Files that could not be read (counted once each).
    pub unreadable: u64,
}

impl LibCache {
    /// The catalogued functions of a mapped file (empty for most libraries), each file read
    /// once. The cache is shared with other threads: the file is read without holding the lock
    /// (kernel names are looked up meanwhile).
    pub fn runtime_symbols_shared(cache: &std::sync::Mutex<LibCache>, pid: u32, m: &Mapping) -> Arc<Vec<Found>> {
        if let Some(f) = cache.lock().ok().and_then(|c| c.runtime.get(&m.file).cloned()) {
            return f;
        }
        let (found, unreadable) = match scan_runtime_symbols(&host_path(pid, &m.path)) {
            Ok(f) => (f, false),
            Err(e) => {
                log::debug!("pid {pid}: cannot read {}: {e:#}", m.path);
                (Vec::new(), true)
            }
        };
        let found = Arc::new(found);
        if let Ok(mut c) = cache.lock() {
            c.unreadable += u64::from(unreadable);
            c.runtime.insert(m.file.clone(), found.clone());
        }
        found
    }

    /// The name of the function at `addr` in `pid`, demangled.
    pub fn symbolize(&mut self, pid: u32, maps: &[Mapping], addr: u64) -> Option<String> {
        let m = maps.iter().find(|m| addr >= m.start && addr < m.end)?;
        let table = match self.tables.get(&m.file) {
            Some(t) => t.clone(),
            None => {
                // Through the process's root (containers); the plain path once it is gone.
                let t = SymbolTable::load(&host_path(pid, &m.path))
                    .or_else(|_| SymbolTable::load(Path::new(&m.path)))
                    .unwrap_or_default();
                let t = Arc::new(t);
                self.tables.insert(m.file.clone(), t.clone());
                t
            }
        };
        table.name_at_offset(addr - m.start + m.offset).map(demangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c2a00000-55d0c2a28000 r--p 00000000 fd:01 1316  /usr/bin/python3.11
55d0c2a28000-55d0c2d1a000 r-xp 00028000 fd:01 1316  /usr/bin/python3.11
7f1a2c000000-7f1a2c021000 rw-p 00000000 00:00 0 
7f1a30200000-7f1a30290000 r-xp 00010000 00:2a 99 /opt/lib/libcuda.so.1 (deleted)
7ffd5e1f2000-7ffd5e213000 rw-p 00000000 00:00 0                          [stack]
garbage line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_keep_file_mappings_only() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 3);
        assert!(!m[0].exec && m[1].exec);
        assert_eq!(m[1].offset, 0x28000);
        assert_eq!(m[2].path, "/opt/lib/libcuda.so.1");
        assert_eq!(m[2].file, FileKey { dev: "00:2a".into(), inode: 99 });
    }

    #[test]
    fn demangles_kernel_names() {
        assert_eq!(demangle("_Z10add_kernelPfS_i"), "add_kernel");
        assert_eq!(
            // A kernel of libtorch_cuda.so (c++filt -p writes the last argument `1ul`).
            demangle(
                "_ZN2at6native29vectorized_elementwise_kernelILi4ENS0_11FillFunctorIfEESt5arrayIPcLm1EEEEviT0_T1_"
            ),
            "at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, (unsigned long)1> >"
        );
        assert_eq!(demangle("cuLaunchKernel"), "cuLaunchKernel");
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }

    #[test]
    fn names_code_addresses_of_mapped_libraries() {
        let me = std::process::id();
        let maps = read_maps(me);
        let mut cache = LibCache::default();
        let addr = libc::getppid as *const () as u64;
        assert_eq!(cache.symbolize(me, &maps, addr).as_deref(), Some("getppid"));
        assert_eq!(cache.symbolize(me, &maps, 8), None);
    }

    #[test]
    fn scans_this_test_binary_without_error() {
        // No runtime symbols here, but the walk over a real ELF file must work.
        let exe = std::env::current_exe().unwrap();
        assert!(scan_runtime_symbols(&exe).unwrap().is_empty());
        let t = SymbolTable::load(&exe).unwrap();
        assert!(!t.is_empty());
    }
}
