//! The runtime functions the libraries of a process export (from their dynamic symbol
//! tables, matched against the catalog), and the names of code addresses in them; each file is
//! looked at once per daemon run. Maps and ELF reading are target/'s.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, OnceLock},
};

use super::catalog::{self, Entry};
use crate::process::{
    elf::{self, SHT_DYNSYM, SymbolTable, demangle},
    maps::{FileKey, Mapping, host_path},
};

/// A catalogued runtime function a library exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub entry: &'static Entry,
    /// The exported name (differs from `entry.symbol` for `aclnn*` operators).
    pub symbol: String,
    /// File offset of the function's first instruction (what a uprobe attaches to).
    pub file_offset: u64,
}

/// Longest exported name compared with the catalog (catalogued names and `aclnn*` operators
/// are far shorter).
const MAX_RUNTIME_NAME: usize = 255;

/// The catalogued functions `path` exports (its dynamic symbols: runtimes are shared
/// libraries, and what they export is what other libraries call). Only the dynamic symbol
/// table and its strings are read, in bounded pieces: memory stays small for PyTorch's
/// libraries (tens of thousands of exports, megabytes of mangled names).
pub fn scan_runtime_symbols(path: &Path) -> anyhow::Result<Vec<Found>> {
    let mut out = Vec::new();
    elf::for_each_function(path, &[SHT_DYNSYM], MAX_RUNTIME_NAME, |name, offset| {
        let Some(entry) = catalog::lookup_symbol(name) else { return };
        let Some(file_offset) = offset() else { return };
        out.push(Found { entry, symbol: name.to_string(), file_offset });
    })?;
    // Aliases (the same code under two names) would fire twice: keep the first name.
    out.sort_by(|a, b| a.file_offset.cmp(&b.file_offset).then(a.symbol.cmp(&b.symbol)));
    out.dedup_by_key(|f| f.file_offset);
    Ok(out)
}

/// Files looked at so far, shared by every process: each is read once, also when several
/// processes map it at the same time (the others wait for the first one's scan).
#[derive(Default)]
pub struct LibCache {
    runtime: HashMap<FileKey, Arc<OnceLock<Arc<Vec<Found>>>>>,
    tables: HashMap<FileKey, Arc<SymbolTable>>,
    /// Files that could not be read (counted once each).
    pub unreadable: u64,
}

impl LibCache {
    /// The catalogued functions of a mapped file (empty for most libraries), each file read
    /// once. The cache is shared with other threads: the file is read without holding the lock
    /// (kernel names are looked up meanwhile).
    pub fn runtime_symbols_shared(cache: &std::sync::Mutex<LibCache>, pid: u32, m: &Mapping) -> Arc<Vec<Found>> {
        let Ok(cell) = cache.lock().map(|mut c| c.runtime.entry(m.file.clone()).or_default().clone()) else {
            return Arc::default();
        };
        cell.get_or_init(|| {
            let found = scan_runtime_symbols(&host_path(pid, &m.path)).unwrap_or_else(|e| {
                log::debug!("pid {pid}: cannot read {}: {e:#}", m.path);
                if let Ok(mut c) = cache.lock() {
                    c.unreadable += 1;
                }
                Vec::new()
            });
            Arc::new(found)
        })
        .clone()
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
        table.name_at_offset(addr - m.start + m.offset).map(|n| demangle(&n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::maps::read_maps;

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
    }
}
