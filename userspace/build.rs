//! Compiles the BPF programs in ../ebpf/inferscope-ebpf with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let pkg = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "inferscope-ebpf")
        .ok_or_else(|| anyhow!("inferscope-ebpf package not found"))?;
    let root = pkg.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    // aya-build only names this directory in `cargo:rerun-if-changed`: relative to this package
    // (as cargo reads such paths), so that the build script's freshness does not depend on where
    // the checkout is (checkouts share one build directory: xtask/src/cache.rs).
    let here = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let relative = root
        .as_std_path()
        .strip_prefix(metadata.workspace_root.as_std_path())
        .ok()
        .zip(here.strip_prefix(metadata.workspace_root.as_std_path()).ok())
        .map(|(ebpf, me)| {
            let up: std::path::PathBuf = me.components().map(|_| "..").collect();
            up.join(ebpf).to_string_lossy().into_owned()
        })
        .unwrap_or_else(|| root.to_string());
    let package = aya_build::Package { name: pkg.name.as_str(), root_dir: &relative, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|e| {
        anyhow!(
            "building the BPF programs failed ({e:#}).\n\
             They need the nightly toolchain with rust-src and bpf-linker 0.10.3: run `cargo xtask setup`."
        )
    })
}
