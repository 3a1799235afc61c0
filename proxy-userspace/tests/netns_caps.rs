//! The capabilities in dist/hapd.service are the ones hapd needs: with exactly that bounding
//! set a node elects itself, adds the VIP, attaches the XDP guard, pins its maps and serves on
//! port 80, and runs its notify script as `script_user`; without any one of them it fails.
//! Also: the unit passes `systemd-analyze verify`.
use std::{path::Path, time::Duration};

use hapd_lab::Lab;
use nix::sys::signal::Signal;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/hapd.service"))
        .unwrap()
}

/// The unit's CapabilityBoundingSet.
fn unit_caps() -> Vec<String> {
    unit()
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Where the notify script writes the uid it ran as (a directory `nobody` may write to).
fn notified(lab: &Lab) -> std::path::PathBuf {
    lab.dir().join("scripts").join("notified")
}

fn config(lab: &mut Lab) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let pin_dir = lab.bpffs().unwrap().join("caps");
    let out = notified(lab);
    let dir = out.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _ = std::fs::remove_file(&out);
    format!(
        r#"
[node]
name = "caps"
pin_dir = "{}"
script_user = "nobody"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = 110
advert_interval = "100ms"
virtual_ips = ["{VIP}/24"]
peers = ["198.18.0.2"]
xdp = "native"
notify = ["/bin/sh", "-c", "id -u > {}"]

[[listener]]
name = "web"
bind = ["{VIP}:80"]

[[upstream]]
name = "none"
servers = ["127.0.0.1:9"]

[[vhost]]
server_names = ["caps"]
listeners = ["web"]
  [[vhost.route]]
  prefix = "/"
  upstream = "none"
"#,
        pin_dir.display(),
        out.display()
    )
}

/// Runs hapd in host 0 with `caps` as its bounding set (and nothing inheritable): whether it
/// became master, held the VIP, pinned its maps and answered on port 80, or why not.
fn works_with(lab: &mut Lab, caps: &[String]) -> Result<(), String> {
    let cfg = lab.dir().join("caps.toml");
    std::fs::write(&cfg, config(lab)).unwrap();
    let set = std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let child = lab
        .spawn(
            0,
            &[
                "setpriv",
                "--bounding-set",
                &set,
                "--inh-caps",
                "-all",
                HAPD,
                "run",
                "--config",
                cfg.to_str().unwrap(),
            ],
        )
        .unwrap();
    let mut p = hapd_lab::proc::Proc::new("hapd", child);
    let result = (|| {
        p.wait_for("=> MASTER", 1, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let addrs = lab
            .exec(0, &["ip", "-4", "addr", "show", "eth0"])
            .map_err(|e| e.to_string())?;
        if !String::from_utf8_lossy(&addrs.stdout).contains(VIP) {
            return Err("the VIP was not added".into());
        }
        let pins = lab.bpffs().unwrap().join("caps");
        if !pins.join("guard_stats").exists() {
            return Err(format!("no pins in {}", pins.display()));
        }
        let out = lab
            .command(
                0,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-m",
                    "2",
                    &format!("http://{VIP}/"),
                ],
            )
            .output()
            .map_err(|e| e.to_string())?;
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code != "502" {
            return Err(format!("the proxy on port 80 answered {code:?}"));
        }
        // The notify script for MASTER ran as script_user (nobody).
        let t0 = std::time::Instant::now();
        loop {
            match std::fs::read_to_string(notified(lab)) {
                Ok(uid) if uid.trim() == "65534" => return Ok(()),
                Ok(uid) if !uid.trim().is_empty() => {
                    return Err(format!("the notify script ran as uid {}", uid.trim()))
                }
                _ if t0.elapsed() > Duration::from_secs(3) => {
                    return Err("the notify script did not run as script_user".into())
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })();
    let _ = p.stop(Signal::SIGTERM, Duration::from_secs(10));
    result.map_err(|e| format!("{e}\n{}", p.lines().join("\n")))
}

#[test]
fn the_units_capabilities_are_needed_and_enough() {
    let caps = unit_caps();
    assert!(!caps.is_empty());
    let mut lab = Lab::new(2).unwrap();
    if let Err(e) = works_with(&mut lab, &caps) {
        panic!("hapd does not work with the unit's capabilities {caps:?}: {e}");
    }
    for (i, c) in caps.iter().enumerate() {
        let mut less = caps.clone();
        less.remove(i);
        match works_with(&mut lab, &less) {
            Ok(()) => panic!("hapd works without {c}: drop it from dist/hapd.service"),
            Err(e) => eprintln!(
                "without {c}: {}",
                e.lines()
                    .find(|l| l.contains("ERROR") || l.contains("error"))
                    .unwrap_or(e.lines().next().unwrap_or(""))
            ),
        }
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    // `cargo xtask setup` installs it (Debian's `systemd` package).
    assert!(
        std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze is missing: run `cargo xtask setup`"
    );
    let dir = std::env::temp_dir().join(format!("hapd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hapd.service");
    std::fs::write(&path, unit().replace("/usr/sbin/hapd", HAPD)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
