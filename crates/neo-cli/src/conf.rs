//! The daemons' configuration file (operations.md §2.1): an INI file in
//! the dialect of Python's `configparser`, which NEO/py reads.
//!
//! Supported: `key = value` and `key: value`, case-insensitive keys,
//! full-line `#`/`;` comments, values continued on indented lines,
//! `[DEFAULT]` inherited by every section, `%(key)s` interpolation and `%%`.
//! Every error names the file and the line.

use std::path::{Path, PathBuf};

/// How deep `%(key)s` references may nest (configparser's limit).
const MAX_INTERPOLATION_DEPTH: usize = 10;

/// One `key = value` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Lower-cased key.
    pub key: String,
    /// Raw value (before interpolation); continuation lines joined by `\n`.
    pub value: String,
    /// 1-based line of the key, for error messages.
    pub line: usize,
}

/// One `[section]` and its entries in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// As written between the brackets (section names are case-sensitive).
    pub name: String,
    /// The entries of the section itself.
    pub entries: Vec<Entry>,
}

/// A parsed configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Entries of `[DEFAULT]`.
    pub defaults: Vec<Entry>,
    /// The other sections, in file order.
    pub sections: Vec<Section>,
}

/// A configuration value found for an option, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfValue {
    /// The value after interpolation.
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
}

/// Why a configuration file was refused. One line each, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file cannot be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// A line that is not a section header, entry, comment or continuation.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The section asked with `-s` is not in the file.
    #[error("{}: no section [{section}]", path.display())]
    NoSection {
        /// The file.
        path: PathBuf,
        /// The section asked.
        section: String,
    },
    /// A bad `%` reference in a value.
    #[error("{}:{line}: {key}: {message}", path.display())]
    Interpolation {
        /// The file.
        path: PathBuf,
        /// Line of the key whose value is wrong.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfError::Read {
            path: path.to_owned(),
            source,
        })?;
        ConfigFile::parse(path, &text)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfError> {
        let syntax = |line: usize, message: String| ConfError::Syntax {
            path: path.to_owned(),
            line,
            message,
        };
        let mut file = ConfigFile {
            path: path.to_owned(),
            defaults: Vec::new(),
            sections: Vec::new(),
        };
        // `None`: before any header; `Some(None)`: in [DEFAULT].
        let mut current: Option<Option<usize>> = None;
        // Whether the previous line was part of an entry that a more
        // indented line may continue.
        let mut in_entry = false;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let stripped = raw.trim();
            if stripped.is_empty() {
                in_entry = false;
                continue;
            }
            if stripped.starts_with('#') || stripped.starts_with(';') {
                continue;
            }
            let indented = raw.starts_with([' ', '\t']);
            if indented && in_entry {
                let entries = match current {
                    Some(Some(section)) => &mut file.sections[section].entries,
                    _ => &mut file.defaults,
                };
                if let Some(entry) = entries.last_mut() {
                    entry.value.push('\n');
                    entry.value.push_str(stripped);
                }
                continue;
            }
            if let Some(header) = stripped.strip_prefix('[') {
                let name = header
                    .strip_suffix(']')
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| {
                        syntax(number, format!("malformed section header {stripped:?}"))
                    })?;
                if name == "DEFAULT" {
                    current = Some(None);
                } else if file.sections.iter().any(|s| s.name == name) {
                    return Err(syntax(number, format!("section [{name}] already defined")));
                } else {
                    file.sections.push(Section {
                        name: name.to_owned(),
                        entries: Vec::new(),
                    });
                    current = Some(Some(file.sections.len() - 1));
                }
                in_entry = false;
                continue;
            }
            let Some(section) = current else {
                return Err(syntax(
                    number,
                    "entry before any [section] header".to_owned(),
                ));
            };
            let split = stripped.find(['=', ':']).ok_or_else(|| {
                syntax(
                    number,
                    format!("expected `key = value`, found {stripped:?}"),
                )
            })?;
            let key = stripped[..split].trim().to_lowercase();
            if key.is_empty() {
                return Err(syntax(number, "empty key".to_owned()));
            }
            let value = stripped[split + 1..].trim().to_owned();
            let entries = match section {
                Some(section) => &mut file.sections[section].entries,
                None => &mut file.defaults,
            };
            if entries.iter().any(|e| e.key == key) {
                return Err(syntax(
                    number,
                    format!("key {key:?} already set in this section"),
                ));
            }
            entries.push(Entry {
                key,
                value,
                line: number,
            });
            in_entry = true;
        }
        Ok(file)
    }

    fn section(&self, name: &str) -> Result<&Section, ConfError> {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ConfError::NoSection {
                path: self.path.clone(),
                section: name.to_owned(),
            })
    }

    /// Whether `[name]` exists.
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name)
    }

    fn raw<'a>(&'a self, section: &'a Section, key: &str) -> Option<&'a Entry> {
        section
            .entries
            .iter()
            .find(|e| e.key == key)
            .or_else(|| self.defaults.iter().find(|e| e.key == key))
    }

    /// The value of `key` in `[section]` (or inherited from `[DEFAULT]`),
    /// interpolated. `Ok(None)` when the key is absent; an error when the
    /// section is missing.
    pub fn get(&self, section: &str, key: &str) -> Result<Option<ConfValue>, ConfError> {
        let section = self.section(section)?;
        let Some(entry) = self.raw(section, key) else {
            return Ok(None);
        };
        let value = self.interpolate(section, entry, &entry.value, 0)?;
        Ok(Some(ConfValue {
            value,
            line: entry.line,
        }))
    }

    /// Every key visible in `[section]`, its own and `[DEFAULT]`'s.
    pub fn keys(&self, section: &str) -> Result<Vec<&str>, ConfError> {
        let section = self.section(section)?;
        let mut keys: Vec<&str> = section.entries.iter().map(|e| e.key.as_str()).collect();
        for entry in &self.defaults {
            if !keys.contains(&entry.key.as_str()) {
                keys.push(&entry.key);
            }
        }
        Ok(keys)
    }

    fn interpolate(
        &self,
        section: &Section,
        entry: &Entry,
        value: &str,
        depth: usize,
    ) -> Result<String, ConfError> {
        let error = |message: String| ConfError::Interpolation {
            path: self.path.clone(),
            line: entry.line,
            key: entry.key.clone(),
            message,
        };
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(error("interpolation too deep (a reference loop?)".into()));
        }
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(percent) = rest.find('%') {
            out.push_str(&rest[..percent]);
            let after = &rest[percent + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                out.push('%');
                rest = tail;
            } else if let Some(reference) = after.strip_prefix('(') {
                let (name, tail) = reference
                    .split_once(")s")
                    .ok_or_else(|| error("malformed %(name)s reference".into()))?;
                let name = name.to_lowercase();
                let target = self
                    .raw(section, &name)
                    .ok_or_else(|| error(format!("%({name})s refers to an unknown key")))?;
                out.push_str(&self.interpolate(section, entry, &target.value, depth + 1)?);
                rest = tail;
            } else {
                return Err(error("a lone '%' must be written '%%'".into()));
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// ConfigParser's booleans: `1/yes/true/on` and `0/no/false/off`, any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfError> {
        ConfigFile::parse(Path::new("neo.conf"), text)
    }

    fn get(file: &ConfigFile, section: &str, key: &str) -> Option<String> {
        file.get(section, key).unwrap().map(|v| v.value)
    }

    #[test]
    fn sections_defaults_and_continuations() {
        let file = parse(
            "# comment\n[DEFAULT]\ncluster = prod1\nMasters: 10.0.0.1:10000\n\n\
             [master]\n; another\nbind = 10.0.0.1:10000\n\
             [admin]\nmonitor_email = ops@example.com\n  oncall@example.com\ncluster = other\n",
        )
        .unwrap();
        assert_eq!(get(&file, "master", "cluster").as_deref(), Some("prod1"));
        assert_eq!(
            get(&file, "master", "masters").as_deref(),
            Some("10.0.0.1:10000")
        );
        assert_eq!(get(&file, "admin", "cluster").as_deref(), Some("other"));
        assert_eq!(
            get(&file, "admin", "monitor_email").as_deref(),
            Some("ops@example.com\noncall@example.com")
        );
        assert_eq!(get(&file, "master", "monitor_email"), None);
        assert_eq!(
            file.get("admin", "monitor_email").unwrap().unwrap().line,
            10
        );
        assert_eq!(file.keys("master").unwrap(), ["bind", "cluster", "masters"]);
        assert!(matches!(
            file.get("storage", "bind"),
            Err(ConfError::NoSection { .. })
        ));
        assert_eq!(
            file.get("nosuch", "x").unwrap_err().to_string(),
            "neo.conf: no section [nosuch]"
        );
    }

    #[test]
    fn interpolation() {
        let file = parse(
            "[DEFAULT]\nroot = /srv\n[s]\ndatabase = %(root)s/db%%1\nbad = 5%\nloop = %(loop)s\nunknown = %(nope)s\n",
        )
        .unwrap();
        assert_eq!(get(&file, "s", "database").as_deref(), Some("/srv/db%1"));
        for key in ["bad", "loop", "unknown"] {
            let error = file.get("s", key).unwrap_err();
            assert!(
                matches!(error, ConfError::Interpolation { .. }),
                "{key}: {error}"
            );
            assert!(error.to_string().starts_with("neo.conf:"), "{error}");
        }
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let cases = [
            ("cluster = x\n", 1),
            ("[master]\njust words\n", 2),
            ("[master]\n[master]\n", 2),
            ("[master]\nbind = a\nBIND = b\n", 3),
            ("[master\n", 1),
            ("[master]\n = x\n", 2),
        ];
        for (text, line) in cases {
            match parse(text) {
                Err(ConfError::Syntax { line: found, .. }) => assert_eq!(found, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let error = parse("[master]\njust words\n").unwrap_err().to_string();
        assert!(error.starts_with("neo.conf:2: "), "{error}");
    }

    #[test]
    fn unreadable_file() {
        let error = ConfigFile::read(Path::new("/nonexistent/neo.conf")).unwrap_err();
        assert!(matches!(error, ConfError::Read { .. }));
        assert!(error
            .to_string()
            .starts_with("cannot read configuration file /nonexistent/neo.conf: "));
    }

    #[test]
    fn booleans() {
        for yes in ["1", "yes", "TRUE", "On"] {
            assert_eq!(parse_bool(yes), Some(true));
        }
        for no in ["0", "no", "False", "OFF"] {
            assert_eq!(parse_bool(no), Some(false));
        }
        assert_eq!(parse_bool("maybe"), None);
    }
}
