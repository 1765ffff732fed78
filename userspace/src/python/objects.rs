//! Python objects read from outside: dicts, modules, classes, functions and code objects, enough
//! to turn `module:Class.method` into the code object the interpreter runs, and a code object
//! into the addresses of its RESUME and return instructions. Every read is checked: a target
//! changing under the reader gives an error, never a wrong answer taken for right.

use anyhow::{Context as _, Result, bail};

use super::{Interpreter, Memory, opcodes};

/// Most entries of one dict looked at (sys.modules of a large engine holds ~5,000).
const MAX_DICT_ENTRIES: u64 = 1 << 16;

/// `PyTypeObject` fields, the same from 3.9 to 3.14 on LP64.
const TP_NAME: u64 = 24;
const TP_BASICSIZE: u64 = 32;
const TP_FLAGS: u64 = 168;
const TP_BASE: u64 = 256;
const TP_DICTOFFSET: u64 = 288;
/// Instances keep their attributes before the object (3.11+).
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// ... and their values after it (3.13+).
const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
const TP_DICT: u64 = 264;
const TP_MRO: u64 = 344;
const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;
/// `PyModuleObject.md_dict`.
const MD_DICT: u64 = 16;
/// `staticmethod` / `classmethod`: the wrapped callable.
const SM_CALLABLE: u64 = 16;
/// Code flags of functions that are not called like plain functions: generators, coroutines,
/// generator-based coroutines, async generators.
pub const CO_GENERATOR_LIKE: u32 = 0x20 | 0x80 | 0x100 | 0x200;
/// Of those, what is awaited: coroutines (`async def`), generator-based coroutines and async
/// generators. Their first RESUME runs once per call, at the first resumption (each later
/// resumption runs the RESUME after its own yield); their returns end them.
pub const CO_AWAITED: u32 = 0x80 | 0x100 | 0x200;

/// What `module:Class.method` resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub code: u64,
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    pub flags: u32,
}

/// Where a code object's entry and return instructions are: address and code unit (opcode in
/// the low byte, oparg in the high byte) of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytecode {
    /// The first code unit.
    pub start: u64,
    pub resume: (u64, u32),
    pub returns: Vec<(u64, u32)>,
}

/// A module without the attribute asked for: renamed in this release, or a module still being
/// imported (its body has not defined it yet).
#[derive(Debug)]
pub struct NotDefined(pub String);

impl std::fmt::Display for NotDefined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotDefined {}

impl Interpreter {
    /// Whether the `str` at `s` is the compact ASCII string `want` (one read: header and text).
    fn str_eq(&self, mem: &Memory, s: u64, want: &str) -> bool {
        let data = self.layout.unicode_ascii_data as usize;
        let mut b = vec![0u8; data + want.len()];
        if mem.read(s, &mut b).is_err() {
            return false;
        }
        let len = u64::from_le_bytes(b[16..24].try_into().unwrap_or_default());
        let state = u32::from_le_bytes(b[32..36].try_into().unwrap_or_default());
        let compact_ascii = state & (1 << 5) != 0 && state & (1 << 6) != 0;
        len == want.len() as u64 && compact_ascii && &b[data..] == want.as_bytes()
    }

    /// The name of an object's type (`ob_type->tp_name`).
    pub fn type_name(&self, mem: &Memory, obj: u64) -> Result<String> {
        let t = mem.u64(obj.wrapping_add(8))?;
        cstr(mem, mem.u64(t.wrapping_add(TP_NAME))?)
    }

    /// Looks a `str` key up in a dict by scanning its entries (no hashing: the reader does not
    /// know the target's hash seed). None when absent.
    pub fn dict_get(&self, mem: &Memory, dict: u64, key: &str) -> Result<Option<u64>> {
        let keys = mem.u64(dict.wrapping_add(32))?;
        let values = mem.u64(dict.wrapping_add(40))?;
        if keys == 0 {
            bail!("dict {dict:#x} has no keys table");
        }
        // (entries start, entry size, key offset, value offset, entry count)
        let (entries, size, key_at, value_at, n) = if self.version.1 >= 11 {
            let mut h = [0u8; 32];
            mem.read(keys, &mut h)?;
            let log2_index_bytes = u32::from(h[9]);
            let kind = h[10];
            let n = u64::from_le_bytes(h[24..32].try_into().unwrap_or_default());
            if log2_index_bytes > 40 || kind > 2 {
                bail!("dict keys at {keys:#x} look corrupt");
            }
            let entries = keys.wrapping_add(32).wrapping_add(1u64 << log2_index_bytes);
            if kind == 0 { (entries, 24, 8, 16, n) } else { (entries, 16, 0, 8, n) }
        } else {
            let size = mem.u64(keys.wrapping_add(8))?;
            let n = mem.u64(keys.wrapping_add(32))?;
            let ib = match size {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            (keys.wrapping_add(40).wrapping_add(size.saturating_mul(ib)), 24, 8, 16, n)
        };
        if n > MAX_DICT_ENTRIES {
            bail!("dict at {dict:#x} has {n} entries: too many to scan");
        }
        // Read the entry table at once: one system call for thousands of entries.
        let mut buf = vec![0u8; (n * size) as usize];
        mem.read(entries, &mut buf)?;
        for i in 0..n as usize {
            let e = &buf[i * size as usize..][..size as usize];
            let k = u64::from_le_bytes(e[key_at..key_at + 8].try_into().unwrap_or_default());
            if k == 0 || !self.str_eq(mem, k, key) {
                continue;
            }
            let v = if values != 0 {
                // A split table: values live apart (3.13 puts a 8-byte header first).
                let header = if self.version.1 >= 13 { 8 } else { 0 };
                mem.u64(values.wrapping_add(header).wrapping_add(8 * i as u64))?
            } else {
                u64::from_le_bytes(e[value_at..value_at + 8].try_into().unwrap_or_default())
            };
            return Ok((v != 0).then_some(v));
        }
        Ok(None)
    }

    /// An attribute of an instance of a Python class, where the interpreter keeps it: a
    /// managed dict or values array (3.11+: before the object; 3.13: values inline after it,
    /// keyed by the class's shared keys), or a `__dict__` at `tp_dictoffset`. None when the
    /// instance has no such attribute.
    pub fn instance_attr(&self, mem: &Memory, obj: u64, name: &str) -> Result<Option<u64>> {
        let ty = mem.u64(obj.wrapping_add(8))?;
        let flags = mem.u64(ty.wrapping_add(TP_FLAGS))?;
        let minor = self.version.1;
        if minor >= 11 && flags & TPFLAGS_MANAGED_DICT != 0 {
            // (dict, values array, 8-byte header before the values)
            let (dict, values, header) = match minor {
                11 => (mem.u64(obj.wrapping_sub(24))?, mem.u64(obj.wrapping_sub(32))?, 0),
                12 => {
                    // `_PyDictOrValues`: values are stored as their address minus one (odd).
                    let dv = mem.u64(obj.wrapping_sub(24))?;
                    if dv & 1 == 1 { (0, dv.wrapping_add(1), 0) } else { (dv, 0, 0) }
                }
                _ => {
                    let dict = mem.u64(obj.wrapping_sub(24))?;
                    let inline = flags & TPFLAGS_INLINE_VALUES != 0;
                    let values = if inline { obj.wrapping_add(mem.u64(ty.wrapping_add(TP_BASICSIZE))?) } else { 0 };
                    // `valid` (4th header byte) is cleared once a dict took the values over.
                    let mut h = [0u8; 4];
                    if values != 0 {
                        mem.read(values, &mut h)?;
                    }
                    (dict, if h[3] != 0 { values } else { 0 }, 8)
                }
            };
            if dict != 0 {
                return self.dict_get(mem, dict, name);
            }
            if values == 0 {
                return Ok(None);
            }
            let keys = mem.u64(ty.wrapping_add(self.layout.heaptype_cached_keys))?;
            let Some(i) = self.keys_index(mem, keys, name)? else { return Ok(None) };
            let v = mem.u64(values.wrapping_add(header).wrapping_add(8 * i))?;
            return Ok((v != 0).then_some(v));
        }
        let off = mem.u64(ty.wrapping_add(TP_DICTOFFSET))? as i64;
        if off <= 0 {
            bail!("instances of {} keep no attribute dict inferscope can find", self.type_name(mem, obj)?);
        }
        let dict = mem.u64(obj.wrapping_add(off as u64))?;
        if dict == 0 { Ok(None) } else { self.dict_get(mem, dict, name) }
    }

    /// The position of `name` in a shared (split) keys table of 3.11+ (unicode entries).
    fn keys_index(&self, mem: &Memory, keys: u64, name: &str) -> Result<Option<u64>> {
        if keys == 0 {
            return Ok(None);
        }
        let mut h = [0u8; 32];
        mem.read(keys, &mut h)?;
        let n = u64::from_le_bytes(h[24..32].try_into().unwrap_or_default());
        if h[9] > 40 || n > 4096 {
            bail!("shared keys at {keys:#x} look corrupt");
        }
        let entries = keys.wrapping_add(32).wrapping_add(1u64 << h[9]);
        let size = if h[10] == 0 { 24 } else { 16 };
        let key_at = if h[10] == 0 { 8 } else { 0 };
        let mut buf = vec![0u8; (n * size) as usize];
        mem.read(entries, &mut buf)?;
        for i in 0..n {
            let e = &buf[(i * size) as usize..][..size as usize];
            let k = u64::from_le_bytes(e[key_at..key_at + 8].try_into().unwrap_or_default());
            if k != 0 && self.str_eq(mem, k, name) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The value of a Python `int` that fits in 62 bits.
    pub fn int_value(&self, mem: &Memory, obj: u64) -> Result<i64> {
        let tname = self.type_name(mem, obj)?;
        if tname != "int" && tname != "bool" {
            bail!("a {tname}, not an int");
        }
        let head = mem.u64(obj.wrapping_add(16))?;
        let (negative, ndigits) = if self.version.1 >= 12 {
            // lv_tag: digit count << 3 | sign (0 positive, 1 zero, 2 negative).
            (head & 3 == 2, head >> 3)
        } else {
            let size = head as i64;
            (size < 0, size.unsigned_abs())
        };
        if ndigits > 2 {
            bail!("an int too large to export");
        }
        let mut v: u64 = 0;
        for i in (0..ndigits).rev() {
            v = (v << 30) | u64::from(mem.u32(obj.wrapping_add(24).wrapping_add(4 * i))? & 0x3fff_ffff);
        }
        let v = v as i64;
        Ok(if negative { -v } else { v })
    }

    /// The length of a `list` or `collections.deque` (or of a subclass of either): their
    /// `ob_size`.
    pub fn len_of(&self, mem: &Memory, obj: u64) -> Result<i64> {
        let mut ty = mem.u64(obj.wrapping_add(8))?;
        for _ in 0..8 {
            if ty == 0 {
                break;
            }
            let n = cstr(mem, mem.u64(ty.wrapping_add(TP_NAME))?)?;
            if n == "list" || n == "collections.deque" {
                return Ok(mem.u64(obj.wrapping_add(16))? as i64);
            }
            ty = mem.u64(ty.wrapping_add(TP_BASE))?;
        }
        bail!("a {}, not a list or a deque", self.type_name(mem, obj)?)
    }

    /// `sys.modules[name]`.
    pub fn module(&self, mem: &Memory, name: &str) -> Result<Option<u64>> {
        let interp = mem.u64(self.runtime.wrapping_add(self.layout.runtime_interpreters_head))?;
        if interp == 0 {
            bail!("no interpreter yet (still starting?)");
        }
        let modules = mem.u64(interp.wrapping_add(self.layout.interp_modules))?;
        if modules == 0 {
            bail!("the interpreter has no sys.modules yet");
        }
        self.dict_get(mem, modules, name)
    }

    /// An attribute of a module or a class, as its `__dict__` holds it (for a class, also its
    /// bases in method resolution order).
    pub fn attr(&self, mem: &Memory, obj: u64, name: &str) -> Result<Option<u64>> {
        let tname = self.type_name(mem, obj)?;
        if tname == "module" {
            let d = mem.u64(obj.wrapping_add(MD_DICT))?;
            return if d == 0 { Ok(None) } else { self.dict_get(mem, d, name) };
        }
        let flags = mem.u64((mem.u64(obj.wrapping_add(8))?).wrapping_add(TP_FLAGS))?;
        if flags & TPFLAGS_TYPE_SUBCLASS == 0 {
            bail!("not a module or a class (a {tname})");
        }
        let mro = mem.u64(obj.wrapping_add(TP_MRO))?;
        // A tuple's items follow its size; 3.14 caches the tuple's hash before them.
        let items = if self.version.1 >= 14 { 32 } else { 24 };
        let classes = if mro == 0 {
            vec![obj]
        } else {
            let n = mem.u64(mro.wrapping_add(16))?.min(64);
            (0..n).map(|i| mem.u64(mro.wrapping_add(items).wrapping_add(8 * i))).collect::<Result<Vec<_>>>()?
        };
        for c in classes {
            let d = mem.u64(c.wrapping_add(TP_DICT))?;
            if d != 0
                && let Some(v) = self.dict_get(mem, d, name)?
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The code object `module:Qual.name` runs. Follows staticmethod/classmethod and
    /// `functools.wraps` decorators (`__wrapped__`) to the function whose name matches.
    pub fn resolve(&self, mem: &Memory, symbol: &str) -> Result<Option<Resolved>> {
        let (module, qual) = symbol
            .split_once(':')
            .with_context(|| format!("{symbol}: expected module:Class.method or module:function"))?;
        let Some(mut obj) = self.module(mem, module)? else { return Ok(None) };
        let parts: Vec<&str> = qual.split('.').collect();
        for p in &parts {
            match self.attr(mem, obj, p).with_context(|| format!("{symbol}: looking up {p}"))? {
                Some(o) => obj = o,
                None => {
                    return Err(NotDefined(format!(
                        "{symbol}: {module} has no {qual} (renamed in this version of the engine?)"
                    ))
                    .into());
                }
            }
        }
        let last = parts.last().copied().unwrap_or_default();
        for _ in 0..8 {
            match self.type_name(mem, obj)?.as_str() {
                "staticmethod" | "classmethod" => obj = mem.u64(obj.wrapping_add(SM_CALLABLE))?,
                "function" => {
                    let code = mem.u64(obj.wrapping_add(self.layout.func_code))?;
                    let f = self.code_frame(mem, code)?;
                    let short = f.name.rsplit('.').next().unwrap_or(&f.name);
                    if short == last {
                        let flags = mem.u32(code.wrapping_add(self.layout.code_flags))?;
                        return Ok(Some(Resolved {
                            code,
                            qualname: f.name,
                            filename: f.filename,
                            first_line: f.first_line,
                            flags,
                        }));
                    }
                    // A decorator's wrapper: its `__dict__` (after func_doc) may name the
                    // function it wraps.
                    let fdict_at = if self.version.1 >= 10 { self.layout.func_code + 40 } else { 72 };
                    let fdict = mem.u64(obj.wrapping_add(fdict_at))?;
                    match (fdict != 0).then(|| self.dict_get(mem, fdict, "__wrapped__")).transpose()?.flatten() {
                        Some(w) => obj = w,
                        None => {
                            bail!("{symbol}: the class holds a wrapper ({}) that does not say what it wraps", f.name)
                        }
                    }
                }
                other => bail!("{symbol} is a {other}, not a Python function"),
            }
        }
        bail!("{symbol}: too many decorators")
    }

    /// Decodes a code object's live bytecode (3.11+) into the addresses of its RESUME (the
    /// entry) and its return instructions, skipping inline caches.
    pub fn bytecode(&self, mem: &Memory, code: u64) -> Result<Bytecode> {
        let Some(adaptive) = self.layout.code_adaptive else {
            bail!("CPython {}: no inline bytecode before 3.11", self.version_string());
        };
        let (caches, resume_ops, return_ops) = match self.version.1 {
            11 => (&opcodes::CACHES_3_11, opcodes::RESUME_3_11, opcodes::RETURN_3_11),
            12 => (&opcodes::CACHES_3_12, opcodes::RESUME_3_12, opcodes::RETURN_3_12),
            13 => (&opcodes::CACHES_3_13, opcodes::RESUME_3_13, opcodes::RETURN_3_13),
            14 => (&opcodes::CACHES_3_14, opcodes::RESUME_3_14, opcodes::RETURN_3_14),
            _ => bail!("CPython {}: no opcode table for this version", self.version_string()),
        };
        let units = mem.u64(code.wrapping_add(16))?;
        if units == 0 || units > 1 << 20 {
            bail!("code object at {code:#x} has {units} code units");
        }
        let start = code.wrapping_add(adaptive);
        let mut bc = vec![0u8; 2 * units as usize];
        mem.read(start, &mut bc)?;
        let (resume, returns) = decode(&bc, caches, resume_ops, return_ops);
        let resume = resume.context("no RESUME instruction in the function's bytecode")?;
        if returns.is_empty() {
            bail!("no return instruction in the function's bytecode (it only raises or loops forever)");
        }
        let at =
            |i: usize| (start.wrapping_add(2 * i as u64), u32::from(u16::from_le_bytes([bc[2 * i], bc[2 * i + 1]])));
        Ok(Bytecode { start, resume: at(resume), returns: returns.iter().map(|r| at(*r)).collect() })
    }
}

/// The first RESUME and every return, as code-unit indexes.
pub fn decode(bc: &[u8], caches: &[u8; 256], resume_ops: &[u8], return_ops: &[u8]) -> (Option<usize>, Vec<usize>) {
    let (mut resume, mut returns) = (None, Vec::new());
    let mut i = 0;
    while 2 * i + 1 < bc.len() {
        let op = bc[2 * i];
        if resume.is_none() && resume_ops.contains(&op) {
            resume = Some(i);
        }
        if return_ops.contains(&op) {
            returns.push(i);
        }
        i += 1 + caches[op as usize] as usize;
    }
    (resume, returns)
}

fn cstr(mem: &Memory, addr: u64) -> Result<String> {
    let mut b = [0u8; 64];
    mem.read(addr, &mut b)?;
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_skips_caches_and_finds_returns() {
        // 3.12: RESUME 0, LOAD_ATTR (9 caches), RETURN_VALUE, RETURN_CONST.
        let mut bc = vec![151, 0, 106, 0];
        bc.extend(std::iter::repeat_n([83u8, 0], 9).flatten()); // caches that look like returns
        bc.extend([83, 0, 121, 0]);
        let (r, rets) = decode(&bc, &opcodes::CACHES_3_12, opcodes::RESUME_3_12, opcodes::RETURN_3_12);
        assert_eq!(r, Some(0));
        assert_eq!(rets, vec![11, 12]);
    }

    #[test]
    fn decode_never_reads_past_the_end() {
        for len in 0..8 {
            let bc = vec![106u8; len]; // LOAD_ATTR claims 9 caches
            let _ = decode(&bc, &opcodes::CACHES_3_12, opcodes::RESUME_3_12, opcodes::RETURN_3_12);
        }
    }
}
