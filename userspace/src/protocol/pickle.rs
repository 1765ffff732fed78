//! A pickle reader that executes nothing: it interprets the opcodes of protocols 0 to 5 into
//! plain values. `GLOBAL`/`STACK_GLOBAL` only name a class, and `REDUCE`/`NEWOBJ`/`BUILD` record
//! that class with its arguments and state as a [`PyValue::Object`]; no code is ever looked up or
//! called. Lengths come from the peer: each is checked against the bytes left before anything is
//! allocated, and memo reuse (which copies values) is charged against a budget, so a crafted
//! input ends in an error, never in a crash or an exhausted heap.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for `i64`: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    Set(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
    /// A class or function named by `GLOBAL`/`STACK_GLOBAL`, never resolved.
    Global {
        module: String,
        name: String,
    },
    /// An instance: the class it names, the arguments it would be built from, and the state
    /// `BUILD` would set.
    Object {
        class: String,
        args: Vec<PyValue>,
        state: Option<Box<PyValue>>,
    },
}

impl PyValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            PyValue::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Float(f) => Some(*f),
            PyValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    /// The items of a list or tuple.
    pub fn as_list(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_none(&self) -> bool {
        matches!(self, PyValue::None)
    }
    /// `module.name` of an object's class.
    pub fn class_name(&self) -> Option<&str> {
        match self {
            PyValue::Object { class, .. } => Some(class),
            _ => None,
        }
    }
    /// A field by name: a dict's string key, or an object's attribute from its `BUILD` state
    /// (a dict, or the `(dict, slots)` pair of classes with `__slots__`).
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(kv) => kv.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            PyValue::Object { state: Some(s), .. } => match s.as_ref() {
                PyValue::Tuple(pair) if pair.len() == 2 => pair[0].get(key).or_else(|| pair[1].get(key)),
                other => other.get(key),
            },
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickleError {
    Truncated,
    UnknownOpcode(u8),
    /// An opcode that needs code or out-of-band data: persistent ids, extension registry,
    /// pickle-5 buffers.
    Unsupported(u8),
    StackUnderflow,
    BadMemo,
    BadValue,
    LimitExceeded,
    /// The input ended without `STOP`.
    NoStop,
}

impl PickleError {
    pub fn cause(self) -> &'static str {
        match self {
            PickleError::Truncated => "truncated",
            PickleError::UnknownOpcode(_) => "unknown_opcode",
            PickleError::Unsupported(_) => "unsupported_opcode",
            PickleError::StackUnderflow => "stack_underflow",
            PickleError::BadMemo => "bad_memo",
            PickleError::BadValue => "bad_value",
            PickleError::LimitExceeded => "limit_exceeded",
            PickleError::NoStop => "no_stop",
        }
    }
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::UnknownOpcode(op) | PickleError::Unsupported(op) => write!(f, "{} 0x{op:02x}", self.cause()),
            _ => f.write_str(self.cause()),
        }
    }
}

impl std::error::Error for PickleError {}

const MAX_STACK: usize = 10_000;
const MAX_MEMO: usize = 1 << 16;
/// Values created or copied, in total (memo copies count their size).
const MAX_WORK: usize = 1 << 21;

/// Parses one pickle from the start of `data`.
pub fn parse(data: &[u8]) -> Result<PyValue, PickleError> {
    Vm { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: Vec::new(), work: 0 }.run()
}

/// Size of a value, for the copy budget.
fn weight(v: &PyValue) -> usize {
    match v {
        PyValue::List(x) | PyValue::Tuple(x) | PyValue::Set(x) => 1 + x.iter().map(weight).sum::<usize>(),
        PyValue::Dict(kv) => 1 + kv.iter().map(|(k, v)| weight(k) + weight(v)).sum::<usize>(),
        PyValue::Object { args, state, .. } => {
            1 + args.iter().map(weight).sum::<usize>() + state.as_deref().map_or(0, weight)
        }
        PyValue::Str(s) => 1 + s.len() / 64,
        PyValue::Bytes(b) | PyValue::BigInt(b) => 1 + b.len() / 64,
        _ => 1,
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<PyValue>,
    marks: Vec<usize>,
    memo: Vec<Option<PyValue>>,
    work: usize,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = self.data.get(self.pos..).ok_or(PickleError::Truncated)?;
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated)?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::BadValue)
    }
    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| PickleError::Truncated)
    }
    fn push(&mut self, v: PyValue) -> Result<(), PickleError> {
        self.work += 1;
        if self.stack.len() >= MAX_STACK || self.work > MAX_WORK {
            return Err(PickleError::LimitExceeded);
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> Result<PyValue, PickleError> {
        if self.marks.last().is_some_and(|&m| self.stack.len() <= m) {
            return Err(PickleError::StackUnderflow);
        }
        self.stack.pop().ok_or(PickleError::StackUnderflow)
    }
    fn top(&mut self) -> Result<&mut PyValue, PickleError> {
        self.stack.last_mut().ok_or(PickleError::StackUnderflow)
    }
    /// The items above the last mark, removing the mark.
    fn pop_mark(&mut self) -> Result<Vec<PyValue>, PickleError> {
        let m = self.marks.pop().ok_or(PickleError::StackUnderflow)?;
        if m > self.stack.len() {
            return Err(PickleError::StackUnderflow);
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, i: usize) -> Result<(), PickleError> {
        if i >= MAX_MEMO {
            return Err(PickleError::LimitExceeded);
        }
        let v = self.stack.last().ok_or(PickleError::StackUnderflow)?.clone();
        self.work += weight(&v);
        if self.work > MAX_WORK {
            return Err(PickleError::LimitExceeded);
        }
        if self.memo.len() <= i {
            self.memo.resize(i + 1, None);
        }
        self.memo[i] = Some(v);
        Ok(())
    }
    fn memo_get(&mut self, i: usize) -> Result<(), PickleError> {
        let v = self.memo.get(i).and_then(|v| v.clone()).ok_or(PickleError::BadMemo)?;
        self.work += weight(&v);
        self.push(v)
    }
    fn str(&mut self, n: usize) -> Result<PyValue, PickleError> {
        let b = self.take(n)?;
        Ok(PyValue::Str(String::from_utf8_lossy(b).into_owned()))
    }
    fn bytes(&mut self, n: usize) -> Result<PyValue, PickleError> {
        Ok(PyValue::Bytes(self.take(n)?.to_vec()))
    }
    fn long(&mut self, n: usize) -> Result<PyValue, PickleError> {
        let b = self.take(n)?;
        if b.is_empty() {
            return Ok(PyValue::Int(0));
        }
        if b.len() <= 8 {
            let neg = b[b.len() - 1] & 0x80 != 0;
            let mut a = [if neg { 0xff } else { 0 }; 8];
            a[..b.len()].copy_from_slice(b);
            return Ok(PyValue::Int(i64::from_le_bytes(a)));
        }
        Ok(PyValue::BigInt(b.to_vec()))
    }
    fn object(class: PyValue, args: Vec<PyValue>) -> PyValue {
        let class = match class {
            PyValue::Global { module, name } => format!("{module}.{name}"),
            other => format!("{other:?}").chars().take(64).collect(),
        };
        PyValue::Object { class, args, state: None }
    }
    fn add_items(target: &mut PyValue, items: Vec<PyValue>) -> Result<(), PickleError> {
        match target {
            PyValue::List(v) | PyValue::Set(v) => v.extend(items),
            // An object with list-like items (a subclass of list): keep them as arguments.
            PyValue::Object { args, .. } => args.extend(items),
            _ => return Err(PickleError::BadValue),
        }
        Ok(())
    }
    fn set_items(target: &mut PyValue, items: Vec<PyValue>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(PickleError::BadValue);
        }
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match target {
                PyValue::Dict(kv) => kv.push((k, v)),
                PyValue::Object { args, .. } => args.push(PyValue::Tuple(vec![k, v])),
                _ => return Err(PickleError::BadValue),
            }
        }
        Ok(())
    }

    fn run(mut self) -> Result<PyValue, PickleError> {
        loop {
            let Ok(op) = self.u8() else {
                return Err(PickleError::NoStop);
            };
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.le::<8>()?; // FRAME: a length hint only
                }
                b'.' => return self.stack.pop().ok_or(PickleError::StackUnderflow),
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(PickleError::LimitExceeded);
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.work += weight(&v);
                    self.push(v)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i = self.line()?.trim().parse().map_err(|_| PickleError::BadMemo)?;
                    self.memo_put(i)?;
                }
                b'q' => {
                    let i = self.u8()? as usize;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.len_u32()?;
                    self.memo_put(i)?;
                }
                b'g' => {
                    let i = self.line()?.trim().parse().map_err(|_| PickleError::BadMemo)?;
                    self.memo_get(i)?;
                }
                b'h' => {
                    let i = self.u8()? as usize;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.len_u32()?;
                    self.memo_get(i)?;
                }
                b'N' => self.push(PyValue::None)?,
                0x88 => self.push(PyValue::Bool(true))?,
                0x89 => self.push(PyValue::Bool(false))?,
                b'I' => {
                    let l = self.line()?.trim();
                    let v = match l {
                        "00" => PyValue::Bool(false),
                        "01" => PyValue::Bool(true),
                        _ => PyValue::Int(l.parse().map_err(|_| PickleError::BadValue)?),
                    };
                    self.push(v)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(PyValue::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(PyValue::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(PyValue::Int(v as i64))?;
                }
                b'L' => {
                    let l = self.line()?.trim().trim_end_matches('L');
                    let v = match l.parse::<i64>() {
                        Ok(i) => PyValue::Int(i),
                        // Too large: kept as its decimal digits.
                        Err(_) if !l.is_empty() && l.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) => {
                            PyValue::BigInt(l.as_bytes().to_vec())
                        }
                        Err(_) => return Err(PickleError::BadValue),
                    };
                    self.push(v)?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                0x8b => {
                    let n = self.len_u32()?;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                b'F' => {
                    let v = self.line()?.trim().parse().map_err(|_| PickleError::BadValue)?;
                    self.push(PyValue::Float(v))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(PyValue::Float(v))?;
                }
                b'S' => {
                    let l = self.line()?.trim();
                    let inner = l.get(1..l.len().saturating_sub(1)).unwrap_or("");
                    self.push(PyValue::Str(inner.to_string()))?;
                }
                b'T' => {
                    let n = self.len_u32()?;
                    let v = self.str(n)?;
                    self.push(v)?;
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.str(n)?;
                    self.push(v)?;
                }
                b'V' => {
                    // Raw-unicode-escape; plain text is what we need of it.
                    let l = self.line()?;
                    self.push(PyValue::Str(l.to_string()))?;
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.str(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.str(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.str(n)?;
                    self.push(v)?;
                }
                b'B' => {
                    let n = self.len_u32()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b']' => self.push(PyValue::List(Vec::new()))?,
                b'a' => {
                    let v = self.pop()?;
                    Self::add_items(self.top()?, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    Self::add_items(self.top()?, items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(PyValue::List(items))?;
                }
                b')' => self.push(PyValue::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(PyValue::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err(PickleError::StackUnderflow);
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(PyValue::Tuple(items))?;
                }
                b'}' => self.push(PyValue::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut d = PyValue::Dict(Vec::new());
                    Self::set_items(&mut d, items)?;
                    self.push(d)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    Self::set_items(self.top()?, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    Self::set_items(self.top()?, items)?;
                }
                0x8f => self.push(PyValue::Set(Vec::new()))?,
                0x90 => {
                    let items = self.pop_mark()?;
                    Self::add_items(self.top()?, items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(PyValue::Set(items))?;
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(PyValue::Global { module, name })?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (PyValue::Str(module), PyValue::Str(name)) = (module, name) else {
                        return Err(PickleError::BadValue);
                    };
                    self.push(PyValue::Global { module, name })?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = match args {
                        PyValue::Tuple(a) => a,
                        _ => return Err(PickleError::BadValue),
                    };
                    self.push(Self::object(class, args))?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let mut args = match args {
                        PyValue::Tuple(a) => a,
                        _ => return Err(PickleError::BadValue),
                    };
                    if !matches!(&kwargs, PyValue::Dict(kv) if kv.is_empty()) {
                        args.push(kwargs);
                    }
                    self.push(Self::object(class, args))?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(PickleError::StackUnderflow);
                    }
                    let class = items.remove(0);
                    self.push(Self::object(class, items))?;
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let items = self.pop_mark()?;
                    self.push(Self::object(PyValue::Global { module, name }, items))?;
                }
                b'b' => {
                    let state = self.pop()?;
                    // BUILD on a plain container (a dict subclass pickled by value) is ignored.
                    if let PyValue::Object { state: s, .. } = self.top()? {
                        *s = Some(Box::new(state));
                    }
                }
                b'P' | b'Q' | 0x82..=0x84 | 0x97 | 0x98 => return Err(PickleError::Unsupported(op)),
                _ => return Err(PickleError::UnknownOpcode(op)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// `{'a': [1, 2.5, None, True, 'x', b'y', (1, 2)], 'big': 2**70, 'neg': -5}` as CPython 3.11
    /// pickles it with protocols 0, 2 and 5.
    const P0: &str = "286470300a56610a70310a286c70320a49310a6146322e350a614e614930310a6156780a70330a61635f636f646563730a656e636f64650a70340a2856790a70350a566c6174696e310a70360a7470370a5270380a612849310a49320a7470390a6173566269670a7031300a4c313138303539313632303731373431313330333432344c0a73566e65670a7031310a492d350a732e";
    const P2: &str = "80027d71002858010000006171015d7102284b014740040000000000004e885801000000787103635f636f646563730a656e636f64650a7104580100000079710558060000006c6174696e3171068671075271084b014b02867109655803000000626967710a8a0900000000000000004058030000006e6567710b4afbffffff752e";
    const P5: &str = "80059544000000000000007d94288c0161945d94284b014740040000000000004e888c017894430179944b014b028694658c03626967948a090000000000000000408c036e6567944afbffffff752e";

    #[test]
    fn cpython_pickles_of_every_protocol() {
        for (proto, h) in [(0, P0), (2, P2), (5, P5)] {
            let v = parse(&hex(h)).unwrap_or_else(|e| panic!("protocol {proto}: {e}"));
            let a = v.get("a").and_then(PyValue::as_list).unwrap_or_else(|| panic!("protocol {proto}: {v:?}"));
            assert_eq!(a[0], PyValue::Int(1), "protocol {proto}");
            assert_eq!(a[1], PyValue::Float(2.5));
            assert!(a[2].is_none());
            assert_eq!(a[3].as_i64(), Some(1), "protocol {proto}: True");
            assert_eq!(a[4].as_str(), Some("x"));
            assert_eq!(a[6], PyValue::Tuple(vec![PyValue::Int(1), PyValue::Int(2)]));
            assert!(matches!(v.get("big"), Some(PyValue::BigInt(_))), "protocol {proto}");
            assert_eq!(v.get("neg").and_then(PyValue::as_i64), Some(-5), "protocol {proto}");
        }
        // Protocol 2 writes bytes as a call to _codecs.encode: recorded, not called.
        let v = parse(&hex(P2)).unwrap();
        let b = &v.get("a").unwrap().as_list().unwrap()[5];
        assert_eq!(b.class_name(), Some("_codecs.encode"));
        let v = parse(&hex(P5)).unwrap();
        assert_eq!(v.get("a").unwrap().as_list().unwrap()[5], PyValue::Bytes(b"y".to_vec()));
    }

    #[test]
    fn objects_are_described_never_built() {
        // A dataclass-like instance: Point(x=1, y='a') via NEWOBJ + BUILD, protocol 4.
        let mut p = vec![0x80, 4, 0x8c, 8];
        p.extend_from_slice(b"__main__");
        p.push(0x94);
        p.extend_from_slice(&[0x8c, 5]);
        p.extend_from_slice(b"Point");
        p.extend_from_slice(&[
            0x94, 0x93, 0x94, b')', 0x81, 0x94, b'}', 0x94, b'(', 0x8c, 1, b'x', b'K', 1, 0x8c, 1, b'y',
        ]);
        p.extend_from_slice(&[0x8c, 1, b'a', b'u', b'b', b'.']);
        let v = parse(&p).unwrap();
        assert_eq!(v.class_name(), Some("__main__.Point"));
        assert_eq!(v.get("x"), Some(&PyValue::Int(1)));
        assert_eq!(v.get("y").and_then(PyValue::as_str), Some("a"));
        // os.system('x') as a REDUCE: only a description of the call.
        let evil = b"cos\nsystem\n(S'x'\ntR.";
        let v = parse(evil).unwrap();
        assert_eq!(v, PyValue::Object { class: "os.system".into(), args: vec![PyValue::Str("x".into())], state: None });
    }

    #[test]
    fn hostile_input_is_an_error() {
        assert_eq!(parse(b""), Err(PickleError::NoStop));
        assert_eq!(
            parse(&[0x80, 5, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(PickleError::Truncated)
        );
        assert_eq!(parse(b"Pabc\n."), Err(PickleError::Unsupported(b'P')));
        assert_eq!(parse(&[0x97, b'.']), Err(PickleError::Unsupported(0x97)));
        assert_eq!(parse(&[0xff]), Err(PickleError::UnknownOpcode(0xff)));
        assert_eq!(parse(b"a."), Err(PickleError::StackUnderflow));
        assert_eq!(parse(b"h\x05."), Err(PickleError::BadMemo));
        // A billion laughs: each level doubles a memoised list.
        let mut bomb = vec![b']', 0x94];
        for i in 0..60u8 {
            bomb.extend_from_slice(&[b'h', i, b'h', i, 0x86, 0x94]);
        }
        bomb.push(b'.');
        assert_eq!(parse(&bomb), Err(PickleError::LimitExceeded));
        for seed in 0..300u32 {
            let junk: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(seed * 31 + 7) >> 2) as u8).collect();
            let _ = parse(&junk);
        }
    }
}
