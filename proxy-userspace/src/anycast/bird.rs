//! A client for BIRD 2's control socket (what `birdc` speaks): one command at a time, replies
//! framed as BIRD frames them (nest/cli.c): lines of a 4-digit code and `-` (more follows) or
//! ` ` (the reply's last line), continuation lines of the same code starting with a space,
//! `+` lines unsolicited. A final code below 8000 is success (birdc's rule); 8xxx are
//! run-time errors, 9xxx parse errors.
//!
//! Protocol names are sent quoted (`enable "hapd_web"`): BIRD then answers an unknown name
//! with `8003 No protocols match` instead of a parse error that depends on its build.
use std::{path::Path, time::Duration};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// How long BIRD has to answer one command.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum BirdError {
    #[error("connecting to BIRD's control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("BIRD's control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("BIRD did not answer within {0:?}")]
    Timeout(Duration),
    #[error("BIRD closed the control socket")]
    Closed,
    #[error("BIRD's control socket said {0:?}, not BIRD's greeting")]
    Greeting(String),
    #[error("BIRD sent a line that is not a reply line: {0:?}")]
    Garbled(String),
    /// BIRD refused the command: its code and message.
    #[error("BIRD refused `{command}`: {code} {message}")]
    Refused {
        command: String,
        code: u16,
        message: String,
    },
    #[error("BIRD has no protocol named {0:?} (bird_protocol: add a `protocol static {0}` to BIRD's config)")]
    UnknownProtocol(String),
    #[error("BIRD's protocol {name:?} is a {proto} protocol, not a static one (bird_protocol)")]
    NotStatic { name: String, proto: String },
    #[error("BIRD's control socket is restricted (birdc -r): enable/disable are refused (8007)")]
    Restricted,
}

/// One line of a reply: its code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub code: u16,
    pub text: String,
}

/// A reply: its lines in order, the last one's code deciding success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub lines: Vec<Line>,
}

impl Reply {
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    pub fn ok(&self) -> bool {
        self.code() < 8000
    }
}

/// Parses replies line by line (`push` until it returns a whole reply).
#[derive(Default)]
pub struct ReplyParser {
    lines: Vec<Line>,
    /// The code a continuation line (one starting with a space) carries.
    current: Option<u16>,
}

impl ReplyParser {
    /// Takes one line (without its newline); a whole reply when it was the last.
    pub fn push(&mut self, line: &str) -> Result<Option<Reply>, BirdError> {
        let line = line.trim_end_matches('\r');
        if line.starts_with('+') {
            // Unsolicited (an `echo` or a configure-undo notice): not part of the reply.
            return Ok(None);
        }
        if let Some(rest) = line.strip_prefix(' ') {
            let code = self
                .current
                .ok_or_else(|| BirdError::Garbled(line.to_owned()))?;
            self.lines.push(Line {
                code,
                text: rest.to_owned(),
            });
            return Ok(None);
        }
        let (code, sep, text) = match (line.get(..4), line.get(4..5), line.get(5..)) {
            (Some(c), Some(s), t) if c.bytes().all(|b| b.is_ascii_digit()) => {
                (c.parse::<u16>().unwrap_or(0), s, t.unwrap_or(""))
            }
            _ => return Err(BirdError::Garbled(line.to_owned())),
        };
        self.lines.push(Line {
            code,
            text: text.to_owned(),
        });
        match sep {
            "-" => {
                self.current = Some(code);
                Ok(None)
            }
            " " => {
                self.current = None;
                Ok(Some(Reply {
                    lines: std::mem::take(&mut self.lines),
                }))
            }
            _ => Err(BirdError::Garbled(line.to_owned())),
        }
    }
}

/// A protocol as `show protocols` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    /// `Static`, `BGP`, ...
    pub proto: String,
    /// `up`, `down`, `start`, `stop`, `flush`.
    pub state: String,
    pub info: String,
}

impl Protocol {
    /// From a `1002` row: `%-10s %-10s %-10s %-6s %-12s  %s` (columns widen for long names).
    fn parse(row: &str) -> Option<Protocol> {
        let mut rest = row.trim_start();
        let mut fields = Vec::new();
        for _ in 0..5 {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        let [name, proto, _table, state, _since] = fields[..] else {
            return None;
        };
        (!name.is_empty() && !state.is_empty()).then(|| Protocol {
            name: name.to_owned(),
            proto: proto.to_owned(),
            state: state.to_owned(),
            info: rest.trim_end().to_owned(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.state == "up"
    }
}

/// A connection to BIRD's control socket.
pub struct Bird {
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
    /// BIRD's greeting (`BIRD 2.0.12 ready.`).
    pub version: String,
}

impl Bird {
    /// Connects and reads the greeting.
    pub async fn connect(path: &Path) -> Result<Bird, BirdError> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| BirdError::Timeout(ANSWER_TIMEOUT))?
            .map_err(|source| BirdError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut bird = Bird {
            read: BufReader::new(read),
            write,
            version: String::new(),
        };
        let hello = bird.reply().await?;
        match hello.lines.first() {
            Some(l) if l.code == 1 => bird.version = l.text.clone(),
            other => {
                return Err(BirdError::Greeting(
                    other.map_or(String::new(), |l| format!("{:04} {}", l.code, l.text)),
                ))
            }
        }
        Ok(bird)
    }

    async fn reply(&mut self) -> Result<Reply, BirdError> {
        let mut parser = ReplyParser::default();
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(ANSWER_TIMEOUT, self.read.read_line(&mut line))
                .await
                .map_err(|_| BirdError::Timeout(ANSWER_TIMEOUT))??;
            if n == 0 {
                return Err(BirdError::Closed);
            }
            if let Some(r) = parser.push(line.trim_end_matches('\n'))? {
                return Ok(r);
            }
        }
    }

    /// Sends `command` and reads its reply; a refusal is an error.
    pub async fn command(&mut self, command: &str) -> Result<Reply, BirdError> {
        self.write
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        let reply = self.reply().await?;
        if reply.ok() {
            return Ok(reply);
        }
        let last = reply.lines.last().cloned().unwrap_or(Line {
            code: 0,
            text: String::new(),
        });
        Err(match last.code {
            8007 => BirdError::Restricted,
            _ => BirdError::Refused {
                command: command.to_owned(),
                code: last.code,
                message: last.text,
            },
        })
    }

    /// The protocol named `name`, as `show protocols` lists it.
    pub async fn protocol(&mut self, name: &str) -> Result<Protocol, BirdError> {
        let reply = match self
            .command(&format!("show protocols {}", quoted(name)))
            .await
        {
            Err(BirdError::Refused { code: 8003, .. }) => {
                return Err(BirdError::UnknownProtocol(name.to_owned()))
            }
            r => r?,
        };
        reply
            .lines
            .iter()
            .filter(|l| l.code == 1002)
            .filter_map(|l| Protocol::parse(&l.text))
            .find(|p| p.name == name)
            .ok_or_else(|| BirdError::UnknownProtocol(name.to_owned()))
    }

    /// The static protocol `name`, checked to be one.
    pub async fn static_protocol(&mut self, name: &str) -> Result<Protocol, BirdError> {
        let p = self.protocol(name).await?;
        if p.proto != "Static" {
            return Err(BirdError::NotStatic {
                name: name.to_owned(),
                proto: p.proto,
            });
        }
        Ok(p)
    }

    /// Enables (`on`) or disables protocol `name`. Doing it again is harmless.
    pub async fn set_enabled(&mut self, name: &str, on: bool) -> Result<(), BirdError> {
        let verb = if on { "enable" } else { "disable" };
        match self.command(&format!("{verb} {}", quoted(name))).await {
            Err(BirdError::Refused { code: 8003, .. }) => {
                Err(BirdError::UnknownProtocol(name.to_owned()))
            }
            r => r.map(drop),
        }
    }
}

/// `name` as a BIRD pattern that matches exactly it.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Vec<Reply> {
        let mut p = ReplyParser::default();
        lines.iter().filter_map(|l| p.push(l).unwrap()).collect()
    }

    #[test]
    fn replies_are_framed_as_bird_frames_them() {
        let r = parse(&["0001 BIRD 2.0.12 ready."]);
        assert_eq!(r[0].code(), 1);
        assert_eq!(r[0].lines[0].text, "BIRD 2.0.12 ready.");
        let r = parse(&["0011-hapd_web: enabled", "0000 "]);
        assert_eq!(r.len(), 1);
        assert!(r[0].ok());
        assert_eq!(r[0].lines[0].code, 11);
        // A continuation line carries the previous code; `+` lines are not the reply's.
        let r = parse(&[
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-hapd_web   Static     master4    down   12:34:56.789  ",
            "+ some notice",
            " uplink     BGP        ---        up     12:34:56.790  Established   ",
            "0000 ",
        ]);
        let rows: Vec<_> = r[0]
            .lines
            .iter()
            .filter(|l| l.code == 1002)
            .filter_map(|l| Protocol::parse(&l.text))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].name.as_str(),
                rows[0].proto.as_str(),
                rows[0].state.as_str()
            ),
            ("hapd_web", "Static", "down")
        );
        assert_eq!(rows[1].info, "Established");
        assert!(rows[1].is_up());
        let r = parse(&["8003 No protocols match"]);
        assert!(!r[0].ok());
        assert_eq!(r[0].code(), 8003);
    }

    #[test]
    fn garbled_lines_are_errors_not_panics() {
        let mut p = ReplyParser::default();
        for bad in [
            "",
            "hello",
            "12 x",
            "00a1 x",
            " orphan continuation",
            "0000x",
        ] {
            assert!(p.push(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_quoted_as_exact_patterns() {
        assert_eq!(quoted("hapd_web"), "\"hapd_web\"");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
    }
}
