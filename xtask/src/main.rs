//! Developer tasks, one obvious entry point each:
//!
//! - `cargo xtask setup`: install what building and testing need (idempotent).
//! - `cargo xtask demo`: watch a real OpenAI-compatible server on uvicorn and show what inferscope sees.
//! - `cargo xtask test`: the whole test suite (what CI runs).
//! - `cargo xtask bench`: overhead and completeness, measured side by side.
//! - `cargo xtask fuzz`: run every fuzz target for a while.
//! - `cargo xtask gpu-kit`: the GPU validation kit (target/gpu-kit) and how to run it.
//! - `cargo xtask disk` / `cargo xtask clean [--cache]`: what the checkout and the developer
//!   cache hold; remove build outputs (and the cache).
//!
//! Heavy things that do not depend on the checkout's code (virtualenvs, the real vLLM, Debian
//! chroots, the cargo build directory) live in one cache outside the tree, shared by every
//! checkout on the machine: see cache.rs.
//!
//! Privileged steps (loading BPF) run the binaries directly when already root, else via `sudo -E`.

mod bench;
mod cache;
mod demo;
mod gpukit;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "inferscope developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces, system packages and Python environments the build and the
    /// tests need. Safe to run again: it only installs what is missing.
    Setup {
        /// Also install the real vLLM (CPU build, several GB) and its tiny local model, and the
        /// real SGLang over it.
        #[arg(long)]
        vllm: bool,
    },
    /// Start a real OpenAI-compatible server (FastAPI on uvicorn), attach inferscope to it, send
    /// requests, and show inferscope's per-request lines and metrics. With --vllm, a real vLLM;
    /// with --sglang, a real SGLang.
    Demo {
        /// Use a real vLLM (CPU build, tiny local model) instead of the fixture server.
        #[arg(long)]
        vllm: bool,
        /// Use a real SGLang (0.5, its generic platform on CPU, tiny local model).
        #[arg(long, conflicts_with = "vllm")]
        sglang: bool,
        /// Requests to send.
        #[arg(long, default_value_t = 40)]
        requests: u32,
    },
    /// Run the whole test suite: unit and property tests, fuzz smoke, integration tests with
    /// real BPF programs against real servers, exporters against real Prometheus and OTLP
    /// receivers, and the real vLLM tier.
    Test {
        /// Skip the real-vLLM tier.
        #[arg(long)]
        no_vllm: bool,
        /// Seconds to run each fuzz target.
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Only these integration tests (substring filter passed to cargo test).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Measure overhead (throughput with and without inferscope, side by side), completeness at
    /// the highest sustained load, and inferscope's own CPU and memory.
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Alternating rounds (with, without) per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Write the report (markdown) here as well as to stdout (default for the fixture:
        /// target/bench/report.md; with --vllm: target/bench-vllm/report.md).
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// Measure against the real vLLM (CPU, tiny model) instead of the fixture: the cost of
        /// tracing its API server, engine IPC included (installs vLLM if missing).
        #[arg(long)]
        vllm: bool,
        /// Measure the device probes instead: what each adds per call of the stand-in CUDA
        /// driver, and the call rate at which they cost 1% of a core.
        #[arg(long, conflicts_with = "vllm")]
        device: bool,
        /// Measure the Python sampler instead: what `inferscope profile` costs a CPU-bound
        /// Python process, at 99 and 999 samples per second.
        #[arg(long, conflicts_with_all = ["vllm", "device"])]
        python: bool,
    },
    /// Run each fuzz target for a while (cargo-fuzz, nightly).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        target: Option<String>,
    },
    /// Build the GPU validation kit into target/gpu-kit (under 64 MiB: the release binary and
    /// the check, tests/gpu/gpu-check) and say how to run it on a GPU host.
    GpuKit,
    /// Show what this checkout and the developer cache (INFERSCOPE_DEV_CACHE, default
    /// /var/cache/inferscope-dev) hold, part by part, and the free space.
    Disk,
    /// Remove build outputs: this checkout's target/ and fuzz/target/, and the shared build
    /// directory in the cache (unless another run uses it).
    Clean {
        /// Also remove everything else in the developer cache that no run uses now
        /// (virtualenvs, the real vLLM, Debian chroots): the next run installs them again.
        #[arg(long)]
        cache: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Every cargo this process starts builds in the shared build directory.
    cache::use_shared_target();
    match cli.cmd {
        Cmd::Setup { vllm } => setup::all(vllm),
        Cmd::Demo { vllm, sglang, requests } => demo::run(
            if sglang {
                demo::Server::Sglang
            } else if vllm {
                demo::Server::Vllm
            } else {
                demo::Server::Fixture
            },
            requests,
        ),
        Cmd::Test { no_vllm, fuzz_seconds, filter } => test::run(!no_vllm, fuzz_seconds, filter.as_deref()),
        Cmd::Bench { seconds, rounds, report, device: true, .. } => {
            bench::run_device(seconds, rounds, report.as_deref())
        }
        Cmd::Bench { seconds, rounds, report, python: true, .. } => {
            bench::run_python(seconds, rounds, report.as_deref())
        }
        Cmd::Bench { seconds, rounds, report, vllm: false, .. } => bench::run(seconds, rounds, report.as_deref()),
        Cmd::Bench { seconds, rounds, report, vllm: true, .. } => bench::run_vllm(seconds, rounds, report.as_deref()),
        Cmd::Fuzz { seconds, target } => test::fuzz(seconds, target.as_deref()),
        Cmd::GpuKit => gpukit::run(),
        Cmd::Disk => cache::disk(),
        Cmd::Clean { cache } => cache::clean(cache),
    }
}
