//! The Debian package (`cargo xtask dist`), made here from the binary under test the way the
//! task makes it (`hapd generate` into target/dist/, then `cargo deb --no-build`; the two
//! steps are repeated here rather than run through `cargo xtask`, which would build xtask and
//! hapd again from inside `cargo test`): its
//! control data, every file it ships, the man pages and completions it carries, its
//! maintainer scripts, the examples it ships against the config parser, and `dpkg`'s own
//! check that it installs on this machine.
mod proxy_kit;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use proxy_kit::Scratch;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let said = proxy_kit::said(&o);
    assert!(o.status.success(), "{c:?}: {}\n{said}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds the package of the binary under test into `dir`; returns its path.
fn build(dir: &Path) -> PathBuf {
    assert!(
        Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: run `cargo xtask setup`"
    );
    // The profile whose binary is under test: target/debug is `dev`.
    let profile = match Path::new(HAPD).parent().and_then(Path::file_name) {
        Some(d) if d == "debug" => "dev".to_string(),
        Some(d) => d.to_string_lossy().into_owned(),
        None => panic!("{HAPD} has no directory"),
    };
    let staged = workspace().join("target/dist");
    let _ = std::fs::remove_dir_all(&staged);
    run(Command::new(HAPD).arg("generate").arg("--out").arg(&staged));
    run(Command::new("cargo")
        .current_dir(workspace())
        .args(["deb", "-p", "proxy-userspace", "--no-build", "--fast"])
        .args(["--profile", &profile])
        .arg("--output")
        .arg(dir));
    let deb = dir.join(format!("hapd_{VERSION}_amd64.deb"));
    assert!(deb.is_file(), "no {}", deb.display());
    deb
}

#[test]
fn the_package_ships_the_daemon_its_unit_docs_and_config_and_installs() {
    let scratch = Scratch::new("package");
    let deb = build(&scratch.0);

    // Control data: name, version, what it needs, the conffiles.
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for want in [
        "Package: hapd".to_string(),
        format!("Version: {VERSION}"),
        "Section: net".into(),
        "Recommends: logrotate".into(),
    ] {
        assert!(info.contains(&want), "{want} missing:\n{info}");
    }
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_default();
    assert!(
        depends.contains("adduser") && depends.contains("libc6"),
        "{depends}"
    );
    assert!(
        !info.contains("generated from Rust crate"),
        "no description:\n{info}"
    );
    let control = scratch.0.join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/hapd/hapd.toml", "/etc/logrotate.d/hapd"]
    );
    for script in ["postinst", "postrm", "prerm"] {
        let path = control.join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("#DEBHELPER#"), "{script}: {text}");
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system") && postinst.contains("hapd-script"),
        "the script user is created: {postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable hapd.service")
            && !postinst.contains("deb-systemd-invoke start"),
        "enabled, not started: {postinst}"
    );

    // Every file the package ships.
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    let mut want: Vec<String> = [
        "/usr/sbin/hapd",
        "/usr/lib/systemd/system/hapd.service",
        "/etc/hapd/hapd.toml",
        "/etc/logrotate.d/hapd",
        "/usr/share/bash-completion/completions/hapd",
        "/usr/share/zsh/vendor-completions/_hapd",
        "/usr/share/fish/vendor_completions.d/hapd.fish",
        "/usr/share/doc/hapd/copyright",
        "/usr/share/doc/hapd/README.md",
        "/usr/share/doc/hapd/operations.md",
        "/usr/share/doc/hapd/configuration.md",
        "/usr/share/doc/hapd/migration.md",
        "/usr/share/doc/hapd/examples/proxy01.toml",
        "/usr/share/doc/hapd/examples/proxy02.toml",
        "/usr/share/doc/hapd/examples/proxy-only.toml",
        "/usr/share/doc/hapd/examples/notify-example.sh",
        "/usr/share/doc/hapd/examples/acme-renew-hook.sh",
        "/usr/share/doc/hapd/monitoring/prometheus-rules.yml",
        "/usr/share/doc/hapd/monitoring/grafana-dashboard.json",
        "/usr/share/man/man8/hapd.8.gz",
    ]
    .map(String::from)
    .to_vec();
    // A man page per command the help lists.
    let help = run(Command::new(HAPD).arg("--help"));
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .take_while(|w| *w != "Options:")
        .filter(|w| *w != "help")
        .collect();
    assert!(commands.contains(&"upgrade"), "{help}");
    want.extend(
        commands
            .iter()
            .map(|c| format!("/usr/share/man/man8/hapd-{c}.8.gz")),
    );
    for w in &want {
        assert!(files.contains(w), "{w} is not in the package:\n{listing}");
    }
    let modes: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first().copied()?, f.get(5).copied()?))
        })
        .collect();
    assert!(
        modes.contains(&("-rwxr-xr-x", "./usr/sbin/hapd")),
        "{listing}"
    );
    assert!(
        modes.contains(&("-rw-r-----", "./etc/hapd/hapd.toml")),
        "the config is not world-readable: {listing}"
    );

    // What it ships is what the repository has, and works.
    let root = scratch.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let same = |shipped: &str, source: &str| {
        assert_eq!(
            std::fs::read(root.join(shipped)).unwrap(),
            std::fs::read(workspace().join(source)).unwrap(),
            "{shipped} differs from {source}"
        );
    };
    same("usr/lib/systemd/system/hapd.service", "dist/hapd.service");
    same("etc/logrotate.d/hapd", "dist/hapd.logrotate");
    same("etc/hapd/hapd.toml", "dist/hapd.toml");
    let version = run(Command::new(root.join("usr/sbin/hapd")).arg("--version"));
    assert!(
        version.starts_with(&format!("hapd {VERSION} (")),
        "{version}"
    );
    // The default config and the examples are valid (the examples' certificate files are
    // the operator's to provide: the parser's check, not `hapd check`'s file check).
    let out = run(Command::new(root.join("usr/sbin/hapd"))
        .args(["check", "--config"])
        .arg(root.join("etc/hapd/hapd.toml")));
    assert!(out.contains("valid"), "{out}");
    for ex in ["proxy01.toml", "proxy02.toml", "proxy-only.toml"] {
        let path = root.join("usr/share/doc/hapd/examples").join(ex);
        if let Err(e) = proxy_userspace::config::Config::load(&path) {
            panic!("{ex}: {e}");
        }
    }
    // Man pages render without a warning; completions are for hapd and parse.
    for c in std::iter::once("hapd".to_string()).chain(commands.iter().map(|c| format!("hapd-{c}")))
    {
        let page = root.join(format!("usr/share/man/man8/{c}.8.gz"));
        let o = Command::new("sh")
            .arg("-c")
            .arg("zcat \"$1\" | groff -man -Tutf8 -ww -z")
            .arg("sh")
            .arg(&page)
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{c}: {}",
            proxy_kit::said(&o)
        );
    }
    run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/hapd")));
    let zsh = std::fs::read_to_string(root.join("usr/share/zsh/vendor-completions/_hapd")).unwrap();
    assert!(
        zsh.starts_with("#compdef hapd"),
        "{}",
        &zsh[..zsh.len().min(200)]
    );
    let fish = std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/hapd.fish"))
        .unwrap();
    assert!(
        fish.contains("complete -c hapd"),
        "{}",
        &fish[..fish.len().min(200)]
    );

    // dpkg accepts it on this machine: dependencies met, nothing in the way (a dry run: the
    // test does not install it).
    run(Command::new("dpkg")
        .args(["--dry-run", "--install"])
        .arg(&deb));
}
