//! The statements of pack (§11.2, §11.3), behind their
//! [`Backend`](super::Backend) methods in `queries.rs`: the oids to pack
//! and one pack order.

use neo_proto::{Oid, Partition, Tid};
use rusqlite::params;

use super::codec::{self, bound, key};
use super::SqliteBackend;
use crate::backend::{PackCandidate, PackOrder, Result};

impl SqliteBackend {
    pub(super) fn candidates(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        pack_tid: Tid,
        limit: u64,
    ) -> Result<Vec<PackCandidate>> {
        Ok(self.query_rows(
            "listing oids to pack",
            "SELECT oid, COUNT(*), MAX(tid) FROM obj
             WHERE partition = ?1 AND oid >= ?2 AND tid <= ?3
             GROUP BY oid ORDER BY oid LIMIT ?4",
            params![partition, bound(min_oid.0), bound(pack_tid.0), bound(limit)],
            |row| {
                Ok(PackCandidate {
                    oid: codec::oid(row, 0)?,
                    records: codec::id(row, 1, "record count")?,
                    newest: codec::tid(row, 2, "serial")?,
                })
            },
        )?)
    }

    pub(super) fn candidate(
        &mut self,
        partition: Partition,
        oid: Oid,
        pack_tid: Tid,
    ) -> Result<Option<PackCandidate>> {
        let Some(oid_key) = key(oid.0) else {
            return Ok(None);
        };
        let candidate = self.query_row(
            "listing oids to pack",
            "SELECT COUNT(*), MAX(tid) FROM obj WHERE partition = ? AND oid = ? AND tid <= ?",
            params![partition, oid_key, bound(pack_tid.0)],
            |row| {
                let records = codec::id(row, 0, "record count")?;
                let newest = codec::optional_tid(row, 1, "serial")?;
                Ok(newest.map(|newest| PackCandidate {
                    oid,
                    records,
                    newest,
                }))
            },
        )?;
        Ok(candidate.flatten())
    }

    pub(super) fn pack_order_of(&mut self, id: Tid) -> Result<Option<PackOrder>> {
        let Some(id) = key(id.0) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "reading a pack order",
            "SELECT tid, approved, partial, oids, pack_tid FROM pack WHERE tid = ?",
            [id],
            codec::pack_order,
        )?)
    }
}
