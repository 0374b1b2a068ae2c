//! The Importer (`-a Importer`, architecture.md §12.7, operations.md §6):
//! a storage node serving existing ZODB FileStorages at once, while their
//! history is copied in the background into the destination backend
//! named by `importer.conf`.
//!
//! [`Importer`] holds the sources (`sources.rs`: files, the merged oid
//! space) and the reading thread (`feed.rs`). It lives in the node's
//! [`Database`], which routes what is not imported yet to it
//! (`db/import.rs`); the node inserts what the thread read between client
//! requests (`node/import.rs`). Progress is the last tid imported, saved in
//! the destination's `config` with the rows it covers, so an import
//! stopped in any way resumes after the last transaction committed.

mod conf;
mod feed;
mod sources;
mod writeback;

use std::path::PathBuf;

pub use conf::{Destination, ImporterConf, SourceConf};
pub(crate) use feed::{Feed, ImportedTransaction, Next};
pub(crate) use sources::{Sources, LAST_TID_KEY, NEO_PY_STATE_KEY, STATE_KEY};
pub(crate) use writeback::WriteBack;

use crate::backend::{self, OpenError, OpenOptions};
use crate::db::Database;

/// `config` key of the last tid imported (16 hex digits).
pub(crate) const IMPORTED_KEY: &str = "import_tid";

/// Why an import can not start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The configuration file can not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("{}: {reason}", path.display())]
    Conf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A source file can not be read (it names the file and the offset).
    #[error(transparent)]
    Source(#[from] neo_filestorage::Error),
    /// A source has no transaction (NEO/py's message).
    #[error("Can not import empty storage: {}", path.display())]
    Empty {
        /// The source file.
        path: PathBuf,
    },
    /// The oid mapping can not be made or read back.
    #[error("importer: {0}")]
    Mapping(String),
    /// A record of a merged database whose references can not be moved.
    #[error(
        "[{source_name}]: the references of object {oid:#x} can not be rewritten (not a pickle \
         of ZODB's protocols 1 to 3 with 8-byte binary oids)"
    )]
    Repickle {
        /// The source's section.
        source_name: String,
        /// The object, in its database.
        oid: u64,
    },
    /// The reading thread could not start.
    #[error("starting the import thread: {source}")]
    Thread {
        /// The system error.
        source: std::io::Error,
    },
}

/// An import: the sources and how far it went.
pub struct Importer {
    pub(crate) sources: Sources,
    /// Last tid imported (`zodb_tid`); 0 before the first one.
    pub(crate) imported: u64,
    compress: Option<u32>,
    /// The reading thread, once started.
    pub(crate) feed: Option<Feed>,
    /// Counted since this start, for the progress reports.
    pub(crate) progress: ImportProgress,
    /// With `writeback = true`.
    pub(crate) writeback: Option<WriteBack>,
}

/// How far the import went since this start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ImportProgress {
    /// Transactions imported.
    pub transactions: u64,
    /// Bytes of the sources imported.
    pub bytes: u64,
    /// Bytes of the sources to import at this start.
    pub total: u64,
    /// Whether everything is imported.
    pub done: bool,
}

impl Importer {
    /// Greatest tid of the sources (`zodb_ltid`).
    pub fn last_tid(&self) -> u64 {
        self.sources.last_tid
    }

    /// Greatest merged oid of the sources (`zodb_loid`).
    pub fn last_oid(&self) -> u64 {
        self.sources.last_oid
    }

    /// Whether every transaction of the sources is in the destination.
    pub fn is_done(&self) -> bool {
        self.imported >= self.sources.last_tid
    }

    /// Whether transaction `tid` is still only in the sources.
    pub(crate) fn in_sources(&self, tid: u64) -> bool {
        self.imported < tid && tid <= self.sources.last_tid
    }

    /// Starts the reading thread, after the last tid imported.
    pub(crate) fn start_feed(&mut self) -> Result<(), ImportError> {
        if self.feed.is_none() && !self.is_done() {
            let feed = Feed::start(&self.sources, self.imported, self.compress)?;
            self.progress.total = feed.total;
            self.feed = Some(feed);
        }
        Ok(())
    }
}

/// Opens the database of a storage node: the engine `adapter` on
/// `database`, or for the Importer, the destination named by the
/// `importer.conf` at `database` with the import attached to it.
pub fn open_database(
    adapter: backend::Adapter,
    database: &str,
    options: &OpenOptions,
) -> Result<Database, OpenError> {
    let failed = |name: &str| {
        let name = name.to_owned();
        move |error: backend::Error| match error {
            backend::Error::Fatal(source) => OpenError::Failed {
                database: name.clone(),
                source,
            },
            backend::Error::Request(error) => OpenError::Unsuitable {
                database: name.clone(),
                reason: error.to_string(),
            },
        }
    };
    if adapter != backend::Adapter::Importer {
        let engine = backend::open(adapter, database, options)?;
        return Database::new(engine).map_err(failed(database));
    }
    let path = backend::expand_user(database);
    let conf = ImporterConf::load(&path)?;
    let destination = &conf.destination;
    let options = OpenOptions {
        engine: destination.engine.clone(),
        wait: if destination.wait >= 0.0 {
            std::time::Duration::try_from_secs_f64(destination.wait).ok()
        } else {
            None
        },
        ..options.clone()
    };
    let engine = backend::open(destination.adapter, &destination.database, &options)?;
    let mut db = Database::new(engine).map_err(failed(&destination.database))?;
    if options.reset {
        return Ok(db);
    }
    let saved = db
        .raw_config(STATE_KEY)
        .map_err(failed(&destination.database))?;
    let saved_last_tid = db
        .imported_last_tid()
        .map_err(failed(&destination.database))?;
    if saved.is_none()
        && db
            .raw_config(NEO_PY_STATE_KEY)
            .map_err(failed(&destination.database))?
            .is_some()
    {
        return Err(ImportError::Mapping(format!(
            "{} holds an import started by NEO/py: finish it with NEO/py",
            destination.database
        ))
        .into());
    }
    let (sources, state) = Sources::open(&conf, saved.as_deref(), saved_last_tid)?;
    if let Some(state) = state {
        db.set_raw_config(STATE_KEY, Some(&state))
            .and_then(|()| db.save_imported_last_tid(sources.last_tid))
            .and_then(|()| db.commit())
            .map_err(failed(&destination.database))?;
    }
    let imported = db
        .imported_tid()
        .map_err(failed(&destination.database))?
        .unwrap_or(0);
    let mut importer = Importer {
        sources,
        imported,
        compress: destination.compress,
        feed: None,
        progress: ImportProgress::default(),
        writeback: destination
            .writeback
            .then(|| {
                conf.sources
                    .first()
                    .map(|source| WriteBack::new(source.path.clone()))
            })
            .flatten(),
    };
    if importer.is_done() {
        importer.progress.done = true;
        all_imported();
    } else {
        importer.start_feed()?;
        tracing::info!(
            last_tid = format_args!("{:016x}", importer.last_tid()),
            imported = format_args!("{:016x}", importer.imported),
            bytes = importer.progress.total,
            "importing"
        );
    }
    db.attach_importer(importer);
    Ok(db)
}

/// NEO/py's message once everything is imported.
pub(crate) fn all_imported() {
    tracing::warn!(
        "All data are imported. You should change your configuration to use the native backend \
         and restart."
    );
}
