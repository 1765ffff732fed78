//! The runtime functions the libraries of a process export (from their dynamic symbol
//! tables, matched against the catalog), and the names of code addresses in them; each file is
//! looked at once per daemon run. Maps and ELF reading are target/'s.

use std::{collections::HashMap, path::Path, sync::Arc};

use object::{Object, ObjectSection, ObjectSymbol, ReadCache, SymbolKind};

use super::catalog::{self, Entry};
use crate::target::{
    elf::{SymbolTable, demangle},
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
    use crate::target::maps::read_maps;

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
