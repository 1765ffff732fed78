fn main() -> anyhow::Result<()> {
    env_logger::init();
    let _ = inferscope::bpf::load(&inferscope::bpf::LoadOptions::default())?;
    println!("loaded");
    Ok(())
}
