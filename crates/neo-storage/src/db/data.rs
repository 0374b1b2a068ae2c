//! Object data: ids allocated per partition, reference counts of the data
//! of transactions in progress, and pruning of data nothing references.

use neo_proto::{Checksum, Oid, Partition, Tid};

use super::Database;
use crate::backend::{DataId, FatalError, RequestError, Result};

/// Data ids of partition `p` are `[p << DATA_ID_SHIFT, (p + 1) <<
/// DATA_ID_SHIFT)`, so that a partition's data is contiguous (§12.3).
const DATA_ID_SHIFT: u32 = 48;

impl Database {
    /// Stores object data and returns its id, held once (see
    /// [`Database::release_data`]). `checksum` must be the SHA-1 of `data`
    /// (verified by the caller); [`Checksum::ZERO`] with empty data means
    /// "no data" and gives `None`. With `data_tid` (undo), the data id of
    /// record `(oid, data_tid)` is reused; if that record is gone and the
    /// partition is readable, pack removed it
    /// ([`RequestError::UndoPack`]); on a cell being replicated, the data
    /// the client sent is stored.
    pub fn store_data(
        &mut self,
        oid: Oid,
        checksum: Checksum,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> Result<Option<DataId>> {
        // NEO's MAX_TID bounds oids as well: no engine stores more.
        if oid.0 > Tid::MAX.0 {
            return Err(RequestError::OutOfRange {
                what: "oid",
                value: oid.0,
            }
            .into());
        }
        let partition = self.partition_of_oid(oid, "storing object data")?;
        if let Some(data_tid) = data_tid {
            match self.backend.object(partition, oid, data_tid)? {
                Some(record) => {
                    self.hold_data(record.data_id.as_slice());
                    return Ok(record.data_id);
                }
                None if self.is_readable(partition) => {
                    return Err(RequestError::UndoPack { oid, data_tid }.into());
                }
                None => {}
            }
        }
        if checksum == Checksum::ZERO && data.is_empty() {
            return Ok(None);
        }
        let id = self.allocate_data_id(partition)?;
        self.backend.put_data(id, checksum, compression, data)?;
        self.hold_data(&[id]);
        Ok(Some(id))
    }

    /// Counts one more in-progress reference to each id, so that pruning
    /// keeps them although no committed record uses them yet.
    pub(super) fn hold_data(&mut self, ids: &[DataId]) {
        for &id in ids {
            *self.held.entry(id).or_insert(0) += 1;
        }
    }

    /// Drops one in-progress reference to each id; with `prune`, deletes
    /// the data referenced by nothing any more.
    pub fn release_data(&mut self, ids: &[DataId], prune: bool) -> Result<()> {
        for &id in ids {
            match self.held.get_mut(&id) {
                Some(count) if *count > 1 => *count -= 1,
                Some(_) => {
                    self.held.remove(&id);
                }
                None => tracing::warn!(data_id = id, "released data id that was not held"),
            }
        }
        if prune {
            self.prune_data(ids)?;
        }
        Ok(())
    }

    /// Deletes the data among `ids` that neither a record nor a
    /// transaction in progress references.
    pub(super) fn prune_data(&mut self, ids: &[DataId]) -> Result<()> {
        let unheld: Vec<DataId> = ids
            .iter()
            .copied()
            .filter(|id| !self.held.contains_key(id))
            .collect();
        self.backend.prune_data(&unheld)
    }

    /// The next data id of `partition`: after the greatest one stored.
    fn allocate_data_id(&mut self, partition: Partition) -> Result<DataId> {
        // Partitions are below 2^16 (MAX_PARTITIONS): no overflow.
        let first = u64::from(partition) << DATA_ID_SHIFT;
        let last = first | ((1 << DATA_ID_SHIFT) - 1);
        let next = match self.next_data_id.get(&partition) {
            Some(&next) => next,
            None => match self.backend.last_data_id(first, last)? {
                Some(greatest) => greatest.saturating_add(1),
                None => first,
            },
        };
        if next > last {
            return Err(FatalError::Corrupted(format!(
                "data ids of partition {partition} are exhausted"
            ))
            .into());
        }
        self.next_data_id.insert(partition, next + 1);
        Ok(next)
    }
}
