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
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?).join("ttp");
    strip_debug(&out)?;
    // The shipped build: LLD folds functions whose code is identical (monomorphised
    // copies that differ only in their types), which shrinks the binary, and the code the
    // daemon keeps resident with it (BENCHMARKS.md, run 10). Rust
    // makes no promise that two functions have distinct addresses, so nothing may rely
    // on it. Only for `ttp` itself, and only in release builds: the tests link faster.
    // And it packs the relative relocations (DT_RELR, glibc 2.36 and later): 28,000 of
    // them took 650 KB of the binary, read by the dynamic loader at every start.
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    Ok(())
}

/// Removes the DWARF sections from the eBPF object that `ttp` embeds. bpf-linker needs
/// the debug information to emit BTF (`.BTF`, `.BTF.ext`), which the loader and the
/// kernel use; the DWARF itself is used by nothing at run time and was 470 of the
/// object's 595 KB, every byte of it in the daemon's binary. Written here with `object`
/// rather than by running `llvm-objcopy --strip-debug`, which a machine building ttp may
/// not have (bpf-linker carries its own LLVM).
fn strip_debug(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data).context("reading the eBPF object")?;
    let is_debug = |name: &[u8]| name.starts_with(b".debug") || name.starts_with(b".rel.debug");
    let debug: Vec<_> = elf.sections.iter().filter(|s| is_debug(&s.name)).map(|s| s.id()).collect();
    for s in elf.sections.iter_mut() {
        // A section's relocations go with it.
        if debug.contains(&s.id()) || s.sh_info_section.is_some_and(|t| debug.contains(&t)) {
            s.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM names the sections in `.strtab`, which also holds the symbols' names; the
    // builder writes section names to a table of their own.
    if !elf.sections.iter().any(|s| matches!(s.data, object::build::elf::SectionData::SectionString)) {
        let names = elf.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    elf.write(&mut stripped).context("writing the stripped eBPF object")?;
    std::fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}
