//! Finding the interpreter a process runs: the mapped file (a libpython, or an executable with
//! the interpreter linked in) that defines `_PyRuntime`, its version and its layout.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::{
    Interpreter, Memory,
    layout::{debug_offsets, table},
};
use crate::process::{
    elf::{ElfFile, SHT_DYNSYM, SHT_SYMTAB},
    maps::{self, Mapping},
};

/// Symbols of one ELF file that locate the interpreter, and the file's load segments.
struct PyFile {
    runtime: u64,
    version_sym: Option<u64>,
    /// (file offset, file size, vaddr) of each loadable segment.
    loads: Vec<(u64, u64, u64)>,
}

/// `_PyRuntime` and `Py_Version` of a file, with the bounded reader every other ELF file goes
/// through (files in containers are untrusted input): the exported symbols first (small), the
/// full table only when the runtime is not exported (a statically linked python).
fn scan_file(path: &Path) -> Result<Option<PyFile>> {
    let elf = ElfFile::open(path)?;
    let (mut runtime, mut version) = (None, None);
    for kind in [SHT_DYNSYM, SHT_SYMTAB] {
        if runtime.is_some() {
            break;
        }
        let Some((table, strtab)) = elf.symbol_table(kind) else { continue };
        // Defined symbols (section index not SHN_UNDEF): name offset and address.
        let mut defined: Vec<(u32, u64)> = Vec::new();
        elf.for_each_symbol(&table, |s| {
            if s.shndx != 0 && s.name != 0 {
                defined.push((s.name, s.value));
            }
        })?;
        defined.sort_unstable_by_key(|d| d.0);
        elf.names_at(
            strtab,
            &defined,
            |d| d.0,
            "_PyRuntime".len(),
            |&(_, value), name| match name {
                b"_PyRuntime" => runtime = runtime.or(Some(value)),
                b"Py_Version" => version = version.or(Some(value)),
                _ => {}
            },
        )?;
    }
    let Some(runtime) = runtime else { return Ok(None) };
    Ok(Some(PyFile { runtime, version_sym: version, loads: elf.loads()? }))
}

/// Finds the interpreter of `pid`: the first executable mapping whose file defines
/// `_PyRuntime`.
pub fn find(pid: u32) -> Result<Interpreter> {
    let maps = maps::read_maps(pid);
    if maps.is_empty() {
        bail!("cannot read /proc/{pid}/maps (is the process there, and is inferscope root?)");
    }
    let mem = Memory::new(pid);
    let mut seen = std::collections::HashSet::new();
    for m in maps.iter().filter(|m| m.exec) {
        if !seen.insert(m.file.clone()) {
            continue;
        }
        let name = m.path.rsplit('/').next().unwrap_or(&m.path);
        // Only files that can hold an interpreter: a libpython, or an executable named python
        // (not libtorch_python.so or foo.cpython-311-x86_64-linux-gnu.so: large, and no).
        if !(name.starts_with("python") || name.starts_with("libpython")) {
            continue;
        }
        let Ok(Some(pf)) = scan_file(&maps::host_path(pid, &m.path)) else { continue };
        let Some(bias) = load_bias(&maps, m, &pf) else { continue };
        let runtime = bias.wrapping_add(pf.runtime);
        let hex = match pf.version_sym {
            Some(v) => mem.u32(bias.wrapping_add(v)).ok(),
            None => None,
        };
        let version = match hex {
            Some(h) if h >> 24 == 3 => (3, (h >> 16) & 0xff, Some((h >> 8) & 0xff)),
            _ => {
                let (a, b) = crate::process::version::python_of_name(name)
                    .with_context(|| format!("{}: no Py_Version symbol and no version in its name", m.path))?;
                (a, b, None)
            }
        };
        let (layout, source) = if version.1 >= 13 {
            (debug_offsets(&mem, runtime, version)?, "_Py_DebugOffsets")
        } else {
            let t = table(version.0, version.1)
                .with_context(|| format!("CPython {}.{} is not supported (3.9 and later are)", version.0, version.1))?;
            (t, "table")
        };
        return Ok(Interpreter { pid, version, runtime, layout, layout_source: source, file: m.path.clone() });
    }
    bail!("pid {pid} runs no CPython that inferscope can find (no mapped file defines _PyRuntime)")
}

/// Load address minus link-time address of the file `m` maps.
fn load_bias(maps: &[Mapping], m: &Mapping, pf: &PyFile) -> Option<u64> {
    // Any mapping of the file will do; the one at the lowest file offset is the most robust.
    let first = maps.iter().filter(|x| x.file == m.file).min_by_key(|x| x.offset)?;
    let (off, _, vaddr) =
        pf.loads.iter().find(|(o, s, _)| first.offset >= *o && first.offset < o.saturating_add(*s.max(&1)))?;
    Some(first.start.wrapping_sub(vaddr + (first.offset - off)))
}
