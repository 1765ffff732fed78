//! The Python layer's first piece: an unmodified CPython read from outside. Finds the
//! interpreter a process runs (a shared libpython or an executable with the interpreter linked
//! in), its version and memory layout, its threads (native thread id to thread state) and each
//! thread's Python stack, by reading the process's memory (`process_vm_readv`). Nothing is
//! injected and the process is not stopped: a stack read while the thread runs may be torn,
//! and is checked as it is walked.
//!
//! Layouts: `_Py_DebugOffsets` at the start of `_PyRuntime` on 3.13+ (the interpreter's own
//! table), tables as data for 3.9-3.12, observed on real interpreters
//! (tests/python/layout_probe.py, docs/PYTHON-LAYER.md).

pub mod flame;
pub mod objects;
pub mod opcodes;
pub mod profile;
pub mod sites;
pub mod state;
pub mod timers;

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use object::{Object, ObjectSegment, ObjectSymbol, ReadCache};

use crate::device::libs::{self, Mapping};

/// Where an out-of-process reader finds what it needs, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub runtime_interpreters_head: u64,
    pub interp_threads_head: u64,
    pub tstate_next: u64,
    pub tstate_thread_id: u64,
    pub tstate_native_thread_id: Option<u64>,
    pub tstate_frame: FramePath,
    pub frame_code: u64,
    pub frame_previous: u64,
    /// 3.11+: the frame's owner byte (3.12+) or `is_entry` (3.11): frames owned by the C stack
    /// are shims, not Python code. None before 3.11.
    pub frame_owner: Option<u64>,
    pub code_filename: u64,
    pub code_name: u64,
    pub code_qualname: Option<u64>,
    pub code_firstlineno: u64,
    /// Where a compact ASCII string's characters start.
    pub unicode_ascii_data: u64,
    /// The interpreter state's `modules` (`sys.modules`).
    pub interp_modules: u64,
    pub code_flags: u64,
    /// Where the (quickened) bytecode starts in a code object (3.11+; before, `co_code` is a
    /// separate bytes object).
    pub code_adaptive: Option<u64>,
    /// `func_code` in a function object.
    pub func_code: u64,
    /// Where a frame's local variables start (`self` is the first of a method's).
    pub frame_localsplus: u64,
    /// A 3.11+ frame's instruction pointer (`prev_instr`, 3.13 `instr_ptr`).
    pub frame_instr: Option<u64>,
    /// `ht_cached_keys` of a heap type: the shared keys of its instances' attribute values.
    pub heaptype_cached_keys: u64,
}

/// How a thread state leads to its current frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramePath {
    /// A pointer in the thread state.
    Direct(u64),
    /// A pointer to a `_PyCFrame`, and the frame pointer in it (3.11, 3.12).
    CFrame(u64, u64),
}

/// Tables for versions without `_Py_DebugOffsets`, x86_64 and aarch64 alike (LP64).
pub fn table(major: u32, minor: u32) -> Option<Layout> {
    let base = Layout {
        runtime_interpreters_head: 32,
        interp_threads_head: 8,
        tstate_next: 8,
        tstate_thread_id: 176,
        tstate_native_thread_id: None,
        tstate_frame: FramePath::Direct(24),
        frame_code: 32,
        frame_previous: 24,
        frame_owner: None,
        code_filename: 104,
        code_name: 112,
        code_qualname: None,
        code_firstlineno: 40,
        unicode_ascii_data: 48,
        interp_modules: 856,
        code_flags: 36,
        code_adaptive: None,
        func_code: 48,
        frame_localsplus: 352,
        heaptype_cached_keys: 872,
        frame_instr: None,
    };
    Some(match (major, minor) {
        (3, 9) => Layout { func_code: 16, frame_localsplus: 360, heaptype_cached_keys: 864, ..base },
        (3, 10) => base,
        (3, 11) => Layout {
            runtime_interpreters_head: 40,
            interp_threads_head: 16,
            tstate_thread_id: 152,
            tstate_native_thread_id: Some(160),
            tstate_frame: FramePath::CFrame(56, 8),
            frame_code: 32,
            frame_previous: 48,
            frame_owner: None,
            code_filename: 112,
            code_name: 120,
            code_qualname: Some(128),
            code_firstlineno: 72,
            interp_modules: 888,
            code_flags: 48,
            code_adaptive: Some(184),
            frame_localsplus: 72,
            heaptype_cached_keys: 872,
            frame_instr: Some(56),
            ..base
        },
        (3, 12) => Layout {
            runtime_interpreters_head: 40,
            interp_threads_head: 72,
            tstate_thread_id: 136,
            tstate_native_thread_id: Some(144),
            tstate_frame: FramePath::CFrame(56, 0),
            frame_code: 0,
            frame_previous: 8,
            frame_owner: Some(70),
            code_filename: 112,
            code_name: 120,
            code_qualname: Some(128),
            code_firstlineno: 68,
            unicode_ascii_data: 40,
            interp_modules: 944,
            code_flags: 48,
            code_adaptive: Some(192),
            frame_localsplus: 72,
            heaptype_cached_keys: 880,
            frame_instr: Some(56),
            ..base
        },
        _ => return None,
    })
}

/// Reads another process's memory.
pub struct Memory {
    pid: u32,
}

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: both iovecs describe valid buffers of `buf.len()` bytes (the remote one is
        // checked by the kernel).
        let n = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            bail!("reading pid {} at {addr:#x}: {}", self.pid, std::io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            bail!("short read of pid {} at {addr:#x}", self.pid);
        }
        Ok(())
    }

    pub fn u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// The interpreter a process runs.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub pid: u32,
    /// Major, minor and, where the interpreter says (`Py_Version`, 3.11+), micro version.
    pub version: (u32, u32, Option<u32>),
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    pub layout: Layout,
    /// Where the layout came from: `_Py_DebugOffsets` or `table`.
    pub layout_source: &'static str,
    /// The file holding the interpreter (a libpython, or the executable).
    pub file: String,
}

/// Symbols of one ELF file that locate the interpreter, and the file's load segments.
struct PyFile {
    runtime: u64,
    version_sym: Option<u64>,
    /// (file offset, vaddr) of each loadable segment.
    loads: Vec<(u64, u64, u64)>,
}

fn interpreter_symbols<'d, S: ObjectSymbol<'d>>(
    syms: impl Iterator<Item = S>,
    runtime: &mut Option<u64>,
    version: &mut Option<u64>,
) {
    for s in syms {
        match s.name() {
            Ok("_PyRuntime") if s.is_definition() => *runtime = runtime.or(Some(s.address())),
            Ok("Py_Version") if s.is_definition() => *version = version.or(Some(s.address())),
            _ => {}
        }
    }
}

fn scan_file(path: &Path) -> Result<Option<PyFile>> {
    let f = std::fs::File::open(path)?;
    let cache = ReadCache::new(f);
    let elf = object::File::parse(&cache)?;
    let (mut runtime, mut version) = (None, None);
    // The exported symbols first (small); the full table (large, read whole) only if needed.
    interpreter_symbols(elf.dynamic_symbols(), &mut runtime, &mut version);
    if runtime.is_none() {
        interpreter_symbols(elf.symbols(), &mut runtime, &mut version);
    }
    let Some(runtime) = runtime else { return Ok(None) };
    let loads = elf
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect();
    Ok(Some(PyFile { runtime, version_sym: version, loads }))
}

/// `libpython3.11.so.1.0`, `python3.9`, `python3.12d` -> (3, minor).
pub fn version_from_name(name: &str) -> Option<(u32, u32)> {
    let i = name.find("python3.")?;
    let rest = &name[i + "python3.".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, digits.parse().ok()?))
}

/// Finds the interpreter of `pid`: the first executable mapping whose file defines
/// `_PyRuntime`.
pub fn find(pid: u32) -> Result<Interpreter> {
    let maps = libs::read_maps(pid);
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
        let Ok(Some(pf)) = scan_file(&libs::host_path(pid, &m.path)) else { continue };
        let Some(bias) = load_bias(&maps, m, &pf) else { continue };
        let runtime = bias.wrapping_add(pf.runtime);
        let hex = match pf.version_sym {
            Some(v) => mem.u32(bias.wrapping_add(v)).ok(),
            None => None,
        };
        let version = match hex {
            Some(h) if h >> 24 == 3 => (3, (h >> 16) & 0xff, Some((h >> 8) & 0xff)),
            _ => {
                let (a, b) = version_from_name(name)
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

/// Reads the layout from the `_Py_DebugOffsets` that 3.13+ keeps at the start of `_PyRuntime`.
fn debug_offsets(mem: &Memory, runtime: u64, version: (u32, u32, Option<u32>)) -> Result<Layout> {
    let mut cookie = [0u8; 8];
    mem.read(runtime, &mut cookie)?;
    if &cookie != b"xdebugpy" {
        bail!("_PyRuntime of CPython {}.{} does not start with _Py_DebugOffsets", version.0, version.1);
    }
    let w = |i: u64| mem.u64(runtime.wrapping_add(8 * i));
    // Fields are u64 in this order. 3.13: cookie, version, free_threaded, runtime_state{size, finalizing, interpreters_head},
    // interpreter_state{size, id, next, threads_head, gc, imports_modules, ...13 fields},
    // thread_state{size, prev,
    // next, interp, current_frame, thread_id, native_thread_id, datastack_chunk, status},
    // interpreter_frame{size, previous, executable, instr_ptr, localsplus, owner},
    // code_object{size, filename, name, qualname, linetable, firstlineno, argcount,
    // localsplus_names, localsplus_kinds, co_code_adaptive}, ...
    // 3.14 (read on Debian forky's 3.14.8): interpreter_state gains threads_main after
    // threads_head, and code_object_generation and tlbc_generation at its end (16 fields);
    // interpreter_frame gains stackpointer and tlbc_index (8); code_object gains co_tlbc.
    // (interpreter_state fields, frame fields, index of threads_head's successor shift)
    let (interp_fields, frame_fields, after_threads) = match version.1 {
        13 => (13, 6, 0),
        14 => (16, 8, 1),
        _ => bail!(
            "CPython {}.{}: _Py_DebugOffsets found, but its layout for this version is not known yet",
            version.0,
            version.1
        ),
    };
    let interp = 6; // index of interpreter_state.size
    let tstate = interp + interp_fields;
    let frame = tstate + 9;
    let code = frame + frame_fields;
    Ok(Layout {
        runtime_interpreters_head: w(5)?,
        interp_threads_head: w(interp + 3)?,
        tstate_next: w(tstate + 2)?,
        tstate_thread_id: w(tstate + 5)?,
        tstate_native_thread_id: Some(w(tstate + 6)?),
        tstate_frame: FramePath::Direct(w(tstate + 4)?),
        frame_previous: w(frame + 1)?,
        frame_code: w(frame + 2)?,
        frame_owner: Some(w(frame + 5)?),
        code_filename: w(code + 1)?,
        code_name: w(code + 2)?,
        code_qualname: Some(w(code + 3)?),
        code_firstlineno: w(code + 5)?,
        unicode_ascii_data: 40,
        interp_modules: w(interp + 5 + after_threads)?,
        code_flags: 48,
        code_adaptive: Some(w(code + 9)?),
        func_code: 48,
        frame_localsplus: w(frame + 4)?,
        heaptype_cached_keys: 880,
        frame_instr: Some(w(frame + 3)?),
    })
}

/// One Python thread of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyThread {
    pub tstate: u64,
    /// `pthread_self()` of the thread.
    pub thread_id: u64,
    /// The kernel's thread id (3.11+).
    pub native_thread_id: Option<u64>,
}

/// One Python frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyFrame {
    /// The qualified name (3.11+), else the function's name.
    pub name: String,
    pub filename: String,
    pub first_line: u32,
}

impl Interpreter {
    /// `3.11.7`, or `3.9` when the interpreter does not say its micro version.
    pub fn version_string(&self) -> String {
        match self.version.2 {
            Some(m) => format!("{}.{}.{m}", self.version.0, self.version.1),
            None => format!("{}.{}", self.version.0, self.version.1),
        }
    }

    /// The threads of the first interpreter (at most 4096; a cycle ends the walk).
    pub fn threads(&self) -> Result<Vec<PyThread>> {
        let mem = Memory::new(self.pid);
        let l = &self.layout;
        let interp = mem.u64(self.runtime.wrapping_add(l.runtime_interpreters_head))?;
        if interp == 0 {
            bail!("no interpreter yet (still starting?)");
        }
        let mut t = mem.u64(interp.wrapping_add(l.interp_threads_head))?;
        let mut out = Vec::new();
        while t != 0 && out.len() < 4096 {
            if out.iter().any(|x: &PyThread| x.tstate == t) {
                break;
            }
            let native = l.tstate_native_thread_id.map(|o| mem.u64(t.wrapping_add(o))).transpose()?;
            out.push(PyThread {
                tstate: t,
                thread_id: mem.u64(t.wrapping_add(l.tstate_thread_id))?,
                native_thread_id: native,
            });
            t = mem.u64(t.wrapping_add(l.tstate_next))?;
        }
        if l.tstate_native_thread_id.is_none() {
            self.native_ids_from_pthreads(&mem, &mut out);
        }
        Ok(out)
    }

    /// Before 3.11 a thread state holds only `pthread_self()`: the address of the C library's
    /// thread descriptor, which holds the kernel's thread id at an offset of that library's
    /// own. The offset is found in the main thread's descriptor (the one holding the process
    /// id where every other descriptor holds its own thread id), then read for every thread.
    fn native_ids_from_pthreads(&self, mem: &Memory, threads: &mut [PyThread]) {
        // glibc keeps the id at 720 on x86-64; the descriptor may end its mapping soon after.
        const SPAN: usize = 1024;
        let tasks: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let descriptors: Vec<Option<Vec<u8>>> = threads
            .iter()
            .map(|t| {
                let mut b = vec![0u8; SPAN];
                mem.read(t.thread_id, &mut b).ok().map(|_| b)
            })
            .collect();
        let at = |b: &[u8], off: usize| u64::from(u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default()));
        // Offsets where the main thread's descriptor holds the pid and every other descriptor
        // holds a thread id of this process other than the pid.
        let offset = (0..SPAN - 4).step_by(4).find(|&off| {
            let mut main = 0;
            for d in descriptors.iter().flatten() {
                let v = at(d, off);
                if v == u64::from(self.pid) {
                    main += 1;
                } else if !tasks.contains(&v) {
                    return false;
                }
            }
            main == 1
        });
        let Some(off) = offset else { return };
        for (t, d) in threads.iter_mut().zip(&descriptors) {
            t.native_thread_id = d.as_ref().map(|d| at(d, off));
        }
    }

    /// The thread's frames, innermost first: (frame address, code object), C-stack shims left
    /// out (at most `max`).
    pub fn frames(&self, t: &PyThread, max: usize) -> Result<Vec<(u64, u64)>> {
        let mem = Memory::new(self.pid);
        let l = &self.layout;
        let mut f = match l.tstate_frame {
            FramePath::Direct(o) => mem.u64(t.tstate.wrapping_add(o))?,
            FramePath::CFrame(o, inner) => {
                let c = mem.u64(t.tstate.wrapping_add(o))?;
                if c == 0 { 0 } else { mem.u64(c.wrapping_add(inner))? }
            }
        };
        let mut out = Vec::new();
        let mut steps = 0;
        while f != 0 && out.len() < max && steps < 4 * max {
            steps += 1;
            let code = mem.u64(f.wrapping_add(l.frame_code))? & !3;
            let shim = match l.frame_owner {
                Some(o) => {
                    let mut b = [0u8; 1];
                    mem.read(f.wrapping_add(o), &mut b)?;
                    b[0] == 3
                }
                None => false,
            };
            if code != 0 && !shim {
                out.push((f, code));
            }
            f = mem.u64(f.wrapping_add(l.frame_previous))?;
        }
        Ok(out)
    }

    /// The thread's Python stack, innermost first (at most `max` frames). Empty when the
    /// thread runs no Python code now.
    pub fn stack(&self, t: &PyThread, max: usize) -> Result<Vec<PyFrame>> {
        let mem = Memory::new(self.pid);
        self.frames(t, max)?.into_iter().map(|(_, code)| self.code_frame(&mem, code)).collect()
    }

    pub(crate) fn code_frame(&self, mem: &Memory, code: u64) -> Result<PyFrame> {
        let l = &self.layout;
        let name_ptr = mem.u64(code.wrapping_add(l.code_qualname.unwrap_or(l.code_name)))?;
        Ok(PyFrame {
            name: self.ascii(mem, name_ptr)?,
            filename: self.ascii(mem, mem.u64(code.wrapping_add(l.code_filename))?)?,
            first_line: mem.u32(code.wrapping_add(l.code_firstlineno))?,
        })
    }

    /// A `str` object's text when it is compact ASCII (code names and file names nearly always
    /// are); `?` otherwise.
    fn ascii(&self, mem: &Memory, s: u64) -> Result<String> {
        let len = mem.u64(s.wrapping_add(16))?;
        let state = mem.u32(s.wrapping_add(32))?;
        let (compact, ascii) = (state & (1 << 5) != 0, state & (1 << 6) != 0);
        if !compact || !ascii || len > 4096 {
            return Ok("?".into());
        }
        let mut b = vec![0u8; len as usize];
        mem.read(s.wrapping_add(self.layout.unicode_ascii_data), &mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
}

/// `inferscope python-info`: the interpreter, its threads and their stacks, as text or JSON.
pub fn info(pid: u32, json: bool, max_frames: usize) -> Result<String> {
    let i = find(pid)?;
    let threads = i.threads()?;
    let mut rows = Vec::new();
    for t in &threads {
        // A thread can change under the reader: report what could not be read, go on.
        let (stack, error) = match i.stack(t, max_frames) {
            Ok(s) => (s, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        rows.push((t, stack, error));
    }
    let main = |t: &PyThread| t.native_thread_id == Some(u64::from(pid));
    // The engine's live state, when this is an engine process.
    let state = match state::StateReader::new(pid).and_then(|r| r.read()) {
        Ok(Some(s)) => Some(s),
        Ok(None) => None,
        Err(e) => {
            log::debug!("pid {pid}: engine state: {e:#}");
            None
        }
    };
    if json {
        let threads: Vec<serde_json::Value> = rows
            .iter()
            .map(|(t, s, e)| {
                serde_json::json!({
                    "native_thread_id": t.native_thread_id,
                    "thread_id": t.thread_id,
                    "main": main(t),
                    "stack": s.iter().map(|f| serde_json::json!({"name": f.name, "filename": f.filename, "first_line": f.first_line})).collect::<Vec<_>>(),
                    "error": e,
                })
            })
            .collect();
        let v = serde_json::json!({
            "pid": pid,
            "version": i.version_string(),
            "file": i.file,
            "layout": i.layout_source,
            "threads": threads,
            "engine_state": state.as_ref().map(|s| {
                let mut m = serde_json::Map::new();
                m.insert("engine".into(), s.engine.into());
                for (k, v) in &s.values {
                    m.insert((*k).into(), (*v).into());
                }
                m.insert("problem".into(), s.problem.clone().into());
                serde_json::Value::Object(m)
            }),
        });
        return Ok(format!("{v}\n"));
    }
    let mut out = format!(
        "pid {pid}: CPython {} in {} (layout from {}), {} thread(s)\n",
        i.version_string(),
        i.file,
        i.layout_source,
        rows.len()
    );
    if let Some(s) = &state {
        let vals: Vec<String> =
            s.values.iter().map(|(k, v)| format!("{k}={}", v.map_or("?".into(), |v| v.to_string()))).collect();
        out += &format!("{} engine state: {}\n", s.engine, vals.join(" "));
        if let Some(p) = &s.problem {
            out += &format!("    (not understood: {p})\n");
        }
    }
    for (t, s, e) in &rows {
        let id = t.native_thread_id.map_or(format!("{:#x}", t.thread_id), |n| n.to_string());
        out += &format!("\nthread {id}{}\n", if main(t) { " (main)" } else { "" });
        for f in s {
            out += &format!("    {} ({}:{})\n", f.name, f.filename, f.first_line);
        }
        if let Some(e) = e {
            out += &format!("    (stack not readable: {e})\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(version_from_name("python3.9"), Some((3, 9)));
        assert_eq!(version_from_name("libpython3.12d.so"), Some((3, 12)));
        assert_eq!(version_from_name("python"), None);
    }

    #[test]
    fn tables_cover_3_9_to_3_12() {
        for minor in 9..=12 {
            assert!(table(3, minor).is_some(), "3.{minor}");
        }
        assert!(table(3, 8).is_none());
        assert_eq!(table(3, 12).unwrap().tstate_native_thread_id, Some(144));
    }
}
