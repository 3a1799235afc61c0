//! Apache's `Include` and `IncludeOptional`, followed as httpd 2.4 follows them
//! (`server/config.c`, `ap_process_fnmatch_configs`):
//!
//! - a relative path starts at the last `ServerRoot` read before it, else at the directory of
//!   the file given to the importer (httpd's compiled-in ServerRoot is not known here);
//! - a directory includes every entry in it, sorted by name, and its subdirectories the same
//!   way;
//! - `*`, `?` and `[...]` are wildcards in any component of the path (see [`wildcard_match`]);
//!   matches are read in name order, and only directories match a component before the last;
//! - `Include` of a path that does not exist, or a wildcard that matches nothing in a
//!   directory, is an error naming the file and line; `IncludeOptional` skips both silently;
//! - an include cycle, or includes nested more than [`MAX_DEPTH`] deep, is an error naming
//!   the chain of `Include` lines.
//!
//! Only regular files are read (and `/dev/null`), as httpd does, with bounds on their size and
//! number, so a stray `Include /` ends in an error instead of reading the whole disk.
use std::{
    io::ErrorKind,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context as _};

use super::parse::{self, Directive};

/// Includes within includes, at most (httpd allows 128; 16 is plenty for real layouts and
/// stops a runaway chain early).
pub const MAX_DEPTH: usize = 16;
/// Directories within an included directory, at most.
const MAX_DIR_DEPTH: usize = 16;
/// Files read through includes, at most.
const MAX_FILES: usize = 4096;
/// Size of one included file, at most.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// An Apache config with its includes read in place.
pub struct Loaded {
    /// The directives, `<IfModule>`/`<IfDefine>` unwrapped as [`parse::apache`] does; those from
    /// included files carry their file.
    pub tree: Vec<Directive>,
    /// The files read through `Include`, in the order read.
    pub files: Vec<String>,
}

/// Reads `text` (the file `top`) and every file it includes.
pub fn apache(top: &Path, text: &str) -> anyhow::Result<Loaded> {
    let shown = top.display().to_string();
    let tree = parse::apache_raw(text).with_context(|| shown.clone())?;
    let dir = match top.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut l = Loader {
        top_dir: dir.clone(),
        server_root: dir,
        reading: vec![std::fs::canonicalize(top).unwrap_or_else(|_| top.to_path_buf())],
        sites: Vec::new(),
        files: Vec::new(),
    };
    let tree = l.expand(tree, &shown)?;
    Ok(Loaded {
        tree: parse::unwrap_conditions(tree),
        files: l.files,
    })
}

struct Loader {
    /// The directory of the file given to the importer: a relative `ServerRoot` starts here.
    top_dir: PathBuf,
    /// Where relative include paths start now.
    server_root: PathBuf,
    /// The files being read, outermost first (canonical paths, for cycles).
    reading: Vec<PathBuf>,
    /// The `Include` lines being followed, outermost first (`file:line`).
    sites: Vec<String>,
    files: Vec<String>,
}

impl Loader {
    /// `tree` (of the file shown as `file`) with its `Include`s replaced by what they read.
    fn expand(&mut self, tree: Vec<Directive>, file: &str) -> anyhow::Result<Vec<Directive>> {
        let mut out = Vec::with_capacity(tree.len());
        for mut d in tree {
            match d.name.as_str() {
                "Include" | "IncludeOptional" => out.extend(self.include(&d, file)?),
                "ServerRoot" => {
                    if let Some(r) = d.arg(0) {
                        self.server_root = self.top_dir.join(r);
                    }
                    out.push(d);
                }
                _ => {
                    d.children = self.expand(std::mem::take(&mut d.children), file)?;
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// ` (read through top.conf:3 -> a.conf:7)` while inside includes, else nothing.
    fn trail(&self) -> String {
        if self.sites.is_empty() {
            String::new()
        } else {
            format!(" (read through {})", self.sites.join(" -> "))
        }
    }

    /// The directives of everything one `Include`/`IncludeOptional` line names.
    fn include(&mut self, d: &Directive, file: &str) -> anyhow::Result<Vec<Directive>> {
        let at = format!("{file}:{}", d.line);
        let optional = d.name == "IncludeOptional";
        let trail = self.trail();
        let Some(arg) = d.arg(0) else {
            bail!("{at}: {} needs a path{trail}", d.name);
        };
        let fail = |why: String| {
            let vars = if arg.contains("${") {
                " (httpd's Define and envvars variables are not expanded: write the path)"
            } else {
                ""
            };
            anyhow!("{at}: {} {arg}: {why}{vars}{trail}", d.name)
        };
        let path = self.server_root.join(arg);
        let targets = if has_wildcard(&path.to_string_lossy()) {
            glob(&path, optional).map_err(fail)?
        } else {
            vec![path]
        };
        let mut found = Vec::new();
        for t in &targets {
            files_under(t, optional, 0, &mut found).map_err(fail)?;
        }
        let mut out = Vec::new();
        for f in found {
            if self.files.len() >= MAX_FILES {
                return Err(fail(format!("more than {MAX_FILES} files included")));
            }
            let real = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            let shown = f.display().to_string();
            let mut chain = self.sites.clone();
            chain.push(at.clone());
            chain.push(shown.clone());
            if self.reading.contains(&real) {
                bail!(
                    "{at}: {} {arg}: include cycle: {}",
                    d.name,
                    chain.join(" -> ")
                );
            }
            if chain.len() - 1 > MAX_DEPTH {
                bail!(
                    "{at}: {} {arg}: includes nested more than {MAX_DEPTH} deep: {}",
                    d.name,
                    chain.join(" -> ")
                );
            }
            let text = read(&f).map_err(fail)?;
            let mut tree = parse::apache_raw(&text)
                .map_err(|e| anyhow!("{shown}: {e} (included by {at}){trail}"))?;
            set_file(&mut tree, &Arc::from(shown.as_str()));
            self.files.push(shown.clone());
            self.reading.push(real);
            self.sites.push(at.clone());
            let expanded = self.expand(tree, &shown);
            self.sites.pop();
            self.reading.pop();
            out.extend(expanded?);
        }
        Ok(out)
    }
}

fn set_file(tree: &mut [Directive], file: &Arc<str>) {
    for d in tree {
        d.file = Some(file.clone());
        set_file(&mut d.children, file);
    }
}

/// A config file's text: regular files (and `/dev/null`) only, as httpd reads them.
fn read(path: &Path) -> Result<String, String> {
    if path == Path::new("/dev/null") {
        return Ok(String::new());
    }
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if m.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} is {} bytes: too large for a config file",
            path.display(),
            m.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// The files `path` names without wildcards (httpd's `process_resource_config_nofnmatch`): the
/// file itself, or every entry of the directory in name order, subdirectories likewise. A path
/// that does not exist is an error, or nothing when `optional`.
fn files_under(
    path: &Path,
    optional: bool,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound && optional => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!("{} does not exist", path.display()))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !m.is_dir() {
        if out.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files included"));
        }
        out.push(path.to_path_buf());
        return Ok(());
    }
    if depth >= MAX_DIR_DEPTH {
        return Err(format!(
            "{} is more than {MAX_DIR_DEPTH} directories deep in the included one (a link loop?)",
            path.display()
        ));
    }
    let mut entries = entries(path)?;
    entries.sort();
    for e in entries {
        files_under(&e, optional, depth + 1, out)?;
    }
    Ok(())
}

/// The entries of directory `dir` (without `.` and `..`).
fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| format!("reading directory {}: {e}", dir.display()))?;
    rd.map(|e| {
        e.map(|e| e.path())
            .map_err(|e| format!("reading directory {}: {e}", dir.display()))
    })
    .collect()
}

/// The paths a pattern with wildcards names (httpd's `process_resource_config_fnmatch`), each
/// still to be read by [`files_under`]. Wildcards may stand in any component; a component before
/// the last matches directories only. A directory in which a wildcard matches nothing, or
/// that does not exist, is an error, or nothing when `optional`.
fn glob(pattern: &Path, optional: bool) -> Result<Vec<PathBuf>, String> {
    let mut base = PathBuf::new();
    let mut parts = Vec::new();
    for c in pattern.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            // Everything before the first plain name is where the walk starts ("/", ".", "..").
            other if parts.is_empty() => base.push(other.as_os_str()),
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    let mut out = Vec::new();
    walk(&base, &parts, optional, &mut out)?;
    Ok(out)
}

fn walk(
    base: &Path,
    rest: &[String],
    optional: bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let Some((first, rest)) = rest.split_first() else {
        out.push(base.to_path_buf());
        return Ok(());
    };
    if !has_wildcard(first) {
        return walk(&base.join(first), rest, optional, out);
    }
    let dir = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let all = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if optional && e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading directory {}: {e}", dir.display())),
    };
    let mut matched = Vec::new();
    for e in all {
        let e = e.map_err(|e| format!("reading directory {}: {e}", dir.display()))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !wildcard_match(first, name) {
            continue;
        }
        let p = base.join(name);
        if !rest.is_empty() && !p.is_dir() {
            continue;
        }
        matched.push(p);
    }
    if matched.is_empty() {
        if optional {
            return Ok(());
        }
        return Err(format!(
            "no file matches the wildcard {first:?} in {}",
            dir.display()
        ));
    }
    matched.sort();
    for p in matched {
        if out.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files included"));
        }
        walk(&p, rest, optional, out)?;
    }
    Ok(())
}

/// Whether `s` has a wildcard, as APR's `apr_fnmatch_test`: an unescaped `*` or `?`, or a `[`
/// with a `]` after it.
pub fn has_wildcard(s: &str) -> bool {
    let mut open = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' => return true,
            '\\' if chars.next().is_none() => return false,
            '\\' => {}
            '[' => open = true,
            ']' if open => return true,
            _ => {}
        }
    }
    false
}

/// Hand-written rather than the `glob` crate, because Apache's includes follow APR's rules,
/// which `glob` does not: `\` escapes the next character, `[^...]` negates as `[!...]` does,
/// and an unclosed `[` is a plain character (`glob` rejects the pattern); the cases are in
/// `wildcards_as_apr_fnmatch` below.
///
/// One file name against one path component of a pattern, as APR's `apr_fnmatch` with
/// `APR_FNM_PERIOD` (what httpd uses for includes): `*` is any run of characters, `?` any one,
/// `[abc]`, `[a-z]` and `[!a-z]` (or `[^a-z]`) a set, `\` makes the next character plain; a
/// `[` without a closing `]` is plain. A leading `.` in the name matches only a `.` written
/// as such, so `*` does not match hidden files.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if n.first() == Some(&'.') && !matches!(p.as_slice(), ['.', ..] | ['\\', '.', ..]) {
        return false;
    }
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was: the pattern after it, and the name position it is tried from.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if p.get(pi) == Some(&'*') {
            pi += 1;
            star = Some((pi, ni));
            continue;
        }
        if let Some(next) = step(&p, pi, n[ni]) {
            pi = next;
            ni += 1;
            continue;
        }
        match star {
            Some((sp, sn)) => {
                pi = sp;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

/// The pattern position after the element at `pi` if it matches `c` (not for `*`).
fn step(p: &[char], pi: usize, c: char) -> Option<usize> {
    match *p.get(pi)? {
        '?' => Some(pi + 1),
        '\\' => match p.get(pi + 1) {
            Some(&e) => (e == c).then_some(pi + 2),
            None => (c == '\\').then_some(pi + 1),
        },
        '[' => match bracket(&p[pi..], c) {
            Some((true, len)) => Some(pi + len),
            Some((false, _)) => None,
            None => (c == '[').then_some(pi + 1),
        },
        lit => (lit == c).then_some(pi + 1),
    }
}

/// A `[...]` set at the start of `p` against `c`: whether it matches, and its length; `None`
/// when it is not closed (the `[` is then a plain character).
fn bracket(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut first = true;
    let mut hit = false;
    loop {
        let mut lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        i += 1;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&h| h != ']') {
            let mut hi = p[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
            if (lo..=hi).contains(&c) {
                hit = true;
            }
        } else if lo == c {
            hit = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_as_apr_fnmatch() {
        assert!(wildcard_match("*.conf", "app.conf"));
        assert!(
            !wildcard_match("*.conf", ".conf"),
            "a leading dot is not matched by *"
        );
        assert!(wildcard_match(".*.conf", ".hidden.conf"));
        assert!(!wildcard_match("*.conf", "app.conf.bak"));
        assert!(wildcard_match("*", "anything"));
        assert!(!wildcard_match("*", ".swp"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("[0-9][0-9]-*", "10-app.conf"));
        assert!(!wildcard_match("[0-9][0-9]-*", "x0-app.conf"));
        assert!(wildcard_match("[!x]*", "app"));
        assert!(wildcard_match("[^x]*", "app"));
        assert!(!wildcard_match("[!a]*", "app"));
        assert!(wildcard_match("[]a]", "]"), "a ] first in the set is plain");
        assert!(wildcard_match("[a-]", "-"));
        assert!(wildcard_match("a[b", "a[b"), "an unclosed [ is plain");
        assert!(wildcard_match("\\*.conf", "*.conf"));
        assert!(!wildcard_match("\\*.conf", "a.conf"));
        assert!(wildcard_match("*a*b*c", "xxaxxbxxc"));
        assert!(!wildcard_match("*a*b*c", "xxaxxcxxb"));
        assert!(wildcard_match("**", ""));
        assert!(!wildcard_match("?", ""));
        assert!(wildcard_match("vhost-*.conf", "vhost-é.conf"));
    }

    #[test]
    fn what_counts_as_a_wildcard() {
        for w in ["*.conf", "a?", "[ab]", "/etc/*/x", "a[b]"] {
            assert!(has_wildcard(w), "{w}");
        }
        for p in ["/etc/httpd/conf.d/app.conf", "a[b", "\\*", "a\\?b", "b]"] {
            assert!(!has_wildcard(p), "{p}");
        }
    }

    #[test]
    fn wildcards_in_directories_and_names_in_order() {
        let dir = std::env::temp_dir().join(format!("hapd-include-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for f in [
            "a/x/1.conf",
            "a/x/2.conf",
            "b/x/0.conf",
            "b/x/skip.txt",
            "c-file",
        ] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        let got = glob(&dir.join("*/x/*.conf"), false).unwrap();
        let want: Vec<PathBuf> = ["a/x/1.conf", "a/x/2.conf", "b/x/0.conf"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
        assert_eq!(got, want);
        // A wildcard that matches nothing in a directory: an error for Include only.
        let e = glob(&dir.join("*/x/*.load"), false).unwrap_err();
        assert!(e.contains("*.load"), "{e}");
        assert_eq!(
            glob(&dir.join("*/x/*.load"), true).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert!(glob(&dir.join("nope/*.conf"), false).is_err());
        assert!(glob(&dir.join("nope/*.conf"), true).unwrap().is_empty());
        // A directory includes everything in it, in name order.
        let mut files = Vec::new();
        files_under(&dir.join("b"), false, 0, &mut files).unwrap();
        assert_eq!(files, [dir.join("b/x/0.conf"), dir.join("b/x/skip.txt")]);
        assert!(files_under(&dir.join("missing.conf"), false, 0, &mut files)
            .unwrap_err()
            .contains("does not exist"));
        assert!(files_under(&dir.join("missing.conf"), true, 0, &mut files).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
