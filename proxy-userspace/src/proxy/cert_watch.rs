//! Certificate files are reloaded when they change, without frequent wake-ups: the
//! directories that hold them are watched with inotify, and for a file reached through
//! symlinks (certbot's `live/` names) the directory of every link along the chain and of its
//! target too, so that both a swapped link and a target rewritten in place are seen. A look
//! every [`SAFETY_NET`] catches what inotify cannot report.
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
/// How often the files are looked at whatever inotify says: a change it cannot report (a
/// file system such as NFS written from another host, a symlinked directory in a file's path
/// swapped) is still loaded, late. One wake-up a minute.
pub const SAFETY_NET: Duration = Duration::from_secs(60);

/// Watches `tls`'s files and reloads them when they change; runs until the runtime stops.
pub async fn run(tls: Arc<TlsStore>) {
    let mut failing: Option<String> = None;
    loop {
        let dirs = watched(&tls).await;
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
                    if !alive || watched(&tls).await != dirs {
                        break;
                    }
                }
                _ = tls.replaced() => break,
                _ = tokio::time::sleep(SAFETY_NET) => {
                    look(&tls).await;
                    if watched(&tls).await != dirs {
                        break;
                    }
                }
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

/// The directories to watch for `tls`'s files ([`dirs_of`]), worked out off the runtime's
/// thread (it reads links).
async fn watched(tls: &Arc<TlsStore>) -> BTreeMap<PathBuf, BTreeSet<OsString>> {
    let files = tls.files();
    tokio::task::spawn_blocking(move || dirs_of(&files))
        .await
        .unwrap_or_default()
}

/// The longest chain of symlinks followed from one file.
const MAX_LINKS: usize = 40;

/// The directories to watch for `files`, each with the names in it that matter: each file's
/// own and, where it is a symlink, every link along its chain and the final target (certbot:
/// a configured name may point at `live/NAME/cert.pem`, which points at
/// `archive/NAME/certN.pem`; a renewal swaps the link in `live/`).
pub fn dirs_of(files: &[PathBuf]) -> BTreeMap<PathBuf, BTreeSet<OsString>> {
    let mut dirs: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
    let mut add = |p: &Path| {
        if let (Some(d), Some(n)) = (p.parent(), p.file_name()) {
            dirs.entry(dir_or_dot(d)).or_default().insert(n.to_owned());
        }
    };
    for f in files {
        let mut at = f.clone();
        add(&at);
        for _ in 0..MAX_LINKS {
            let Ok(to) = std::fs::read_link(&at) else {
                break;
            };
            at = match at.parent() {
                Some(d) if to.is_relative() => d.join(to),
                _ => to,
            };
            add(&at);
        }
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
            // One directory reached by two names has one watch: the names add up.
            names
                .entry(wd)
                .or_insert_with(BTreeSet::new)
                .extend(n.iter().cloned());
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
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn a_linked_file_is_watched_along_its_chain_of_links() {
        let base = std::env::temp_dir().join(format!("hapd-certwatch-{}", std::process::id()));
        let (live, archive) = (base.join("live"), base.join("archive"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::write(archive.join("cert1.pem"), "x").unwrap();
        std::os::unix::fs::symlink("../archive/cert1.pem", live.join("cert.pem")).unwrap();
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        // A configured name that links to the live/ name: a chain of two.
        std::os::unix::fs::symlink(live.join("cert.pem"), base.join("site.crt")).unwrap();
        let chained = dirs_of(&[base.join("site.crt")]);
        assert!(chained
            .get(&base)
            .is_some_and(|n| n.contains(OsStr::new("site.crt"))));
        assert!(chained
            .get(&live)
            .is_some_and(|n| n.contains(OsStr::new("cert.pem"))));
        assert!(chained
            .get(&canon(&archive))
            .is_some_and(|n| n.contains(OsStr::new("cert1.pem"))));
        let plain = base.join("key.pem");
        std::fs::write(&plain, "k").unwrap();
        let dirs = dirs_of(&[live.join("cert.pem"), plain]);
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
