//! The log files `neolog` reads: ours (text lines, possibly compressed) and
//! NEO/py's SQLite databases (operations.md §7.3).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use neo_proto::reader::Reader;
use neo_proto::{packet_name, NodeId, Packet};
use rusqlite::{Connection, OpenFlags};

/// How much a record matters: `neolog -l` keeps those at or above a rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Trace,
    Debug,
    /// A packet sent or received: ranks as DEBUG.
    Packet,
    Info,
    Warning,
    Error,
    Critical,
    /// What `neolog` could not read in a file: always shown.
    Unreadable,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Trace => "TRACE",
            Severity::Debug => "DEBUG",
            Severity::Packet => "PACKET",
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Critical => "CRITICAL",
            Severity::Unreadable => "LOG",
        }
    }

    /// Whether a record of this severity passes a `-l minimum` filter.
    pub fn at_least(self, minimum: Severity) -> bool {
        let rank = |severity: Severity| match severity {
            Severity::Packet => Severity::Debug,
            other => other,
        };
        self == Severity::Unreadable || rank(self) >= rank(minimum)
    }

    fn of_tracing(level: tracing::Level) -> Severity {
        match level {
            tracing::Level::TRACE => Severity::Trace,
            tracing::Level::DEBUG => Severity::Debug,
            tracing::Level::INFO => Severity::Info,
            tracing::Level::WARN => Severity::Warning,
            tracing::Level::ERROR => Severity::Error,
        }
    }

    /// Python's numeric levels, as NEO/py stores them.
    fn of_python(level: i64) -> Severity {
        match level {
            ..=9 => Severity::Trace,
            10..=19 => Severity::Debug,
            20..=29 => Severity::Info,
            30..=39 => Severity::Warning,
            40..=49 => Severity::Error,
            _ => Severity::Critical,
        }
    }
}

/// One record of a log.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// UNIX time, in seconds.
    pub time: f64,
    pub severity: Severity,
    pub node: String,
    pub text: String,
    /// The packet's name, for a packet record.
    pub packet: Option<String>,
    /// The packet's arguments, shown with `-a`.
    pub arguments: Option<String>,
}

/// A failure to open a log file at all (later errors become records).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a NEO log database: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// A log file being read, maybe followed.
pub enum Source {
    Text(TextSource),
    Database(DatabaseSource),
}

/// How SQLite files begin.
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

impl Source {
    pub fn open(path: &Path) -> Result<Source, SourceError> {
        let io_error = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_error)?;
        let mut magic = [0; SQLITE_MAGIC.len()];
        let sniffed = read_up_to(&mut file, &mut magic).map_err(io_error)?;
        if &magic[..sniffed] == SQLITE_MAGIC {
            return DatabaseSource::open(path).map(Source::Database);
        }
        TextSource::open(path).map(Source::Text)
    }

    /// The records written since the last call (all of them the first
    /// time), in file order.
    pub fn read_new(&mut self) -> Vec<Record> {
        match self {
            Source::Text(text) => text.read_new(),
            Source::Database(database) => database.read_new(),
        }
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The name of a log file without its extensions (`storage2.log.gz` →
/// `storage2`): the node column when a record names no node.
fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_owned()
}

/// One of our log files.
pub struct TextSource {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    /// The inode read, to notice a rotation while following (none for a
    /// decompressed stream).
    inode: Option<u64>,
    /// A last line still being written.
    partial: String,
    line_number: u64,
    last_time: f64,
}

impl TextSource {
    fn open(path: &Path) -> Result<TextSource, SourceError> {
        let io_error = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let (reader, inode): (Box<dyn BufRead>, _) = match extension {
            "gz" => (
                Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file))),
                None,
            ),
            "bz2" | "xz" | "zst" => (decompress(path, extension).map_err(io_error)?, None),
            _ => {
                let inode = file.metadata().map_err(io_error)?.ino();
                (Box::new(BufReader::new(file)), Some(inode))
            }
        };
        Ok(TextSource {
            path: path.to_owned(),
            reader,
            inode,
            partial: String::new(),
            line_number: 0,
            last_time: 0.0,
        })
    }

    fn read_new(&mut self) -> Vec<Record> {
        let mut records = Vec::new();
        self.read_lines(&mut records);
        // Rotated while followed: the rest of the old file is read, then
        // the new file from its start.
        if let Some(inode) = self.inode {
            let rotated = std::fs::metadata(&self.path).is_ok_and(|meta| meta.ino() != inode);
            if rotated {
                if let Ok(fresh) = TextSource::open(&self.path) {
                    let last_time = self.last_time;
                    *self = fresh;
                    self.last_time = last_time;
                    self.read_lines(&mut records);
                }
            }
        }
        records
    }

    fn read_lines(&mut self, records: &mut Vec<Record>) {
        loop {
            let mut bytes = Vec::new();
            match self.reader.read_until(b'\n', &mut bytes) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    records.push(self.unreadable(format!("read error: {error}")));
                    return;
                }
            }
            self.partial.push_str(&String::from_utf8_lossy(&bytes));
            if !self.partial.ends_with('\n') {
                // The writer is in the middle of this line.
                continue;
            }
            let line = std::mem::take(&mut self.partial);
            self.line_number += 1;
            records.push(self.record(line.trim_end_matches(['\n', '\r'])));
        }
    }

    fn record(&mut self, line: &str) -> Record {
        match neo_log::parse_line(line) {
            Ok(parsed) => {
                self.last_time = parsed
                    .time
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |since| since.as_secs_f64());
                let packet = parsed.packet().map(str::to_owned);
                let (text, arguments) = match (&packet, parsed.message.split_once(" | ")) {
                    (Some(_), Some((text, arguments))) => (text, Some(arguments.to_owned())),
                    _ => (parsed.message, None),
                };
                Record {
                    time: self.last_time,
                    severity: if packet.is_some() {
                        Severity::Packet
                    } else {
                        Severity::of_tracing(parsed.level)
                    },
                    node: parsed.node.to_owned(),
                    text: text.to_owned(),
                    packet,
                    arguments,
                }
            }
            Err(error) => self.unreadable(format!("line {}: {error}: {line}", self.line_number)),
        }
    }

    fn unreadable(&self, text: String) -> Record {
        Record {
            time: self.last_time,
            severity: Severity::Unreadable,
            node: file_stem(&self.path),
            text,
            packet: None,
            arguments: None,
        }
    }
}

/// `.bz2`, `.xz`, `.zst`: read through the system's decompressor.
fn decompress(path: &Path, extension: &str) -> io::Result<Box<dyn BufRead>> {
    let program = match extension {
        "bz2" => "bzcat",
        "xz" => "xzcat",
        _ => "zstdcat",
    };
    let child = Command::new(program)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| io::Error::new(error.kind(), format!("cannot run {program}: {error}")))?;
    let stdout = child
        .stdout
        .ok_or_else(|| io::Error::other(format!("{program} gave no output")))?;
    Ok(Box::new(BufReader::new(stdout)))
}

/// A NEO/py log database.
pub struct DatabaseSource {
    path: PathBuf,
    connection: Connection,
    /// Records at or before this time were read.
    read_up_to: f64,
}

impl DatabaseSource {
    fn open(path: &Path) -> Result<DatabaseSource, SourceError> {
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| SourceError::Sqlite {
                path: path.to_owned(),
                source,
            })?;
        Ok(DatabaseSource {
            path: path.to_owned(),
            connection,
            read_up_to: f64::NEG_INFINITY,
        })
    }

    fn read_new(&mut self) -> Vec<Record> {
        match self.query() {
            Ok(records) => {
                if let Some(last) = records.last() {
                    self.read_up_to = last.time;
                }
                records
            }
            Err(error) => vec![Record {
                time: self.read_up_to.max(0.0),
                severity: Severity::Unreadable,
                node: file_stem(&self.path),
                text: format!("database error: {error}"),
                packet: None,
                arguments: None,
            }],
        }
    }

    fn query(&self) -> rusqlite::Result<Vec<Record>> {
        // The node table names each record's node: its NID, else the
        // logger's name, else the file's.
        let mut nodes = std::collections::HashMap::new();
        let mut statement = self.connection.prepare("SELECT id, name, nid FROM node")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for row in rows {
            let (id, name, nid) = row?;
            let label = match (nid.and_then(|nid| i32::try_from(nid).ok()), name) {
                (Some(nid), _) => NodeId(nid).to_string(),
                (None, Some(name)) if !name.is_empty() => name,
                (None, _) => file_stem(&self.path),
            };
            nodes.insert(id, label);
        }
        let node_of = |id: Option<i64>| {
            id.and_then(|id| nodes.get(&id).cloned())
                .unwrap_or_else(|| file_stem(&self.path))
        };
        let mut records = Vec::new();
        let mut statement = self
            .connection
            .prepare("SELECT date, node, level, msg FROM log WHERE date > ?1 ORDER BY date")?;
        let rows = statement.query_map([self.read_up_to], |row| {
            Ok((
                row.get::<_, f64>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        for row in rows {
            let (time, node, level, message) = row?;
            records.push(Record {
                time,
                severity: Severity::of_python(level),
                node: node_of(node),
                text: message.unwrap_or_default(),
                packet: None,
                arguments: None,
            });
        }
        let mut statement = self.connection.prepare(
            "SELECT date, node, msg_id, code, peer, body FROM packet WHERE date > ?1 ORDER BY date",
        )?;
        let rows = statement.query_map([self.read_up_to], |row| {
            Ok((
                row.get::<_, f64>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })?;
        for row in rows {
            let (time, node, msg_id, code, peer, body) = row?;
            let code = u16::try_from(code).ok();
            let name = code
                .and_then(packet_name)
                .map_or_else(|| format!("UnknownPacket[{code:?}]"), str::to_owned);
            let arguments = match (code, body) {
                (Some(code), Some(body)) => Some(
                    match Packet::decode(code, &mut Reader::new(Bytes::from(body))) {
                        Ok(packet) => format!("{packet:?}"),
                        Err(error) => format!("(undecodable: {error})"),
                    },
                ),
                _ => None,
            };
            records.push(Record {
                time,
                severity: Severity::Packet,
                node: node_of(node),
                text: format!("#0x{msg_id:04x} {name} {peer}"),
                packet: Some(name),
                arguments,
            });
        }
        records.sort_by(|a, b| a.time.total_cmp(&b.time));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log database as NEO/py writes one (operations.md §7.3).
    fn neopy_log(path: &Path) {
        let db = Connection::open(path).unwrap();
        db.execute_batch(
            "CREATE TABLE log (date REAL PRIMARY KEY, node INTEGER, level INTEGER NOT NULL,
                               pathname TEXT, lineno INTEGER, msg TEXT) WITHOUT ROWID;
             CREATE TABLE packet (date REAL PRIMARY KEY, node INTEGER, msg_id INTEGER NOT NULL,
                                  code INTEGER NOT NULL, peer TEXT NOT NULL, body BLOB) WITHOUT ROWID;
             CREATE TABLE node (id INTEGER PRIMARY KEY, name TEXT, cluster TEXT, nid INTEGER);
             INSERT INTO node VALUES (1, NULL, 'c', NULL);
             INSERT INTO log VALUES (10.5, 1, 20, 'master/app.py', 1, 'Node ID: None');
             INSERT INTO log VALUES (11.0, 2, 30, 'master/app.py', 2, 'two\nlines');
             INSERT INTO log VALUES (12.0, NULL, 50, 'x.py', 3, 'critical');",
        )
        .unwrap();
        let m1 = NodeId::parse("M1").unwrap().0;
        db.execute("INSERT INTO node VALUES (2, NULL, 'c', ?1)", [m1])
            .unwrap();
        // Ping has no argument: an empty msgpack array.
        db.execute(
            "INSERT INTO packet VALUES (10.75, 2, 3, ?1, '> M1 (127.0.0.1:1)', x'90')",
            [neo_proto::packets::Ping::CODE],
        )
        .unwrap();
        db.execute(
            "INSERT INTO packet VALUES (11.5, 2, 4, 65000, '< None', NULL)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn neopy_databases_read_as_records_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.log");
        neopy_log(&path);
        let mut source = Source::open(&path).unwrap();
        let records = source.read_new();
        let summary: Vec<(f64, Severity, &str, &str)> = records
            .iter()
            .map(|r| (r.time, r.severity, r.node.as_str(), r.text.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (10.5, Severity::Info, "master", "Node ID: None"),
                (
                    10.75,
                    Severity::Packet,
                    "M1",
                    "#0x0003 Ping > M1 (127.0.0.1:1)"
                ),
                (11.0, Severity::Warning, "M1", "two\nlines"),
                (
                    11.5,
                    Severity::Packet,
                    "M1",
                    "#0x0004 UnknownPacket[Some(65000)] < None"
                ),
                (12.0, Severity::Critical, "master", "critical"),
            ]
        );
        assert_eq!(records[1].packet.as_deref(), Some("Ping"));
        assert_eq!(records[1].arguments.as_deref(), Some("Ping(Ping)"));
        // Following: only what was written since.
        assert!(source.read_new().is_empty());
        let db = Connection::open(&path).unwrap();
        db.execute(
            "INSERT INTO log VALUES (13.0, 2, 10, 'a.py', 4, 'later')",
            [],
        )
        .unwrap();
        let later = source.read_new();
        assert_eq!(later.len(), 1);
        assert_eq!(
            (later[0].severity, later[0].text.as_str()),
            (Severity::Debug, "later")
        );
    }

    #[test]
    fn a_database_without_log_tables_gives_an_unreadable_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let records = Source::open(&path).unwrap().read_new();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].severity, Severity::Unreadable);
        assert!(
            records[0].text.contains("database error"),
            "{:?}",
            records[0]
        );
    }

    #[test]
    fn a_followed_text_log_is_read_across_partial_lines_and_rotation() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.log");
        let line = |text: &str| format!("2026-12-06T07:52:08.123456Z INFO  M1 m: {text}\n");
        let mut file = File::create(&path).unwrap();
        file.write_all(line("one").as_bytes()).unwrap();
        file.write_all(b"2026-12-06T07:52:08.2Z INFO  M1 m: tw")
            .unwrap();
        let mut source = Source::open(&path).unwrap();
        let texts = |records: Vec<Record>| -> Vec<String> {
            records.into_iter().map(|record| record.text).collect()
        };
        assert_eq!(texts(source.read_new()), ["one"], "a partial line waits");
        file.write_all(b"o\n").unwrap();
        assert_eq!(texts(source.read_new()), ["two"]);
        file.write_all(line("three").as_bytes()).unwrap();
        std::fs::rename(&path, dir.path().join("master.log.1")).unwrap();
        std::fs::write(&path, line("four")).unwrap();
        assert_eq!(texts(source.read_new()), ["three", "four"]);
        assert!(source.read_new().is_empty());
    }

    #[test]
    fn compressed_text_logs_are_read() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage2.log.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        encoder
            .write_all(b"2026-12-06T07:52:08.123456Z INFO  S2 neo_storage::node: up\n")
            .unwrap();
        encoder.finish().unwrap();
        let records = Source::open(&path).unwrap().read_new();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].node.as_str(), records[0].text.as_str()),
            ("S2", "up")
        );
    }
}
