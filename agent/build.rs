//! Builds the eBPF crate for the BPF target with aya-build (nightly + bpf-linker) and puts the
//! object in OUT_DIR, where `include_bytes_aligned!` picks it up. `AYA_BUILD_SKIP=1` skips it
//! (then the embedded object is empty and loading fails with a clear error).
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ sits inside the workspace");
    // aya-build watches the eBPF crate; the shared map types live in common/.
    println!("cargo:rerun-if-changed={}", root.join("common").display());
    let ebpf_dir = root.join("ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netward-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    Ok(())
}
