//! The values a pickle is read into: plain data, and classes and instances described by name,
//! never built.

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
