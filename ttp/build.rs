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
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
