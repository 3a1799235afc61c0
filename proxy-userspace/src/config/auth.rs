//! `[[vrrp]] auth_hmac`: keepalived 2.4's advert authentication, as an operator writes it, and
//! its resolution into key bytes (reading `file:` keys) with the checks `hapd check` reports.
use std::{collections::BTreeMap, fmt, os::unix::fs::PermissionsExt as _, path::Path};

use proxy_common::{
    auth::{KEY_MAX, KEY_MIN, WINDOW_FLOOR_S, WINDOW_MAX_S, WINDOW_MIN_S},
    maps::MAX_AUTH_KEYS,
};
use serde::Deserialize;

use super::Dur;

/// `auth_hmac = { keys = { 1 = "hex:…" }, active_key = 1, anti_replay = "time",
/// time_window = "5s", mode = "enforce" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthHmac {
    /// Key ID (`"1"`..`"255"`) to key: `hex:…`, `file:/path`, or the ASCII key itself.
    pub keys: BTreeMap<String, KeyValue>,
    /// The key ID adverts are signed with.
    pub active_key: u8,
    #[serde(default)]
    pub anti_replay: AntiReplay,
    /// Freshness window (time mode), whole seconds 1..=300; default 3 x the advert interval's
    /// whole seconds, at least 5 and at most 300 (keepalived's rule).
    #[serde(default)]
    pub time_window: Option<Dur>,
    #[serde(default)]
    pub mode: AuthMode,
}

/// A key as written in the config. Its `Debug` hides it: configs end up in logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KeyValue(pub String);

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.strip_prefix("file:") {
            Some(path) => write!(f, "file:{path}"),
            None => f.write_str("<secret>"),
        }
    }
}

/// How sequence numbers are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AntiReplay {
    /// Timestamps within `time_window` of this node's clock and growing per sender.
    #[default]
    Time,
    /// Growing per sender only (no common clock needed, no freshness guarantee).
    Monotonic,
}

/// Which adverts are signed and which are required to be (keepalived's three modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Verify a trailer when there is one and accept adverts without; send none. The first
    /// step of a rollout: every node learns the keys before any signs.
    ReceiveOnly,
    /// Verify a trailer when there is one and accept adverts without; sign every advert.
    Permissive,
    /// Every advert must carry a valid trailer; sign every advert.
    #[default]
    Enforce,
}

impl AuthMode {
    pub const fn name(self) -> &'static str {
        match self {
            AuthMode::ReceiveOnly => "receive-only",
            AuthMode::Permissive => "permissive",
            AuthMode::Enforce => "enforce",
        }
    }

    /// Whether adverts are sent with a trailer.
    pub const fn signs(self) -> bool {
        !matches!(self, AuthMode::ReceiveOnly)
    }
}

/// `auth_hmac` with its keys read and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedAuth {
    /// Key ID and bytes, by ID.
    pub keys: Vec<(u8, Vec<u8>)>,
    pub active_key: u8,
    pub time_mode: bool,
    pub window_s: u32,
    pub mode: AuthMode,
}

impl fmt::Debug for ResolvedAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedAuth")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
            )
            .field("active_key", &self.active_key)
            .field("time_mode", &self.time_mode)
            .field("window_s", &self.window_s)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A problem with `auth_hmac`: the key path below it (`keys.1`, `active_key`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthProblem {
    pub key: String,
    pub message: String,
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> AuthProblem {
    AuthProblem {
        key: key.into(),
        message: message.into(),
    }
}

/// The most a key file may hold: `hex:`, 128 digits and a line end, with room to spare.
const KEY_FILE_MAX: u64 = 1024;

impl AuthHmac {
    /// Reads and checks the keys. `advert_interval` gives the default window. The warnings are
    /// (key path, message) pairs, e.g. a key file others can read.
    pub fn resolve(
        &self,
        advert_interval: std::time::Duration,
    ) -> Result<(ResolvedAuth, Vec<AuthProblem>), AuthProblem> {
        let mut warnings = Vec::new();
        if self.keys.is_empty() {
            return Err(problem(
                "keys",
                "needs at least one key, e.g. { 1 = \"hex:…\" }",
            ));
        }
        if self.keys.len() > MAX_AUTH_KEYS {
            return Err(problem(
                "keys",
                format!(
                    "{} keys; the guard holds at most {MAX_AUTH_KEYS} per instance (two are \
                     enough to rotate)",
                    self.keys.len()
                ),
            ));
        }
        let mut keys = Vec::new();
        for (id, value) in &self.keys {
            let at = format!("keys.{id}");
            let n: u8 = match id.parse::<u8>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(problem(&at, format!("key ID {id:?} is not 1..=255"))),
            };
            let bytes = key_bytes(&value.0, &mut |m| warnings.push(problem(&at, m)))
                .map_err(|m| problem(&at, m))?;
            if !(KEY_MIN..=KEY_MAX).contains(&bytes.len()) {
                return Err(problem(
                    &at,
                    format!(
                        "key {n} is {} bytes; auth_hmac keys are {KEY_MIN}..={KEY_MAX} bytes \
                         (generate one with `openssl rand -hex 32` and write it as hex:…)",
                        bytes.len()
                    ),
                ));
            }
            keys.push((n, bytes));
        }
        keys.sort_by_key(|k| k.0);
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(problem("keys", format!("key ID {} is given twice", w[0].0)));
        }
        if !keys.iter().any(|k| k.0 == self.active_key) {
            let ids: Vec<String> = keys.iter().map(|k| k.0.to_string()).collect();
            return Err(problem(
                "active_key",
                format!(
                    "{} is not one of the keys ({})",
                    self.active_key,
                    ids.join(", ")
                ),
            ));
        }
        let window_s = match self.time_window {
            Some(w) => {
                let s = w.0.as_secs();
                if w.0.subsec_nanos() != 0
                    || !(WINDOW_MIN_S as u64..=WINDOW_MAX_S as u64).contains(&s)
                {
                    return Err(problem(
                        "time_window",
                        format!(
                            "{w} is not whole seconds in {WINDOW_MIN_S}s..={WINDOW_MAX_S}s \
                             (keepalived's bounds)"
                        ),
                    ));
                }
                if self.anti_replay == AntiReplay::Monotonic {
                    warnings.push(problem(
                        "time_window",
                        "anti_replay = \"monotonic\" checks no timestamps; the window is unused",
                    ));
                }
                s as u32
            }
            // keepalived: 3 x the interval's whole seconds, at least 5, at most 300.
            None => (3 * advert_interval.as_secs())
                .clamp(WINDOW_FLOOR_S as u64, WINDOW_MAX_S as u64) as u32,
        };
        Ok((
            ResolvedAuth {
                keys,
                active_key: self.active_key,
                time_mode: self.anti_replay == AntiReplay::Time,
                window_s,
                mode: self.mode,
            },
            warnings,
        ))
    }
}

/// The bytes of a key written as `hex:…`, `file:/path` or ASCII. `warn` gets advice that does
/// not stop the key from being used.
fn key_bytes(value: &str, warn: &mut dyn FnMut(String)) -> Result<Vec<u8>, String> {
    match value.strip_prefix("file:") {
        Some(path) => {
            let text = read_key_file(Path::new(path), warn)?;
            if text.starts_with("file:") {
                return Err(format!("{path}: a key file cannot name another key file"));
            }
            decode(&text).map_err(|e| format!("{path}: {e}"))
        }
        None => decode(value),
    }
}

fn decode(value: &str) -> Result<Vec<u8>, String> {
    match value.strip_prefix("hex:") {
        Some(hex) => {
            let digits = hex.as_bytes();
            if digits.len() % 2 != 0 {
                return Err(format!(
                    "hex key has an odd number of digits ({})",
                    digits.len()
                ));
            }
            digits
                .chunks_exact(2)
                .map(|pair| {
                    let text = String::from_utf8_lossy(pair);
                    match (hex_digit(pair[0]), hex_digit(pair[1])) {
                        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                        _ => Err(format!("{text:?} is not a hex byte")),
                    }
                })
                .collect()
        }
        None => Ok(value.as_bytes().to_vec()),
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn read_key_file(path: &Path, warn: &mut dyn FnMut(String)) -> Result<String, String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("key file {shown} must be an absolute path"));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("key file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("key file {shown} is not a regular file"));
    }
    if meta.len() > KEY_FILE_MAX {
        return Err(format!(
            "key file {shown} is {} bytes; a key file holds one key",
            meta.len()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn(format!(
            "key file {shown} is readable by group or others (mode {:o}); make it 0600",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("key file {shown}: {e}"))?;
    let mut text = String::from_utf8(text)
        .map_err(|_| format!("key file {shown} is not text: write hex:…"))?;
    // A line end from an editor is not part of the key (keepalived strips it too).
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HEX32: &str = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn auth(keys: &[(&str, &str)], active: u8) -> AuthHmac {
        AuthHmac {
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), KeyValue(v.to_string())))
                .collect(),
            active_key: active,
            anti_replay: AntiReplay::Time,
            time_window: None,
            mode: AuthMode::Enforce,
        }
    }

    #[test]
    fn keys_resolve_from_hex_ascii_and_files() {
        let dir = std::env::temp_dir().join(format!("hapd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k2");
        std::fs::write(&f, format!("{HEX32}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ascii = "an ascii key that is long enough!";
        let a = auth(
            &[
                ("1", HEX32),
                ("2", &format!("file:{}", f.display())),
                ("3", ascii),
            ],
            2,
        );
        let (r, warnings) = a.resolve(Duration::from_millis(100)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let want: Vec<u8> = (0..32).collect();
        assert_eq!(r.keys[0], (1, want.clone()));
        assert_eq!(r.keys[1], (2, want));
        assert_eq!(r.keys[2], (3, ascii.as_bytes().to_vec()));
        assert_eq!((r.active_key, r.window_s, r.time_mode), (2, 5, true));
        // A key file others can read: used, with a warning naming it.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, warnings) = a.resolve(Duration::from_secs(1)).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].key, "keys.2");
        assert!(warnings[0].message.contains("readable by group or others"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !format!("{a:?}").contains("0001020304"),
            "Debug shows a key"
        );
    }

    #[test]
    fn bad_keys_are_named() {
        let cases: &[(AuthHmac, &str, &str)] = &[
            (auth(&[("1", "hex:0011")], 1), "keys.1", "is 2 bytes"),
            (auth(&[("1", "short")], 1), "keys.1", "is 5 bytes"),
            (auth(&[("1", &"x".repeat(65))], 1), "keys.1", "is 65 bytes"),
            (
                auth(&[("1", HEX32)], 2),
                "active_key",
                "2 is not one of the keys (1)",
            ),
            (auth(&[("0", HEX32)], 1), "keys.0", "not 1..=255"),
            (auth(&[("1", "hex:zz")], 1), "keys.1", "not a hex byte"),
            (
                auth(&[("1", "hex:0\u{e9}0")], 1),
                "keys.1",
                "not a hex byte",
            ),
            (
                auth(&[("1", "file:/nonexistent/hapd-key")], 1),
                "keys.1",
                "key file /nonexistent/hapd-key",
            ),
            (
                auth(&[("1", "file:relative")], 1),
                "keys.1",
                "absolute path",
            ),
            (auth(&[], 1), "keys", "at least one key"),
        ];
        for (a, key, msg) in cases {
            let e = a.resolve(Duration::from_secs(1)).unwrap_err();
            assert_eq!(&e.key, key, "{e:?}");
            assert!(e.message.contains(msg), "{e:?} should say {msg}");
        }
        let mut a = auth(&[("1", HEX32)], 1);
        a.time_window = Some(Dur(Duration::from_millis(1500)));
        assert_eq!(
            a.resolve(Duration::from_secs(1)).unwrap_err().key,
            "time_window"
        );
        a.time_window = Some(Dur(Duration::from_secs(301)));
        assert_eq!(
            a.resolve(Duration::from_secs(1)).unwrap_err().key,
            "time_window"
        );
        a.time_window = None;
        let (r, _) = a.resolve(Duration::from_secs(3)).unwrap();
        assert_eq!(r.window_s, 9, "3 x advert_interval");
        // keepalived counts the interval's whole seconds: 2.5 s gives 6, not 8.
        let (r, _) = a.resolve(Duration::from_millis(2500)).unwrap();
        assert_eq!(r.window_s, 6);
    }
}
