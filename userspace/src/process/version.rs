//! Release numbers of installed packages, interpreters and config bounds, read one way:
//! `"0.11.0rc1"` is 0.11.0, `"2.5.1+cu121"` is 2.5.1, `"python3.12"` names 3.12.

/// The numeric parts of a version, up to the first part without leading digits (separators
/// `.`, `+`, `-`): `"0.11.0rc1"` -> [0, 11, 0], `"1.2.post3"` -> [1, 2].
pub fn parts(v: &str) -> Vec<u64> {
    v.split(['.', '+', '-'])
        .map_while(|p| {
            let end = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
            p[..end].parse().ok()
        })
        .collect()
}

/// (major, minor, patch) of a release; patch 0 when absent; None without a minor.
pub fn triple(v: &str) -> Option<(u16, u16, u16)> {
    let p = parts(v);
    let n = |i: usize| p.get(i).and_then(|x| u16::try_from(*x).ok());
    Some((n(0)?, n(1)?, if p.len() > 2 { n(2)? } else { 0 }))
}

/// A key that orders versions as releases do (trailing zeros do not count: 3.12 == 3.12.0).
pub fn key(v: &str) -> Vec<u64> {
    let mut k = parts(v);
    while k.last() == Some(&0) {
        k.pop();
    }
    k
}

/// The CPython (3, minor) a file is named for (`libpython3.12.so.1.0`, `python3.11`).
pub fn python_of_name(name: &str) -> Option<(u32, u32)> {
    let i = name.find("python3.")?;
    let minor = *parts(&name[i + "python".len()..]).get(1)?;
    Some((3, u32::try_from(minor).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_read_one_way() {
        assert_eq!(triple("0.11.0rc1"), Some((0, 11, 0)));
        assert_eq!(triple("2.5.1+cu121"), Some((2, 5, 1)));
        assert_eq!(triple("0.6"), Some((0, 6, 0)));
        assert_eq!(triple("garbage"), None);
        assert_eq!(triple("7"), None);
        assert!(key("3.12") == key("3.12.0") && key("3.9") < key("3.10") && key("0.10.1") < key("0.11"));
        assert_eq!(python_of_name("libpython3.12.so.1.0"), Some((3, 12)));
        assert_eq!(python_of_name("python3.11"), Some((3, 11)));
        assert_eq!(python_of_name("python3"), None);
        assert_eq!(python_of_name("python3.9"), Some((3, 9)));
        assert_eq!(python_of_name("libpython3.12d.so"), Some((3, 12)));
        assert_eq!(python_of_name("libtorch_python.so"), None);
    }
}
