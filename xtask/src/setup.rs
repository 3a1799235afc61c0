//! `cargo xtask setup`: Debian packages, the nightly rust-src component, bpf-linker and
//! cargo-deb.
//! Checks first and installs only what is missing, so a second run takes about a second.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _};

use crate::run as exec;

/// Debian packages the build, the tests, the demo and the benchmarks use.
const PACKAGES: &[&str] = &[
    "bpftool",      // reading pinned maps; tests check its output
    "iproute2",     // ip netns, veth, bridges: the lab
    "iputils-ping", // reachability checks through the guard
    "tcpdump",      // watching adverts in the lab
    "keepalived",   // the peer we replace and interoperate with
    "wrk",          // load generator
    "procps",       // ps, pgrep
    "curl",         // HTTP client in the netns tests
    "openssl",      // s_client: the TLS tests
    "nginx",        // proxy peers in the benchmark
    "haproxy",
    "apache2",
    "nghttp2-client", // h2load
    "testssl.sh",     // the TLS scan (command `testssl`)
    "systemd",        // systemd-analyze: the unit's test
    "bird2",          // the routing daemon anycast groups drive (the lab's router and nodes)
    "logrotate",      // checks dist/hapd.logrotate
];

/// Where setup puts promtool: the tests check dist/prometheus-rules.yml with it.
pub fn promtool_path() -> PathBuf {
    crate::root().join("target/tools/promtool")
}

/// promtool from Debian's `prometheus` package, unpacked: installing the package would also
/// install (and enable) a Prometheus server, which nothing here needs.
fn promtool() -> anyhow::Result<()> {
    let dest = promtool_path();
    if Command::new(&dest)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("setup: promtool present");
        return Ok(());
    }
    println!("setup: unpacking promtool from Debian's prometheus package");
    let tmp = std::env::temp_dir().join(format!("hapd-setup-promtool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| {
        let download = || {
            Command::new("apt-get")
                .args(["download", "-qq", "prometheus"])
                .current_dir(&tmp)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !download() {
            exec(Command::new("apt-get").args(["update", "-qq"]))?;
            if !download() {
                bail!("apt-get download prometheus failed");
            }
        }
        let deb = std::fs::read_dir(&tmp)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let x = tmp.join("x");
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
        std::fs::create_dir_all(dest.parent().context("promtool's directory")?)?;
        std::fs::copy(x.join("usr/bin/promtool"), &dest)
            .with_context(|| format!("copying promtool to {}", dest.display()))?;
        set_mode(&dest, 0o755)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.context("unpacking promtool")
}

/// The cargo-deb release line `cargo xtask dist` is written for.
const CARGO_DEB: &str = "^3.8";

fn cargo_deb() -> anyhow::Result<()> {
    if crate::dist::has_cargo_deb() {
        println!("setup: cargo-deb present");
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB}");
    exec(Command::new("cargo").args(["install", "--locked", "cargo-deb", "--version", CARGO_DEB]))
}

/// The bpf-linker release line that matches aya-ebpf 0.2 and the nightly's LLVM 22.
const BPF_LINKER: &str = "0.13";

pub fn run() -> anyhow::Result<()> {
    let t0 = Instant::now();
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    promtool()?;
    println!("setup: all present ({:.1}s)", t0.elapsed().as_secs_f64());
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages present: {}", PACKAGES.join(" "));
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    // Packages such as keepalived would start their service on install; the lab starts its
    // own instances, so keep the distribution's from starting (Debian's policy-rc.d hook).
    let policy = PathBuf::from("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            &policy,
            "#!/bin/sh\n# written by cargo xtask setup for the install\nexit 101\n",
        )?;
        set_mode(&policy, 0o755)?;
    }
    let result = (|| {
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })();
    if ours {
        let _ = std::fs::remove_file(&policy);
    }
    result.context("installing Debian packages (setup runs as root)")
}

fn set_mode(p: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain ({}); install it with `rustup toolchain install nightly`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src() -> anyhow::Result<()> {
    let core = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `bpf-linker --version` as the eBPF build runs it: under the nightly toolchain, whose
/// libLLVM it links.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = bpf_linker_version() {
        if v.starts_with(&format!("bpf-linker {BPF_LINKER}")) {
            println!("setup: {v} present");
            return Ok(());
        }
        println!("setup: replacing {v} with bpf-linker {BPF_LINKER}");
    }
    // bpf-linker links the LLVM that rustc uses; point LLVM_PREFIX at a folder whose
    // lib/libLLVM.so is the nightly toolchain's own.
    let lib = nightly_sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = crate::root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    println!(
        "setup: building bpf-linker {BPF_LINKER} against {} (about a minute)",
        llvm.display()
    );
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", &prefix),
    )?;
    match bpf_linker_version() {
        Some(v) => {
            println!("setup: {v} installed");
            Ok(())
        }
        None => bail!("bpf-linker installed but does not run under the nightly toolchain"),
    }
}
