//! Installs what is missing, and nothing else: nightly with rust-src and bpf-linker 0.10.3 (to
//! build the BPF programs), cargo-fuzz, Debian's prometheus and curl (tests), and the Python
//! virtualenvs for the fixture server and the OTLP receiver, and Debian chroots with the system
//! CPython of other releases (the Python layer's tests). Optionally the real vLLM.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{self, output, root, run};

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

/// The virtualenv with the fixture server and load generator's packages.
pub fn python_env() -> Result<()> {
    let root = root();
    let req = root.join("tests/requirements.txt");
    let venv = root.join(".venv");
    let stamp = venv.join(".requirements");
    let want = std::fs::read_to_string(&req).context("tests/requirements.txt")?;
    if util::python().exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(util::python())
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
        .arg(&req))?;
    std::fs::write(stamp, want)?;
    Ok(())
}

/// The receivers' virtualenv and the Prometheus server binary.
pub fn receivers() -> Result<()> {
    let root = root();
    run(Command::new(root.join("tests/receivers/venv.sh")).stdout(std::process::Stdio::null()))?;
    run(util::privileged(root.join("tests/receivers/prometheus.sh")).arg("install"))
}

/// Debian releases whose system CPython the Python layer is tested against, in chroots under
/// .cache/chroots: (suite, interpreter inside).
/// Forky is Debian's testing release: the first with 3.14 (its package, named, beside the
/// default python3). Debootstrap releases that predate it build it with the `sid` script.
pub const CHROOTS: &[(&str, &str, &str)] = &[
    ("bullseye", "/usr/bin/python3.9", "python3"),
    ("trixie", "/usr/bin/python3.13", "python3"),
    ("forky", "/usr/bin/python3.14", "python3.14"),
];

/// Builds each missing chroot with debootstrap (minbase + python3, ~40 s and ~250 MB each).
pub fn chroots() -> Result<()> {
    apt(&["debootstrap"])?;
    for (suite, python, package) in CHROOTS {
        let dir = root().join(".cache/chroots").join(suite);
        let stamp = dir.join(".inferscope-ready");
        if stamp.exists() && dir.join(python.trim_start_matches('/')).exists() {
            continue;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.parent().context("chroot dir")?)?;
        eprintln!("setup: building a Debian {suite} chroot with its python3 (debootstrap)");
        let mut cmd = util::privileged("debootstrap");
        cmd.args(["--variant=minbase", &format!("--include={package}"), suite])
            .arg(&dir)
            .arg("http://deb.debian.org/debian")
            .stdout(std::process::Stdio::null());
        let script = std::path::Path::new("/usr/share/debootstrap/scripts").join(suite);
        if !script.exists() {
            cmd.arg("/usr/share/debootstrap/scripts/sid");
        }
        run(&mut cmd).with_context(|| format!("debootstrap {suite}"))?;
        std::fs::write(&stamp, "")?;
    }
    Ok(())
}

pub fn vllm() -> Result<()> {
    run(&mut Command::new(root().join("tests/vllm/setup.sh")))
}

pub fn all(with_vllm: bool) -> Result<()> {
    toolchain()?;
    // gcc: the device tests build stand-in runtime libraries from C.
    apt(&["curl", "gcc", "libc6-dev"])?;
    python_env()?;
    receivers()?;
    cargo_fuzz()?;
    chroots()?;
    if with_vllm {
        vllm()?;
    }
    eprintln!("setup: everything is installed");
    Ok(())
}
