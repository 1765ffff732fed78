//! What a process has mapped (/proc/PID/maps), and the path through which inferscope opens a
//! mapped file (through /proc/PID/root, so it works for processes in containers).

use std::path::{Path, PathBuf};

/// One line of /proc/PID/maps that maps a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub exec: bool,
    pub file: FileKey,
    /// The path inside the process's mount namespace.
    pub path: String,
}

/// A file's identity: device and inode (paths differ between containers and the host).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: String,
    pub inode: u64,
}

/// Parses /proc/PID/maps; lines that map no file are skipped, malformed ones too.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("").trim_start();
        let Ok(inode) = inode.parse::<u64>() else { continue };
        if inode == 0 || !path.starts_with('/') {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) =
            (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16), u64::from_str_radix(off, 16))
        else {
            continue;
        };
        out.push(Mapping {
            start,
            end,
            offset,
            exec: perms.as_bytes().get(2) == Some(&b'x'),
            file: FileKey { dev: dev.to_string(), inode },
            path: path.strip_suffix(" (deleted)").unwrap_or(path).to_string(),
        });
    }
    out
}

pub fn read_maps(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|t| parse_maps(&t)).unwrap_or_default()
}

/// The path through which inferscope opens a file a process maps (its root may be a
/// container's).
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    let inside = PathBuf::from(format!("/proc/{pid}/root{path}"));
    // A process in a chroot (same mount namespace, another root) has its files listed in
    // /proc/PID/maps by their path from our root already.
    if !inside.exists() && Path::new(path).exists() { PathBuf::from(path) } else { inside }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c2a00000-55d0c2a28000 r--p 00000000 fd:01 1316  /usr/bin/python3.11
55d0c2a28000-55d0c2d1a000 r-xp 00028000 fd:01 1316  /usr/bin/python3.11
7f1a2c000000-7f1a2c021000 rw-p 00000000 00:00 0 
7f1a30200000-7f1a30290000 r-xp 00010000 00:2a 99 /opt/lib/libcuda.so.1 (deleted)
7ffd5e1f2000-7ffd5e213000 rw-p 00000000 00:00 0                          [stack]
garbage line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_keep_file_mappings_only() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 3);
        assert!(!m[0].exec && m[1].exec);
        assert_eq!(m[1].offset, 0x28000);
        assert_eq!(m[2].path, "/opt/lib/libcuda.so.1");
        assert_eq!(m[2].file, FileKey { dev: "00:2a".into(), inode: 99 });
    }
}
