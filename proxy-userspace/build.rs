//! Builds the XDP guard (`proxy-ebpf`) for the BPF target with aya-build and leaves the object in
//! `OUT_DIR`, from where `include_bytes_aligned!` embeds it in `hapd`.
use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

const FIX: &str =
    "run `cargo xtask setup` (installs the nightly rust-src component and bpf-linker)";

fn main() -> anyhow::Result<()> {
    // Only these inputs matter; without them cargo reruns this script (and rebuilds the
    // guard) whenever any file of this package changes.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../proxy-common");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    check_toolchain()?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .with_context(|| format!("building the XDP guard failed; if a tool is missing, {FIX}"))
}

/// The eBPF build needs the nightly toolchain with rust-src and bpf-linker; say how to get them
/// instead of failing deep inside cargo.
fn check_toolchain() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .with_context(|| format!("cannot run rustup to find the nightly toolchain; {FIX}"))?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing ({}); {FIX}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let core = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !core.is_dir() {
        bail!(
            "rust-src for the nightly toolchain is missing ({} not found); {FIX}",
            core.display()
        );
    }
    // bpf-linker links the nightly toolchain's libLLVM, so it runs under `rustup run nightly`,
    // as aya-build runs it.
    let linker = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output();
    if !linker.is_ok_and(|o| o.status.success()) {
        bail!("bpf-linker does not run under the nightly toolchain; {FIX}");
    }
    Ok(())
}
