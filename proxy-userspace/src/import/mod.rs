//! `hapd import`: a keepalived.conf and an Apache httpd vhost file turned into one hapd config.
//!
//! Every directive is either mapped to a key or named in a `# not mapped` comment with the
//! reason, with the file and line it came from, so an operator can review the result line by
//! line. The output is checked with the config parser before it is printed.
//!
//! Apache's `Include` and `IncludeOptional` are followed (see [`include`]); a directive from an
//! included file is named with that file.
pub mod include;
pub mod parse;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

use self::parse::Directive;
use crate::config::Config;

/// Where a directive came from, for comments.
#[derive(Clone)]
struct Src<'a> {
    file: &'a str,
}

impl Src<'_> {
    fn at(&self, d: &Directive) -> String {
        format!("{}:{}", d.file.as_deref().unwrap_or(self.file), d.line)
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn qlist<S: AsRef<str>>(v: &[S]) -> String {
    let items: Vec<String> = v.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// Seconds as written by keepalived or Apache ("1", "0.5") as a hapd duration.
fn secs(s: &str) -> Option<String> {
    let f: f64 = s.parse().ok()?;
    if !(f.is_finite() && f >= 0.0) {
        return None;
    }
    let ms = (f * 1000.0).round() as u64;
    Some(if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

/// A section of the output: its header, keys and comments in order.
#[derive(Default)]
struct Section {
    header: String,
    lines: Vec<String>,
}

impl Section {
    fn new(header: &str) -> Section {
        Section {
            header: header.into(),
            lines: vec![],
        }
    }
    fn key(&mut self, k: &str, v: impl Into<String>) {
        self.lines.push(format!("{k} = {}", v.into()));
    }
    fn note(&mut self, text: impl AsRef<str>) {
        for l in text.as_ref().lines() {
            self.lines.push(format!("# {l}"));
        }
    }
    fn unmapped(&mut self, at: String, what: &str, why: &str) {
        self.note(format!("not mapped ({at}): {what}: {why}"));
    }
}

/// The imported config.
pub struct Imported {
    pub toml: String,
    /// How many directives could not be mapped (each has a comment).
    pub unmapped: usize,
    /// What the import changed on its own that the operator must know (each is also a
    /// comment in `toml`): a log file moved to where hapd.service can write it.
    pub warnings: Vec<String>,
}

/// What the importer is given.
pub struct Sources<'a> {
    pub keepalived: Option<(&'a Path, &'a str)>,
    pub apache: Option<(&'a Path, &'a str)>,
    /// The other nodes' addresses, for `peers` (keepalived's multicast setup does not name them).
    pub peers: &'a [IpAddr],
}

/// Builds the config; errors name the file and line of what could not be read at all.
pub fn import(src: &Sources) -> anyhow::Result<Imported> {
    let mut node = Section::new("[node]");
    let mut tail: Vec<Section> = Vec::new();
    let mut proxy_scripts: BTreeMap<String, i64> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut included = Vec::new();
    if let Some((path, text)) = src.keepalived {
        let tree = parse::keepalived(text).with_context(|| path.display().to_string())?;
        let file = path.display().to_string();
        let s = Src { file: &file };
        tail.extend(keepalived(
            &tree,
            &s,
            src.peers,
            &mut node,
            &mut proxy_scripts,
        )?);
    } else {
        node.key("name", q("hapd"));
    }
    if let Some((path, text)) = src.apache {
        let loaded = include::apache(path, text)?;
        let file = path.display().to_string();
        let s = Src { file: &file };
        let (sections, w) = apache(&loaded.tree, &s).map_err(|e| {
            // A directive of an included file is named with that file: say which import it
            // was part of.
            if e.to_string().contains(&file) {
                e
            } else {
                e.context(format!("{file} (with the files it includes)"))
            }
        })?;
        tail.extend(sections);
        warnings.extend(w);
        included = loaded.files;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# hapd configuration imported by `hapd import` (hapd {}).",
        env!("CARGO_PKG_VERSION")
    );
    let from: Vec<String> = [src.keepalived, src.apache]
        .into_iter()
        .flatten()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let _ = writeln!(out, "# From: {}", from.join(", "));
    if !included.is_empty() {
        let _ = writeln!(out, "# Included: {}", included.join(", "));
    }
    let _ = writeln!(
        out,
        "# Review every `not mapped` comment, then run `hapd check --config THIS_FILE`."
    );
    for sec in std::iter::once(node).chain(tail) {
        let _ = writeln!(out, "\n{}", sec.header);
        for l in &sec.lines {
            let _ = writeln!(out, "{l}");
        }
    }
    let unmapped = out.matches("# not mapped (").count();
    // The output must pass the config check: a value copied from the input that is out of
    // range (priority 300, vrid 0) is named by the check, with the output to find it in.
    Config::parse(&out, Path::new("(imported)")).map_err(|e| {
        anyhow::anyhow!(
            "the config imported from {} is not valid: {e}\n{out}",
            from.join(", ")
        )
    })?;
    Ok(Imported {
        toml: out,
        unmapped,
        warnings,
    })
}

/// Scripts that checked the proxy hapd replaces: their weight goes to `track_proxy`.
fn checks_old_proxy(script: &str) -> bool {
    ["httpd", "apache2", "apachectl", "nginx", "haproxy"]
        .iter()
        .any(|p| {
            script
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == *p)
        })
}

fn keepalived(
    tree: &[Directive],
    s: &Src,
    cli_peers: &[IpAddr],
    node: &mut Section,
    proxy_scripts: &mut BTreeMap<String, i64>,
) -> anyhow::Result<Vec<Section>> {
    let mut out = Vec::new();
    let mut name = None;
    let mut default_version = 2u8;
    let mut security = false;
    let mut user_lines = Section::default();
    for d in tree.iter().filter(|d| d.name == "global_defs") {
        for g in &d.children {
            match g.name.as_str() {
                "router_id" => name = g.arg(0).map(str::to_ascii_lowercase),
                "vrrp_version" => {
                    default_version = g.arg(0).and_then(|v| v.parse().ok()).unwrap_or(2)
                }
                "enable_script_security" => {
                    security = true;
                    node.note(format!(
                        "{}: enable_script_security: always on in hapd: `hapd check` and the start refuse a track, notify or fence program that another user owns or can change, or one in a directory another user can change; hapd runs them as argv, without a shell",
                        s.at(g)
                    ));
                }
                "script_user" => script_user(&mut user_lines, s.at(g), g),
                other => node.unmapped(s.at(g), other, "no hapd equivalent"),
            }
        }
    }
    for d in tree.iter().filter(|d| {
        !matches!(
            d.name.as_str(),
            "global_defs" | "vrrp_script" | "vrrp_instance"
        )
    }) {
        let why = match d.name.as_str() {
            "include" => "hapd import reads one keepalived file and does not follow its includes: import the included file, or put its blocks in the file given to --keepalived",
            "vrrp_sync_group" => "hapd has no sync groups: each instance fails over on its own (track the other instance's interface or service with a track_script)",
            "virtual_server" | "virtual_server_group" => "LVS is not part of hapd",
            _ => "no hapd equivalent",
        };
        node.unmapped(s.at(d), &d.name, why);
    }
    node.key("name", q(name.as_deref().unwrap_or("hapd")));
    node.key("pin_dir", q("/sys/fs/bpf/hapd"));
    node.key("admin", q("127.0.0.1:8410"));
    node.lines.extend(user_lines.lines);
    let runs_scripts = tree.iter().any(|d| d.name == "vrrp_script")
        || tree
            .iter()
            .filter(|d| d.name == "vrrp_instance")
            .flat_map(|d| &d.children)
            .any(|c| c.name.starts_with("notify"));
    if !security && runs_scripts {
        node.note("keepalived's enable_script_security is not set, but hapd always applies it: `hapd check` names a track or notify program that another user owns or can change (or one in a directory another user can change), and hapd refuses to start with it");
    }

    // Scripts first: instances refer to them.
    let mut scripts = Vec::new();
    for d in tree.iter().filter(|d| d.name == "vrrp_script") {
        let Some(sname) = d.arg(0) else {
            bail!("{}: vrrp_script without a name", s.at(d));
        };
        let Some((sec, weight, script)) = vrrp_script(d, sname, s)? else {
            bail!("{}: vrrp_script {sname} has no script", s.at(d));
        };
        if checks_old_proxy(&script) {
            proxy_scripts.insert(sname.to_string(), weight);
            continue;
        }
        scripts.push(sec);
    }

    for d in tree.iter().filter(|d| d.name == "vrrp_instance") {
        let mut sec = Section::new("[[vrrp]]");
        let iname = d.arg(0).unwrap_or("VI_1");
        sec.key("name", q(iname));
        let mut interface = None;
        let mut version = default_version;
        let mut advert = "1".to_string();
        let mut vips = Vec::new();
        let mut peers: Vec<String> = Vec::new();
        let mut unicast = false;
        let mut track: Vec<String> = Vec::new();
        let mut track_proxy = None;
        let mut notify: Option<(String, String)> = None;
        let mut auth = None;
        let mut hmac: Option<(String, String)> = None;
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut notes = Section::default();
        for c in &d.children {
            let at = s.at(c);
            match c.name.as_str() {
                "state" => notes.note(format!(
                    "{at}: state {}: hapd has no initial state; the highest priority wins the election",
                    c.rest()
                )),
                "interface" => interface = c.arg(0).map(str::to_string),
                "virtual_router_id" => keys.push(("vrid".into(), int(c, &at, 0)?)),
                "priority" => keys.push(("priority".into(), int(c, &at, 0)?)),
                "advert_int" => advert = c.rest(),
                "vrrp_version" | "version" => version = c.arg(0).and_then(|v| v.parse().ok()).unwrap_or(version),
                "nopreempt" => keys.push(("preempt".into(), "false".into())),
                "preempt_delay" => match c.arg(0).and_then(secs) {
                    Some(v) => keys.push(("preempt_delay".into(), q(&v))),
                    None => bail!("{at}: preempt_delay {:?} is not a number of seconds", c.rest()),
                },
                "authentication" => {
                    let mut ty = String::new();
                    let mut pass = String::new();
                    for a in &c.children {
                        match a.name.as_str() {
                            "auth_type" => ty = a.rest(),
                            "auth_pass" => pass = a.rest(),
                            other => notes.unmapped(s.at(a), other, "no hapd equivalent"),
                        }
                    }
                    if ty.eq_ignore_ascii_case("PASS") {
                        auth = Some((pass, s.at(c)));
                    } else {
                        notes.unmapped(at, &format!("auth_type {ty}"), "only PASS exists in hapd (AH was removed from VRRP by RFC 3768); the XDP guard's peer list is what stops forged adverts");
                    }
                }
                "auth_hmac" => hmac = Some((auth_hmac(c, s, &mut notes)?, at)),
                "virtual_ipaddress" => {
                    for v in &c.children {
                        let ip = if v.name.contains('/') {
                            v.name.clone()
                        } else if v.name.contains(':') {
                            format!("{}/128", v.name)
                        } else {
                            format!("{}/32", v.name)
                        };
                        if let Some(pos) = v.args.iter().position(|a| a == "dev") {
                            let dev = v.arg(pos + 1).unwrap_or_default();
                            if interface.as_deref().is_some_and(|i| i != dev) {
                                notes.unmapped(s.at(v), &format!("{ip} dev {dev}"), "hapd adds virtual addresses on the instance's interface only");
                                continue;
                            }
                        }
                        if v.args.iter().any(|a| a == "label") {
                            notes.note(format!("{}: the address label is not kept", s.at(v)));
                        }
                        // keepalived's rule: the first address decides the instance's family,
                        // and an address of the other family is ignored (it logs "address
                        // family must match VRRP instance").
                        let v6 = ip.contains(':');
                        if vips.first().is_some_and(|f: &String| f.contains(':') != v6) {
                            notes.unmapped(s.at(v), &ip, "its family differs from the instance's first address: keepalived ignores it, and hapd runs one family per instance (put it in an instance of its own)");
                            continue;
                        }
                        vips.push(ip);
                    }
                }
                "unicast_peer" => {
                    unicast = true;
                    for p in &c.children {
                        if p.name.parse::<std::net::Ipv6Addr>().is_ok_and(|a| !a.is_unicast_link_local()) {
                            notes.note(format!(
                                "{}: unicast_peer {}: hapd sends IPv6 adverts from its link-local address and its guard accepts them only from the peers listed: list the other node's fe80:: address here (keepalived's only if it sends from {} with unicast_src_ip)",
                                s.at(p),
                                p.name,
                                p.name
                            ));
                        }
                        peers.push(p.name.clone());
                    }
                }
                "unicast_src_ip" => notes.note(format!(
                    "{at}: unicast_src_ip {}: hapd sends from the interface's primary address (IPv6: its link-local address)",
                    c.rest()
                )),
                "native_ipv6" => notes.note(format!(
                    "{at}: native_ipv6: hapd takes an instance's family from its virtual_ips (IPv6 runs VRRPv3)"
                )),
                "track_script" => {
                    for t in &c.children {
                        match proxy_scripts.get(&t.name) {
                            Some(w) => {
                                notes.note(format!(
                                    "{}: {} checked the proxy hapd replaces: track_proxy (the proxy's own health) takes its weight",
                                    s.at(t),
                                    t.name
                                ));
                                track_proxy = Some(*w);
                            }
                            None => track.push(t.name.clone()),
                        }
                    }
                }
                "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" | "notify" => {
                    let words: Vec<&str> = c.args.iter().flat_map(|a| a.split_whitespace()).collect();
                    let Some(prog) = words.first() else { continue };
                    if words.len() > 1 {
                        notes.note(format!(
                            "{at}: {}: the words after the program ({}) are dropped: hapd runs the program with the new state, the instance and the previous state as its arguments",
                            c.name,
                            words[1..].join(" ")
                        ));
                    }
                    let prev = notify.get_or_insert_with(|| (prog.to_string(), at.clone()));
                    if prev.0 != *prog {
                        notes.unmapped(at, &c.name, "hapd runs one notify command for every state; this one differs from the first");
                    }
                }
                "garp_master_repeat" => keys.push(("garp.repeat".into(), int(c, &at, 0)?)),
                "garp_master_refresh" => match c.arg(0).and_then(secs) {
                    Some(v) => keys.push(("garp.refresh".into(), q(&v))),
                    None => notes.unmapped(at, &c.name, "not a number of seconds"),
                },
                "track_interface" => notes.unmapped(at, "track_interface", "hapd follows the link of its own interface; for others use a track_script such as `ip link show IF up`"),
                other => notes.unmapped(at, other, "no hapd equivalent"),
            }
        }
        let Some(interface) = interface else {
            bail!("{}: vrrp_instance {iname} has no interface", s.at(d));
        };
        sec.key("interface", q(&interface));
        for (k, v) in keys.iter().filter(|(k, _)| !k.contains('.')) {
            sec.key(k, v.clone());
        }
        let v6 = vips.first().is_some_and(|v| v.contains(':'));
        if v6 && version != 3 {
            sec.note(format!(
                "vrrp_version {version}: IPv6 runs VRRPv3 only (keepalived switches too)"
            ));
            version = 3;
        }
        sec.key("version", version.to_string());
        let interval = secs(&advert).with_context(|| {
            format!(
                "{}: advert_int {advert:?} is not a number of seconds",
                s.at(d)
            )
        })?;
        sec.key("advert_interval", q(&interval));
        if vips.is_empty() {
            bail!(
                "{}: vrrp_instance {iname} has no virtual_ipaddress",
                s.at(d)
            );
        }
        sec.key("virtual_ips", qlist(&vips));
        if peers.is_empty() {
            // The --peer addresses of the instance's family.
            peers = cli_peers
                .iter()
                .filter(|p| p.is_ipv6() == v6)
                .map(|p| p.to_string())
                .collect();
        }
        if peers.is_empty() {
            sec.note(if v6 {
                "peers: the other node's link-local address (fe80::...) goes here (hapd import --peer IP): IPv6 adverts come from it, and the XDP guard then drops VRRP from anyone else"
            } else {
                "peers: the other node's address goes here (hapd import --peer IP): the XDP guard then drops VRRP from anyone else"
            });
        }
        sec.key("peers", qlist(&peers));
        if unicast {
            sec.key("unicast", "true");
        }
        if let Some((value, _)) = &hmac {
            sec.key("auth_hmac", value.clone());
        }
        if let Some((pass, at)) = auth {
            if let Some((_, hat)) = &hmac {
                notes.unmapped(
                    at,
                    "authentication",
                    &format!("auth_hmac ({hat}) replaces it; keepalived drops the legacy block when both are set, and hapd refuses both"),
                );
            } else if version != 2 {
                notes.unmapped(
                    at,
                    "authentication",
                    "VRRPv3 has no authentication; the XDP guard's peer list replaces it",
                );
            } else {
                let cut: String = pass.bytes().take(8).map(char::from).collect();
                if cut.len() < pass.len() {
                    sec.note(format!("{at}: auth_pass is {} bytes; keepalived sends only the first 8 ({cut:?}), so that is what a mixed pair must use", pass.len()));
                }
                sec.note(
                    "auth_pass is sent in clear text (RFC 3768); it stops mistakes, not attackers",
                );
                sec.key("auth_pass", q(&cut));
            }
        }
        if let Some(w) = track_proxy {
            sec.key("track_proxy", format!("{{ weight = {w} }}"));
        }
        if !track.is_empty() {
            sec.key("track_scripts", qlist(&track));
        }
        if let Some((prog, at)) = notify {
            sec.note(format!("{at}: hapd runs notify with STATE, instance and previous state appended (keepalived's notify_* lines passed the state as the first argument too)"));
            sec.key("notify", qlist(&[prog]));
        }
        let garp: Vec<String> = keys
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("garp.").map(|k| format!("{k} = {v}")))
            .collect();
        if !garp.is_empty() {
            sec.key("garp", format!("{{ {} }}", garp.join(", ")));
        }
        sec.lines.extend(notes.lines);
        out.push(sec);
    }
    out.extend(scripts);
    Ok(out)
}

/// The one argument of `d` as a whole number (`default` when it has none), or an error naming
/// where: a value is never copied into the config unread.
fn int(d: &Directive, at: &str, default: u64) -> anyhow::Result<String> {
    match d.args.as_slice() {
        [] => Ok(default.to_string()),
        [one] => one
            .parse::<u64>()
            .map(|n| n.to_string())
            .map_err(|_| anyhow::anyhow!("{at}: {} {one:?} is not a whole number", d.name)),
        _ => bail!("{at}: {} takes one number, got {:?}", d.name, d.rest()),
    }
}

/// keepalived's `script_user USER [GROUP]` (global_defs) as `[node] script_user`
/// (`"user"` or `"user:group"`). The config check refuses a user or group this host does not
/// have, so such a one is kept in a `not mapped` comment instead, ready to copy once it exists.
fn script_user(node: &mut Section, at: String, g: &Directive) {
    let spec = match g.args.as_slice() {
        [user] => user.clone(),
        [user, group] => format!("{user}:{group}"),
        _ => {
            node.unmapped(
                at,
                &format!("script_user {}", g.rest()),
                "takes a user and an optional group",
            );
            return;
        }
    };
    match crate::config::scripts::run_as(Some(spec.as_str())) {
        Ok(_) => {
            node.note(format!(
                "{at}: script_user {}: track, notify and fence programs run as this user",
                g.rest()
            ));
            node.key("script_user", q(&spec));
        }
        Err(why) => node.unmapped(
            at,
            &format!("script_user {}", g.rest()),
            &format!(
                "{why}: set script_user = {} under [node] once it exists (until then hapd runs scripts as {} where it exists, else as its own user)",
                q(&spec),
                crate::config::scripts::DEFAULT_USER
            ),
        ),
    }
}

/// keepalived's default for `interval`, `fall` and `rise`, and hapd's too (so they are left
/// out when the file has none); keepalived's `timeout` defaults to the interval, hapd's to 1s.
const SCRIPT_DEFAULT_INTERVAL: &str = "1s";

/// A `vrrp_script` block as a `[[track_script]]` section, with its weight and script line;
/// `None` when it has no `script` (keepalived drops such a block).
fn vrrp_script(
    d: &Directive,
    sname: &str,
    s: &Src,
) -> anyhow::Result<Option<(Section, i64, String)>> {
    let mut sec = Section::new("[[track_script]]");
    sec.key("name", q(sname));
    let mut weight = 0i64;
    let mut script = None;
    let mut timing: Vec<(String, String)> = Vec::new();
    for c in &d.children {
        let at = s.at(c);
        match c.name.as_str() {
            "script" => {
                let line = c.rest();
                let shell = line.contains(['|', ';', '&', '$', '>', '<', '`', '*']);
                if shell {
                    sec.note(format!(
                        "{at}: the script uses shell syntax: run by /bin/sh -c"
                    ));
                    sec.key("command", qlist(&["/bin/sh", "-c", line.as_str()]));
                } else {
                    let argv: Vec<&str> = line.split_whitespace().collect();
                    sec.key("command", qlist(&argv));
                }
                script = Some(line);
            }
            // keepalived reads 0 as 1 s, saying so in its log; hapd refuses 0.
            "interval" | "timeout" => {
                let v = match c.arg(0).and_then(secs) {
                    Some(v) if v == "0s" => {
                        sec.note(format!("{at}: {} 0: keepalived uses 1 s", c.name));
                        "1s".to_string()
                    }
                    Some(v) => v,
                    None => bail!("{at}: {} {:?} is not a number of seconds", c.name, c.rest()),
                };
                timing.retain(|(k, _)| *k != c.name);
                timing.push((c.name.clone(), q(&v)));
            }
            "fall" | "rise" => {
                let mut n = int(c, &at, 1)?;
                if n == "0" {
                    sec.note(format!("{at}: {} 0: keepalived uses 1", c.name));
                    n = "1".into();
                }
                timing.retain(|(k, _)| *k != c.name);
                timing.push((c.name.clone(), n));
            }
            "weight" => {
                weight = c
                    .arg(0)
                    .and_then(|w| w.parse::<i64>().ok())
                    .filter(|w| (-253..=253).contains(w))
                    .with_context(|| {
                        format!("{at}: weight {:?} is not a number in -253..=253", c.rest())
                    })?;
                if c.arg(1) == Some("reverse") {
                    sec.unmapped(at, "weight reverse", "hapd has no reversed weights: the weight is kept as written (negative: added while the script fails; positive: while it succeeds)");
                }
            }
            "user" => sec.unmapped(
                at,
                &format!("user {}", c.rest()),
                "hapd runs every script as [node] script_user",
            ),
            other => sec.unmapped(at, other, "no hapd equivalent"),
        }
    }
    let Some(script) = script else {
        return Ok(None);
    };
    let interval = timing
        .iter()
        .find(|(k, _)| k == "interval")
        .map(|(_, v)| v.clone());
    for key in ["interval", "timeout", "fall", "rise"] {
        if let Some((_, v)) = timing.iter().find(|(k, _)| k == key) {
            sec.key(key, v.clone());
        } else if key == "timeout" {
            // keepalived's timeout is the interval when not set; hapd's default is 1s.
            if let Some(iv) = interval
                .as_ref()
                .filter(|iv| **iv != q(SCRIPT_DEFAULT_INTERVAL))
            {
                sec.note(format!(
                    "{}: no timeout: keepalived's is the interval",
                    s.at(d)
                ));
                sec.key("timeout", iv.clone());
            }
        }
    }
    if weight != 0 {
        sec.key("weight", weight.to_string());
    }
    Ok(Some((sec, weight, script)))
}

/// keepalived 2.4's `auth_hmac { key ID VALUE; active_key ID; anti_replay …; time_window S;
/// mode … }` as hapd's inline table. Keys keep their form (`hex:`, `file:` or ASCII).
fn auth_hmac(d: &Directive, s: &Src<'_>, notes: &mut Section) -> anyhow::Result<String> {
    let mut keys = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut fields = Vec::new();
    for c in &d.children {
        let at = s.at(c);
        match c.name.as_str() {
            "key" => {
                let (Some(id), Some(value)) = (c.arg(0), c.arg(1)) else {
                    bail!("{at}: auth_hmac key needs an ID and a value");
                };
                let Ok(id) = id.parse::<u8>() else {
                    bail!("{at}: auth_hmac key ID {id:?} is not 1..=255");
                };
                if !seen.insert(id) {
                    notes.unmapped(
                        at,
                        &format!("auth_hmac key {id}"),
                        "a second key with this ID; keepalived keeps the first",
                    );
                    continue;
                }
                if value.contains("${") {
                    notes.note(format!(
                        "{at}: key {id} names {value}: hapd does not expand keepalived's ${{…}} \
                         variables; write the file's path"
                    ));
                }
                keys.push(format!("{id} = {}", q(value)));
            }
            "active_key" => fields.push(format!("active_key = {}", int(c, &at, 0)?)),
            "anti_replay" => fields.push(format!("anti_replay = {}", q(&c.rest()))),
            "time_window" => match c.arg(0).and_then(secs) {
                Some(v) => fields.push(format!("time_window = {}", q(&v))),
                None => bail!(
                    "{at}: time_window {:?} is not a number of seconds",
                    c.rest()
                ),
            },
            "mode" => fields.push(format!("mode = {}", q(&c.rest()))),
            other => notes.unmapped(at, &format!("auth_hmac {other}"), "no hapd equivalent"),
        }
    }
    fields.insert(0, format!("keys = {{ {} }}", keys.join(", ")));
    Ok(format!("{{ {} }}", fields.join(", ")))
}

/// Apache cipher names for TLS 1.2 → rustls names.
fn cipher(openssl: &str) -> Option<&'static str> {
    Some(match openssl {
        "ECDHE-ECDSA-AES256-GCM-SHA384" => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384" => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256" => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256" => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        _ => return None,
    })
}

/// One `[[vhost]]` being built.
struct Vhost {
    sec: Section,
    listener: String,
    names: Vec<String>,
    routes: Vec<(String, String, Vec<String>)>,
    redirect: bool,
}

/// The status flags a `BalancerMember`'s `status=` sets (Apache: a letter sets its flag, or
/// clears it after `-`; `+` sets again), upper-case.
fn member_status(args: &[String]) -> Vec<char> {
    let mut flags = Vec::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            continue;
        };
        if !k.eq_ignore_ascii_case("status") {
            continue;
        }
        let mut set = true;
        for c in v.chars() {
            match c {
                '+' => set = true,
                '-' => set = false,
                c => {
                    let c = c.to_ascii_uppercase();
                    flags.retain(|f| *f != c);
                    if set {
                        flags.push(c);
                    }
                }
            }
        }
    }
    flags
}

/// A `<Proxy balancer://...>` section: its members, its hot standby members (`status=+H`),
/// and its `lbmethod`.
struct Balancer {
    members: Vec<String>,
    standby: Vec<String>,
    balance: Option<&'static str>,
}

#[derive(Default)]
struct ApacheState {
    server: Section,
    tls: Section,
    protocols: Option<Vec<String>>,
    ciphers: Option<Vec<String>>,
    certs: Vec<(String, String, Option<String>)>,
    /// name → (bind, tls)
    /// By name: the addresses, and whether it has TLS.
    listeners: BTreeMap<String, (Vec<String>, bool)>,
    /// authority → name
    upstreams: BTreeMap<String, String>,
    /// balancer name → its members
    balancers: BTreeMap<String, Balancer>,
    upstream_notes: Vec<String>,
    /// Server-wide `Timeout` and `ProxyTimeout`: (hapd duration, where).
    timeout: Option<(String, String)>,
    proxy_timeout: Option<(String, String)>,
    /// Log files moved under [`LOG_DIR`]: new path → the path in the Apache file.
    logs: BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl ApacheState {
    /// The upstream for a ProxyPass target; its name, or why not.
    fn upstream(&mut self, url: &str) -> Result<String, String> {
        if let Some(b) = url.strip_prefix("balancer://") {
            let name = b.split('/').next().unwrap_or(b).to_string();
            return if self.balancers.contains_key(&name) {
                Ok(name)
            } else {
                Err(format!("balancer://{name} is not defined in this file"))
            };
        }
        let u = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if u.scheme() != "http" {
            return Err(format!(
                "{url}: hapd talks to upstreams in plain HTTP/1.1 only"
            ));
        }
        let host = u.host_str().ok_or_else(|| format!("{url}: no host"))?;
        let authority = format!("{host}:{}", u.port_or_known_default().unwrap_or(80));
        if let Some(n) = self.upstreams.get(&authority) {
            return Ok(n.clone());
        }
        let short = host.split('.').next().unwrap_or(host).to_string();
        let name = if self.upstreams.values().any(|n| *n == short)
            || self.balancers.contains_key(&short)
        {
            format!("{short}-{}", u.port_or_known_default().unwrap_or(80))
        } else {
            short
        };
        self.upstreams.insert(authority, name.clone());
        Ok(name)
    }
}

/// A route's target path must be the prefix itself: hapd forwards paths unchanged.
fn same_path(prefix: &str, url: &str) -> bool {
    let path = url::Url::parse(url)
        .map(|u| u.path().to_string())
        .unwrap_or_default();
    let p = if url.starts_with("balancer://") {
        url.splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_else(|| "/".into())
    } else {
        path
    };
    p == prefix || (p == "/" && prefix == "/")
}

/// A timeout directive's one argument as a hapd duration; an error names where.
fn timeout(d: &Directive, at: &str) -> anyhow::Result<String> {
    match d.arg(0).and_then(secs) {
        Some(v) if v == "0s" => bail!(
            "{at}: {} {}: hapd needs a timeout greater than 0",
            d.name,
            d.rest()
        ),
        Some(v) => Ok(v),
        None => bail!("{at}: {} {:?} is not a number of seconds", d.name, d.rest()),
    }
}

/// Where imported log files go: the unit's `LogsDirectory=hapd`. hapd.service runs with
/// `ProtectSystem=strict`, so hapd can write only there and in its other `ReadWritePaths`
/// (`/sys/fs/bpf`, a bpffs, which holds no files); `/tmp` is private to the service.
pub const LOG_DIR: &str = "/var/log/hapd";

/// An Apache log file as a file hapd can write: kept when it is under [`LOG_DIR`], else the
/// same file name under it (with a note and a warning naming the original). `Err`: why it
/// cannot be a file at all (a piped logger, syslog).
fn log_path(
    st: &mut ApacheState,
    sec: &mut Section,
    at: &str,
    directive: &str,
    path: &str,
) -> Result<String, String> {
    if path.starts_with('|') {
        return Err(
            "a piped logger: hapd writes the file itself and runs no logger program".into(),
        );
    }
    if path == "syslog" || path.starts_with("syslog:") {
        return Err("hapd writes its vhost logs to files; its own log goes to the journal".into());
    }
    let p = Path::new(path);
    let dir = Path::new(LOG_DIR);
    let inside = p.is_absolute()
        && p.starts_with(dir)
        && p.components().count() > dir.components().count()
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if inside {
        return Ok(path.to_string());
    }
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return Err(format!("{path}: no file name"));
    };
    let new = format!("{LOG_DIR}/{name}");
    let why = format!(
        "{at}: {directive} {path} is outside what hapd.service lets hapd write ({LOG_DIR}): written to {new} instead"
    );
    sec.note(&why);
    st.warnings.push(why);
    match st.logs.get(&new) {
        Some(other) if other != path => {
            let both =
                format!("{at}: {new} is also where {other} goes: the two logs are now one file");
            sec.note(&both);
            st.warnings.push(both);
        }
        Some(_) => {}
        None => {
            st.logs.insert(new.clone(), path.to_string());
        }
    }
    Ok(new)
}

fn apache(tree: &[Directive], s: &Src) -> anyhow::Result<(Vec<Section>, Vec<String>)> {
    let mut st = ApacheState {
        server: Section::new("[server]"),
        tls: Section::new("[tls]"),
        ..ApacheState::default()
    };
    // Balancers first: routes refer to them.
    for d in tree.iter().filter(|d| d.name.eq_ignore_ascii_case("Proxy")) {
        let Some(b) = d.arg(0).and_then(|a| a.strip_prefix("balancer://")) else {
            st.upstream_notes.push(format!(
                "not mapped ({}): <Proxy {}>: only balancer:// sections are read",
                s.at(d),
                d.rest()
            ));
            continue;
        };
        let name = b.trim_end_matches('/').to_string();
        let mut members = Vec::new();
        let mut standby = Vec::new();
        let mut balance = None;
        for c in &d.children {
            match c.name.as_str() {
                "BalancerMember" => match c.arg(0).and_then(|u| url::Url::parse(u).ok()) {
                    Some(u) if u.scheme() == "http" => {
                        let authority = format!(
                            "{}:{}",
                            u.host_str().unwrap_or_default(),
                            u.port_or_known_default().unwrap_or(80)
                        );
                        let flags = member_status(&c.args[1..]);
                        if flags.contains(&'D') || flags.contains(&'S') {
                            st.upstream_notes.push(format!(
                                "not mapped ({}): BalancerMember {}: disabled or stopped \
                                 (status=D/S): left out",
                                s.at(c),
                                c.rest()
                            ));
                        } else if members.contains(&authority) || standby.contains(&authority) {
                            st.upstream_notes.push(format!(
                                "{}: BalancerMember {}: {authority} is already a member",
                                s.at(c),
                                c.rest()
                            ));
                        } else if flags.contains(&'H') || flags.contains(&'R') {
                            // Hot standby and hot spare: used only while no other member is up.
                            standby.push(authority);
                        } else {
                            members.push(authority);
                        }
                    }
                    _ => st.upstream_notes.push(format!(
                        "not mapped ({}): BalancerMember {}: not an http:// URL",
                        s.at(c),
                        c.rest()
                    )),
                },
                "ProxySet" => {
                    for a in &c.args {
                        match a.as_str() {
                            "lbmethod=bybusyness" => balance = Some("least-outstanding"),
                            "lbmethod=byrequests" => balance = Some("round-robin"),
                            other => st.upstream_notes.push(format!(
                                "not mapped ({}): ProxySet {other}: no hapd equivalent",
                                s.at(c)
                            )),
                        }
                    }
                }
                other => st.upstream_notes.push(format!(
                    "not mapped ({}): {other}: no hapd equivalent in a balancer",
                    s.at(c)
                )),
            }
        }
        if members.is_empty() && !standby.is_empty() {
            // Apache uses hot standbys when no other member is up: with none, always.
            st.upstream_notes.push(format!(
                "{}: <Proxy {}>: every member is a hot standby (status=+H): they are its servers",
                s.at(d),
                d.rest()
            ));
            members = std::mem::take(&mut standby);
        }
        st.balancers.insert(
            name,
            Balancer {
                members,
                standby,
                balance,
            },
        );
    }
    // Server-wide settings, and <Location> blocks that apply to every proxying vhost.
    let mut global_routes: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut server_header_set = false;
    for d in tree {
        let at = s.at(d);
        match d.name.as_str() {
            "VirtualHost" | "Proxy" => {}
            "ServerRoot" => st.server.note(format!(
                "{at}: ServerRoot {}: where relative Include paths start",
                d.rest()
            )),
            // mod_proxy waits ProxyTimeout for an upstream, by default Timeout; a vhost's own
            // setting wins (see `vhost`). The last one in the file counts, as in Apache.
            "Timeout" => {
                st.timeout = Some((timeout(d, &at)?, at.clone()));
                st.server.note(format!("{at}: Timeout {}: the timeout of every vhost without its own ProxyTimeout or Timeout (mod_proxy's ProxyTimeout defaults to Timeout); client request heads: header_read_timeout", d.rest()));
            }
            "ProxyTimeout" => {
                st.proxy_timeout = Some((timeout(d, &at)?, at.clone()));
                st.server.note(format!("{at}: ProxyTimeout {}: the timeout of every vhost without its own ProxyTimeout", d.rest()));
            }
            "ServerTokens" => {
                if !server_header_set {
                    st.server.note(format!(
                        "{at}: ServerTokens {}: hapd never sends a version",
                        d.rest()
                    ));
                    st.server.key("server_header", "false");
                    server_header_set = true;
                }
            }
            "ServerSignature" => st.server.note(format!(
                "{at}: ServerSignature {}: hapd's own error pages carry no signature",
                d.rest()
            )),
            "TraceEnable" => st.server.note(format!(
                "{at}: TraceEnable {}: hapd always answers TRACE with 405",
                d.rest()
            )),
            "FileETag" => st.server.note(format!(
                "{at}: FileETag {}: hapd serves no files; upstream ETags pass unchanged",
                d.rest()
            )),
            "KeepAliveTimeout" => match d.arg(0).and_then(secs) {
                Some(v) => st.server.key("keepalive_timeout", q(&v)),
                None => bail!(
                    "{at}: KeepAliveTimeout {:?} is not a number of seconds",
                    d.rest()
                ),
            },
            "LimitRequestFieldSize" => st.server.key("max_header_bytes", int(d, &s.at(d), 0)?),
            "Location" => {
                let prefix = d.arg(0).unwrap_or("/").to_string();
                match location(d, s, &mut st) {
                    Ok(Some((up, allow))) => {
                        st.server.note(format!(
                            "{at}: <Location {prefix}> is a route in every vhost that proxies"
                        ));
                        global_routes.push((prefix, up, allow));
                    }
                    Ok(None) => {}
                    Err(why) => st
                        .server
                        .unmapped(at, &format!("<Location {prefix}>"), &why),
                }
            }
            other => st.server.unmapped(at, other, "no hapd equivalent"),
        }
    }
    let mut vhosts: Vec<Vhost> = Vec::new();
    for d in tree.iter().filter(|d| d.name == "VirtualHost") {
        vhosts.push(vhost(d, s, &mut st)?);
    }
    for v in vhosts.iter_mut().filter(|v| !v.routes.is_empty()) {
        for r in &global_routes {
            if !v.routes.iter().any(|x| x.0 == r.0) {
                v.routes.push(r.clone());
            }
        }
    }
    // Output, in the order a reader expects.
    let mut out = Vec::new();
    if !st.server.lines.is_empty() {
        out.push(std::mem::take(&mut st.server));
    }
    if !st.certs.is_empty() {
        let mut tls = std::mem::take(&mut st.tls);
        tls.key(
            "protocols",
            qlist(
                st.protocols
                    .as_deref()
                    .unwrap_or(&["1.2".to_string(), "1.3".to_string()]),
            ),
        );
        if let Some(c) = &st.ciphers {
            let mut all = vec![
                "TLS13_AES_256_GCM_SHA384".to_string(),
                "TLS13_CHACHA20_POLY1305_SHA256".into(),
                "TLS13_AES_128_GCM_SHA256".into(),
            ];
            all.extend(c.iter().cloned());
            tls.note("TLS 1.3 suites first (Apache's SSLCipherSuite covers TLS 1.2 only), then the mapped TLS 1.2 ones");
            tls.key("cipher_suites", qlist(&all));
        }
        out.push(tls);
        for (cert, key, chain) in &st.certs {
            let mut c = Section::new("[[tls.certificate]]");
            c.key("cert", q(cert));
            c.key("key", q(key));
            if let Some(ch) = chain {
                c.key("chain", q(ch));
            }
            out.push(c);
        }
    }
    for (name, (binds, tls)) in &st.listeners {
        let mut l = Section::new("[[listener]]");
        l.key("name", q(name));
        l.key("bind", qlist(binds));
        if binds.iter().any(|b| b.starts_with("[::]:")) {
            l.note("Apache's * listens on both families: [::] is the IPv6 one (hapd's IPv6 listeners are IPv6 only); remove it on a host without IPv6");
        }
        if *tls {
            l.key("tls", "true");
        }
        out.push(l);
    }
    for (
        name,
        Balancer {
            members,
            standby,
            balance,
        },
    ) in &st.balancers
    {
        let mut u = Section::new("[[upstream]]");
        u.key("name", q(name));
        u.key("servers", qlist(members));
        if !standby.is_empty() {
            u.key("backup_servers", qlist(standby));
        }
        if let Some(b) = balance {
            u.key("balance", q(b));
        }
        out.push(u);
    }
    for (authority, name) in &st.upstreams {
        let mut u = Section::new("[[upstream]]");
        u.key("name", q(name));
        u.key("servers", qlist(&[authority]));
        out.push(u);
    }
    if let Some(first) = out.iter_mut().find(|s| s.header == "[[upstream]]") {
        for n in &st.upstream_notes {
            first.note(n);
        }
    }
    let warnings = std::mem::take(&mut st.warnings);
    for v in vhosts {
        let mut sec = v.sec;
        sec.lines
            .insert(0, format!("listeners = {}", qlist(&[v.listener])));
        sec.lines
            .insert(0, format!("server_names = {}", qlist(&v.names)));
        if v.redirect {
            sec.key("redirect_https", "true");
        }
        out.push(sec);
        let mut routes = v.routes;
        if !v.redirect {
            routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
            for (prefix, up, allow) in routes {
                let mut r = Section::new("  [[vhost.route]]");
                r.lines.push(format!("  prefix = {}", q(&prefix)));
                r.lines.push(format!("  upstream = {}", q(&up)));
                if !allow.is_empty() {
                    r.lines.push(format!("  allow = {}", qlist(&allow)));
                }
                out.push(r);
            }
        }
    }
    Ok((out, warnings))
}

/// A `<Location>` block: ProxyPass and `Require ip`. `Ok(None)` when it proxies nothing.
fn location(
    d: &Directive,
    s: &Src,
    st: &mut ApacheState,
) -> Result<Option<(String, Vec<String>)>, String> {
    let mut up = None;
    let mut allow = Vec::new();
    for c in &d.children {
        match c.name.as_str() {
            "ProxyPass" => up = Some(st.upstream(c.arg(0).unwrap_or_default())?),
            "ProxyPassReverse" => {}
            "Require" if c.arg(0) == Some("ip") => allow.extend(c.args[1..].iter().cloned()),
            "Require" if c.arg(0) == Some("all") && c.arg(1) == Some("granted") => {}
            other => {
                return Err(format!(
                    "{other} ({}) inside <Location> has no hapd equivalent",
                    s.at(c)
                ))
            }
        }
    }
    Ok(up.map(|u| (u, allow)))
}

fn vhost(d: &Directive, s: &Src, st: &mut ApacheState) -> anyhow::Result<Vhost> {
    let addr = d.arg(0).unwrap_or("*:80");
    // `[2001:db8::1]:443`, `[2001:db8::1]` (port 80), `10.0.0.1:443`, `*:443`, `*`.
    let (host, port) = match addr.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').unwrap_or("80")),
            None => bail!("{}: <VirtualHost {addr}>: unclosed [", s.at(d)),
        },
        None => addr.rsplit_once(':').unwrap_or((addr, "80")),
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("{}: <VirtualHost {addr}>: bad port", s.at(d)))?;
    let tls = d
        .children
        .iter()
        .any(|c| c.name == "SSLEngine" && c.arg(0).is_some_and(|a| a.eq_ignore_ascii_case("on")));
    // Apache's `*` is both families; hapd's [::] listeners are IPv6 only, so both go in.
    let binds: Vec<String> = if host == "*" || host == "_default_" {
        vec![format!("0.0.0.0:{port}"), format!("[::]:{port}")]
    } else if host.contains(':') {
        vec![format!("[{host}]:{port}")]
    } else {
        vec![format!("{host}:{port}")]
    };
    let lname = match (port, tls) {
        (443, true) => "https".to_string(),
        (80, false) => "http".to_string(),
        (p, true) => format!("tls-{p}"),
        (p, false) => format!("plain-{p}"),
    };
    // A second VirtualHost on the same port and TLS adds its addresses to the listener.
    let l = st
        .listeners
        .entry(lname.clone())
        .or_insert((Vec::new(), tls));
    for b in binds {
        if !l.0.contains(&b) {
            l.0.push(b);
        }
    }
    let mut v = Vhost {
        sec: Section::new("[[vhost]]"),
        listener: lname,
        names: vec![],
        routes: vec![],
        redirect: false,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let (mut cert, mut key, mut chain) = (None, None, None);
    // (hapd duration, where) of this vhost's ProxyTimeout and Timeout.
    let (mut proxy_timeout, mut own_timeout) = (None, None);
    for c in &d.children {
        let at = s.at(c);
        match c.name.as_str() {
            "ServerName" | "ServerAlias" => v.names.extend(c.args.iter().cloned()),
            "SSLEngine" => {}
            "SSLCertificateFile" => cert = c.arg(0).map(str::to_string),
            "SSLCertificateKeyFile" => key = c.arg(0).map(str::to_string),
            "SSLCertificateChainFile" => chain = c.arg(0).map(str::to_string),
            "SSLProtocol" => {
                let mut on: Vec<String> = Vec::new();
                for a in &c.args {
                    let (sign, p) = match a.chars().next() {
                        Some('+') => (true, &a[1..]),
                        Some('-') => (false, &a[1..]),
                        _ => (true, a.as_str()),
                    };
                    let vs: Vec<&str> = match p {
                        "all" => vec!["1.2", "1.3"],
                        "TLSv1.2" => vec!["1.2"],
                        "TLSv1.3" => vec!["1.3"],
                        _ => vec![],
                    };
                    for x in vs {
                        on.retain(|o| o != x);
                        if sign {
                            on.push(x.to_string());
                        }
                    }
                }
                on.sort();
                if c.args.iter().any(|a| a.starts_with('+') && matches!(&a[1..], "TLSv1" | "TLSv1.1" | "SSLv3")) {
                    st.tls.unmapped(at.clone(), "SSLProtocol", "hapd speaks TLS 1.2 and 1.3 only; older versions are left out");
                }
                st.protocols = Some(on);
            }
            "SSLCipherSuite" => {
                let mut mapped = Vec::new();
                for name in c.rest().split(':') {
                    match cipher(name) {
                        Some(r) => mapped.push(r.to_string()),
                        None => st.tls.unmapped(at.clone(), &format!("cipher {name}"), "not offered by hapd (rustls offers AEAD suites with forward secrecy only)"),
                    }
                }
                st.ciphers = Some(mapped);
            }
            "SSLHonorCipherOrder" => st.tls.note(format!("{at}: SSLHonorCipherOrder {}: hapd follows the client's order among the allowed suites, like `off`", c.rest())),
            "Header" => {
                let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
                match args.as_slice() {
                    ["always", "set", name, value] | ["set", name, value] => headers.push((name.to_string(), value.to_string())),
                    _ => v.sec.unmapped(at, &format!("Header {}", c.rest()), "hapd sets response headers only (Header [always] set NAME VALUE)"),
                }
            }
            "ProxyPreserveHost" => {
                if c.arg(0).is_some_and(|a| a.eq_ignore_ascii_case("on")) {
                    v.sec.key("preserve_host", "true");
                }
            }
            "ProxyTimeout" => proxy_timeout = Some((timeout(c, &at)?, at)),
            "Timeout" => own_timeout = Some((timeout(c, &at)?, at)),
            "ProxyRequests" => v.sec.note(format!("{at}: ProxyRequests {}: hapd is never a forward proxy", c.rest())),
            "ProxyPass" => {
                let (Some(prefix), Some(target)) = (c.arg(0), c.arg(1)) else {
                    v.sec.unmapped(at, "ProxyPass", "needs a path and a URL");
                    continue;
                };
                if target == "!" {
                    v.sec.unmapped(at, &format!("ProxyPass {prefix} !"), "hapd has no exclusions: every path is proxied by its longest matching prefix");
                    continue;
                }
                match st.upstream(target) {
                    Ok(up) => {
                        if !same_path(prefix, target) {
                            v.sec.note(format!("{at}: ProxyPass {prefix} {target}: hapd forwards the path unchanged; the upstream must serve it under {prefix}"));
                        }
                        v.routes.push((prefix.to_string(), up, vec![]));
                    }
                    Err(why) => v.sec.unmapped(at, &format!("ProxyPass {prefix}"), &why),
                }
            }
            "ProxyPassReverse" => {}
            "ErrorLog" | "CustomLog" => {
                let key = if c.name == "ErrorLog" { "error_log" } else { "access_log" };
                let Some(path) = c.arg(0) else {
                    v.sec.unmapped(at, &c.name, "needs a file");
                    continue;
                };
                match log_path(st, &mut v.sec, &at, &c.name, path) {
                    Ok(p) => {
                        if key == "access_log" && c.arg(1) != Some("combined") {
                            v.sec.note(format!("{at}: CustomLog format {:?}: hapd writes the combined format", c.arg(1).unwrap_or("")));
                        }
                        v.sec.key(key, q(&p));
                    }
                    Err(why) => v.sec.unmapped(at, &format!("{} {}", c.name, c.rest()), &why),
                }
            }
            "RewriteEngine" => {}
            "RewriteRule" if c.arg(1).is_some_and(|t| t.starts_with("https://%{HTTP_HOST}") || t.starts_with("https://%{SERVER_NAME}")) => v.redirect = true,
            "Redirect" if c.args.iter().any(|a| a.starts_with("https://")) && c.args.iter().any(|a| a == "/") => v.redirect = true,
            "Location" => {
                let prefix = c.arg(0).unwrap_or("/").to_string();
                match location(c, s, st) {
                    Ok(Some((up, allow))) => v.routes.push((prefix, up, allow)),
                    Ok(None) => v.sec.unmapped(at, &format!("<Location {prefix}>"), "proxies nothing"),
                    Err(why) => v.sec.unmapped(at, &format!("<Location {prefix}>"), &why),
                }
            }
            other => v.sec.unmapped(at, other, "no hapd equivalent"),
        }
    }
    // mod_proxy's timeout for this vhost: its ProxyTimeout, else the server's ProxyTimeout,
    // else its Timeout, else the server's Timeout (Apache's default, 60 s, is hapd's).
    // (hapd duration, where, directive, whether this vhost set it)
    let chosen = proxy_timeout
        .map(|(t, at)| (t, at, "ProxyTimeout", true))
        .or_else(|| {
            st.proxy_timeout
                .clone()
                .map(|(t, at)| (t, at, "ProxyTimeout", false))
        })
        .or_else(|| own_timeout.clone().map(|(t, at)| (t, at, "Timeout", true)))
        .or_else(|| st.timeout.clone().map(|(t, at)| (t, at, "Timeout", false)));
    if let (Some((_, tat)), Some((_, at, "ProxyTimeout", _))) = (&own_timeout, &chosen) {
        v.sec.note(format!("{tat}: Timeout: the ProxyTimeout of {at} sets the upstream timeout; client request heads: header_read_timeout"));
    }
    match chosen {
        Some((t, _, "ProxyTimeout", true)) => v.sec.key("timeout", q(&t)),
        // A redirect vhost never waits for an upstream: an inherited timeout would be noise.
        Some((t, at, what, own)) if own || !v.redirect => {
            v.sec.note(format!(
                "timeout: {what} ({at}): mod_proxy's timeout for this vhost"
            ));
            v.sec.key("timeout", q(&t));
        }
        _ => {}
    }
    if v.names.is_empty() {
        v.sec.note(format!(
            "{}: no ServerName: this vhost answers every name on its listener",
            s.at(d)
        ));
        v.names.push("_".into());
    }
    if !headers.is_empty() {
        let kv: Vec<String> = headers
            .iter()
            .map(|(k, val)| format!("{} = {}", q(k), q(val)))
            .collect();
        v.sec
            .key("response_headers", format!("{{ {} }}", kv.join(", ")));
    }
    if let (Some(c), Some(k)) = (cert, key) {
        if !st.certs.iter().any(|x| x.0 == c) {
            st.certs.push((c, k, chain));
        }
    } else if tls {
        bail!(
            "{}: SSLEngine on without SSLCertificateFile and SSLCertificateKeyFile",
            s.at(d)
        );
    }
    if v.redirect && !v.routes.is_empty() {
        v.sec
            .note("this vhost redirects to https: its routes are not used");
    }
    if !v.redirect && v.routes.is_empty() {
        v.sec.note(format!(
            "{}: this vhost proxies nothing; hapd answers 404 on it",
            s.at(d)
        ));
    }
    Ok(v)
}

/// `hapd import`'s whole job: read the files, build, and return the text.
pub fn run(
    keepalived: Option<&PathBuf>,
    apache: Option<&PathBuf>,
    peers: &[IpAddr],
) -> anyhow::Result<Imported> {
    if keepalived.is_none() && apache.is_none() {
        bail!("give --keepalived FILE, --apache FILE or both");
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let k = keepalived.map(read).transpose()?;
    let a = apache.map(read).transpose()?;
    import(&Sources {
        keepalived: keepalived.map(PathBuf::as_path).zip(k.as_deref()),
        apache: apache.map(PathBuf::as_path).zip(a.as_deref()),
        peers,
    })
}
