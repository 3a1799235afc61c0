//! Scripts: who runs them and whether they are safe to run.
//!
//! Track, notify and fence commands run as `[node] script_user` (keepalived's `script_user`),
//! by default the unprivileged user `hapd-script` that the package creates; where that user
//! does not exist and no `script_user` is set, they run as hapd's own user (root) and the
//! config check warns, as keepalived does. Every such command is made by [`command`].
//!
//! Script security, as keepalived's `enable_script_security`: a program that another user
//! can change, or that lies in a directory another user can change, is refused at `hapd
//! check` and at start. A program that does not exist (yet) is not refused here: running it
//! fails and says so.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// The user that runs scripts when `script_user` is not set, if it exists.
pub const DEFAULT_USER: &str = "hapd-script";

/// The user and group scripts run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// `user` or `user:group`, as configured (or [`DEFAULT_USER`]).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Who runs scripts for `script_user` (`"user"` or `"user:group"`; the group defaults to the
/// user's own): `Ok(None)` is hapd's own user, when `script_user` is not set and
/// [`DEFAULT_USER`] does not exist. A user or group that does not exist is an error.
pub fn run_as(script_user: Option<&str>) -> Result<Option<RunAs>, String> {
    let (spec, explicit) = match script_user {
        Some(s) => (s, true),
        None => (DEFAULT_USER, false),
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(format!("{spec:?} is not a user or user:group"));
    }
    let found = if let Ok(uid) = user.parse::<u32>() {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
    } else {
        nix::unistd::User::from_name(user)
    };
    let u = match found {
        Ok(Some(u)) => u,
        Ok(None) if !explicit => return Ok(None),
        Ok(None) => return Err(format!("there is no user {user:?} on this host")),
        Err(e) => return Err(format!("looking up user {user:?}: {e}")),
    };
    let gid = match group {
        None => u.gid.as_raw(),
        Some(g) => {
            let found = if let Ok(gid) = g.parse::<u32>() {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            } else {
                nix::unistd::Group::from_name(g)
            };
            match found {
                Ok(Some(g)) => g.gid.as_raw(),
                Ok(None) => return Err(format!("there is no group {g:?} on this host")),
                Err(e) => return Err(format!("looking up group {g:?}: {e}")),
            }
        }
    };
    Ok(Some(RunAs {
        name: spec.to_string(),
        uid: u.uid.as_raw(),
        gid,
    }))
}

static RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();

/// Sets who runs scripts in this process, once, at start (`[node]` needs a restart to
/// change). Until then, and in programs that never call it, scripts run as hapd's user.
pub fn init(run_as: Option<RunAs>) {
    if RUN_AS.set(run_as.clone()).is_err() && RUN_AS.get() != Some(&run_as) {
        tracing::warn!("script_user is fixed at start; keeping the first setting");
    }
}

/// The command for a track, notify or fence program: run as the script user (see [`init`]),
/// with no supplementary groups, from `/`.
pub fn command(prog: &str) -> tokio::process::Command {
    command_as(RUN_AS.get().and_then(Option::as_ref), prog)
}

/// [`command`] as `run_as` (None: hapd's own user).
pub fn command_as(run_as: Option<&RunAs>, prog: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(prog);
    if let Some(r) = run_as {
        // std drops the supplementary groups when it changes the uid as root.
        cmd.uid(r.uid).gid(r.gid).current_dir("/");
    }
    cmd
}

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
    fn script_users_are_looked_up_and_unknown_ones_are_errors() {
        let nobody = run_as(Some("nobody")).unwrap().unwrap();
        assert_eq!((nobody.uid, nobody.name.as_str()), (65534, "nobody"));
        let with_group = run_as(Some("nobody:root")).unwrap().unwrap();
        assert_eq!((with_group.uid, with_group.gid), (65534, 0));
        assert_eq!(run_as(Some("0")).unwrap().unwrap().uid, 0);
        let e = run_as(Some("no-such-user-hapd")).unwrap_err();
        assert!(e.contains("no user \"no-such-user-hapd\""), "{e}");
        let e = run_as(Some("nobody:no-such-group-hapd")).unwrap_err();
        assert!(e.contains("no group"), "{e}");
        assert!(run_as(Some(":x")).is_err());
        assert!(run_as(Some("nobody:")).is_err());
        // Not set: the default user if it exists, else hapd's own.
        let default = run_as(None).unwrap();
        let exists = nix::unistd::User::from_name(DEFAULT_USER)
            .unwrap()
            .is_some();
        assert_eq!(default.is_some(), exists);
    }

    /// A script runs as the configured user and group, without root's groups.
    #[tokio::test]
    async fn scripts_run_as_the_script_user() {
        let nobody = run_as(Some("nobody:nogroup")).unwrap().unwrap();
        let out = command_as(Some(&nobody), "/bin/sh")
            .args(["-c", "id -u; id -g; id -G; pwd"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(
            lines,
            [
                "65534",
                &nobody.gid.to_string(),
                &nobody.gid.to_string(),
                "/"
            ],
            "{said}"
        );
        let me = command_as(None, "/bin/sh")
            .args(["-c", "id -u"])
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&me.stdout).trim(), "0");
    }

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
