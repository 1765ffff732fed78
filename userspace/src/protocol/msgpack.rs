//! A bounded MessagePack reader: borrows strings and binaries from the input, refuses nesting
//! and element counts past its limits, and never allocates more than the input can back (every
//! claimed length is checked against the bytes left before anything is reserved).

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    /// Every integer that fits `i64`.
    Int(i64),
    /// Unsigned integers above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(&'a str),
    /// Binaries, and strings that are not UTF-8.
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Ext(i8, &'a [u8]),
}

impl<'a> Value<'a> {
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// Non-negative integers.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as u64),
            Value::UInt(u) => Some(*u),
            _ => None,
        }
    }
    /// Floats, and integers read as floats.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
    /// The value under a string key of a map.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(m) => m.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input ends inside a value.
    Truncated,
    /// A byte that starts no MessagePack value (0xc1).
    Reserved,
    /// Nested deeper than the limit.
    TooDeep,
    /// More elements in total than the limit.
    TooMany,
    /// Not an array where one was required.
    NotArray,
}

impl Error {
    pub fn cause(self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::Reserved => "reserved_byte",
            Error::TooDeep => "too_deep",
            Error::TooMany => "too_many_items",
            Error::NotArray => "not_an_array",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cause())
    }
}

impl std::error::Error for Error {}

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// Most array and map elements accepted in one value, all levels together.
pub const MAX_ITEMS: usize = 1 << 20;

/// Decodes one value from the start of `data`; returns it and the number of bytes it used.
pub fn decode(data: &[u8]) -> Result<(Value<'_>, usize), Error> {
    let mut r = Reader { data, pos: 0, items: 0 };
    let v = r.value(0)?;
    Ok((v, r.pos))
}

/// What can be read of an array whose end is missing (a message cut short by a capture gap).
#[derive(Debug, PartialEq)]
pub struct ArrayPrefix<'a> {
    /// The element count its header claims.
    pub len: usize,
    /// The elements complete before the cut, in order.
    pub items: Vec<Value<'a>>,
    /// When the first incomplete element is an array: the count its header claims.
    pub cut_array_len: Option<usize>,
}

/// Reads the complete leading elements of the array at the start of `data`, which may end
/// anywhere. Anything but an array, and any error other than running out of input, is an error.
pub fn decode_array_prefix(data: &[u8]) -> Result<ArrayPrefix<'_>, Error> {
    let mut r = Reader { data, pos: 0, items: 0 };
    let len = match r.u8()? {
        b @ 0x90..=0x9f => (b & 0x0f) as usize,
        0xdc => r.len(2)?,
        0xdd => r.len(4)?,
        _ => return Err(Error::NotArray),
    };
    let mut items = Vec::new();
    let mut cut_array_len = None;
    for _ in 0..len.min(MAX_ITEMS) {
        let at = r.pos;
        match r.value(1) {
            Ok(v) => items.push(v),
            Err(Error::Truncated) => {
                r.pos = at;
                cut_array_len = match r.u8() {
                    Ok(b @ 0x90..=0x9f) => Some((b & 0x0f) as usize),
                    Ok(0xdc) => r.len(2).ok(),
                    Ok(0xdd) => r.len(4).ok(),
                    _ => None,
                };
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ArrayPrefix { len, items, cut_array_len })
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    items: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn be<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn len(&mut self, bytes: usize) -> Result<usize, Error> {
        Ok(match bytes {
            1 => self.u8()? as usize,
            2 => u16::from_be_bytes(self.be()?) as usize,
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }
    fn str(&mut self, n: usize) -> Result<Value<'a>, Error> {
        let b = self.take(n)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => Value::Str(s),
            Err(_) => Value::Bin(b),
        })
    }
    /// Reserves room for `n` elements: each needs at least one more input byte, so a claimed
    /// count larger than what is left is truncation, found before anything is allocated.
    fn count(&mut self, n: usize, per: usize) -> Result<usize, Error> {
        if n.saturating_mul(per) > self.data.len() - self.pos {
            return Err(Error::Truncated);
        }
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return Err(Error::TooMany);
        }
        Ok(n)
    }
    fn array(&mut self, n: usize, depth: usize) -> Result<Value<'a>, Error> {
        let n = self.count(n, 1)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(v))
    }
    fn map(&mut self, n: usize, depth: usize) -> Result<Value<'a>, Error> {
        let n = self.count(n, 2)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let val = self.value(depth + 1)?;
            v.push((k, val));
        }
        Ok(Value::Map(v))
    }
    fn ext(&mut self, n: usize) -> Result<Value<'a>, Error> {
        let t = self.u8()? as i8;
        Ok(Value::Ext(t, self.take(n)?))
    }
    fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let b = self.u8()?;
        Ok(match b {
            0x00..=0x7f => Value::Int(b as i64),
            0x80..=0x8f => return self.map((b & 0x0f) as usize, depth),
            0x90..=0x9f => return self.array((b & 0x0f) as usize, depth),
            0xa0..=0xbf => return self.str((b & 0x1f) as usize),
            0xc0 => Value::Nil,
            0xc1 => return Err(Error::Reserved),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (b - 0xc4))?;
                Value::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (b - 0xc7))?;
                return self.ext(n);
            }
            0xca => Value::Float(f32::from_be_bytes(self.be()?) as f64),
            0xcb => Value::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Value::Int(self.u8()? as i64),
            0xcd => Value::Int(u16::from_be_bytes(self.be()?) as i64),
            0xce => Value::Int(u32::from_be_bytes(self.be()?) as i64),
            0xcf => {
                let u = u64::from_be_bytes(self.be()?);
                i64::try_from(u).map(Value::Int).unwrap_or(Value::UInt(u))
            }
            0xd0 => Value::Int(self.u8()? as i8 as i64),
            0xd1 => Value::Int(i16::from_be_bytes(self.be()?) as i64),
            0xd2 => Value::Int(i32::from_be_bytes(self.be()?) as i64),
            0xd3 => Value::Int(i64::from_be_bytes(self.be()?)),
            0xd4..=0xd8 => return self.ext(1 << (b - 0xd4)),
            0xd9..=0xdb => {
                let n = self.len(1 << (b - 0xd9))?;
                return self.str(n);
            }
            0xdc | 0xdd => {
                let n = self.len(if b == 0xdc { 2 } else { 4 })?;
                return self.array(n, depth);
            }
            0xde | 0xdf => {
                let n = self.len(if b == 0xde { 2 } else { 4 })?;
                return self.map(n, depth);
            }
            0xe0..=0xff => Value::Int(b as i8 as i64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(decode(&[0x05]).unwrap(), (Value::Int(5), 1));
        assert_eq!(decode(&[0xff]).unwrap().0, Value::Int(-1));
        assert_eq!(decode(&[0xcd, 0x01, 0x27]).unwrap().0, Value::Int(295));
        assert_eq!(decode(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap().0, Value::UInt(u64::MAX));
        assert_eq!(decode(&[0xd0, 0x80]).unwrap().0, Value::Int(-128));
        assert_eq!(decode(&[0xc0]).unwrap().0, Value::Nil);
        assert_eq!(decode(&[0xc3]).unwrap().0, Value::Bool(true));
        let mut f = vec![0xcb];
        f.extend_from_slice(&1.5f64.to_be_bytes());
        assert_eq!(decode(&f).unwrap().0, Value::Float(1.5));
        assert_eq!(decode(b"\xa3abc").unwrap().0, Value::Str("abc"));
        assert_eq!(decode(b"\xd9\x03abc").unwrap().0, Value::Str("abc"));
        assert_eq!(decode(b"\xa2\xff\xfe").unwrap().0, Value::Bin(b"\xff\xfe"));
        assert_eq!(decode(b"\xd4\x01\x07").unwrap().0, Value::Ext(1, b"\x07"));
    }

    #[test]
    fn containers() {
        // {"type": 1, "timestamp": 2.0} inside an array, as vLLM encodes an event list.
        let mut b = vec![0x91, 0x82, 0xa4];
        b.extend_from_slice(b"type");
        b.push(0x01);
        b.push(0xa9);
        b.extend_from_slice(b"timestamp");
        b.push(0xcb);
        b.extend_from_slice(&2.0f64.to_be_bytes());
        let (v, n) = decode(&b).unwrap();
        assert_eq!(n, b.len());
        let ev = &v.as_array().unwrap()[0];
        assert_eq!(ev.get("type"), Some(&Value::Int(1)));
        assert_eq!(ev.get("timestamp").and_then(Value::as_f64), Some(2.0));
        assert_eq!(
            decode(&[0xdc, 0x00, 0x02, 0x01, 0x02]).unwrap().0,
            Value::Array(vec![Value::Int(1), Value::Int(2)])
        );
    }

    #[test]
    fn an_array_cut_short_yields_its_complete_leading_elements() {
        // ["req-1", [10, 11, 12, 13], 7] cut inside the inner array.
        let full = b"\x93\xa5req-1\x94\x0a\x0b\x0c\x0d\x07";
        let p = decode_array_prefix(&full[..10]).unwrap();
        assert_eq!(p.len, 3);
        assert_eq!(p.items, vec![Value::Str("req-1")]);
        assert_eq!(p.cut_array_len, Some(4));
        let whole = decode_array_prefix(full).unwrap();
        assert_eq!(whole.items.len(), 3);
        assert_eq!(whole.cut_array_len, None);
        assert_eq!(decode_array_prefix(b"\xa1x"), Err(Error::NotArray));
        assert_eq!(decode_array_prefix(b""), Err(Error::Truncated));
        // A wide header over little data: no allocation from the claim.
        let p = decode_array_prefix(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap();
        assert_eq!((p.len, p.items.len()), (u32::MAX as usize, 1));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_crash() {
        assert_eq!(decode(&[]), Err(Error::Truncated));
        assert_eq!(decode(&[0xc1]), Err(Error::Reserved));
        // A 4-billion-element array claimed by 5 bytes: refused before allocating.
        assert_eq!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Err(Error::Truncated));
        assert_eq!(decode(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']), Err(Error::Truncated));
        assert_eq!(decode(&[0x92, 0x01]), Err(Error::Truncated));
        let deep = vec![0x91; MAX_DEPTH + 2];
        assert_eq!(decode(&deep), Err(Error::TooDeep));
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode(&junk);
        }
    }
}
