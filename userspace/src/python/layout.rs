//! Where an out-of-process reader finds what it needs in each CPython (`Layout`): the
//! interpreter's own `_Py_DebugOffsets` on 3.13+, tables as data for 3.9-3.12, observed on real
//! interpreters (tests/python/layout_probe.py, docs/PYTHON-LAYER.md).

use anyhow::{Result, bail};

use super::Memory;

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

/// Reads the layout from the `_Py_DebugOffsets` that 3.13+ keeps at the start of `_PyRuntime`.
pub(super) fn debug_offsets(mem: &Memory, runtime: u64, version: (u32, u32, Option<u32>)) -> Result<Layout> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_3_9_to_3_12() {
        for minor in 9..=12 {
            assert!(table(3, minor).is_some(), "3.{minor}");
        }
        assert!(table(3, 8).is_none());
        assert_eq!(table(3, 12).unwrap().tstate_native_thread_id, Some(144));
    }
}
