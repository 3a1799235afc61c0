//! keepalived 2.4.3, the first series with `auth_hmac`, built from the source archive that CI
//! keeps beside the clone (`../shared/vendor/keepalived-2.4.3.tar.gz`) into
//! `target/keepalived-2.4.3/` when that build is missing. Debian 12 ships 2.2.7.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

const VERSION: &str = "2.4.3";
/// What the build needs from Debian (the recipe of `../shared/vendor/README.md`).
const BUILD_DEPS: &[&str] = &[
    "build-essential",
    "autoconf",
    "automake",
    "pkg-config",
    "libssl-dev",
    "libnl-3-dev",
    "libnl-genl-3-dev",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench sits in the workspace")
        .to_owned()
}

/// The source archive: `HAPD_KEEPALIVED_TARBALL`, else `../shared/vendor/` beside the clone.
fn tarball() -> PathBuf {
    std::env::var_os("HAPD_KEEPALIVED_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace()
                .join("../shared/vendor")
                .join(format!("keepalived-{VERSION}.tar.gz"))
        })
}

/// The keepalived 2.4.3 binary, built first if it is not there yet.
pub fn binary() -> anyhow::Result<PathBuf> {
    let prefix = workspace().join(format!("target/keepalived-{VERSION}"));
    let bin = prefix.join("sbin/keepalived");
    if reports_version(&bin) {
        return Ok(bin);
    }
    let archive = tarball();
    if !archive.exists() {
        bail!(
            "keepalived {VERSION} is not built and its source {} is missing (CI keeps it in \
             ../shared/vendor beside the clone; HAPD_KEEPALIVED_TARBALL names another place)",
            archive.display()
        );
    }
    println!(
        "[keepalived {VERSION}] building from {} (about a minute)",
        archive.display()
    );
    install_build_deps()?;
    let src = workspace().join(format!("target/keepalived-{VERSION}-src"));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    run(Command::new("tar")
        .args(["xzf"])
        .arg(&archive)
        .args(["--strip-components=1", "-C"])
        .arg(&src))?;
    let log = src.join("build.log");
    let sh = format!(
        "set -e; ./autogen.sh; ./configure --prefix='{}' --disable-lvs --disable-snmp \
         --disable-dbus; make -j2; make install",
        prefix.display()
    );
    let out = Command::new("sh")
        .args(["-c", &format!("({sh}) > '{}' 2>&1", log.display())])
        .current_dir(&src)
        .status()
        .context("running the keepalived build")?;
    if !out.success() || !reports_version(&bin) {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(30).collect();
        bail!(
            "building keepalived {VERSION} failed (log {}):\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(bin)
}

fn reports_version(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr).contains(VERSION)
                || String::from_utf8_lossy(&o.stdout).contains(VERSION)
        })
        .unwrap_or(false)
}

fn install_build_deps() -> anyhow::Result<()> {
    let missing: Vec<&str> = BUILD_DEPS
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "[keepalived {VERSION}] installing build dependencies: {}",
        missing.join(" ")
    );
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed: {st}");
    }
    Ok(())
}
