//! The operator's surface on a running pair: `hapd status` (text and JSON), the admin endpoint
//! (`/metrics` through a Prometheus text parser, `/healthz`, POSTs refused from the network),
//! `hapd reload` (applied, and refused with nothing changed), and `hapd drill` (refused where
//! it is not safe; run on the master it measures the outage and leaves the pair as it was).
//!
//! ```text
//!   h0 198.18.0.1 hapd A (110), admin :9100 ─┐
//!   h1 198.18.0.2 hapd B (100), admin :9100 ─┼─ bridge     VIP 198.18.0.100:8080
//!   h2 198.18.0.3 backends a:8001, b:8002    │
//!   h3 198.18.0.4 client (curl)             ─┘
//! ```
mod proxy_kit;

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use hapd_lab::Lab;
use nix::sys::signal::Signal;
use proxy_kit::{answered_by, run, text, wait_until, LabBackends};

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";

fn node(lab: &mut Lab, i: usize, priority: u8, extra_route: &str) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let (me, peer) = (lab.host(i).addr, lab.host(1 - i).addr);
    format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{}"
admin = "{me}:9100"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
advert_interval = "50ms"
virtual_ips = ["{VIP}/24"]
peers = ["{peer}"]
track_proxy = {{ weight = -50 }}

[[listener]]
name = "web"
bind = ["{VIP}:8080"]

[[upstream]]
name = "app"
servers = ["198.18.0.3:800{}"]
health_check = {{ path = "/health", interval = "100ms", timeout = "100ms", fall = 1, rise = 1 }}

[[upstream]]
name = "other"
servers = ["198.18.0.3:8002"]

[[vhost]]
server_names = ["app"]
listeners = ["web"]
{extra_route}
  [[vhost.route]]
  prefix = "/"
  upstream = "app"
"#,
        pin_dir.display(),
        i + 1,
    )
}

/// `curl` from host `i`: the status code and the body.
fn curl(lab: &Lab, i: usize, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-s", "-m", "2", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = lab.exec(i, &argv).unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Which backend answered `path` at the VIP.
fn answered(lab: &Lab, path: &str) -> Option<String> {
    answered_by(lab, 3, &format!("http://{VIP}:8080{path}"), "app")
}

fn status_json(lab: &Lab, i: usize, cfg: &Path) -> serde_json::Value {
    let o = run(
        lab,
        i,
        &["status", "--json", "--config", cfg.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The value of the one sample of `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

fn metrics(lab: &Lab, i: usize) -> prometheus_parse::Scrape {
    let addr = lab.host(i).addr;
    let (code, body) = curl(lab, i, &[&format!("http://{addr}:9100/metrics")]);
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

#[test]
fn status_metrics_reload_and_drill_on_a_running_pair() {
    let mut lab = Lab::new(4).unwrap();
    let backends = LabBackends::start(
        &lab,
        2,
        &[("198.18.0.3:8001", "a"), ("198.18.0.3:8002", "b")],
    );
    let healthy_b = backends.healthy[1].clone();
    let (ca, cb) = (node(&mut lab, 0, 110, ""), node(&mut lab, 1, 100, ""));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for("=> MASTER", 1, Duration::from_secs(5)).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    let cfg_a: PathBuf = lab.dir().join("h0.toml");
    let cfg_b: PathBuf = lab.dir().join("h1.toml");
    let (sa, sb) = (cfg_a.to_str().unwrap(), cfg_b.to_str().unwrap());
    wait_until("an answer from a", || {
        answered(&lab, "/who").as_deref() == Some("a")
    });
    for _ in 0..9 {
        assert_eq!(answered(&lab, "/who").as_deref(), Some("a"));
    }

    // hapd status, text: A is master, B is a backup that hears A.
    let o = run(&lab, 0, &["status", "--config", sa]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "vrrp VI_1: MASTER on eth0 vrid 51 v3",
        "198.18.0.1 (this node)",
        "priority         110 (configured 110)",
        "upstream app server 198.18.0.3:8001: up",
        "native XDP",
    ] {
        assert!(t.contains(want), "{want:?} in {t}");
    }
    wait_until("B hears A", || {
        let st = status_json(&lab, 1, &cfg_b);
        let i = &st["instances"][0];
        i["state"] == "BACKUP"
            && i["master"] == "198.18.0.1 (priority 110)"
            && i["last_advert_age_ms"].as_u64().is_some_and(|a| a < 200)
    });
    let st = status_json(&lab, 1, &cfg_b);
    assert!(
        st["guard"]["counters"]["accepted"].as_u64().unwrap() > 0,
        "{st}"
    );
    // Parity digests: the two nodes proxy to different backends (8001, 8002), and that is the
    // one section whose digests differ.
    let st_a = status_json(&lab, 0, &cfg_a);
    let sections = |st: &serde_json::Value| -> Vec<(String, String)> {
        st["parity"]["sections"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v["digest"].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (pa, pb) = (sections(&st_a), sections(&st));
    assert_eq!(pa.len(), 10, "{st_a}");
    let differ: Vec<&str> = pa
        .iter()
        .zip(&pb)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0.as_str())
        .collect();
    assert_eq!(differ, ["upstreams"], "{pa:?} {pb:?}");
    assert!(t.contains("parity digests"), "{t}");

    // /metrics, through a Prometheus parser.
    let m = metrics(&lab, 0);
    let state = |s: &str| sample(&m, "hapd_vrrp_state", &[("instance", "VI_1"), ("state", s)]);
    assert_eq!((state("MASTER"), state("BACKUP")), (1.0, 0.0));
    assert_eq!(
        sample(&m, "hapd_vrrp_priority", &[("instance", "VI_1")]),
        110.0
    );
    assert!(sample(&m, "hapd_vrrp_adverts_sent_total", &[("instance", "VI_1")]) > 0.0);
    // The process: resident memory, CPU, descriptors, start time (seconds since the epoch,
    // within the last minute), and the build's commit.
    assert!(sample(&m, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&m, "process_cpu_seconds_total", &[]) > 0.0);
    let fds = sample(&m, "process_open_fds", &[]);
    assert!(fds > 3.0 && fds < sample(&m, "process_max_fds", &[]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&m, "process_start_time_seconds", &[]);
    assert!(
        started <= now + 1.0 && started > now - 60.0,
        "{started} vs {now}"
    );
    assert!(m
        .samples
        .iter()
        .any(|s| s.metric == "hapd_build_info"
            && s.labels.get("commit").is_some_and(|c| !c.is_empty())));
    let reqs = sample(
        &m,
        "hapd_http_requests_total",
        &[("vhost", "app"), ("code", "200"), ("upstream", "app")],
    );
    assert!(reqs >= 10.0, "{reqs}");
    // Every request came on a connection of its own (curl), placed on some worker.
    let placed: f64 = m
        .samples
        .iter()
        .filter(|s| s.metric == "hapd_proxy_worker_connections_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert!(
        placed >= reqs,
        "{placed} connections placed, {reqs} requests"
    );
    // Exported once (`sample` checks), whatever its value on this idle lab.
    sample(&m, "hapd_proxy_steered_connections_total", &[]);
    let hist = m
        .samples
        .iter()
        .find(|s| s.metric == "hapd_http_request_duration_seconds")
        .expect("the latency histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(h) => {
            assert_eq!(h.last().unwrap().count, reqs, "+Inf bucket = requests")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sample(
            &m,
            "hapd_upstream_server_up",
            &[("upstream", "app"), ("server", "198.18.0.3:8001")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "hapd_guard_packets_total",
            &[("reason", "drop_not_peer")]
        ),
        0.0
    );
    // /healthz, and control requests from the network are refused.
    let a_admin = "http://198.18.0.1:9100";
    assert_eq!(
        curl(&lab, 0, &[&format!("{a_admin}/healthz")]),
        (200, "ok\n".into())
    );
    let (code, body) = curl(&lab, 3, &["-X", "POST", &format!("{a_admin}/reload")]);
    assert_eq!(code, 403, "{body}");
    let (code, _) = curl(
        &lab,
        3,
        &["-X", "POST", &format!("{a_admin}/step-down?instance=VI_1")],
    );
    assert_eq!(code, 403);

    // hapd reload: a new route is applied without a restart.
    let route = "  [[vhost.route]]\n  prefix = \"/v2/\"\n  upstream = \"other\"\n";
    std::fs::write(&cfg_a, node(&mut lab, 0, 110, route)).unwrap();
    let o = run(&lab, 0, &["reload", "--config", sa]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(answered(&lab, "/v2/who").as_deref(), Some("b"));
    assert_eq!(answered(&lab, "/who").as_deref(), Some("a"));
    // A VRRP change needs a restart: refused, nothing applied.
    std::fs::write(&cfg_a, node(&mut lab, 0, 120, "")).unwrap();
    let o = run(&lab, 0, &["reload", "--config", sa]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("[[vrrp]] (apart from auth_hmac) changed: restart hapd"),
        "{}",
        text(&o)
    );
    assert_eq!(
        answered(&lab, "/v2/who").as_deref(),
        Some("b"),
        "old routes kept"
    );
    // A broken file: refused with where, nothing applied.
    std::fs::write(&cfg_a, ca.replace("prefix = \"/\"", "prefix = 7")).unwrap();
    let o = run(&lab, 0, &["reload", "--admin", "198.18.0.1:9100"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("h0.toml:") && text(&o).contains("expected a string"),
        "{}",
        text(&o)
    );
    assert_eq!(answered(&lab, "/v2/who").as_deref(), Some("b"));
    std::fs::write(&cfg_a, &ca).unwrap();

    // The drill refuses on the backup, and on the master while the peer is unhealthy.
    let drill = |i: usize, cfg: &str| {
        run(
            &lab,
            i,
            &[
                "drill",
                "--config",
                cfg,
                "--probe",
                &format!("http://{VIP}:8080/who"),
                "--peer-admin",
                &format!("{}:9100", lab.host(1 - i).addr),
            ],
        )
    };
    let o = drill(1, sb);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run the drill on the master"),
        "{}",
        text(&o)
    );
    healthy_b.store(false, Ordering::Relaxed);
    wait_until("B's proxy unhealthy", || {
        status_json(&lab, 1, &cfg_b)["proxy"]["healthy"] == false
    });
    let o = drill(0, sa);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not ready to take over"),
        "{}",
        text(&o)
    );
    assert_eq!(
        status_json(&lab, 0, &cfg_a)["instances"][0]["state"],
        "MASTER"
    );
    healthy_b.store(true, Ordering::Relaxed);
    wait_until("B's proxy healthy", || {
        status_json(&lab, 1, &cfg_b)["proxy"]["healthy"] == true
    });

    // The nodes proxy to different backends on purpose (the answers tell them apart): the
    // drill sees that drift in the peer's digests and refuses without --force.
    let o = drill(0, sa);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("refused: the nodes' configurations differ (node1: drift: ")
            && text(&o).contains("upstreams)"),
        "{}",
        text(&o)
    );

    // The drill on the master: the VIP moves to B and back; the outage is measured.
    let transitions_before = status_json(&lab, 0, &cfg_a)["instances"][0]["transitions"]
        .as_u64()
        .unwrap();
    let o = run(
        &lab,
        0,
        &[
            "drill",
            "--config",
            sa,
            "--probe",
            &format!("http://{VIP}:8080/who"),
            "--peer-admin",
            &format!("{}:9100", lab.host(1).addr),
            "--force",
        ],
    );
    let t = text(&o);
    assert!(
        t.contains("parity: node1: drift: ") && t.contains("upstreams (--force: drilling anyway)"),
        "{t}"
    );
    assert!(o.status.success(), "{t}");
    assert!(t.contains("drill VI_1: PASS"), "{t}");
    assert!(t.contains("master now 198.18.0.2"), "{t}");
    let outage: u64 = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("step-down outage: "))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no outage figure in {t}"));
    eprintln!("drill step-down outage: {outage} ms");
    // Left as found: A master again, B backup, two more transitions on A.
    let st = status_json(&lab, 0, &cfg_a);
    assert_eq!(st["instances"][0]["state"], "MASTER", "{st}");
    assert_eq!(st["instances"][0]["stepped_down"], false);
    assert_eq!(
        st["instances"][0]["transitions"].as_u64().unwrap(),
        transitions_before + 2
    );
    assert_eq!(answered(&lab, "/who").as_deref(), Some("a"));
    assert_eq!(b.grep("=> MASTER").len(), 1, "{}", b.lines().join("\n"));

    for p in [&mut a, &mut b] {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(15))
            .unwrap()
            .success());
    }
    drop(backends);
}
