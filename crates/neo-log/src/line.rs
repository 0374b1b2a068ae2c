//! Reading log lines back (`neolog`).

use std::time::SystemTime;

use tracing::Level;

/// One line of a log, as [`crate`] writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub time: SystemTime,
    pub level: Level,
    /// The node's NID, or the program's name before it had one.
    pub node: &'a str,
    /// The module that logged it, or [`crate::PACKET_TARGET`].
    pub target: &'a str,
    pub message: &'a str,
}

/// A line that is not in the log's format.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseLineError {
    #[error("no {0}")]
    Missing(&'static str),
    #[error("bad time {0:?}")]
    Time(String),
    #[error("bad level {0:?}")]
    Level(String),
}

impl<'a> Line<'a> {
    /// The packet's name, if this line is a packet record:
    /// `#0x0012 AskObject > 127.0.0.1:40000 | ...`.
    pub fn packet(&self) -> Option<&'a str> {
        if self.target != crate::PACKET_TARGET {
            return None;
        }
        let mut words = self.message.split(' ');
        words.next().filter(|id| id.starts_with("#0x"))?;
        words.next()
    }
}

/// Splits off the next space-separated word (any number of spaces).
fn word<'a>(rest: &mut &'a str, what: &'static str) -> Result<&'a str, ParseLineError> {
    let text = rest.trim_start_matches(' ');
    let end = text.find(' ').unwrap_or(text.len());
    let (word, tail) = text.split_at(end);
    if word.is_empty() {
        return Err(ParseLineError::Missing(what));
    }
    *rest = tail;
    Ok(word)
}

/// Parses one line (without its newline).
pub fn parse_line(text: &str) -> Result<Line<'_>, ParseLineError> {
    let mut rest = text;
    let time = word(&mut rest, "time")?;
    let time = humantime::parse_rfc3339(time).map_err(|_| ParseLineError::Time(time.to_owned()))?;
    let level = word(&mut rest, "level")?;
    let level = level
        .parse()
        .map_err(|_| ParseLineError::Level(level.to_owned()))?;
    let node = word(&mut rest, "node")?;
    let target = word(&mut rest, "module")?
        .strip_suffix(':')
        .ok_or(ParseLineError::Missing("module"))?;
    let message = rest.strip_prefix(' ').unwrap_or(rest);
    Ok(Line {
        time,
        level,
        node,
        target,
        message,
    })
}
