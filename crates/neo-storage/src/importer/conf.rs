//! `importer.conf` (operations.md §6): Python's `ConfigParser` layout, as
//! NEO/py reads it. The first section is the destination backend, every
//! other one a source database whose `storage` value is a ZConfig storage
//! definition; only `<filestorage>` sources can be read here.

use std::path::{Path, PathBuf};

use super::ImportError;
use crate::backend::{expand_user, Adapter};

/// Ids are written in decimal, as NEO/py's `int()` reads them.
type Oid = u64;

/// The destination and the sources of an import.
#[derive(Clone, Debug, PartialEq)]
pub struct ImporterConf {
    /// The backend the import writes to.
    pub destination: Destination,
    /// The source databases, in the file's order.
    pub sources: Vec<SourceConf>,
}

/// The first section.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    /// `adapter` (NEO/py's default: `MySQL`).
    pub adapter: Adapter,
    /// `database`.
    pub database: String,
    /// `engine` (MySQL only).
    pub engine: Option<String>,
    /// `wait`, in seconds (MySQL only).
    pub wait: f64,
    /// `compress`: imported records are zlib-compressed at this level when
    /// that makes them smaller; `None`: stored as they are.
    pub compress: Option<u32>,
    /// `writeback`: new transactions are copied back to the source.
    pub writeback: bool,
}

/// A source section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConf {
    /// The section's name, which mount points name.
    pub name: String,
    /// The `path` of its `<filestorage>`.
    pub path: PathBuf,
    /// `oid`: the object of this database that mount points lead to; 0 for
    /// the main source.
    pub oid: Oid,
    /// `«section» = «oid»`: this database's object `oid` is where the root
    /// of the database `section` is mounted.
    pub mount_points: Vec<(String, Oid)>,
}

/// zlib's default level, what `compress = true` means.
const DEFAULT_LEVEL: u32 = 6;

impl ImporterConf {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<ImporterConf, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
            path: path.to_owned(),
            source,
        })?;
        ImporterConf::parse(&text).map_err(|reason| ImportError::Conf {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the text of an `importer.conf`.
    pub fn parse(text: &str) -> Result<ImporterConf, String> {
        let mut sections = parse_sections(text)?.into_iter();
        let Some(first) = sections.next() else {
            return Err("no section: the first one names the destination database".into());
        };
        let destination = Destination::of(&first)?;
        let sources = sections
            .map(|section| SourceConf::of(&section))
            .collect::<Result<Vec<_>, _>>()?;
        let mains = sources.iter().filter(|source| source.oid == 0).count();
        if mains != 1 {
            return Err(format!(
                "{mains} source sections without `oid`: exactly one, the main database, has none"
            ));
        }
        for source in &sources {
            for (name, _) in &source.mount_points {
                let Some(mounted) = sources.iter().find(|s| &s.name == name) else {
                    return Err(format!(
                        "[{}] mounts [{name}], which is not a section",
                        source.name
                    ));
                };
                if mounted.oid == 0 {
                    return Err(format!(
                        "[{}] mounts the main database [{name}]",
                        source.name
                    ));
                }
            }
        }
        if destination.writeback && sources.len() > 1 {
            return Err("Can not forward new transactions to splitted DB.".into());
        }
        Ok(ImporterConf {
            destination,
            sources,
        })
    }
}

impl Destination {
    fn of(section: &Section) -> Result<Destination, String> {
        let adapter = match section.get("adapter") {
            None => Adapter::MySql,
            Some(name) => match Adapter::from_name(name) {
                Some(Adapter::Importer) => {
                    return Err(format!(
                        "[{}]: the destination can not be an Importer",
                        section.name
                    ))
                }
                Some(adapter) => adapter,
                None => return Err(format!("[{}]: unknown adapter {name:?}", section.name)),
            },
        };
        let database = section
            .get("database")
            .ok_or_else(|| format!("[{}]: `database` is missing", section.name))?
            .to_owned();
        let wait = match section.get("wait") {
            None => 0.0,
            Some(wait) => wait
                .parse()
                .map_err(|_| format!("[{}]: `wait` is not a number: {wait:?}", section.name))?,
        };
        let compress = parse_compress(section.get("compress").unwrap_or("true"))
            .map_err(|reason| format!("[{}]: `compress`: {reason}", section.name))?;
        let writeback = match section.get("writeback") {
            None => false,
            Some(value) => parse_bool(value).ok_or_else(|| {
                format!(
                    "[{}]: `writeback` is not a boolean: {value:?}",
                    section.name
                )
            })?,
        };
        for (key, _) in &section.options {
            if ![
                "adapter",
                "database",
                "engine",
                "wait",
                "compress",
                "writeback",
            ]
            .contains(&key.as_str())
            {
                tracing::warn!(section = section.name, key, "unknown option ignored");
            }
        }
        Ok(Destination {
            adapter,
            database,
            engine: section.get("engine").map(str::to_owned),
            wait,
            compress,
            writeback,
        })
    }
}

impl SourceConf {
    fn of(section: &Section) -> Result<SourceConf, String> {
        let name = &section.name;
        let storage = section
            .get("storage")
            .ok_or_else(|| format!("[{name}]: `storage` is missing"))?;
        let path = filestorage_path(storage).map_err(|reason| format!("[{name}]: {reason}"))?;
        let mut oid = 0;
        let mut mount_points = Vec::new();
        for (key, value) in &section.options {
            if key == "storage" {
                continue;
            }
            let parsed: Oid = value
                .parse()
                .map_err(|_| format!("[{name}]: `{key}` is not an oid: {value:?}"))?;
            if key == "oid" {
                oid = parsed;
            } else {
                mount_points.push((key.clone(), parsed));
            }
        }
        Ok(SourceConf {
            name: name.clone(),
            path: expand_user(&path),
            oid,
            mount_points,
        })
    }
}

/// `true`/`false` (and the other spellings `ConfigParser` accepts), or
/// `zlib` with an optional `=level`.
fn parse_compress(value: &str) -> Result<Option<u32>, String> {
    if let Some(enabled) = parse_bool(value) {
        return Ok(enabled.then_some(DEFAULT_LEVEL));
    }
    let (name, level) = value.split_once('=').unwrap_or((value, ""));
    if name.trim() != "zlib" {
        return Err(format!("unknown compression {value:?}"));
    }
    let level = level.trim();
    if level.is_empty() {
        return Ok(Some(DEFAULT_LEVEL));
    }
    match level.parse() {
        Ok(level @ 0..=9) => Ok(Some(level)),
        _ => Err(format!("zlib level {level:?} is not in 0..9")),
    }
}

/// Python's `ConfigParser` booleans.
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// The `path` of a ZConfig `<filestorage>` block, the only kind of source
/// this node can read.
fn filestorage_path(storage: &str) -> Result<String, String> {
    let mut lines = storage
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let opening = lines.next().unwrap_or_default();
    let kind = opening
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .map(|inner| {
            inner
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        });
    if kind.as_deref() != Some("filestorage") {
        return Err(format!(
            "`storage` must be a <filestorage> section (only FileStorage sources can be \
             imported), not {opening:?}"
        ));
    }
    let mut path = None;
    for line in lines {
        if line.eq_ignore_ascii_case("</filestorage>") {
            return path.ok_or_else(|| "<filestorage> has no `path`".to_owned());
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match key.to_ascii_lowercase().as_str() {
            "path" => path = Some(value.trim().to_owned()),
            // Opened read-only whatever they say; the rest tunes ZODB's
            // own use of the file.
            "read-only" | "create" | "blob-dir" | "pack-gc" | "pack-keep-old" | "quota"
            | "packer" | "pack-extra" => {
                if key.eq_ignore_ascii_case("blob-dir") {
                    return Err("blobs are not supported".into());
                }
            }
            _ => return Err(format!("<filestorage>: unknown key {key:?}")),
        }
    }
    Err("<filestorage> is not closed".into())
}

/// A section of the file: its name and options, in order.
#[derive(Debug)]
struct Section {
    name: String,
    /// Keys lower-cased, as `ConfigParser` does.
    options: Vec<(String, String)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// `ConfigParser`'s syntax: `[section]` headers, `key = value` or
/// `key: value`, `#`/`;` comment lines, and values continued on following
/// lines indented more than their key (blank lines inside them kept).
fn parse_sections(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    // Indentation of the key whose value is being read.
    let mut open_value: Option<usize> = None;
    for (number, raw) in text.lines().enumerate() {
        let number = number + 1;
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim();
        if let (Some(key_indent), Some(section)) = (open_value, sections.last_mut()) {
            if indent > key_indent && !line.is_empty() || line.is_empty() {
                if let Some((_, value)) = section.options.last_mut() {
                    value.push('\n');
                    value.push_str(line);
                }
                continue;
            }
        }
        open_value = None;
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if sections.iter().any(|s| s.name == name) {
                return Err(format!("line {number}: section [{name}] appears twice"));
            }
            sections.push(Section {
                name: name.to_owned(),
                options: Vec::new(),
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            return Err(format!("line {number}: an option before any [section]"));
        };
        let Some(split) = line.find(['=', ':']) else {
            return Err(format!(
                "line {number}: neither a [section] nor `key = value`"
            ));
        };
        let key = line[..split].trim().to_ascii_lowercase();
        let value = line[split + 1..].trim().to_owned();
        if key.is_empty() {
            return Err(format!("line {number}: an option without a name"));
        }
        if section.options.iter().any(|(k, _)| *k == key) {
            return Err(format!(
                "line {number}: `{key}` appears twice in [{}]",
                section.name
            ));
        }
        section.options.push((key, value));
        open_value = Some(indent);
    }
    // Blank lines kept inside a value end it.
    for section in &mut sections {
        for (_, value) in &mut section.options {
            value.truncate(value.trim_end().len());
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neo_py_s_sample_layout_is_read() {
        let conf = ImporterConf::parse(
            "# comment\n[neo]\nadapter=SQLite\ndatabase=/tmp/neo.db\nwriteback=false\n\
             \n[root]\nstorage=\n  <filestorage>\n    path /data/root.fs\n  </filestorage>\n\
             # continuation ended\nfoo=421\n\n[foo]\noid=123\nstorage=\n  <filestorage>\n\
             \x20   path /data/foo.fs\n  </filestorage>\n",
        )
        .unwrap();
        assert_eq!(conf.destination.adapter, Adapter::Sqlite);
        assert_eq!(conf.destination.database, "/tmp/neo.db");
        assert_eq!(conf.destination.compress, Some(DEFAULT_LEVEL));
        assert!(!conf.destination.writeback);
        assert_eq!(conf.sources.len(), 2);
        assert_eq!(conf.sources[0].name, "root");
        assert_eq!(conf.sources[0].path, PathBuf::from("/data/root.fs"));
        assert_eq!(conf.sources[0].oid, 0);
        assert_eq!(conf.sources[0].mount_points, vec![("foo".to_owned(), 421)]);
        assert_eq!(conf.sources[1].oid, 123);
        assert_eq!(conf.sources[1].path, PathBuf::from("/data/foo.fs"));
    }

    #[test]
    fn defaults_and_spellings_are_neo_py_s() {
        let conf = ImporterConf::parse(
            "[x]\ndatabase: neo\ncompress = zlib=9\nWriteBack = Yes\n[s]\n\
             storage = <filestorage>\n path a.fs\n </filestorage>\n",
        )
        .unwrap();
        assert_eq!(conf.destination.adapter, Adapter::MySql);
        assert_eq!(conf.destination.compress, Some(9));
        assert!(conf.destination.writeback);
        let conf = ImporterConf::parse(
            "[x]\ndatabase=d\ncompress=false\n[s]\nstorage=<filestorage>\n path a.fs\n </filestorage>\n",
        )
        .unwrap();
        assert_eq!(conf.destination.compress, None);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let fs = "storage=<filestorage>\n path a.fs\n </filestorage>\n";
        for (text, expected) in [
            ("", "no section"),
            ("key=1\n", "before any [section]"),
            ("[n]\nnonsense\n", "neither a [section]"),
            ("[n]\n[n]\n", "appears twice"),
            ("[n]\nadapter=SQLite\n[s]\n", "`database` is missing"),
            ("[n]\ndatabase=d\n[s]\n", "`storage` is missing"),
            (
                "[n]\ndatabase=d\n[s]\nstorage=<zeoclient>\n server x\n </zeoclient>\n",
                "only FileStorage",
            ),
            (
                &format!("[n]\ndatabase=d\nadapter=Oracle\n[s]\n{fs}"),
                "unknown adapter",
            ),
            (
                &format!("[n]\ndatabase=d\ncompress=lz4\n[s]\n{fs}"),
                "unknown compression",
            ),
            (
                &format!("[n]\ndatabase=d\nwriteback=maybe\n[s]\n{fs}"),
                "not a boolean",
            ),
            (
                &format!("[n]\ndatabase=d\n[s]\n{fs}oid=12\n"),
                "0 source sections",
            ),
            (&format!("[n]\ndatabase=d\n[s]\n{fs}t=1\n"), "not a section"),
            (&format!("[n]\ndatabase=d\n[s]\n{fs}x=oops\n"), "not an oid"),
            (
                &format!("[n]\ndatabase=d\nwriteback=true\n[s]\n{fs}t=5\n[t]\noid=1\n{fs}"),
                "splitted DB",
            ),
        ] {
            let error = ImporterConf::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
