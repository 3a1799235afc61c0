//! Certificate files are reloaded when they change, without a periodic wake-up: the
//! directories that hold them are watched with inotify, and for a file reached through a
//! symlink (certbot's `live/` names) the directory of its target too, so that both a swapped
//! link and a target rewritten in place are seen.
//!
//! Only events on those names count (a log file written in the same directory does not). An
//! event only prompts a look: [`TlsStore::files_changed`] (each file's modification time and
//! size) decides, after [`SETTLE`] without further events (at most [`SETTLE_MAX`]), so that a
//! renewal that writes certificate, key and chain one after the other is loaded once, whole. The watches are set
//! again whenever the configuration is replaced (a reload may name other files) and after
//! every reload (a link may point elsewhere now). Where inotify cannot watch (no instance or
//! watch left under `fs.inotify.max_user_*`, or a directory missing), the files are looked at
//! every [`CERT_POLL`] as before, and inotify is tried again at each look.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{tls::TlsStore, CERT_POLL};

/// Quiet time after the last event before the files are looked at.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The longest a look waits for the files to stop changing.
pub const SETTLE_MAX: Duration = Duration::from_secs(2);

/// Watches `tls`'s files and reloads them when they change; runs until the runtime stops.
pub async fn run(tls: Arc<TlsStore>) {
    let mut failing: Option<String> = None;
    loop {
        let dirs = dirs_of(&tls.files());
        let watch = match Watch::new(&dirs) {
            Ok(w) => {
                if failing.take().is_some() {
                    info!("certificate files watched with inotify again");
                }
                w
            }
            Err(e) => {
                if failing.as_ref() != Some(&e) {
                    warn!("certificate files: {e}; looking at them every {CERT_POLL:?} instead");
                    failing = Some(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(CERT_POLL) => {}
                    _ = tls.replaced() => {}
                }
                look(&tls).await;
                continue;
            }
        };
        // A change made before the watches existed.
        look(&tls).await;
        loop {
            tokio::select! {
                r = watch.event() => {
                    if !r {
                        // A watched directory went away or moved: set the watches again.
                        break;
                    }
                    // Let the writer finish: look once nothing has happened for SETTLE, or
                    // SETTLE_MAX after the first event whatever happens.
                    let mut alive = true;
                    let until = tokio::time::Instant::now() + SETTLE_MAX;
                    while let Ok(more) = tokio::time::timeout(SETTLE, watch.event()).await {
                        if !more {
                            alive = false;
                            break;
                        }
                        if tokio::time::Instant::now() >= until {
                            break;
                        }
                    }
                    look(&tls).await;
                    if !alive || dirs_of(&tls.files()) != dirs {
                        break;
                    }
                }
                _ = tls.replaced() => break,
            }
        }
    }
}

/// Reloads the files if they changed (off the runtime's thread: it reads files).
async fn look(tls: &Arc<TlsStore>) {
    let t = tls.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if t.files_changed() {
            t.reload("certificate files changed");
        }
    })
    .await;
}

/// The directories to watch for `files`, each with the names in it that matter: each file's
/// own, and its target's where it is reached through a symlink.
pub fn dirs_of(files: &[PathBuf]) -> BTreeMap<PathBuf, BTreeSet<OsString>> {
    let mut dirs: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
    let mut add = |p: &Path| {
        if let (Some(d), Some(n)) = (p.parent(), p.file_name()) {
            dirs.entry(dir_or_dot(d)).or_default().insert(n.to_owned());
        }
    };
    for f in files {
        add(f);
        if let Ok(c) = std::fs::canonicalize(f) {
            add(&c);
        }
    }
    dirs
}

fn dir_or_dot(d: &Path) -> PathBuf {
    if d.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        d.to_path_buf()
    }
}

/// An inotify instance watching directories, and the names that matter in each.
struct Watch {
    fd: AsyncFd<Fd>,
    names: BTreeMap<WatchDescriptor, BTreeSet<OsString>>,
}

/// The instance, for [`AsyncFd`] (which wants [`AsRawFd`]).
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Watch {
    fn new(dirs: &BTreeMap<PathBuf, BTreeSet<OsString>>) -> Result<Watch, String> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("no inotify instance: {e}"))?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        let mut names = BTreeMap::new();
        for (d, n) in dirs {
            let wd = ino
                .add_watch(d, mask)
                .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
            names.insert(wd, n.clone());
        }
        // SAFETY: the instance is owned by the AsyncFd, which deregisters it before closing it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), tokio::io::Interest::READABLE) }
            .map_err(|e| format!("inotify with the runtime: {e}"))?;
        Ok(Watch { fd, names })
    }

    /// Waits for an event on a name that matters (others, such as a log file written in the
    /// same directory, are consumed and passed over): false when a watched directory itself
    /// went away or moved (its watch is gone), events were lost, or the instance failed.
    async fn event(&self) -> bool {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return false;
            };
            match guard.get_inner().0.read_events() {
                Ok(events) => {
                    let mut relevant = false;
                    for e in &events {
                        if e.mask.intersects(
                            AddWatchFlags::IN_DELETE_SELF
                                | AddWatchFlags::IN_MOVE_SELF
                                | AddWatchFlags::IN_IGNORED
                                | AddWatchFlags::IN_Q_OVERFLOW,
                        ) {
                            return false;
                        }
                        relevant |= e.name.as_ref().is_some_and(|n| {
                            self.names.get(&e.wd).is_some_and(|set| set.contains(n))
                        });
                    }
                    if relevant {
                        return true;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_file_is_watched_in_both_directories() {
        let base = std::env::temp_dir().join(format!("hapd-certwatch-{}", std::process::id()));
        let (live, archive) = (base.join("live"), base.join("archive"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::write(archive.join("cert1.pem"), "x").unwrap();
        std::os::unix::fs::symlink("../archive/cert1.pem", live.join("cert.pem")).unwrap();
        let plain = base.join("key.pem");
        std::fs::write(&plain, "k").unwrap();
        let dirs = dirs_of(&[live.join("cert.pem"), plain]);
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        let names = |d: &Path| {
            dirs.get(d).map(|n| {
                n.iter()
                    .map(|s| s.to_string_lossy().to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(names(&live), Some(vec!["cert.pem".to_string()]), "{dirs:?}");
        assert_eq!(names(&canon(&archive)), Some(vec!["cert1.pem".to_string()]));
        assert_eq!(names(&base), Some(vec!["key.pem".to_string()]));
        // A relative name with no directory part is in the working directory.
        assert!(dirs_of(&[PathBuf::from("cert.pem")]).contains_key(Path::new(".")));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[tokio::test]
    async fn a_change_to_a_watched_name_is_an_event_and_the_directory_s_removal_ends_the_watch() {
        let base = std::env::temp_dir().join(format!("hapd-certwatch-ev-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let watch = Watch::new(&BTreeMap::from([(
            base.clone(),
            BTreeSet::from([OsString::from("cert.pem")]),
        )]))
        .unwrap();
        // Nothing yet; a file that does not matter changing is nothing either.
        std::fs::write(base.join("access.log"), "GET /").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), watch.event())
                .await
                .is_err()
        );
        // A renewal writes a file aside and renames it into place.
        std::fs::write(base.join("cert.pem.tmp"), "new").unwrap();
        std::fs::rename(base.join("cert.pem.tmp"), base.join("cert.pem")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), watch.event()).await;
        assert_eq!(got, Ok(true));
        std::fs::remove_dir_all(&base).unwrap();
        // Events until the directory's own removal, which ends the watch.
        let mut ended = false;
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_secs(2), watch.event()).await {
                Ok(false) => {
                    ended = true;
                    break;
                }
                Ok(true) => continue,
                Err(_) => break,
            }
        }
        assert!(ended, "the directory's removal did not end the watch");
    }
}
