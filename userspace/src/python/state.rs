//! Live engine state read from the engine's own objects, without stopping it: vLLM's scheduler
//! queues and KV-cache block pool, SGLang's scheduler queues. The root object is the `self` of
//! the engine's busy loop, found on the process's main thread (the loop never returns while
//! the engine serves); the gauges are attribute paths from it, read with `process_vm_readv`.
//! A path that no longer matches the engine's code is said once per process, not guessed.

use anyhow::{Context as _, Result, bail};

use super::{Interpreter, Memory, find};

/// How a gauge's value is read at the end of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The length of a list or deque (or of its `_heap` list: vLLM's priority queue).
    Len,
    /// An int attribute.
    Int,
}

/// One gauge: its name, the attributes from the loop's `self`, and how to read the end.
#[derive(Clone, Copy, Debug)]
pub struct Gauge {
    pub name: &'static str,
    pub path: &'static [&'static str],
    pub read: Read,
}

/// Where an engine's state lives.
#[derive(Debug)]
pub struct EngineLayout {
    pub engine: &'static str,
    /// The busy loop: its code's qualified name ends with one of these, in a file whose path
    /// ends with `file`.
    pub loops: &'static [&'static str],
    pub file: &'static str,
    pub gauges: &'static [Gauge],
}

/// vLLM v1 (0.8 to 0.32 at least): `EngineCoreProc.run_busy_loop` (DP engines override it).
pub const VLLM: EngineLayout = EngineLayout {
    engine: "vllm",
    loops: &[".run_busy_loop"],
    file: "vllm/v1/engine/core.py",
    gauges: &[
        Gauge { name: "running_requests", path: &["scheduler", "running"], read: Read::Len },
        Gauge { name: "waiting_requests", path: &["scheduler", "waiting"], read: Read::Len },
        Gauge {
            name: "kv_cache_free_blocks",
            path: &["scheduler", "kv_cache_manager", "block_pool", "free_block_queue", "num_free_blocks"],
            read: Read::Int,
        },
        Gauge {
            name: "kv_cache_total_blocks",
            path: &["scheduler", "kv_cache_manager", "block_pool", "num_gpu_blocks"],
            read: Read::Int,
        },
    ],
};

/// SGLang (0.4-0.5): the scheduler process's event loop (checked on a real 0.5.23 by the SGLang
/// tier, tests/tests/sglang.rs).
pub const SGLANG: EngineLayout = EngineLayout {
    engine: "sglang",
    loops: &["Scheduler.event_loop_normal", "Scheduler.event_loop_overlap", "Scheduler.event_loop_pp"],
    file: "sglang/srt/managers/scheduler.py",
    gauges: &[
        Gauge { name: "running_requests", path: &["running_batch", "reqs"], read: Read::Len },
        Gauge { name: "waiting_requests", path: &["waiting_queue"], read: Read::Len },
    ],
};

pub const ENGINES: &[&EngineLayout] = &[&VLLM, &SGLANG];

/// One reading of an engine's state.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineState {
    pub pid: u32,
    pub engine: &'static str,
    /// Gauge name and value; None for a gauge whose path did not resolve.
    pub values: Vec<(&'static str, Option<i64>)>,
    /// Why gauges are missing (the first failure).
    pub problem: Option<String>,
}

/// Reads one process's engine state.
pub struct StateReader {
    interp: Interpreter,
    mem: Memory,
}

impl StateReader {
    pub fn new(pid: u32) -> Result<Self> {
        Ok(Self::of(find(pid)?))
    }

    pub fn of(interp: Interpreter) -> Self {
        Self { mem: Memory::new(interp.pid), interp }
    }

    /// The engine loop's `self` on the main thread, and which engine it is. None when the
    /// process runs no engine loop (an API server, a worker, or an engine still starting).
    fn root(&self) -> Result<Option<(u64, &'static EngineLayout)>> {
        let pid = self.interp.pid;
        let threads = self.interp.threads()?;
        let Some(main) = threads.iter().find(|t| t.native_thread_id == Some(u64::from(pid))).or(threads.last()) else {
            return Ok(None);
        };
        // Before 3.11 code objects have no qualified name: the function's own name must do.
        let qualified = self.interp.layout.code_qualname.is_some();
        let is_loop = |name: &str, l: &str| {
            name.ends_with(l) || (!qualified && l.rsplit('.').next().is_some_and(|short| short == name))
        };
        for (frame, code) in self.interp.frames(main, 128)? {
            let f = self.interp.code_frame(&self.mem, code)?;
            for e in ENGINES {
                if f.filename.ends_with(e.file) && e.loops.iter().any(|l| is_loop(&f.name, l)) {
                    let mut me = self.mem.u64(frame.wrapping_add(self.interp.layout.frame_localsplus))?;
                    // A `self` that a nested function uses is a cell variable: its slot holds
                    // the cell (PyCellObject: the object header, then `ob_ref`), as in SGLang
                    // 0.5's event_loop_overlap.
                    if me != 0 && self.interp.type_name(&self.mem, me)? == "cell" {
                        me = self.mem.u64(me.wrapping_add(16))?;
                    }
                    if me == 0 {
                        bail!("{}'s `self` is not set yet", f.name);
                    }
                    return Ok(Some((me, e)));
                }
            }
        }
        Ok(None)
    }

    fn gauge(&self, root: u64, g: &Gauge) -> Result<i64> {
        let mut obj = root;
        for (i, a) in g.path.iter().enumerate() {
            obj = self
                .interp
                .instance_attr(&self.mem, obj, a)?
                .with_context(|| format!("no attribute `{}`", g.path[..=i].join(".")))?;
        }
        match g.read {
            Read::Int => self.interp.int_value(&self.mem, obj),
            Read::Len => match self.interp.len_of(&self.mem, obj) {
                Ok(n) => Ok(n),
                Err(e) => match self.interp.instance_attr(&self.mem, obj, "_heap") {
                    Ok(Some(heap)) => self.interp.len_of(&self.mem, heap),
                    _ => Err(e),
                },
            },
        }
        .with_context(|| format!("`{}`", g.path.join(".")))
    }

    /// Reads every gauge. Ok(None): no engine loop in this process (now).
    pub fn read(&self) -> Result<Option<EngineState>> {
        let Some((root, e)) = self.root()? else { return Ok(None) };
        let mut values = Vec::new();
        let mut problem = None;
        for g in e.gauges {
            match self.gauge(root, g) {
                Ok(v) => values.push((g.name, Some(v))),
                Err(err) => {
                    problem.get_or_insert_with(|| format!("{err:#}"));
                    values.push((g.name, None));
                }
            }
        }
        Ok(Some(EngineState { pid: self.interp.pid, engine: e.engine, values, problem }))
    }

    pub fn version(&self) -> String {
        self.interp.version_string()
    }
}
