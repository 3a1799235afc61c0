//! Readers for the two files `hapd import` understands: keepalived's brace blocks and Apache's
//! `<Section>` blocks. Both give a tree of directives with their line numbers, so every comment
//! the importer writes can say where the directive came from.
use std::sync::Arc;

use anyhow::bail;

/// One directive: its name, its arguments (quotes removed), and the block under it, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub children: Vec<Directive>,
    pub line: usize,
    /// The file it is in when that is not the file given to the importer (an Apache
    /// `Include`d one); `None`: the given file.
    pub file: Option<Arc<str>>,
}

impl Directive {
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }

    /// The arguments joined by spaces (the line as written, without its name).
    pub fn rest(&self) -> String {
        self.args.join(" ")
    }
}

/// Splits a line into words; double-quoted words keep their spaces (`\"` escapes a quote).
/// Everything from an unquoted `comment` character on is dropped.
fn words(line: &str, comment: &[char], lineno: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' if chars.peek() == Some(&'"') => {
                            cur.push('"');
                            chars.next();
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        _ => cur.push(q),
                    }
                }
                if !closed {
                    bail!("line {lineno}: unterminated quote");
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c if comment.contains(&c) && !in_word => break,
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// keepalived.conf: `name args {` opens a block, `}` closes it; `#` and `!` start comments.
pub fn keepalived(text: &str) -> anyhow::Result<Vec<Directive>> {
    let mut stack: Vec<Directive> = vec![Directive {
        name: String::new(),
        args: vec![],
        children: vec![],
        line: 0,
        file: None,
    }];
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let mut toks = words(raw, &['#', '!'], lineno)?;
        // `}` may share a line with text before it, and `{` may be glued to the name.
        while !toks.is_empty() {
            let close = toks.iter().position(|t| t == "}");
            let head: Vec<String> = match close {
                Some(p) => toks.drain(..=p).take(p).collect(),
                None => std::mem::take(&mut toks),
            };
            if !head.is_empty() {
                let mut head = head;
                let opens = head.last().is_some_and(|t| t.ends_with('{'));
                if opens {
                    let last = head.pop().unwrap_or_default();
                    let stem = last.trim_end_matches('{');
                    if !stem.is_empty() {
                        head.push(stem.to_string());
                    }
                }
                if head.is_empty() {
                    bail!("line {lineno}: a block without a name");
                }
                let d = Directive {
                    name: head[0].clone(),
                    args: head[1..].to_vec(),
                    children: vec![],
                    line: lineno,
                    file: None,
                };
                if opens {
                    stack.push(d);
                } else if let Some(top) = stack.last_mut() {
                    top.children.push(d);
                }
            }
            if close.is_some() {
                if stack.len() < 2 {
                    bail!("line {lineno}: `}}` without an open block");
                }
                let done = stack.pop().unwrap_or_else(|| unreachable!());
                if let Some(top) = stack.last_mut() {
                    top.children.push(done);
                }
            }
        }
    }
    if stack.len() != 1 {
        let open = stack.last().map_or(0, |d| d.line);
        bail!("the block opened on line {open} is not closed");
    }
    Ok(stack.pop().map(|d| d.children).unwrap_or_default())
}

/// The directive names the importer reads, in Apache's spelling. Apache matches names in any
/// case (`sslengine on` is `SSLEngine on`); the reader gives them this spelling.
const APACHE_NAMES: &[&str] = &[
    "BalancerMember",
    "CustomLog",
    "ErrorLog",
    "FileETag",
    "Header",
    "Include",
    "IncludeOptional",
    "KeepAliveTimeout",
    "LimitRequestFieldSize",
    "Location",
    "Proxy",
    "ProxyPass",
    "ProxyPassReverse",
    "ProxyPreserveHost",
    "ProxyRequests",
    "ProxySet",
    "ProxyTimeout",
    "Redirect",
    "Require",
    "RewriteEngine",
    "RewriteRule",
    "SSLCertificateChainFile",
    "SSLCertificateFile",
    "SSLCertificateKeyFile",
    "SSLCipherSuite",
    "SSLEngine",
    "SSLHonorCipherOrder",
    "SSLProtocol",
    "ServerAlias",
    "ServerName",
    "ServerRoot",
    "ServerSignature",
    "ServerTokens",
    "Timeout",
    "TraceEnable",
    "VirtualHost",
];

fn canonical(name: &str) -> String {
    APACHE_NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))
        .map_or_else(|| name.to_owned(), |n| (*n).to_owned())
}

/// `<IfModule>` and `<IfDefine>` sections give way to what they hold, as if it stood outside
/// them: the importer cannot know the server's modules and defines, and the usual layouts
/// (Debian's default-ssl.conf in `<IfModule mod_ssl.c>`) mean them to apply.
pub(super) fn unwrap_conditions(tree: Vec<Directive>) -> Vec<Directive> {
    let mut out = Vec::new();
    for mut d in tree {
        d.children = unwrap_conditions(std::mem::take(&mut d.children));
        if d.name.eq_ignore_ascii_case("IfModule") || d.name.eq_ignore_ascii_case("IfDefine") {
            out.extend(d.children);
        } else {
            out.push(d);
        }
    }
    out
}

/// Apache httpd config: `<Name args>` opens a section, `</Name>` closes it; `#` starts a
/// comment line; a trailing `\` continues a line. Names take Apache's spelling whatever their
/// case, and `<IfModule>`/`<IfDefine>` sections are unwrapped (see [`unwrap_conditions`]).
pub fn apache(text: &str) -> anyhow::Result<Vec<Directive>> {
    apache_raw(text).map(unwrap_conditions)
}

/// [`apache`] without unwrapping conditions: the importer follows `Include`s in this tree
/// first (see `import::include`).
pub(super) fn apache_raw(text: &str) -> anyhow::Result<Vec<Directive>> {
    let mut stack: Vec<Directive> = vec![Directive {
        name: String::new(),
        args: vec![],
        children: vec![],
        line: 0,
        file: None,
    }];
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        if pending.is_empty() {
            start = lineno;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix("</") {
            let name = name.trim_end_matches('>').trim();
            let top = stack.pop().filter(|d| d.name.eq_ignore_ascii_case(name));
            let Some(done) = top else {
                bail!("line {start}: </{name}> does not close an open <{name}>");
            };
            if let Some(parent) = stack.last_mut() {
                parent.children.push(done);
            } else {
                bail!("line {start}: </{name}> without an open section");
            }
            continue;
        }
        if let Some(inner) = t.strip_prefix('<') {
            let inner = inner
                .strip_suffix('>')
                .ok_or_else(|| anyhow::anyhow!("line {start}: section opening without `>`"))?;
            let w = words(inner, &[], start)?;
            let Some((name, args)) = w.split_first() else {
                bail!("line {start}: empty section name");
            };
            stack.push(Directive {
                name: canonical(name),
                args: args.to_vec(),
                children: vec![],
                line: start,
                file: None,
            });
            continue;
        }
        let w = words(t, &[], start)?;
        if let Some((name, args)) = w.split_first() {
            if let Some(top) = stack.last_mut() {
                top.children.push(Directive {
                    name: canonical(name),
                    args: args.to_vec(),
                    children: vec![],
                    line: start,
                    file: None,
                });
            }
        }
    }
    if stack.len() != 1 {
        let d = stack
            .last()
            .map_or((String::new(), 0), |d| (d.name.clone(), d.line));
        bail!("<{}> opened on line {} is not closed", d.0, d.1);
    }
    Ok(stack.pop().map(|d| d.children).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalived_blocks_quotes_and_comments() {
        let t = "global_defs {\n router_id X # me\n}\nvrrp_script chk{\n script \"/bin/a b\"\n}\n! c\nvrrp_instance VI_1 {\n virtual_ipaddress {\n  10.0.0.1/24 dev eth0\n }\n}\n";
        let d = keepalived(t).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].children[0].args, vec!["X"]);
        assert_eq!(d[1].name, "vrrp_script");
        assert_eq!(d[1].args, vec!["chk"]);
        assert_eq!(d[1].children[0].args, vec!["/bin/a b"]);
        let vip = &d[2].children[0].children[0];
        assert_eq!((vip.name.as_str(), vip.line), ("10.0.0.1/24", 10));
        assert!(keepalived("a {\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(keepalived("}\n").is_err());
        assert!(keepalived("a \"x\n")
            .unwrap_err()
            .to_string()
            .contains("quote"));
    }

    #[test]
    fn apache_sections_and_continuations() {
        let t = "<VirtualHost *:443>\n ServerName a\n Header always set X \"a b\"\n</VirtualHost>\n# c\nTimeout \\\n 60\n";
        let d = apache(t).unwrap();
        assert_eq!(d[0].name, "VirtualHost");
        assert_eq!(d[0].args, vec!["*:443"]);
        assert_eq!(d[0].children[1].args, vec!["always", "set", "X", "a b"]);
        assert_eq!(
            (d[1].name.as_str(), d[1].arg(0), d[1].line),
            ("Timeout", Some("60"), 6)
        );
        assert!(apache("<A>\n")
            .unwrap_err()
            .to_string()
            .contains("not closed"));
        assert!(apache("</A>\n").is_err());
    }

    #[test]
    fn apache_names_in_any_case_and_conditions_unwrapped() {
        let t = apache(
            "<IfModule mod_ssl.c>\n<ifdefine TLS>\n<virtualhost *:443>\n  servername app\n  sslengine On\n</VirtualHost>\n</IfDefine>\n</ifmodule>\n",
        )
        .unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].name, "VirtualHost");
        let names: Vec<&str> = t[0].children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ServerName", "SSLEngine"]);
        assert_eq!(t[0].children[1].args, ["On"]);
    }
}
