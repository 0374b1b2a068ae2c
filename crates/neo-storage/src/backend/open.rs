//! Picking and opening the engine named by NEO/py's `-a/--adapter`, on the
//! database named by `-d/--database` (operations.md §2.5).

use std::path::PathBuf;
use std::time::Duration;

use super::{Backend, MysqlBackend, NativeBackend, OpenError, SqliteBackend};

/// Storage engine (`-a/--adapter`), by NEO/py's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// Imports from another ZODB storage (operations.md §6).
    Importer,
    /// MySQL, with the default Python binding.
    MySql,
    /// MySQL through MySQLdb.
    MySqlDb,
    /// MySQL through PyMySQL.
    PyMySql,
    /// SQLite.
    Sqlite,
    /// Ours, not NEO/py's: one append-only log, rows in memory.
    Native,
}

impl Adapter {
    /// NEO/py's name of the engine.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Importer => "Importer",
            Adapter::MySql => "MySQL",
            Adapter::MySqlDb => "MySQLdb",
            Adapter::PyMySql => "PyMySQL",
            Adapter::Sqlite => "SQLite",
            Adapter::Native => "Native",
        }
    }

    /// The engine NEO/py calls `name`.
    pub fn from_name(name: &str) -> Option<Adapter> {
        [
            Adapter::Importer,
            Adapter::MySql,
            Adapter::MySqlDb,
            Adapter::PyMySql,
            Adapter::Sqlite,
            Adapter::Native,
        ]
        .into_iter()
        .find(|adapter| adapter.name() == name)
    }
}

/// How to open a database.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Erase everything first (`--reset`).
    pub reset: bool,
    /// SQLite: use the write-ahead log (the default, see
    /// [`SqliteBackend::open`]); `false` keeps a rollback journal, as NEO/py
    /// does by default.
    pub wal: bool,
    /// `-e/--engine`: MySQL's engine for a new database (`InnoDB`, the
    /// default, or `RocksDB`); SQLite and Native have none.
    pub engine: Option<String>,
    /// `-w/--wait`: MySQL only, how long to keep trying to connect to the
    /// server, at start and when it went away; `None`: forever.
    pub wait: Option<Duration>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            reset: false,
            wal: true,
            engine: None,
            wait: Some(Duration::ZERO),
        }
    }
}

/// Opens `database` with the engine `adapter`. For SQLite and Native,
/// `database` is a path, where `~` and `~user` are expanded; for MySQL (any
/// of NEO/py's three names), `[user[:password]@]database[socket]`.
pub fn open(
    adapter: Adapter,
    database: &str,
    options: &OpenOptions,
) -> Result<Box<dyn Backend + Send>, OpenError> {
    match adapter {
        Adapter::Sqlite => {
            let path = file_path(adapter, database, options)?;
            // A `file:` URI would be taken for a file name.
            if database.starts_with("file:") {
                return Err(OpenError::BadDatabase {
                    database: database.to_owned(),
                    reason: "SQLite URIs are not supported yet; give a path",
                });
            }
            Ok(Box::new(SqliteBackend::open(path, options)?))
        }
        Adapter::Native => {
            let path = file_path(adapter, database, options)?;
            Ok(Box::new(NativeBackend::open(path, options)?))
        }
        Adapter::MySql | Adapter::MySqlDb | Adapter::PyMySql => {
            Ok(Box::new(MysqlBackend::open(database, options)?))
        }
        Adapter::Importer => Err(OpenError::NotAnEngine { adapter }),
    }
}

/// The file of an engine that keeps one (SQLite, Native): no `-e`, and a
/// path, `~` expanded.
fn file_path(
    adapter: Adapter,
    database: &str,
    options: &OpenOptions,
) -> Result<PathBuf, OpenError> {
    if let Some(engine) = &options.engine {
        return Err(OpenError::UnsupportedEngine {
            engine: engine.clone(),
        });
    }
    if database.is_empty() {
        return Err(OpenError::BadDatabase {
            database: database.to_owned(),
            reason: match adapter {
                Adapter::Native => "a Native database is a path, and this one is empty",
                _ => "an SQLite database is a path, and this one is empty",
            },
        });
    }
    Ok(expand_user(database))
}

/// `~` and `~user` at the start of a path, as Python's `expanduser`; left
/// unchanged when the home directory is unknown.
pub fn expand_user(path: &str) -> PathBuf {
    let Some(rest) = path.strip_prefix('~') else {
        return PathBuf::from(path);
    };
    let (user, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let home = if user.is_empty() {
        std::env::var_os("HOME").map(PathBuf::from)
    } else {
        home_of(user)
    };
    match home {
        Some(home) => {
            let tail = tail.trim_start_matches('/');
            if tail.is_empty() {
                home
            } else {
                home.join(tail)
            }
        }
        None => PathBuf::from(path),
    }
}

/// Home directory of `user` from `/etc/passwd`.
fn home_of(user: &str) -> Option<PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[0] == user).then(|| PathBuf::from(fields[5]))
    })
}
