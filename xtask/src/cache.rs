//! The developer cache: everything heavy that does not depend on the checkout's own code, built
//! once per machine and shared by every checkout on it (the dev tree, each CI clone):
//!
//! | entry                       | what                                       | keyed by                         |
//! |-----------------------------|--------------------------------------------|----------------------------------|
//! | `target/`                   | the cargo build directory (CARGO_TARGET_DIR) | cargo's own fingerprints        |
//! | `venv-tests-KEY/`           | the fixture server's virtualenv (`.venv`)  | tests/requirements.txt, python   |
//! | `venv-receivers-KEY/`       | the OTLP receiver's (`tests/receivers/.venv`) | its requirements.txt, python  |
//! | `vllm-VERSION-KEY/`         | the real vLLM, CPU build (`.venv-vllm`)    | version, lock file, python       |
//! | `vllm-wheels-VERSION/`      | its wheelhouse (kept only when asked)      | version                          |
//! | `tiny-llama-KEY/`           | the tiny local model (`.cache/tiny-llama`) | make_model.py, vLLM's key        |
//! | `sglang-VERSION-KEY/`       | the real SGLang, over the vLLM venv (`.venv-sglang`) | version, lock, setup.sh, vLLM venv |
//! | `sglang-run/`               | SGLang's scratch: ZeroMQ sockets, caches (`.cache/sglang-run`) | -        |
//! | `chroots/SUITE/`            | Debian chroots (`.cache/chroots`)          | the suite                        |
//!
//! Where: `INFERSCOPE_DEV_CACHE`, default `/var/cache/inferscope-dev`. The checkout reaches the
//! entries through symbolic links at the paths it always used (`.venv` -> the cache's
//! `venv-tests-KEY`), so every script and test finds them where it did. bpf-linker, cargo-fuzz
//! and the nightly toolchain live in `~/.cargo` and `~/.rustup`, shared the same way.
//!
//! Locks (`locks/NAME.lock`, flock): an entry is built under an exclusive lock and used under a
//! shared one, held until the xtask that uses it exits, so two checkouts never build the same
//! entry at once and `cargo xtask clean --cache` never removes one in use. The build directory
//! has one lock for a whole run (`build.lock`): the suite's binaries live there and its
//! integration tests count kernel-wide BPF links, so one run at a time per machine.

use std::{
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};

/// Locks held until this process exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

pub fn dir() -> PathBuf {
    std::env::var_os("INFERSCOPE_DEV_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/inferscope-dev"))
}

/// The cargo build directory every xtask command uses: CARGO_TARGET_DIR when the developer set
/// one, else the cache's `target/`.
pub fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| dir().join("target"))
}

/// Sets CARGO_TARGET_DIR for every cargo this process starts (once, before any thread).
pub fn use_shared_target() {
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("CARGO_TARGET_DIR", dir().join("target")) };
    }
    // `cargo xtask` (cargo run) gives this process the variables it gives a package it runs,
    // CARGO_MANIFEST_DIR among them: the clone's path. Build scripts that watch them (ring's
    // `rerun-if-env-changed=CARGO_MANIFEST_DIR`) then ran again in every clone, and ring,
    // rustls, kube and everything above them were rebuilt on every CI run and again after
    // every plain `cargo build`. The cargo processes started from here see what a shell sees.
    let set_by_cargo_run: Vec<_> = std::env::vars_os()
        .filter_map(|(k, _)| {
            let name = k.to_str()?;
            (name.starts_with("CARGO_PKG_")
                || matches!(
                    name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                ))
            .then(|| k.clone())
        })
        .collect();
    for k in set_by_cargo_run {
        // SAFETY: as above.
        unsafe { std::env::remove_var(k) };
    }
}

/// A short stable key for what an entry is built from (FNV-1a, 64 bits).
pub fn key(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

fn lock_file(name: &str) -> Result<File> {
    let locks = dir().join("locks");
    fs::create_dir_all(&locks).with_context(|| {
        format!("creating the developer cache {} (set INFERSCOPE_DEV_CACHE to a writable directory)", dir().display())
    })?;
    let p = locks.join(format!("{name}.lock"));
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .with_context(|| p.display().to_string())
}

fn holder(f: &mut File) {
    let _ = f.set_len(0);
    let _ = writeln!(f, "pid {} in {}", std::process::id(), crate::util::root().display());
}

fn who(name: &str) -> String {
    fs::read_to_string(dir().join("locks").join(format!("{name}.lock"))).unwrap_or_default().trim().to_string()
}

/// Takes `name`'s lock exclusively, saying whom it waits for.
fn exclusive(name: &str) -> Result<File> {
    let mut f = lock_file(name)?;
    if f.try_lock().is_err() {
        eprintln!("cache: waiting for {name}: another xtask holds it ({})", who(name));
        f.lock().with_context(|| format!("locking {name}"))?;
    }
    holder(&mut f);
    Ok(f)
}

/// The build directory, for the whole of this run, and the checkout's sources made right for
/// it (see [`prepare_sources`]).
pub fn lock_build() -> Result<()> {
    let f = exclusive("build")?;
    HELD.lock().expect("lock list").push(f);
    let root = crate::util::root();
    let (kept, touched) = prepare_sources(&root);
    if kept + touched > 0 {
        eprintln!(
            "cache: the build directory was last used by another checkout: {kept} file(s) as it built them keep \
             their times, {touched} changed file(s) are newer than anything built"
        );
    }
    Ok(())
}

/// Makes sure the entry `name` exists: `build` runs under the entry's exclusive lock (it must
/// be idempotent: it finds what an earlier run left and completes it), then the lock is kept
/// shared until this process exits. Returns the entry's path.
pub fn entry(name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let path = dir().join(name);
    let lock_name = name.replace('/', "-");
    let f = exclusive(&lock_name)?;
    build(&path).with_context(|| format!("building {}", path.display()))?;
    f.lock_shared().with_context(|| format!("locking {name} shared"))?;
    HELD.lock().expect("lock list").push(f);
    Ok(path)
}

/// Makes `at` (a path in the checkout) a symbolic link to `to` (in the cache). What an older
/// checkout left there as a real directory moves into the cache when the cache has nothing at
/// `to` yet (a rename: the same file system), else it is removed.
pub fn link(at: &Path, to: &Path) -> Result<()> {
    if let Ok(cur) = fs::read_link(at) {
        if cur == to {
            return Ok(());
        }
        fs::remove_file(at).with_context(|| format!("removing the old link {}", at.display()))?;
    } else if at.is_dir() {
        if !to.exists() && fs::rename(at, to).is_ok() {
            eprintln!("cache: moved {} into {}", at.display(), to.display());
            fix_venv_scripts(at, to);
        } else {
            eprintln!("cache: removing {} (the cache has its own at {})", at.display(), to.display());
            fs::remove_dir_all(at).with_context(|| format!("removing {}", at.display()))?;
        }
    } else if at.exists() {
        fs::remove_file(at)?;
    }
    if let Some(parent) = at.parent() {
        fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(to, at).with_context(|| format!("linking {} -> {}", at.display(), to.display()))
}

/// A virtualenv that moved: its console scripts name their interpreter by its old path.
fn fix_venv_scripts(from: &Path, to: &Path) {
    if !to.join("pyvenv.cfg").exists() {
        return;
    }
    let (old, new) = (format!("#!{}/bin/", from.display()), format!("#!{}/bin/", to.display()));
    for e in fs::read_dir(to.join("bin")).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_symlink() || !p.is_file() {
            continue;
        }
        let Ok(bytes) = fs::read(&p) else { continue };
        if bytes.starts_with(old.as_bytes()) {
            let mut out = new.clone().into_bytes();
            out.extend_from_slice(&bytes[old.len()..]);
            let _ = fs::write(&p, out);
        }
    }
    for script in ["activate", "activate.csh", "activate.fish"] {
        let p = to.join("bin").join(script);
        if let Ok(s) = fs::read_to_string(&p) {
            let _ = fs::write(&p, s.replace(&from.display().to_string(), &to.display().to_string()));
        }
    }
}

/// Bytes under `p`, not following links (what `du -sb` says); 0 when it is not there.
pub fn size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else { return 0 };
    if !m.is_dir() {
        return m.len();
    }
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                n += m.blocks() * 512;
            }
        }
    }
    n
}

/// (free, total) bytes of the file system holding `p` (or its nearest existing parent).
pub fn free(p: &Path) -> (u64, u64) {
    let mut q = p.to_path_buf();
    while !q.exists() {
        if !q.pop() {
            break;
        }
    }
    let Ok(c) = std::ffi::CString::new(q.as_os_str().as_encoded_bytes()) else { return (0, 0) };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    (s.f_bavail as u64 * s.f_frsize as u64, s.f_blocks as u64 * s.f_frsize as u64)
}

pub fn gb(b: u64) -> String {
    format!("{:.1} GB", b as f64 / 1e9)
}

/// Whether an entry is used by a running xtask now (its lock is held).
fn in_use(name: &str) -> bool {
    let Ok(f) = lock_file(&name.replace('/', "-")) else { return false };
    let busy = f.try_lock().is_err();
    let _ = f.unlock();
    busy
}

/// The entries present in the cache, with their size.
fn entries() -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = Vec::new();
    for e in fs::read_dir(dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // setup.sh's own lock beside the vLLM venv.
        if name == "locks" || name.ends_with(".lock") {
            continue;
        }
        if name == "chroots" {
            for c in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                v.push((format!("chroots/{}", c.file_name().to_string_lossy()), size(&c.path())));
            }
            continue;
        }
        v.push((name, size(&e.path())));
    }
    v.sort();
    v
}

/// The checkout's own build outputs (removed by `cargo xtask clean` and by CI at exit).
fn own_outputs() -> Vec<PathBuf> {
    let root = crate::util::root();
    vec![root.join("target"), root.join("fuzz/target")]
}

/// `cargo xtask disk`: what the checkout and the cache hold, and the free space.
pub fn disk() -> Result<()> {
    let root = crate::util::root();
    println!("checkout {}:", root.display());
    for (rel, what) in [
        ("target", "this checkout's build outputs (xtask, reports); `cargo xtask clean`"),
        ("fuzz/target", "fuzz builds of older layouts; `cargo xtask clean`"),
        (".venv", "the fixture server's virtualenv"),
        (".venv-vllm", "the real vLLM"),
        (".venv-sglang", "the real SGLang (over the vLLM venv)"),
        ("tests/receivers/.venv", "the OTLP receiver's virtualenv"),
        (".cache/chroots", "Debian chroots"),
        (".cache/tiny-llama", "the tiny model"),
        (".cache/vllm-wheels", "vLLM's wheelhouse (older layout)"),
    ] {
        let p = root.join(rel);
        match fs::read_link(&p) {
            Ok(to) => println!("  {rel:<28} -> {}", to.display()),
            Err(_) if p.exists() => println!("  {rel:<28} {:>9}  {what}", gb(size(&p))),
            Err(_) => {}
        }
    }
    println!("cache {} (INFERSCOPE_DEV_CACHE):", dir().display());
    let mut total = 0;
    for (name, n) in entries() {
        total += n;
        let note = if name == "target" {
            "the shared build directory; `cargo xtask clean`"
        } else if in_use(&name) {
            "in use now"
        } else {
            ""
        };
        println!("  {name:<28} {:>9}  {note}", gb(n));
    }
    println!("  {:<28} {:>9}  `clean` removes the build directory, `clean --cache` the rest", "(all)", gb(total));
    for p in [root.clone(), dir()] {
        let (f, t) = free(&p);
        println!("free beside {}: {} of {}", p.display(), gb(f), gb(t));
    }
    Ok(())
}

/// `cargo xtask clean [--cache]`: the checkout's build outputs and the shared build directory;
/// with `cache`, every cache entry not in use as well.
pub fn clean(cache: bool) -> Result<()> {
    let mut freed = 0;
    let mut remove = |p: &Path| -> Result<()> {
        if fs::symlink_metadata(p).is_err() {
            return Ok(());
        }
        let n = size(p);
        fs::remove_dir_all(p).or_else(|_| fs::remove_file(p)).with_context(|| format!("removing {}", p.display()))?;
        eprintln!("clean: removed {} ({})", p.display(), gb(n));
        freed += n;
        Ok(())
    };
    for p in own_outputs() {
        remove(&p)?;
    }
    let build = lock_file("build")?;
    if build.try_lock().is_err() {
        eprintln!("clean: the shared build directory is in use ({}); left alone", who("build"));
    } else if target() == dir().join("target") {
        remove(&target())?;
    } else {
        eprintln!("clean: {} (CARGO_TARGET_DIR) is yours: left alone", target().display());
    }
    if cache {
        for (name, _) in entries() {
            if name == "target" {
                continue;
            }
            let lock = lock_file(&name.replace('/', "-"))?;
            if lock.try_lock().is_err() {
                eprintln!("clean: {name} is in use ({}); left alone", who(&name.replace('/', "-")));
                continue;
            }
            remove(&dir().join(&name))?;
        }
    }
    eprintln!("clean: {} freed", gb(freed));
    Ok(())
}

/// What a run will write, in bytes, for what is not built yet: checked against the free space
/// before anything is built, so that no run dies half-way with ENOSPC.
pub struct Need {
    parts: Vec<(String, u64)>,
}

impl Need {
    pub fn new() -> Self {
        Need { parts: Vec::new() }
    }

    /// `bytes` more when `ready` is false.
    pub fn add(&mut self, what: &str, ready: bool, bytes: u64) {
        if !ready {
            self.parts.push((what.to_string(), bytes));
        }
    }

    /// Fails with one line when the cache's file system has less free than needed (plus 1 GB
    /// of room for logs, scratch directories and the tests' own files).
    pub fn check(&self) -> Result<()> {
        let need: u64 = self.parts.iter().map(|p| p.1).sum::<u64>() + 1_000_000_000;
        let (free, _) = free(&dir());
        if free >= need {
            return Ok(());
        }
        let what: Vec<String> = self.parts.iter().map(|(w, b)| format!("{w} {}", gb(*b))).collect();
        let own: u64 = own_outputs().iter().map(|p| size(p)).sum::<u64>() + size(&target());
        let cached: u64 = entries().iter().filter(|e| e.0 != "target").map(|e| e.1).sum();
        bail!(
            "not enough disk: this run needs {} ({}, 1 GB of room) and {} is free beside {}, {} short; \
             `cargo xtask clean` would free {} (build outputs), `cargo xtask clean --cache` {} more \
             (`cargo xtask disk` shows what is where)",
            gb(need),
            what.join(", "),
            gb(free),
            dir().display(),
            gb(need - free),
            gb(own),
            gb(cached)
        )
    }
}

/// Where the last complete `cargo xtask test` wrote what its sources were: (content key,
/// modification time) per file. Inside the build directory: cleaned with it.
fn sources_manifest() -> PathBuf {
    target().join(".inferscope-sources")
}

/// The checkout's files as git knows them (tracked, and untracked but not ignored).
fn source_files(root: &Path) -> Vec<PathBuf> {
    let out = crate::util::output(std::process::Command::new("git").current_dir(root).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))
    .unwrap_or_default();
    out.split('\0').filter(|p| !p.is_empty()).map(|p| root.join(p)).filter(|p| p.is_file()).collect()
}

fn content_key(p: &Path) -> Option<String> {
    fs::read(p).ok().map(|b| key(&[&b]))
}

/// Cargo decides what to rebuild by modification time: sources newer than what was built
/// from them. In a build directory shared by several checkouts that is not enough: a checkout
/// made before another one built different sources would take that build for its own. So when
/// the last checkout to hold the build directory was another one, before anything is built:
/// each file whose content is what the last complete test run built from gets that run's time
/// back (older than what it built: no rebuild needed, and a fresh clone of the same commit
/// rebuilds nothing), and every other file is made newer than anything built (rebuilt). The
/// record is then removed, so that a run that stops half-way, or any other build, leaves none
/// behind; [`record_sources`] writes it again when a test run has built everything. Returns
/// (files given their old time back, files made new).
fn prepare_sources(root: &Path) -> (usize, usize) {
    let manifest = sources_manifest();
    let last_root = target().join(".inferscope-last-checkout");
    let text = fs::read_to_string(&manifest).unwrap_or_default();
    let _ = fs::remove_file(&manifest);
    let last = fs::read_to_string(&last_root).unwrap_or_default();
    let _ = fs::create_dir_all(target());
    let _ = fs::write(&last_root, root.display().to_string());
    if last == root.display().to_string() {
        // The same checkout built last: its files' times are cargo's to judge.
        return (0, 0);
    }
    let known: std::collections::HashMap<&str, (&str, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            let (k, t, p) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
            Some((p, (k, t)))
        })
        .collect();
    let now = std::time::SystemTime::now();
    let (mut kept, mut touched) = (0, 0);
    // Directories too (cargo reads a directory named in rerun-if-changed by its entries' and
    // its own times): each gets the newest time of the files under it.
    let mut dirs: std::collections::HashMap<PathBuf, std::time::SystemTime> = std::collections::HashMap::new();
    for p in source_files(root) {
        let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
        let old = known
            .get(rel.as_str())
            .filter(|(k, _)| content_key(&p).as_deref() == Some(*k))
            .map(|(_, t)| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(*t));
        let Ok(f) = File::open(&p) else { continue };
        let t = old.unwrap_or(now);
        if f.set_modified(t).is_ok() {
            if old.is_some() {
                kept += 1;
            } else {
                touched += 1;
            }
            let mut d = p.parent();
            while let Some(dir) = d.filter(|d| d.starts_with(root) && *d != root) {
                let e = dirs.entry(dir.to_path_buf()).or_insert(t);
                *e = (*e).max(t);
                d = dir.parent();
            }
        }
    }
    for (d, t) in dirs {
        if let Ok(f) = File::open(&d) {
            let _ = f.set_modified(t);
        }
    }
    (kept, touched)
}

/// After a run that built everything the suite uses (debug, tests, fuzz) from this checkout:
/// what each file was, and its modification time.
pub fn record_sources(root: &Path) {
    let mut out = String::new();
    for p in source_files(root) {
        let (Some(k), Ok(m)) = (content_key(&p), fs::metadata(&p).and_then(|m| m.modified())) else { continue };
        let t = m.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
        if !rel.contains(['\t', '\n']) {
            out += &format!("{k}\t{t}\t{rel}\n");
        }
    }
    let _ = fs::write(sources_manifest(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_tell_inputs_apart() {
        assert_eq!(key(&[b"a"]), key(&[b"a"]));
        assert_ne!(key(&[b"a", b"b"]), key(&[b"ab"]));
        assert_ne!(key(&[b"flask==3"]), key(&[b"flask==4"]));
        assert_eq!(key(&[]).len(), 12);
    }
}
