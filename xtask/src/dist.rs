//! `cargo xtask dist`: the Debian package. hapd writes its man pages and completions
//! (`hapd generate`) into target/dist/, then cargo-deb packages the binary, those and the
//! files listed in proxy-userspace/Cargo.toml's `[package.metadata.deb]`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{build_hapd, cargo, root, run as exec};

/// Builds the package and returns its path. `no_build`: the cargo profile whose hapd is
/// packaged as it is; None builds hapd in release first.
pub fn run(no_build: Option<&str>, output: Option<&Path>) -> anyhow::Result<()> {
    let deb = package(no_build, output)?;
    println!("dist: {}", deb.display());
    Ok(())
}

fn package(no_build: Option<&str>, output: Option<&Path>) -> anyhow::Result<PathBuf> {
    if !has_cargo_deb() {
        bail!("cargo-deb is missing: run `cargo xtask setup`");
    }
    let (profile, bin) = match no_build {
        None => ("release", build_hapd()?),
        Some(p) => {
            let dir = if p == "dev" { "debug" } else { p };
            (p, root().join("target").join(dir).join("hapd"))
        }
    };
    if !bin.is_file() {
        bail!(
            "{} does not exist: build hapd for profile {profile} first",
            bin.display()
        );
    }
    let staged = root().join("target/dist");
    let _ = std::fs::remove_dir_all(&staged);
    exec(Command::new(&bin).arg("generate").arg("--out").arg(&staged))?;
    let out_dir = root().join("target/debian");
    let output = output.map_or(out_dir, Path::to_path_buf);
    if output.extension().is_none() {
        std::fs::create_dir_all(&output)
            .with_context(|| format!("creating {}", output.display()))?;
    }
    let mut c = cargo();
    c.current_dir(root())
        .args([
            "deb",
            "-p",
            "proxy-userspace",
            "--no-build",
            "--profile",
            profile,
        ])
        .arg("--output")
        .arg(&output);
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        bail!("cargo deb failed: {}\n{said}", o.status);
    }
    // cargo-deb prints the package's path as its last line.
    let deb = said
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no package:\n{said}"))?;
    Ok(deb)
}

/// Whether `cargo deb` runs.
pub fn has_cargo_deb() -> bool {
    cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
