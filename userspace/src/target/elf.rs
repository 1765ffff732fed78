//! ELF files: the function symbols of one file, for naming code addresses (a CUDA host stub
//! names its kernel), and symbol names made readable. Files are read lazily (section by
//! section) through `object`'s read cache.

use std::path::Path;

use object::{Object, ObjectSegment, ObjectSymbol, ReadCache, SymbolKind};

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reads_this_test_binary() {
        let t = SymbolTable::load(&std::env::current_exe().unwrap()).unwrap();
        assert!(!t.is_empty());
    }
}
