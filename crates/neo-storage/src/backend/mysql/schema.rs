//! The tables of §12.3 with MySQL's types (§12.4): creating them, checking
//! an existing database, dropping them, and purging the deletions NEO/py
//! queued in `todel`.

use mysql::Value;

use super::codec::column;
use super::{Engine, MysqlBackend};
use crate::backend::{FatalError, OpenError, SCHEMA_VERSION};

/// Every table NEO/py's MySQL backend has (also what `erase` drops).
const TABLES: &[&str] = &[
    "config", "pt", "pack", "trans", "obj", "data", "bigdata", "ttrans", "tobj", "todel",
];

/// How many queued deletions are purged per commit.
const PURGE_BATCH: usize = 1000;

/// `CREATE TABLE` of each table, in NEO/py's column order and types, with
/// NEO/py's index names; `{cf:NAME}` marks where MyRocks gets the column
/// family of a key (none with InnoDB).
const SCHEMA: &[(&str, &str)] = &[
    (
        "config",
        "name VARBINARY(255) NOT NULL PRIMARY KEY,
         value VARBINARY(255) NULL",
    ),
    (
        "pt",
        "`partition` SMALLINT UNSIGNED NOT NULL,
         nid INT NOT NULL,
         tid BIGINT NOT NULL,
         pack BIGINT UNSIGNED,
         PRIMARY KEY (`partition`, nid)",
    ),
    (
        "pack",
        "tid BIGINT UNSIGNED NOT NULL PRIMARY KEY,
         approved BOOLEAN,
         partial BOOLEAN NOT NULL,
         oids MEDIUMBLOB,
         pack_tid BIGINT UNSIGNED",
    ),
    (
        "trans",
        "`partition` SMALLINT UNSIGNED NOT NULL,
         tid BIGINT UNSIGNED NOT NULL,
         packed BOOLEAN NOT NULL,
         oids MEDIUMBLOB NOT NULL,
         user BLOB NOT NULL,
         description BLOB NOT NULL,
         ext BLOB NOT NULL,
         ttid BIGINT UNSIGNED NOT NULL,
         PRIMARY KEY (`partition`, tid){cf:append_meta}",
    ),
    (
        "obj",
        "`partition` SMALLINT UNSIGNED NOT NULL,
         oid BIGINT UNSIGNED NOT NULL,
         tid BIGINT UNSIGNED NOT NULL,
         data_id BIGINT UNSIGNED NULL,
         value_tid BIGINT UNSIGNED NULL,
         PRIMARY KEY (`partition`, oid, tid){cf:rev:obj_pk},
         KEY tid (`partition`, tid, oid){cf:append_meta},
         KEY (data_id){cf:append_meta}",
    ),
    (
        "data",
        "id BIGINT UNSIGNED NOT NULL,
         hash BINARY(20) NOT NULL,
         compression TINYINT UNSIGNED NULL,
         value MEDIUMBLOB NOT NULL,
         PRIMARY KEY (id){cf:append}",
    ),
    (
        "bigdata",
        "id INT UNSIGNED NOT NULL AUTO_INCREMENT,
         value MEDIUMBLOB NOT NULL,
         PRIMARY KEY (id){cf:append}",
    ),
    (
        "ttrans",
        "`partition` SMALLINT UNSIGNED NOT NULL,
         tid BIGINT UNSIGNED,
         packed BOOLEAN NOT NULL,
         oids MEDIUMBLOB NOT NULL,
         user BLOB NOT NULL,
         description BLOB NOT NULL,
         ext BLOB NOT NULL,
         ttid BIGINT UNSIGNED NOT NULL,
         PRIMARY KEY (ttid){cf:no_comp}",
    ),
    (
        "tobj",
        "`partition` SMALLINT UNSIGNED NOT NULL,
         oid BIGINT UNSIGNED NOT NULL,
         tid BIGINT UNSIGNED NOT NULL,
         data_id BIGINT UNSIGNED NULL,
         value_tid BIGINT UNSIGNED NULL,
         PRIMARY KEY (tid, oid){cf:no_comp}",
    ),
    (
        "todel",
        "data_id BIGINT UNSIGNED NOT NULL,
         PRIMARY KEY (data_id){cf:no_comp}",
    ),
];

/// The `CREATE TABLE` statement of `table` for `engine`.
fn create_statement(table: &str, columns: &str, engine: Engine) -> String {
    let mut columns = columns.to_owned();
    while let Some(start) = columns.find("{cf:") {
        let end = columns[start..]
            .find('}')
            .map_or(columns.len(), |end| start + end + 1);
        let family = &columns[start + 4..end - 1];
        let comment = match engine {
            Engine::InnoDB => String::new(),
            // MyRocks takes a key's column family from its comment.
            Engine::RocksDB => match family.strip_prefix("rev:") {
                Some(family) => format!(" COMMENT 'rev:cf_neo_{family}'"),
                None => format!(" COMMENT 'cf_neo_{family}'"),
            },
        };
        columns.replace_range(start..end, &comment);
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {table} ({columns}) ENGINE={}",
        engine.name()
    )
}

impl MysqlBackend {
    /// Refuses a database this code can not use as it is: another schema
    /// version (§12.6), or deduplication (not supported yet).
    pub(super) fn check_schema(&mut self) -> Result<(), OpenError> {
        let database = self.name.clone();
        let failed = |source| OpenError::Failed {
            database: database.clone(),
            source,
        };
        let tables = self.tables().map_err(failed)?;
        if tables.is_empty() {
            return Ok(());
        }
        let found = if tables.iter().any(|t| t == "config") {
            let version = self
                .row(
                    "reading the schema version",
                    "SELECT value FROM config WHERE name = 'version'",
                    Vec::new(),
                )
                .map_err(failed)?
                .map(|mut row| column::<Vec<u8>>(&mut row, 0, "config value"))
                .transpose()
                .map_err(failed)?;
            match version {
                None => 0,
                Some(version) => {
                    let text = String::from_utf8_lossy(&version);
                    text.trim().parse().map_err(|_| {
                        failed(FatalError::Corrupted(format!(
                            "invalid schema version {text:?}"
                        )))
                    })?
                }
            }
        } else {
            0
        };
        crate::backend::check_version(&self.name, found)?;
        let dedup = self
            .row(
                "looking for deduplication",
                "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = 'data' AND INDEX_NAME = 'hash' LIMIT 1",
                Vec::new(),
            )
            .map_err(failed)?;
        if dedup.is_some() {
            return Err(OpenError::Unsuitable {
                database: self.name.clone(),
                reason: "it was created with --dedup, which is not supported yet".to_owned(),
            });
        }
        Ok(())
    }

    /// NEO's tables present in the database.
    fn tables(&mut self) -> Result<Vec<String>, FatalError> {
        let rows = self.rows(
            "listing tables",
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
            Vec::new(),
        )?;
        let mut tables = Vec::new();
        for mut row in rows {
            let name: String = column(&mut row, 0, "table name")?;
            if TABLES.contains(&name.as_str()) {
                tables.push(name);
            }
        }
        Ok(tables)
    }

    /// Creates what is missing, and records the version in a new
    /// database; committed (MySQL commits around every `CREATE`).
    pub(super) fn create_tables(&mut self) -> Result<(), FatalError> {
        let existing = self.tables()?;
        if existing.len() == TABLES.len() {
            return Ok(());
        }
        let new = !existing.iter().any(|t| t == "config");
        for (table, columns) in SCHEMA {
            let statement = create_statement(table, columns, self.engine);
            self.write_text("creating tables", &statement)?;
        }
        if new {
            self.write(
                "recording the schema version",
                "INSERT INTO config VALUES ('version', ?)",
                vec![Value::from(SCHEMA_VERSION.to_string())],
            )?;
        }
        self.commit_now()
    }

    /// Drops every table; committed.
    pub(super) fn drop_tables(&mut self) -> Result<(), FatalError> {
        self.commit_now()?;
        let statement = format!("DROP TABLE IF EXISTS {}", TABLES.join(", "));
        self.write_text("dropping tables", &statement)?;
        // DDL commits by itself.
        self.uncommitted = false;
        Ok(())
    }

    /// Deletes the data NEO/py queued in `todel` for deletion (its pack
    /// and partition deletion run on a second connection and leave the
    /// deletion to the main one), in batches, each committed. This engine
    /// deletes directly (one connection), so only a database last opened
    /// by NEO/py has any.
    pub(super) fn purge_deferred_deletions(&mut self) -> Result<(), FatalError> {
        loop {
            let rows = self.rows(
                "reading queued deletions",
                "SELECT data_id FROM todel ORDER BY data_id LIMIT ?",
                vec![Value::from(PURGE_BATCH as u64)],
            )?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut ids = Vec::with_capacity(rows.len());
            for mut row in rows {
                ids.push(column::<u64>(&mut row, 0, "queued data id")?);
            }
            self.delete_unreferenced(&ids)?;
            let list = id_list(&ids);
            self.write_text(
                "purging queued deletions",
                &format!("DELETE FROM todel WHERE data_id IN ({list})"),
            )?;
            self.commit_now()?;
        }
    }
}

/// Ids for an `IN (...)` list.
pub(super) fn id_list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_families_only_with_rocksdb() {
        let (table, columns) = SCHEMA[4];
        let innodb = create_statement(table, columns, Engine::InnoDB);
        assert!(
            !innodb.contains("COMMENT") && !innodb.contains('{'),
            "{innodb}"
        );
        assert!(innodb.ends_with("ENGINE=InnoDB"), "{innodb}");
        let rocksdb = create_statement(table, columns, Engine::RocksDB);
        assert!(
            rocksdb.contains("PRIMARY KEY (`partition`, oid, tid) COMMENT 'rev:cf_neo_obj_pk'"),
            "{rocksdb}"
        );
        assert!(
            rocksdb.contains("KEY (data_id) COMMENT 'cf_neo_append_meta'"),
            "{rocksdb}"
        );
        assert!(rocksdb.ends_with("ENGINE=RocksDB"), "{rocksdb}");
    }
}
