use which::which;

/// The eBPF crate links with bpf-linker, which cargo does not know about: rebuild when it changes.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
