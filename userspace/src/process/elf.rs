//! ELF files: their symbol tables read in bounded pieces (a file is never read whole: the
//! symbol tables of PyTorch's libraries are tens of megabytes), the function symbols of one file
//! for naming code addresses (a CUDA host stub names its kernel), and symbol names made
//! readable. ELF64 little-endian only (what the accelerator runtimes ship for).

use std::{fs::File, os::unix::fs::FileExt, path::Path};

use anyhow::{Context as _, bail, ensure};

pub const SHT_SYMTAB: u32 = 2;
pub const SHT_DYNSYM: u32 = 11;
const SHT_NOBITS: u32 = 8;
const PT_LOAD: u32 = 1;
const STT_FUNC: u8 = 2;
const SHN_LORESERVE: u16 = 0xff00;
const SYM_SIZE: usize = 24;
/// Bytes read at a time from a symbol or string table.
const CHUNK: usize = 64 * 1024;
/// Longest symbol name read when naming an address (mangled kernel templates run to kilobytes).
const MAX_NAME: usize = 16 * 1024;

/// One section header (what is used of it).
#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub kind: u32,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
}

/// One ELF symbol, as stored.
#[derive(Clone, Copy, Debug)]
pub struct Sym {
    /// Offset of the name in the table's string table.
    pub name: u32,
    pub info: u8,
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
}

impl Sym {
    fn parse(b: &[u8]) -> Self {
        Sym {
            name: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            info: b[4],
            shndx: u16::from_le_bytes(b[6..8].try_into().expect("2 bytes")),
            value: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        }
    }

    /// A function defined in a regular section of this file (what `object` calls a text
    /// definition).
    pub fn is_function_definition(&self) -> bool {
        self.info & 0xf == STT_FUNC && self.shndx != 0 && self.shndx < SHN_LORESERVE
    }
}

/// An open ELF file: its headers in memory, the rest read on demand with `pread`.
pub struct ElfFile {
    file: File,
    pub sections: Vec<Section>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// That `size` bytes at `offset` lie inside a file of `len` bytes.
fn within(len: u64, offset: u64, size: u64, what: &str) -> anyhow::Result<()> {
    ensure!(
        offset.checked_add(size).is_some_and(|end| end <= len),
        "{what} at {offset} ({size} bytes) past the end of the file ({len} bytes)"
    );
    Ok(())
}

impl ElfFile {
    /// Reads the section headers. The file is untrusted (a library inside a container): every
    /// table it claims must lie inside it before anything is allocated for it, so a crafted
    /// header costs one error, never a large allocation.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut h = [0u8; 64];
        file.read_exact_at(&mut h, 0).context("ELF header")?;
        ensure!(&h[0..4] == b"\x7fELF", "not an ELF file");
        ensure!(h[4] == 2 && h[5] == 1, "not a 64-bit little-endian ELF file");
        let shoff = u64_at(&h, 0x28);
        let shentsize = usize::from(u16_at(&h, 0x3a));
        let mut shnum = u64::from(u16_at(&h, 0x3c));
        let mut sections = Vec::new();
        if shoff == 0 {
            return Ok(Self { file, sections });
        }
        ensure!(shentsize >= 64, "bad section header size {shentsize}");
        let read_sh = |i: u64| -> anyhow::Result<Section> {
            let mut b = [0u8; 64];
            let at =
                i.checked_mul(shentsize as u64).and_then(|o| o.checked_add(shoff)).context("section header offset")?;
            file.read_exact_at(&mut b, at).context("section header")?;
            Ok(Section {
                kind: u32_at(&b, 4),
                addr: u64_at(&b, 0x10),
                offset: u64_at(&b, 0x18),
                size: u64_at(&b, 0x20),
                link: u32_at(&b, 0x28),
            })
        };
        if shnum == 0 {
            // More than 0xff00 sections: the count is in section 0.
            shnum = read_sh(0)?.size;
        }
        ensure!(shnum <= 1 << 20, "{shnum} sections");
        within(len, shoff, shnum * shentsize as u64, "section headers")?;
        let mut all = vec![0u8; shnum as usize * shentsize];
        file.read_exact_at(&mut all, shoff).context("section headers")?;
        for b in all.chunks_exact(shentsize) {
            sections.push(Section {
                kind: u32_at(b, 4),
                addr: u64_at(b, 0x10),
                offset: u64_at(b, 0x18),
                size: u64_at(b, 0x20),
                link: u32_at(b, 0x28),
            });
        }
        Ok(Self { file, sections })
    }

    /// PT_LOAD segments: (file offset, file size, vaddr).
    pub fn loads(&self) -> anyhow::Result<Vec<(u64, u64, u64)>> {
        let mut h = [0u8; 64];
        self.file.read_exact_at(&mut h, 0)?;
        let (phoff, phentsize, phnum) =
            (u64_at(&h, 0x20), usize::from(u16_at(&h, 0x36)), usize::from(u16_at(&h, 0x38)));
        if phoff == 0 || phnum == 0 {
            return Ok(Vec::new());
        }
        ensure!(phentsize >= 56, "bad program header size {phentsize}");
        within(self.file.metadata()?.len(), phoff, (phnum * phentsize) as u64, "program headers")?;
        let mut all = vec![0u8; phnum * phentsize];
        self.file.read_exact_at(&mut all, phoff).context("program headers")?;
        Ok(all
            .chunks_exact(phentsize)
            .filter(|b| u32_at(b, 0) == PT_LOAD)
            .map(|b| (u64_at(b, 8), u64_at(b, 0x20), u64_at(b, 0x10)))
            .collect())
    }

    /// The first section of a kind (`SHT_DYNSYM`, `SHT_SYMTAB`) and the index of its string
    /// table.
    pub fn symbol_table(&self, kind: u32) -> Option<(Section, usize)> {
        let s = *self.sections.iter().find(|s| s.kind == kind)?;
        let link = s.link as usize;
        (link < self.sections.len() && link != 0).then_some((s, link))
    }

    /// Calls `f` for every symbol of a symbol table section (the null symbol skipped), reading
    /// [`CHUNK`] bytes at a time.
    pub fn for_each_symbol(&self, table: &Section, mut f: impl FnMut(Sym)) -> anyhow::Result<()> {
        within(self.file.metadata()?.len(), table.offset, table.size, "symbol table")?;
        let n = table.size / SYM_SIZE as u64;
        let mut buf = vec![0u8; CHUNK / SYM_SIZE * SYM_SIZE];
        let mut i = 1u64;
        while i < n {
            let count = (n - i).min((buf.len() / SYM_SIZE) as u64) as usize;
            let b = &mut buf[..count * SYM_SIZE];
            self.file.read_exact_at(b, table.offset + i * SYM_SIZE as u64).context("symbols")?;
            for s in b.chunks_exact(SYM_SIZE) {
                f(Sym::parse(s));
            }
            i += count as u64;
        }
        Ok(())
    }

    /// Looks at the names of a string table that `items` (sorted by `name_of`, a name's offset)
    /// refer to, in one pass over the table [`CHUNK`] bytes at a time: `f(item, name)` for each
    /// name no longer than `max_len` bytes (longer ones and names past the table are skipped).
    pub fn names_at<T>(
        &self,
        strtab: usize,
        items: &[T],
        name_of: impl Fn(&T) -> u32,
        max_len: usize,
        mut f: impl FnMut(&T, &[u8]),
    ) -> anyhow::Result<()> {
        let Some(t) = self.sections.get(strtab) else { bail!("no string table {strtab}") };
        let mut buf = vec![0u8; CHUNK + max_len + 1];
        let mut i = 0;
        while i < items.len() {
            let start = u64::from(name_of(&items[i]));
            if start >= t.size {
                break;
            }
            // A window from this name on: every name starting in its first CHUNK bytes is
            // whole in it (if not longer than max_len).
            let len = (t.size - start).min(buf.len() as u64) as usize;
            let w = &mut buf[..len];
            self.file
                .read_exact_at(w, t.offset.checked_add(start).context("string table offset")?)
                .context("string table")?;
            while i < items.len() && u64::from(name_of(&items[i])) < start.saturating_add(CHUNK as u64) {
                let at = (u64::from(name_of(&items[i])) - start) as usize;
                if at < w.len() {
                    let rest = &w[at..w.len().min(at + max_len + 1)];
                    if let Some(end) = rest.iter().position(|&c| c == 0) {
                        f(&items[i], &rest[..end]);
                    }
                }
                i += 1;
            }
        }
        Ok(())
    }

    /// One name of a string table (at most [`MAX_NAME`] bytes), read on its own.
    pub fn name(&self, strtab: usize, offset: u32) -> Option<String> {
        let t = self.sections.get(strtab)?;
        let mut out = Vec::new();
        let mut at = u64::from(offset);
        let mut buf = [0u8; 256];
        while at < t.size && out.len() < MAX_NAME {
            let len = (t.size - at).min(buf.len() as u64) as usize;
            self.file.read_exact_at(&mut buf[..len], t.offset.checked_add(at)?).ok()?;
            if let Some(end) = buf[..len].iter().position(|&c| c == 0) {
                out.extend_from_slice(&buf[..end]);
                return String::from_utf8(out).ok();
            }
            out.extend_from_slice(&buf[..len]);
            at += len as u64;
        }
        None
    }

    /// File offset of the address `value` of section `shndx` (None for sections with no file
    /// bytes).
    pub fn file_offset(&self, shndx: u16, value: u64) -> Option<u64> {
        let sec = self.sections.get(usize::from(shndx))?;
        if sec.kind == SHT_NOBITS {
            return None;
        }
        sec.offset.checked_add(value.checked_sub(sec.addr)?)
    }
}

/// Every function `path` defines in the symbol tables `kinds` (SHT_DYNSYM, SHT_SYMTAB), table
/// by table: `visit(name, offset)`, where `offset()` gives the function's file offset (what a
/// uprobe attaches to; computed only when asked). Names longer than `max_len` bytes are
/// skipped. The tables and strings are read in bounded pieces (PyTorch's libraries have tens of
/// thousands of exports and megabytes of mangled names).
pub fn for_each_function(
    path: &Path,
    kinds: &[u32],
    max_len: usize,
    mut visit: impl FnMut(&str, &dyn Fn() -> Option<u64>),
) -> anyhow::Result<()> {
    let elf = ElfFile::open(path)?;
    for &kind in kinds {
        let Some((table, strtab)) = elf.symbol_table(kind) else { continue };
        // The functions (name offset, section, address) first, then their names in one pass
        // over the strings, in order.
        let mut funcs: Vec<(u32, u16, u64)> = Vec::new();
        elf.for_each_symbol(&table, |s| {
            if s.is_function_definition() && s.name != 0 {
                funcs.push((s.name, s.shndx, s.value));
            }
        })?;
        funcs.sort_unstable_by_key(|f| f.0);
        elf.names_at(
            strtab,
            &funcs,
            |f| f.0,
            max_len,
            |&(_, shndx, value), name| {
                if let Ok(name) = std::str::from_utf8(name) {
                    visit(name, &|| elf.file_offset(shndx, value));
                }
            },
        )?;
    }
    Ok(())
}

/// File offsets of the functions named `names` that `path` defines: from its dynamic symbols,
/// and from its full symbol table (a copy linked in statically and not exported). Each name
/// once, the dynamic symbol first.
pub fn find_functions(path: &Path, names: &[&str]) -> anyhow::Result<Vec<(String, u64)>> {
    let longest = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out: Vec<(String, u64)> = Vec::new();
    for_each_function(path, &[SHT_DYNSYM, SHT_SYMTAB], longest, |name, offset| {
        if !names.contains(&name) || out.iter().any(|(n, _)| n == name) {
            return;
        }
        if let Some(off) = offset() {
            out.push((name.to_string(), off));
        }
    })?;
    Ok(out)
}

/// One function symbol kept for naming addresses (16 bytes): the name itself stays in the file.
#[derive(Clone, Copy, Debug)]
struct FnSym {
    start: u64,
    /// The size (at most 2 GiB - 1), and in the top bit whether the name is in the dynamic
    /// symbol table's strings (else the full table's).
    size_dyn: u32,
    name: u32,
}

const DYN_BIT: u32 = 1 << 31;

/// Function symbols of one file, for naming code addresses: addresses and name offsets in
/// memory, names read from the file when asked for.
#[derive(Default)]
pub struct SymbolTable {
    /// Sorted by start.
    syms: Vec<FnSym>,
    /// String tables of the full and of the dynamic symbol table.
    strtabs: [usize; 2],
    /// PT_LOAD segments: (file offset, file size, vaddr).
    loads: Vec<(u64, u64, u64)>,
    elf: Option<ElfFile>,
}

impl std::fmt::Debug for SymbolTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolTable").field("syms", &self.syms.len()).field("loads", &self.loads).finish()
    }
}

impl SymbolTable {
    /// The function symbols of the full and the dynamic symbol table (the full table's name
    /// wins where both name an address).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let elf = ElfFile::open(path)?;
        let mut syms = Vec::new();
        let mut strtabs = [0; 2];
        for (dynamic, kind) in [SHT_SYMTAB, SHT_DYNSYM].into_iter().enumerate() {
            let Some((table, strtab)) = elf.symbol_table(kind) else { continue };
            strtabs[dynamic] = strtab;
            let bit = if dynamic == 1 { DYN_BIT } else { 0 };
            elf.for_each_symbol(&table, |s| {
                if s.is_function_definition() && s.value != 0 && s.name != 0 {
                    let size = s.size.min(u64::from(DYN_BIT - 1)) as u32;
                    syms.push(FnSym { start: s.value, size_dyn: size | bit, name: s.name });
                }
            })?;
        }
        // Stable: for one address, the full table's symbol (pushed first) is kept.
        syms.sort_by_key(|s| s.start);
        syms.dedup_by_key(|s| s.start);
        syms.shrink_to_fit();
        let loads = elf.loads()?;
        Ok(Self { syms, strtabs, loads, elf: Some(elf) })
    }

    /// The function containing the code at `file_offset` (its name read from the file).
    pub fn name_at_offset(&self, file_offset: u64) -> Option<String> {
        // Header values are untrusted: no sum may wrap.
        let (off, _, vaddr) = self
            .loads
            .iter()
            .find(|(o, s, _)| file_offset >= *o && o.checked_add(*s).is_some_and(|end| file_offset < end))?;
        let va = (file_offset - off).checked_add(*vaddr)?;
        let i = self.syms.partition_point(|s| s.start <= va).checked_sub(1)?;
        let s = self.syms[i];
        // Symbols without a size (hand-written assembly) match only their first byte.
        if va >= s.start.saturating_add(u64::from((s.size_dyn & !DYN_BIT).max(1))) {
            return None;
        }
        let strtab = self.strtabs[usize::from(s.size_dyn & DYN_BIT != 0)];
        self.elf.as_ref()?.name(strtab, s.name).filter(|n| !n.is_empty())
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

    /// A 64-byte ELF header claiming tables far past the end of its (small) file.
    fn crafted(dir: &Path, name: &str, edit: impl Fn(&mut [u8])) -> std::path::PathBuf {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little-endian
        edit(&mut h);
        let p = dir.join(name);
        std::fs::write(&p, &h).unwrap();
        p
    }

    /// Libraries are read from containers: a file that claims huge section or program header
    /// tables, or symbol tables past its end, gets one error and no allocation of what it claims.
    #[test]
    fn crafted_headers_cost_an_error_not_memory() {
        let dir = std::env::temp_dir().join(format!("inferscope-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put16 = |h: &mut [u8], o: usize, v: u16| h[o..o + 2].copy_from_slice(&v.to_le_bytes());
        let put64 = |h: &mut [u8], o: usize, v: u64| h[o..o + 8].copy_from_slice(&v.to_le_bytes());
        // 65,535 sections of 65,535 bytes each (4 GiB) at offset 64.
        let sections = crafted(&dir, "sections", |h| {
            put64(h, 0x28, 64);
            put16(h, 0x3a, 0xffff);
            put16(h, 0x3c, 0xffff);
        });
        // Section count 0: the real count in section 0's size, claimed as 1 << 20 (64 GiB).
        let extended = crafted(&dir, "extended", |h| {
            put64(h, 0x28, 64);
            put16(h, 0x3a, 0xffff);
            put64(h, 64 + 0x20, 1 << 20);
        });
        // 65,535 program headers of 65,535 bytes.
        let programs = crafted(&dir, "programs", |h| {
            put64(h, 0x20, 64);
            put16(h, 0x36, 0xffff);
            put16(h, 0x38, 0xffff);
        });
        // One section, a symbol table of 2^40 bytes.
        let symbols = crafted(&dir, "symbols", |h| {
            put64(h, 0x28, 1024);
            put16(h, 0x3a, 64);
            put16(h, 0x3c, 2);
            let s = 1024 + 64;
            h[s + 4..s + 8].copy_from_slice(&SHT_SYMTAB.to_le_bytes());
            put64(h, s + 0x18, 2048);
            put64(h, s + 0x20, 1 << 40);
            h[s + 0x28..s + 0x2c].copy_from_slice(&1u32.to_le_bytes());
        });
        for (p, why) in [
            (&sections, "section headers"),
            (&extended, "section headers"),
            (&programs, "program headers"),
            (&symbols, "symbol table"),
        ] {
            let (r, largest) = crate::largest_allocation(|| SymbolTable::load(p).map(|t| t.len()));
            let err = format!("{:#}", r.expect_err("a crafted file must not load"));
            assert!(err.contains(why) && err.contains("past the end of the file"), "{}: {err}", p.display());
            assert!(largest < 1 << 20, "{}: allocated {largest} bytes", p.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

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

    /// (name, file offset) of each function.
    type Functions = Vec<(String, u64)>;

    /// Function definitions of a symbol table, read here and by `object`.
    fn functions_both_ways(path: &Path, dynamic: bool) -> (Functions, Functions) {
        use object::{Object, ObjectSection, ObjectSymbol};
        let elf = ElfFile::open(path).unwrap();
        let mut mine = Vec::new();
        if let Some((table, strtab)) = elf.symbol_table(if dynamic { SHT_DYNSYM } else { SHT_SYMTAB }) {
            let mut funcs = Vec::new();
            elf.for_each_symbol(&table, |s| {
                if s.is_function_definition() && s.name != 0 {
                    funcs.push(s);
                }
            })
            .unwrap();
            funcs.sort_by_key(|s| s.name);
            elf.names_at(
                strtab,
                &funcs,
                |s| s.name,
                1 << 16,
                |s, n| {
                    if let Some(off) = elf.file_offset(s.shndx, s.value) {
                        mine.push((String::from_utf8(n.to_vec()).unwrap(), off));
                    }
                },
            )
            .unwrap();
        }
        let data = std::fs::read(path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let syms = if dynamic { obj.dynamic_symbols() } else { obj.symbols() };
        let mut theirs = Vec::new();
        for s in syms {
            if !s.is_definition() || s.kind() != object::SymbolKind::Text {
                continue;
            }
            let (Ok(name), Some(idx)) = (s.name(), s.section_index()) else { continue };
            let sec = obj.section_by_index(idx).unwrap();
            let Some((off, _)) = sec.file_range() else { continue };
            if !name.is_empty() {
                theirs.push((name.to_string(), off + s.address() - sec.address()));
            }
        }
        mine.sort();
        theirs.sort();
        (mine, theirs)
    }

    #[test]
    fn symbol_tables_read_as_object_reads_them() {
        // This binary (a large full table) and the shared libraries it maps (libc: versioned
        // exports, IFUNCs).
        let mut files = vec![std::env::current_exe().unwrap()];
        let me = std::process::id();
        for m in crate::process::maps::read_maps(me).into_iter().filter(|m| m.exec) {
            let p = std::path::PathBuf::from(&m.path);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        for f in &files {
            for dynamic in [true, false] {
                let (mine, theirs) = functions_both_ways(f, dynamic);
                assert_eq!(mine, theirs, "{} (dynamic: {dynamic})", f.display());
            }
        }
    }

    #[test]
    fn names_code_addresses_from_the_file() {
        let exe = std::env::current_exe().unwrap();
        let t = SymbolTable::load(&exe).unwrap();
        let (full, _) = functions_both_ways(&exe, false);
        let (name, off) = full.iter().find(|(n, _)| n.contains("names_code_addresses_from_the_file")).unwrap();
        assert_eq!(t.name_at_offset(*off).as_deref(), Some(name.as_str()));
    }

    #[test]
    fn reads_this_test_binary() {
        let t = SymbolTable::load(&std::env::current_exe().unwrap()).unwrap();
        assert!(!t.is_empty());
    }
}
