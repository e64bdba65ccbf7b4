//! Builds the eBPF object (ttp-ebpf, nightly, bpfel-unknown-none) and embeds it in `ttp`.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new().no_deps().exec().context("reading cargo metadata")?;
    let ebpf = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "ttp-ebpf")
        .ok_or_else(|| anyhow!("ttp-ebpf package not found in the workspace"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("ttp-ebpf has no directory"))?;
    // The pinned nightly (its LLVM must match bpf-linker's): see ttp-ebpf/rust-toolchain.toml.
    let pin = root.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={pin}");
    let text = std::fs::read_to_string(&pin).with_context(|| format!("reading {pin}"))?;
    let channel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .ok_or_else(|| anyhow!("{pin} names no channel"))?;
    // aya-build passes every line the nested cargo prints on as a `cargo:warning`, so each
    // "Compiling core" of the eBPF build showed as a warning of ttp's. Quiet, that cargo
    // prints only what matters (compiler messages reach aya-build as JSON, still shown).
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::Custom(channel),
    )
}
