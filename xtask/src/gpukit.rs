//! `cargo xtask gpu-kit`: everything a GPU host needs to prove the device layer, in one folder
//! under 64 MiB (target/gpu-kit in the checkout): the release binary without its debug
//! sections, the check (tests/gpu/gpu-check, Python with PyTorch: nothing is fetched there) and
//! a README. Prints how to run it, what to bring along and the time it takes.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cache, setup, util};

/// What a lent GPU host accepts, at most.
const LIMIT: u64 = 64 << 20;

pub fn run() -> Result<()> {
    cache::lock_build()?;
    setup::toolchain()?;
    let root = util::root();
    util::run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "inferscope"]))?;
    let kit = root.join("target/gpu-kit");
    let _ = fs::remove_dir_all(&kit);
    fs::create_dir_all(&kit)?;
    let bin = kit.join("inferscope");
    // Debug sections off: the BPF object inside keeps its BTF (it is data, not a section).
    util::run(Command::new("objcopy").arg("--strip-debug").arg(util::target().join("release/inferscope")).arg(&bin))
        .context("objcopy (binutils)")?;
    fs::copy(root.join("tests/gpu/gpu-check"), kit.join("gpu-check"))?;
    fs::write(kit.join("README.txt"), README)?;
    let size: u64 = fs::read_dir(&kit)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    if size > LIMIT {
        bail!("the kit is {} MiB, over the 64 MiB a GPU host takes", size >> 20);
    }
    println!(
        "gpu-kit: {} ({:.1} MiB)\n\
         On the GPU host (root; PyTorch with CUDA installed; nothing fetched), from the checkout:\n\
         \x20   python3 target/gpu-kit/gpu-check --out \"$OUT\"          # about 2 minutes\n\
         With the device tool: carry [\"target/gpu-kit\"], timeout_s 300 (room to rerun once in\n\
         a 15-minute budget); the table is $OUT/gpu-check.md, the details $OUT/gpu-check.json.\n\
         Exit 0: every count agrees; 1: a mismatch (listed); 3: the kernel loads no BPF; 4: no GPU.",
        kit.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

const README: &str = "inferscope GPU check\n\
\n\
  sudo python3 gpu-check --out OUT\n\
\n\
Runs known PyTorch work on the GPU (eager kernels, a CUDA graph replayed, copies, syncs, an\n\
NCCL all-reduce when NCCL is there), attaches ./inferscope to it, and compares its counts with\n\
torch.profiler's; measures inferscope's CPU per launch and the workload's slowdown in\n\
alternating rounds; puts NVML's GPU figures beside nvidia-smi's. Writes OUT/gpu-check.md and\n\
OUT/gpu-check.json. Exit 0: every count\n\
agrees; 1: a mismatch it cannot explain; 3: this kernel loads no BPF program; 4: no GPU.\n";
