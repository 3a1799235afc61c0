//! Making sure the pin directory is on a BPF filesystem.
use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{bail, Context as _};
use tracing::info;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const STANDARD: &str = "/sys/fs/bpf";

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; c is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
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
    let t = CString::new(target.as_os_str().as_bytes()).context("mount point path")?;
    // SAFETY: all pointers are valid C strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            t.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting a bpffs at {}", target.display()));
    }
    Ok(())
}
