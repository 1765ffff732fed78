//! The Python layer's first piece: an unmodified CPython read from outside. Finds the
//! interpreter a process runs (a shared libpython or an executable with the interpreter linked
//! in), its version and memory layout, its threads (native thread id to thread state) and each
//! thread's Python stack, by reading the process's memory (`process_vm_readv`). Nothing is
//! injected and the process is not stopped: a stack read while the thread runs may be torn,
//! and is checked as it is walked.
//!
//!
//! Here: [`Memory`] (another process's memory), [`Interpreter`] and its threads and stacks.
//! find.rs finds the interpreter; layout.rs says where its structures keep what is read.

pub mod bpf;
mod find;
pub mod flame;
mod layout;
pub mod objects;
pub mod opcodes;
pub mod profile;
pub mod sites;
pub mod state;
pub mod timers;

use anyhow::{Result, bail};

pub use crate::process::memory::Memory;
pub use find::find;
pub use layout::{FramePath, Layout, table};

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
        let tasks: std::collections::HashSet<u64> =
            crate::process::procfs::tasks(self.pid).into_iter().map(u64::from).collect();
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
