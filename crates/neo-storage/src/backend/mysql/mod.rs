//! The MySQL/MariaDB engine: NEO/py's MySQL schema, version 4
//! (architecture.md §12.3, §12.4), so that a database moves between NEO/py
//! and this implementation in place.
//!
//! `target.rs` reads the `-d` string, `schema.rs` creates, checks and
//! drops the tables, `codec.rs` converts values (and holds the format of
//! `bigdata`), `queries.rs` is the [`Backend`](super::Backend)
//! implementation. This file holds the connection: opening it, the
//! session settings and checks NEO needs, the lock against a second node,
//! and the rule for a server that goes away.
//!
//! The driver is the `mysql` crate: synchronous (the storage runs its
//! database on its own thread, a blocking call is what it wants), pure
//! Rust (no C client library to install), with prepared statements kept
//! in a per-connection cache. Statements whose text varies (lists of ids)
//! go through the text protocol instead, so they do not crowd that cache.

mod codec;
mod queries;
mod schema;
mod target;

use std::time::{Duration, Instant};

use mysql::consts::CapabilityFlags;
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Params, Row, Value};

use super::{FatalError, OpenError, OpenOptions};
pub use target::Target;

/// The engines a new database can be created with (`-e/--engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// The default.
    #[default]
    InnoDB,
    /// MyRocks, where the server has it.
    RocksDB,
}

impl Engine {
    /// NEO/py's name, as given to `-e` and to `ENGINE=`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::InnoDB => "InnoDB",
            Engine::RocksDB => "RocksDB",
        }
    }

    /// The engine called `name` (exactly as NEO/py spells it).
    pub fn from_name(name: &str) -> Option<Engine> {
        [Engine::InnoDB, Engine::RocksDB]
            .into_iter()
            .find(|engine| engine.name() == name)
    }
}

/// The smallest `max_allowed_packet` NEO/py accepts (32769 KiB): a row of
/// `data` holds up to 16 MiB, which NEO/py sends escaped in the text of a
/// statement. The same floor here, so that a server fit for one is fit
/// for the other.
pub const MIN_MAX_ALLOWED_PACKET: u64 = 32769 * 1024;

/// How many times a statement is tried again on a new connection when the
/// server went away with nothing uncommitted; more means the statement
/// itself is likely what kills the connection.
const RECONNECTS: usize = 2;

/// Name of the lock a node holds on its database, as NEO/py names it, so
/// that NEO/py's nodes and ours keep each other away.
fn lock_name(database: &str) -> String {
    format!("{database}.neostorage")
}

/// [`Backend`](super::Backend) on a MySQL or MariaDB database.
pub struct MysqlBackend {
    /// `None` once the server went away, until the next statement
    /// reconnects (see [`MysqlBackend::run`]).
    conn: Option<Conn>,
    target: Target,
    engine: Engine,
    /// How long to keep trying to connect (`-w`); `None`: forever.
    wait: Option<Duration>,
    /// Rows were written since the last commit (NEO/py's `_active`): losing
    /// the connection now loses them, so it must not be reconnected
    /// silently.
    uncommitted: bool,
    /// The database string as given, for messages.
    name: String,
}

impl std::fmt::Debug for MysqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlBackend")
            .field("database", &self.target.database)
            .field("socket", &self.target.socket)
            .field("uncommitted", &self.uncommitted)
            .finish()
    }
}

impl MysqlBackend {
    /// Connects to `database` (NEO/py's syntax, operations.md §2.5),
    /// retrying for as long as `options.wait` says, takes the node's lock
    /// on it, checks the server's settings and the schema version, and
    /// creates what is missing (with `options.engine`).
    pub fn open(database: &str, options: &OpenOptions) -> Result<MysqlBackend, OpenError> {
        let target = Target::parse(database).ok_or_else(|| OpenError::BadDatabase {
            database: database.to_owned(),
            reason: "expected [user[:password]@]database[socket]",
        })?;
        let engine = match &options.engine {
            None => Engine::default(),
            Some(name) => Engine::from_name(name).ok_or_else(|| OpenError::UnsupportedEngine {
                engine: name.clone(),
            })?,
        };
        let mut backend = MysqlBackend {
            conn: None,
            target,
            engine,
            wait: options.wait,
            uncommitted: false,
            name: database.to_owned(),
        };
        let failed = |source| OpenError::Failed {
            database: database.to_owned(),
            source,
        };
        let conn = backend.connect()?;
        backend.conn = Some(conn);
        backend.check_durability().map_err(failed)?;
        if options.reset {
            backend.drop_tables().map_err(failed)?;
        }
        backend.check_schema()?;
        backend.create_tables().map_err(failed)?;
        backend.purge_deferred_deletions().map_err(failed)?;
        Ok(backend)
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.target.database
    }

    /// A new connection, set up and locked; retried every second for as
    /// long as `-w` says.
    fn connect(&self) -> Result<Conn, OpenError> {
        let deadline = self.wait.map(|wait| Instant::now() + wait);
        let mut last_error = String::new();
        loop {
            match self.try_connect() {
                Ok(conn) => return Ok(conn),
                Err(ConnectError::Open(error)) => return Err(error),
                Err(ConnectError::Server(error)) => {
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        return Err(OpenError::Failed {
                            database: self.name.clone(),
                            source: engine_error("connecting to the server", error),
                        });
                    }
                    // Once per distinct error, not once per second.
                    let message = error.to_string();
                    if message != last_error {
                        tracing::warn!(database = %self.name, "connecting to MySQL failed, retrying: {message}");
                        last_error = message;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn try_connect(&self) -> Result<Conn, ConnectError> {
        let target = &self.target;
        let opts = OptsBuilder::new()
            .user(target.user.as_deref())
            .pass(target.password.as_deref())
            .db_name(Some(&target.database))
            .socket(Some(target.socket.to_string_lossy()))
            .prefer_socket(false)
            // Room for every statement of the engine: none is prepared
            // twice.
            .stmt_cache_size(128)
            // `UPDATE` reports the rows it matched, not only those it
            // changed (signing a pack order twice still finds it).
            .additional_capabilities(CapabilityFlags::CLIENT_FOUND_ROWS);
        let mut conn = Conn::new(opts).map_err(ConnectError::Server)?;
        // Strict: a value that does not fit is an error, not truncated; an
        // unknown engine is an error, not InnoDB. A long idle time: an
        // idle node's connection stays. No autocommit: the node commits.
        let mut session = String::from(
            "SET SESSION sql_mode = 'TRADITIONAL,NO_ENGINE_SUBSTITUTION', \
             SESSION wait_timeout = 2147483, SESSION autocommit = 0",
        );
        if self.engine == Engine::RocksDB {
            let support: Option<String> = conn
                .exec_first(
                    "SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = ?",
                    (self.engine.name(),),
                )
                .map_err(ConnectError::Server)?;
            if !matches!(support.as_deref(), Some("YES" | "DEFAULT")) {
                return Err(ConnectError::Open(OpenError::Failed {
                    database: self.name.clone(),
                    source: FatalError::EngineUnavailable {
                        engine: self.engine.name(),
                    },
                }));
            }
            // Deleting a whole partition takes many row locks.
            session.push_str(", SESSION rocksdb_max_row_locks = 1073741824");
        }
        conn.query_drop(session).map_err(ConnectError::Server)?;
        // NEO/py waits 0 s; 1 s lets the server notice that the previous
        // node just died (its lock goes with its connection), so that a
        // node restarted at once is not refused.
        let locked: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, 1)", (lock_name(&target.database),))
            .map_err(ConnectError::Server)?;
        if locked.flatten() != Some(1) {
            return Err(ConnectError::Open(OpenError::Locked {
                database: self.name.clone(),
            }));
        }
        let packet: Option<u64> = conn
            .query_first("SELECT @@max_allowed_packet")
            .map_err(ConnectError::Server)?;
        let packet = packet.unwrap_or(0);
        if packet < MIN_MAX_ALLOWED_PACKET {
            return Err(ConnectError::Open(OpenError::Unsuitable {
                database: self.name.clone(),
                reason: format!(
                    "the server's max_allowed_packet is {packet} bytes, too small for \
                     NEO's largest rows: set it to at least 32769K (max_allowed_packet = \
                     33M under [mysqld], or SET GLOBAL max_allowed_packet = \
                     {MIN_MAX_ALLOWED_PACKET})"
                ),
            }));
        }
        Ok(conn)
    }

    /// Warns when the server does not make commits durable: NEO promises
    /// a transaction to the master once its lock is committed (§12.2).
    fn check_durability(&mut self) -> Result<(), FatalError> {
        let variable = match self.engine {
            Engine::InnoDB => "innodb_flush_log_at_trx_commit",
            Engine::RocksDB => "rocksdb_flush_log_at_trx_commit",
        };
        let value: Option<Option<String>> = self.run("checking commit durability", |conn| {
            conn.exec_first(
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES \
                 WHERE VARIABLE_NAME = ?",
                (variable.to_uppercase(),),
            )
        })?;
        match value.flatten().as_deref() {
            Some("1") | None => {}
            Some(other) => tracing::warn!(
                database = %self.name,
                "{variable} is {other}, not 1: a commit is not on disk when the server \
                 says it is, and a crash of the server or of the machine may lose \
                 transactions NEO reported as committed"
            ),
        }
        Ok(())
    }

    /// The connection, after reconnecting if the server went away.
    fn connection(&mut self) -> Result<&mut Conn, FatalError> {
        if self.conn.is_none() {
            let conn = self.connect().map_err(|error| match error {
                OpenError::Failed { source, .. } => source,
                other => FatalError::Reconnect(other.to_string()),
            })?;
            tracing::info!(database = %self.name, "reconnected to the MySQL server");
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| FatalError::Reconnect("no connection".to_owned()))
    }

    /// Runs `statement` on the connection. When the server went away:
    /// with nothing uncommitted, reconnects and runs it again (at most
    /// [`RECONNECTS`] times); with changes waiting for a commit, fails,
    /// because they were lost with the connection and a new one would
    /// silently go on without them (§12.4).
    fn run<T>(
        &mut self,
        context: &'static str,
        mut statement: impl FnMut(&mut Conn) -> mysql::Result<T>,
    ) -> Result<T, FatalError> {
        let mut tries = 0;
        loop {
            let conn = self.connection()?;
            match statement(conn) {
                Ok(value) => return Ok(value),
                Err(error) if server_gone(&error) => {
                    self.conn = None;
                    if self.uncommitted {
                        return Err(FatalError::ConnectionLost {
                            context,
                            source: Box::new(error),
                        });
                    }
                    if tries == RECONNECTS {
                        return Err(engine_error(context, error));
                    }
                    tries += 1;
                    tracing::info!(database = %self.name, "the MySQL server is gone ({error}); reconnecting");
                }
                Err(error) => return Err(engine_error(context, error)),
            }
        }
    }

    /// Runs a write statement; the transaction then has changes to commit.
    fn write(
        &mut self,
        context: &'static str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<u64, FatalError> {
        let changed = self.run(context, |conn| {
            conn.exec_drop(sql, Params::Positional(params.clone()))
                .map(|()| conn.affected_rows())
        })?;
        self.uncommitted = true;
        Ok(changed)
    }

    /// A write statement whose text varies (lists of ids), by the text
    /// protocol.
    fn write_text(&mut self, context: &'static str, sql: &str) -> Result<u64, FatalError> {
        let changed = self.run(context, |conn| {
            conn.query_drop(sql).map(|()| conn.affected_rows())
        })?;
        self.uncommitted = true;
        Ok(changed)
    }

    /// Every row of a query.
    fn rows(
        &mut self,
        context: &'static str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Row>, FatalError> {
        self.run(context, |conn| {
            conn.exec(sql, Params::Positional(params.clone()))
        })
    }

    /// The first row of a query.
    fn row(
        &mut self,
        context: &'static str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Option<Row>, FatalError> {
        self.run(context, |conn| {
            conn.exec_first(sql, Params::Positional(params.clone()))
        })
    }

    /// Every row of a query whose text varies, by the text protocol.
    fn rows_text(&mut self, context: &'static str, sql: &str) -> Result<Vec<Row>, FatalError> {
        self.run(context, |conn| conn.query(sql))
    }

    /// Commits the transaction, if it wrote anything.
    fn commit_now(&mut self) -> Result<(), FatalError> {
        if self.uncommitted {
            self.run("committing", |conn| conn.query_drop("COMMIT"))?;
            self.uncommitted = false;
        }
        Ok(())
    }
}

/// Why a connection attempt failed.
enum ConnectError {
    /// Retrying will not help.
    Open(OpenError),
    /// The server could not be reached or failed: retried while `-w` lasts.
    Server(mysql::Error),
}

/// Whether `error` means the connection is gone (rather than the
/// statement failed on a live connection).
fn server_gone(error: &mysql::Error) -> bool {
    use mysql::Error;
    match error {
        // A closed or broken socket.
        Error::IoError(_) | Error::CodecError(_) => true,
        // Server shutdown, connection killed, and the client library's
        // "server has gone away" / "lost connection" codes.
        Error::MySqlError(error) => matches!(error.code, 1053 | 1927 | 2006 | 2013),
        _ => false,
    }
}

fn engine_error(context: &'static str, error: mysql::Error) -> FatalError {
    FatalError::Engine {
        engine: "MySQL",
        context,
        source: Box::new(error),
    }
}
