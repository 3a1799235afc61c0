//! A lab leaves nothing behind: not after a normal drop, not after a panic in the test.
use std::process::Command;

use hapd_lab::Lab;

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string()
}

#[test]
fn hosts_talk_and_everything_goes_on_drop_and_on_panic() {
    let (names, bpffs, mut sleeper) = {
        let mut lab = Lab::new(3).unwrap();
        let bpffs = lab.bpffs().unwrap();
        let names: Vec<String> = lab.hosts().iter().map(|h| h.netns.clone()).collect();
        let list = namespaces();
        for n in &names {
            assert!(list.contains(n.as_str()), "{n} exists while the lab lives");
        }
        assert_eq!(lab.host(2).addr.to_string(), "198.18.0.3");
        // The switch bridges without iptables (where br_netfilter exists at all).
        let nf = Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.switch(),
                "sysctl",
                "-n",
                "net.bridge.bridge-nf-call-iptables",
            ])
            .output()
            .unwrap();
        if nf.status.success() {
            assert_eq!(String::from_utf8_lossy(&nf.stdout).trim(), "0");
        }
        lab.exec(0, &["ping", "-c", "1", "-W", "2", "198.18.0.3"])
            .unwrap();
        // A process left running is killed with the lab.
        let sleeper = lab.spawn(1, &["sleep", "600"]).unwrap();
        (names, bpffs, sleeper)
    };
    // Killed by the lab's drop: it has exited already, by a signal.
    let status = sleeper
        .try_wait()
        .unwrap()
        .expect("the lab killed what ran in it");
    assert!(!status.success());
    let list = namespaces();
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind");
    }
    assert!(!bpffs.exists(), "bpffs mount point left behind");

    let caught = std::panic::catch_unwind(|| {
        let lab = Lab::new(2).unwrap();
        let names: Vec<String> = lab.hosts().iter().map(|h| h.netns.clone()).collect();
        std::fs::write("/tmp/hapd-lab-teardown-names", names.join("\n")).unwrap();
        panic!("a failing test");
    });
    assert!(caught.is_err());
    let names = std::fs::read_to_string("/tmp/hapd-lab-teardown-names").unwrap();
    let _ = std::fs::remove_file("/tmp/hapd-lab-teardown-names");
    let list = namespaces();
    for n in names.lines() {
        assert!(!list.contains(n), "{n} left behind after a panic");
    }
}
