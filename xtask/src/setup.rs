//! Installs what is missing, and nothing else: nightly with rust-src and bpf-linker 0.10.3 (to
//! build the BPF programs), cargo-fuzz, Debian's prometheus and curl (tests), and the Python
//! virtualenvs for the fixture server and the OTLP receiver, and Debian chroots with the system
//! CPython of other releases (the Python layer's tests). Optionally the real vLLM.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{
    cache,
    util::{self, output, root, run},
};

const BPF_LINKER: &str = "0.10.3";

pub fn toolchain() -> Result<()> {
    let toolchains =
        output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is required (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER) {
        run(Command::new("cargo").args(["install", "bpf-linker", "--version", BPF_LINKER, "--locked", "--force"]))?;
    }
    Ok(())
}

/// The Rust target of Kunpeng (Ascend) hosts, built and unit-tested under qemu-user by the suite.
pub const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// What cross-building for [`AARCH64`] and running its tests here needs: the Rust target, the
/// cross C compiler and C library (linker, C dependencies), qemu-user.
pub fn aarch64() -> Result<()> {
    apt(&["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user"])?;
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == AARCH64) {
        run(Command::new("rustup").args(["target", "add", AARCH64]))?;
    }
    Ok(())
}

/// The environment of a cargo command that builds for [`AARCH64`] and runs its tests under
/// qemu-user.
pub fn aarch64_env(c: &mut Command) {
    c.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER", "qemu-aarch64 -L /usr/aarch64-linux-gnu");
}

pub fn cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut update = util::privileged("apt-get");
    update.args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut update)?;
    let mut install = util::privileged("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install)
}

/// `python3 --version`, part of every virtualenv's key.
fn python_version() -> String {
    output(Command::new("python3").arg("--version")).unwrap_or_default().trim().to_string()
}

/// The virtualenv with the fixture server and load generator's packages: in the cache, keyed by
/// tests/requirements.txt and the interpreter, linked as `.venv`.
pub fn python_env() -> Result<()> {
    let root = root();
    let req = root.join("tests/requirements.txt");
    let want = std::fs::read_to_string(&req).context("tests/requirements.txt")?;
    let name = format!("venv-tests-{}", cache::key(&[want.as_bytes(), python_version().as_bytes()]));
    cache::entry(&name, |venv| {
        cache::link(&root.join(".venv"), venv)?;
        let stamp = venv.join(".requirements");
        if venv.join("bin/python").exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
        run(Command::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&req))?;
        std::fs::write(stamp, want.as_bytes())?;
        Ok(())
    })?;
    Ok(())
}

/// The receivers' virtualenv (in the cache, linked as tests/receivers/.venv) and the
/// Prometheus server binary.
pub fn receivers() -> Result<()> {
    let root = root();
    let req =
        std::fs::read(root.join("tests/receivers/requirements.txt")).context("tests/receivers/requirements.txt")?;
    let name = format!("venv-receivers-{}", cache::key(&[&req, python_version().as_bytes()]));
    cache::entry(&name, |venv| {
        cache::link(&root.join("tests/receivers/.venv"), venv)?;
        run(Command::new(root.join("tests/receivers/venv.sh")).arg(venv).stdout(std::process::Stdio::null()))
    })?;
    run(util::privileged(root.join("tests/receivers/prometheus.sh")).arg("install"))
}

/// Debian releases whose system CPython the Python layer is tested against, in chroots under
/// the cache's chroots/ (.cache/chroots): (suite, interpreter inside).
/// Forky is Debian's testing release: the first with 3.14 (its package, named, beside the
/// default python3). Debootstrap releases that predate it build it with the `sid` script.
pub const CHROOTS: &[(&str, &str, &str)] = &[
    ("bullseye", "/usr/bin/python3.9", "python3"),
    ("trixie", "/usr/bin/python3.13", "python3"),
    ("forky", "/usr/bin/python3.14", "python3.14"),
];

/// Builds each missing chroot with debootstrap (minbase + python3, ~40 s and ~250 MB each), in
/// the cache's `chroots/` (linked as .cache/chroots).
pub fn chroots() -> Result<()> {
    apt(&["debootstrap"])?;
    let root = root();
    std::fs::create_dir_all(cache::dir().join("chroots"))?;
    for (suite, python, package) in CHROOTS {
        let tree = root.join(".cache/chroots").join(suite);
        cache::entry(&format!("chroots/{suite}"), |dir| {
            // An older checkout's chroot (built in the tree) moves into the cache.
            if tree.is_dir() && !tree.is_symlink() && !dir.exists() {
                let _ = std::fs::rename(&tree, dir);
            }
            let stamp = dir.join(".inferscope-ready");
            if stamp.exists() && dir.join(python.trim_start_matches('/')).exists() {
                return Ok(());
            }
            let _ = std::fs::remove_dir_all(dir);
            eprintln!("setup: building a Debian {suite} chroot with its python3 (debootstrap)");
            let mut cmd = util::privileged("debootstrap");
            cmd.args(["--variant=minbase", &format!("--include={package}"), suite])
                .arg(dir)
                .arg("http://deb.debian.org/debian")
                .stdout(std::process::Stdio::null());
            let script = std::path::Path::new("/usr/share/debootstrap/scripts").join(suite);
            if !script.exists() {
                cmd.arg("/usr/share/debootstrap/scripts/sid");
            }
            run(&mut cmd).with_context(|| format!("debootstrap {suite}"))?;
            std::fs::write(&stamp, "")?;
            Ok(())
        })?;
    }
    cache::link(&root.join(".cache/chroots"), &cache::dir().join("chroots"))
}

/// vLLM's release, as tests/vllm/setup.sh installs it by default.
const VLLM_VERSION: &str = "0.32.0";

/// The real vLLM (CPU build) and the tiny model, in the cache (linked as .venv-vllm and
/// .cache/tiny-llama). The venv is keyed by the release, the lock file and the interpreter;
/// its wheelhouse is deleted as it is installed unless INFERSCOPE_VLLM_KEEP_WHEELS=1 (the
/// venv is what is kept).
pub fn vllm() -> Result<()> {
    let root = root();
    let lock = std::fs::read(root.join("tests/vllm/requirements-lock.txt")).unwrap_or_default();
    let key = cache::key(&[VLLM_VERSION.as_bytes(), &lock, python_version().as_bytes()]);
    let model_src = std::fs::read(root.join("tests/vllm/make_model.py")).unwrap_or_default();
    let model = cache::dir().join(format!("tiny-llama-{}", cache::key(&[&model_src, key.as_bytes()])));
    let wheels = cache::dir().join(format!("vllm-wheels-{VLLM_VERSION}"));
    cache::entry(&format!("vllm-{VLLM_VERSION}-{key}"), |venv| {
        cache::link(&root.join(".venv-vllm"), venv)?;
        cache::link(&root.join(".cache/tiny-llama"), &model)?;
        // vLLM's own run-time caches (torch inductor, triton, its config cache: tests/vllm/
        // serve.sh): warm from one run to the next.
        let run_dir = cache::dir().join(format!("vllm-run-{key}"));
        std::fs::create_dir_all(&run_dir)?;
        cache::link(&root.join(".cache/vllm-run"), &run_dir)?;
        // An older checkout's wheelhouse, in the tree, moves into the cache.
        let old_wheels = root.join(".cache/vllm-wheels");
        if old_wheels.is_dir() && !old_wheels.is_symlink() && !wheels.exists() {
            let _ = std::fs::rename(&old_wheels, &wheels);
        }
        let mut cmd = Command::new(root.join("tests/vllm/setup.sh"));
        cmd.arg(venv).env("INFERSCOPE_VLLM_MODEL", &model).env("INFERSCOPE_VLLM_WHEELS", &wheels);
        if std::env::var_os("INFERSCOPE_VLLM_KEEP_WHEELS").is_none() {
            cmd.env("INFERSCOPE_VLLM_KEEP_WHEELS", "0");
        }
        run(&mut cmd)
    })?;
    Ok(())
}

/// Huawei's ms_service_metric, the peer the vLLM tier measures side by side, pinned with the
/// two modules it needs beyond the vLLM venv's.
const MS_SERVICE_METRIC: &[&str] = &["ms-service-metric==26.0.0", "posix_ipc==1.3.2", "bytecode==0.19.1"];

/// ms_service_metric for the vLLM venv, in the cache (linked as .cache/ms-service-metric): a
/// `pip install --target` folder the tests put on vLLM's PYTHONPATH, so the vLLM venv itself
/// stays untouched (its `vllm.general_plugins` entry point is found there as in a venv).
pub fn ms_service_metric() -> Result<()> {
    let root = root();
    let vllm_venv = std::fs::canonicalize(root.join(".venv-vllm")).context(".venv-vllm: run the vLLM setup first")?;
    let base = vllm_venv.to_string_lossy().into_owned();
    let key = cache::key(&[MS_SERVICE_METRIC.join(" ").as_bytes(), base.as_bytes()]);
    cache::entry(&format!("ms-service-metric-{key}"), |dir| {
        cache::link(&root.join(".cache/ms-service-metric"), dir)?;
        let ready = dir.join(".inferscope-ready");
        if ready.exists() {
            return Ok(());
        }
        let site = dir.join("site");
        let _ = std::fs::remove_dir_all(&site);
        run(Command::new(vllm_venv.join("bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&site)
            .args(MS_SERVICE_METRIC))?;
        std::fs::write(&ready, b"")?;
        Ok(())
    })?;
    Ok(())
}

/// SGLang's release, as tests/sglang/setup.sh installs it.
const SGLANG_VERSION: &str = "0.5.23";

/// The real SGLang, in the cache (linked as .venv-sglang): a venv of its own holding sglang and
/// the few modules it needs beyond the vLLM venv's, layered on that venv (tests/sglang/setup.sh
/// says why). Keyed by the release, its lock file and the vLLM venv it stands on.
pub fn sglang() -> Result<()> {
    let root = root();
    let vllm_venv = std::fs::canonicalize(root.join(".venv-vllm")).context(".venv-vllm: run the vLLM setup first")?;
    let lock = std::fs::read(root.join("tests/sglang/requirements-lock.txt")).unwrap_or_default();
    let setup = std::fs::read(root.join("tests/sglang/setup.sh")).unwrap_or_default();
    let base = vllm_venv.to_string_lossy().into_owned();
    let key = cache::key(&[SGLANG_VERSION.as_bytes(), &lock, &setup, base.as_bytes()]);
    let run_dir = cache::dir().join("sglang-run");
    std::fs::create_dir_all(&run_dir)?;
    cache::link(&root.join(".cache/sglang-run"), &run_dir)?;
    cache::entry(&format!("sglang-{SGLANG_VERSION}-{key}"), |venv| {
        cache::link(&root.join(".venv-sglang"), venv)?;
        let mut cmd = Command::new(root.join("tests/sglang/setup.sh"));
        cmd.arg(venv).arg(&vllm_venv).env("INFERSCOPE_SGLANG_VERSION", SGLANG_VERSION);
        run(&mut cmd)
    })?;
    Ok(())
}

/// What a run will build that is not in the cache yet, against the free space: one line and
/// no build when it does not fit. Sizes measured on this project's machines.
pub fn check_disk(with_vllm: bool, fuzz: bool) -> Result<()> {
    const GB: u64 = 1_000_000_000;
    let c = cache::dir();
    let has = |prefix: &str| {
        std::fs::read_dir(&c)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    };
    let t = cache::target();
    let mut need = cache::Need::new();
    // A build directory that exists only rebuilds the checkout's own crates, in place.
    need.add("the build directory", t.join("debug").exists(), 3 * GB);
    need.add("the build directory's rebuild", !t.join("debug").exists(), GB / 2);
    if fuzz {
        need.add("fuzz builds", t.join("fuzz").exists(), 2 * GB);
    }
    need.add("the aarch64 build", t.join(AARCH64).exists(), 2 * GB);
    need.add("virtualenvs", has("venv-tests-") && has("venv-receivers-"), GB / 2);
    let chroots = CHROOTS.iter().all(|(s, ..)| c.join("chroots").join(s).join(".inferscope-ready").exists());
    need.add("Debian chroots", chroots, GB);
    if with_vllm {
        // Installed wheel batch by wheel batch: the venv and one batch at a time.
        need.add("the real vLLM", has("vllm-0"), 7 * GB + GB / 2);
        need.add("the real SGLang", has("sglang-0"), GB / 2);
    }
    need.check()
}

pub fn all(with_vllm: bool) -> Result<()> {
    toolchain()?;
    // gcc: the device tests build stand-in runtime libraries from C; tmux: `inferscope top` is
    // tested in a terminal; docker.io (dockerd, containerd, runc): pods named by real container
    // runtimes; libssl-dev: an HTTPS test server linked statically with OpenSSL.
    apt(&["curl", "gcc", "libc6-dev", "libssl-dev", "tmux", "docker.io"])?;
    aarch64()?;
    python_env()?;
    receivers()?;
    cargo_fuzz()?;
    chroots()?;
    if with_vllm {
        vllm()?;
        ms_service_metric()?;
        sglang()?;
    }
    eprintln!("setup: everything is installed");
    Ok(())
}
