//! Making sure the pin directory is on a BPF filesystem.
use std::path::Path;

use anyhow::{bail, Context as _};
use tracing::info;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const STANDARD: &str = "/sys/fs/bpf";

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| st.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Creates `dir` on a bpffs, mounting one if needed: at /sys/fs/bpf when `dir` is below it
/// (the standard place), else at `dir` itself.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        let target = if dir.starts_with(STANDARD) {
            Path::new(STANDARD)
        } else {
            dir
        };
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {} to mount a bpffs on", target.display()))?;
        mount_bpffs(target)?;
        info!(
            "mounted a bpffs at {} for pin_dir {}",
            target.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating pin_dir {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!("pin_dir {} is not on a bpffs", dir.display());
    }
    Ok(())
}

/// Mounts a fresh bpffs at `target`.
pub fn mount_bpffs(target: &Path) -> anyhow::Result<()> {
    nix::mount::mount(
        Some("bpf"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a bpffs at {}", target.display()))
}
