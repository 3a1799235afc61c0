//! Script security, as keepalived's `enable_script_security`: hapd runs track, notify and
//! fence commands as its own user (root), so a program that another user can change, or
//! that lies in a directory another user can change, is refused at `hapd check` and at start.
//! A program that does not exist (yet) is not refused here: running it fails and says so.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Why `argv0` is unsafe to run, if it is.
pub fn insecure(argv0: &str) -> Option<String> {
    let path = resolve(argv0)?;
    let real = std::fs::canonicalize(&path).ok()?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let mut at: Option<&Path> = Some(&real);
    while let Some(p) = at {
        let m = std::fs::metadata(p).ok()?;
        let mode = m.permissions().mode();
        let sticky_dir = m.is_dir() && mode & 0o1000 != 0;
        let why = if m.uid() != 0 && m.uid() != me {
            Some(format!("is owned by uid {}", m.uid()))
        } else if mode & 0o002 != 0 && !sticky_dir {
            Some(format!(
                "is writable by everyone (mode {:o})",
                mode & 0o7777
            ))
        } else if mode & 0o020 != 0 && m.gid() != 0 {
            Some(format!(
                "is writable by group {} (mode {:o})",
                m.gid(),
                mode & 0o7777
            ))
        } else {
            None
        };
        if let Some(why) = why {
            let what = if p == real {
                real.display().to_string()
            } else {
                format!("{} (a directory of {})", p.display(), real.display())
            };
            return Some(format!(
                "{what} {why}: another user could change what hapd runs as uid {me}; refused \
                 (script security, as keepalived's enable_script_security)"
            ));
        }
        at = p.parent();
    }
    None
}

/// `argv0` as a path: as written when it has a `/`, else found along `PATH`.
fn resolve(argv0: &str) -> Option<PathBuf> {
    if argv0.contains('/') {
        return Some(PathBuf::from(argv0));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(argv0))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_others_can_change_are_refused() {
        let dir = std::env::temp_dir().join(format!("hapd-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.join("check.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(insecure(script.to_str().unwrap()), None);
        assert_eq!(insecure("true"), None, "found along PATH, root's");
        assert_eq!(insecure("/no/such/program"), None, "not refused here");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = insecure(script.to_str().unwrap()).unwrap();
        assert!(why.contains("writable by everyone (mode 777)"), "{why}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = insecure(script.to_str().unwrap()).unwrap();
        assert!(why.contains("a directory of"), "{why}");
        // A sticky directory (like /tmp) is fine: others cannot replace what is ours in it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(insecure(script.to_str().unwrap()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
