//! The pickle machine: its stack, marks and memo, the limits and copy budget that bound them,
//! and the interpretation of each opcode.

use super::{PickleError, PyValue};

const MAX_STACK: usize = 10_000;
const MAX_MEMO: usize = 1 << 16;
/// Values created or copied, in total (memo copies count their size).
const MAX_WORK: usize = 1 << 21;

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

pub(super) struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<PyValue>,
    marks: Vec<usize>,
    memo: Vec<Option<PyValue>>,
    work: usize,
}

impl<'a> Vm<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Vm { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: Vec::new(), work: 0 }
    }
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

    pub(super) fn run(mut self) -> Result<PyValue, PickleError> {
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
