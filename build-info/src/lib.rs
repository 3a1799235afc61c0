//! hapd's version and the commit it was built from.

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit (12 hex digits, `-dirty` with uncommitted changes), or `unknown`.
pub const COMMIT: &str = env!("HAPD_COMMIT");

/// `0.1.0 (0123456789ab)`: what `hapd --version` prints after the name.
pub const LONG: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HAPD_COMMIT"), ")");
