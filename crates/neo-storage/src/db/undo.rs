//! Undo lookups (§8.3 `findUndoTID`): following back-pointers to the
//! serial that originally wrote the data.

use neo_proto::{Oid, Partition, Tid};

use super::{Database, UndoLookup, UndoSerial};
use crate::backend::{FatalError, Result};

impl Database {
    /// §8.3 `findUndoTID`. `current` is what the undoing transaction
    /// already stored for `oid` (its back-pointer, else its TTID).
    ///
    /// Records are compared by the serial that originally wrote their
    /// data, so that an undo record counts as the record it restores.
    pub fn find_undo_tid(
        &mut self,
        oid: Oid,
        snapshot: Tid,
        undone_tid: Tid,
        current: Option<Tid>,
    ) -> Result<UndoLookup> {
        // The undo chain may run through revisions not imported yet.
        self.refuse_while_importing("undo")?;
        let partition = self.readable_partition_of_oid(oid)?;
        let Some(undone) = self.backend.object(partition, oid, undone_tid)? else {
            return Ok(UndoLookup::NoRecord);
        };
        if undone_tid >= snapshot {
            return Ok(UndoLookup::NotVisible);
        }
        let undone_original =
            self.original_serial(partition, oid, undone_tid, undone.data_serial)?;
        let (current_serial, current_original) = match current {
            Some(current) => (current, current),
            None => match self.backend.object_before(partition, oid, snapshot)? {
                Some((serial, record)) => (
                    serial,
                    self.original_serial(partition, oid, serial, record.data_serial)?,
                ),
                None => return Ok(UndoLookup::NotVisible),
            },
        };
        let undo_serial = match self.backend.object_before(partition, oid, undone_tid)? {
            Some((serial, record)) => {
                Some(self.original_serial(partition, oid, serial, record.data_serial)?)
            }
            None => None,
        };
        Ok(UndoLookup::Found(UndoSerial {
            current_serial,
            undo_serial,
            is_current: undone_original == current_original,
        }))
    }

    /// Follows back-pointers from the record `serial` (whose back-pointer
    /// is `data_serial`) to the serial that originally wrote its data. If
    /// pack removed the target of a back-pointer, the record holding that
    /// back-pointer is the oldest surviving equivalent, so its serial is
    /// returned.
    pub(super) fn original_serial(
        &mut self,
        partition: Partition,
        oid: Oid,
        mut serial: Tid,
        mut data_serial: Option<Tid>,
    ) -> Result<Tid> {
        while let Some(target) = data_serial {
            // Back-pointers go back in time: this ends.
            if target >= serial {
                return Err(FatalError::Corrupted(format!(
                    "object {oid} serial {serial} points forward to {target}"
                ))
                .into());
            }
            match self.backend.object(partition, oid, target)? {
                Some(record) => {
                    serial = target;
                    data_serial = record.data_serial;
                }
                None => break,
            }
        }
        Ok(serial)
    }
}
