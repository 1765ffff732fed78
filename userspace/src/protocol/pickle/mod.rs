//! A pickle reader that executes nothing: it interprets the opcodes of protocols 0 to 5 into
//! plain values. `GLOBAL`/`STACK_GLOBAL` only name a class, and `REDUCE`/`NEWOBJ`/`BUILD` record
//! that class with its arguments and state as a [`PyValue::Object`]; no code is ever looked up or
//! called. Lengths come from the peer: each is checked against the bytes left before anything is
//! allocated, and memo reuse (which copies values) is charged against a budget, so a crafted
//! input ends in an error, never in a crash or an exhausted heap.
//!
//! This file holds the errors and [`parse`]; `value.rs` the value model ([`PyValue`]), `vm.rs`
//! the machine that interprets the opcodes.

mod value;
mod vm;

use std::fmt;

pub use value::PyValue;

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

/// Parses one pickle from the start of `data`.
pub fn parse(data: &[u8]) -> Result<PyValue, PickleError> {
    vm::Vm::new(data).run()
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
